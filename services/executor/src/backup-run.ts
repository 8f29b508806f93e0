/**
 * One backup run, from a BackupRequested work item to a committed snapshot and its events.
 *
 * Idempotent per run: the snapshot id is derived from the run id, so a redelivered work item
 * whose snapshot was already committed (the executor died between commit and ack) only
 * re-announces the completion. Packs stored by an interrupted attempt are indexed as they are
 * written, so the next attempt does not upload them again.
 */
import { hostname } from "node:os";
import { trace } from "@opentelemetry/api";
import type { Bus, BusMessage } from "@iotvault/bus";
import { IotvaultError, isCode, toErrorInfo, toIotvaultError } from "@iotvault/errors";
import {
  BackupCompleted,
  BackupFailed,
  BackupProgress,
  BackupStarted,
  BackupType,
  SUBJECTS,
  type BackupRequested,
  type BackupStats,
} from "@iotvault/proto";
import {
  Repository,
  type RepositorySecret,
  type BackupStatsInfo,
  type BackupTypeName,
  type SnapshotManifest,
} from "@iotvault/repo";
import type { ObjectStore } from "@iotvault/storage";
import { backupDirectory, parseSourceUrl } from "@iotvault/sources";
import type { Logger } from "@iotvault/telemetry";

export interface BackupRunDeps {
  bus: Bus;
  /** The ObjectStore of a repository (through the storage-gateway). */
  storeFor(repository: string): ObjectStore;
  /** The secret repositories are opened with (passphrase or key file); read on every use. */
  password(): RepositorySecret;
  repositoryOptions: { scryptLogN: number; packSizeBytes: number; compressionLevel: number; workers: number };
  maxDeliver: number;
  progressIntervalMs: number;
  logger: Logger;
  executorId?: string;
}

const tracer = () => trace.getTracer("iotvault.executor");

export async function runBackup(deps: BackupRunDeps, msg: BusMessage<BackupRequested>): Promise<void> {
  const req = msg.payload;
  const job = req.job;
  if (!job || !req.runId) throw new IotvaultError("INVALID_ARGUMENT", "work item without a run id or job");
  const attempt = msg.deliveryCount;
  const executor = deps.executorId ?? `${hostname()}:${process.pid}`;
  const traceId = trace.getActiveSpan()?.spanContext().traceId ?? "";
  const log = deps.logger.child({ run_id: req.runId, job: job.name, attempt });
  const startedAt = new Date();
  try {
    const source = parseSourceUrl(job.source);
    const repo = await tracer().startActiveSpan("executor.open-repository", async (span) => {
      try {
        return await Repository.open(deps.storeFor(job.repository), deps.password(), deps.repositoryOptions);
      } finally {
        span.end();
      }
    });
    try {
      const snapshotId = repo.snapshotIdFor(req.runId);
      if (await repo.hasSnapshot(snapshotId)) {
        log.info("snapshot of this run already committed by an earlier attempt; announcing it again", {
          snapshot_id: snapshotId,
        });
        const snapshot = await repo.loadSnapshot(snapshotId);
        await publishCompleted(deps, req, snapshot, snapshot.stats, { executor, startedAt, traceId });
        return;
      }
      const parent = await findParent(repo, job.id, req.backupType);
      await deps.bus.publish(
        SUBJECTS.backupStarted,
        BackupStarted,
        {
          runId: req.runId,
          jobId: job.id,
          jobName: job.name,
          repository: job.repository,
          source: job.source,
          backupType: req.backupType,
          trigger: req.trigger,
          site: job.site,
          executor,
          attempt,
          parentSnapshotId: parent?.id ?? "",
          scheduledAt: req.scheduledAt,
          startedAt,
          traceId,
        },
        { msgId: `${req.runId}:started:${attempt}` },
      );
      log.info("backup started", { source: job.source, repository: job.repository, parent: parent?.id ?? null });

      const progress = progressPublisher(deps, req.runId, job.id, attempt, log);
      const writer = await repo.startBackup({
        runId: req.runId,
        parent,
        signal: msg.signal,
        onProgress: (p) => {
          msg.working();
          progress({
            bytesDone: p.bytesRead,
            bytesNew: p.bytesNew,
            filesDone: p.filesDone,
            currentPath: p.currentPath,
          });
        },
      });
      let committed: { snapshot: SnapshotManifest; stats: BackupStatsInfo };
      let warnings = 0;
      try {
        await tracer().startActiveSpan(
          "executor.read-source",
          { attributes: { "iotvault.source": job.source } },
          async (span) => {
            try {
              const counts = await backupDirectory(repo, writer, {
                root: source.root,
                include: job.include,
                exclude: job.exclude,
                parent,
                signal: msg.signal,
                onProgress: (p) => {
                  msg.working();
                  progress({ bytesDone: p.bytesDone, filesDone: p.filesDone, currentPath: p.currentPath });
                },
              });
              span.setAttributes({
                "iotvault.files": counts.files,
                "iotvault.bytes": counts.bytes,
                "iotvault.warnings": counts.warnings,
              });
              warnings = counts.warnings;
            } finally {
              span.end();
            }
          },
        );
        committed = await tracer().startActiveSpan("executor.commit", async (span) => {
          try {
            return await writer.commit({
              jobId: job.id,
              jobName: job.name,
              source: job.source,
              backupType: typeName(req.backupType),
              hostname: hostname(),
              time: startedAt,
              tags: [],
              labels: job.labels,
              metadata: { site: job.site, trigger: req.trigger, executor, warnings },
            });
          } finally {
            span.end();
          }
        });
      } catch (err) {
        await writer.abort().catch(() => undefined);
        if (isCode(err, "ALREADY_EXISTS") && (await repo.hasSnapshot(snapshotId))) {
          // Another attempt of this run (e.g. across a network partition) committed first.
          log.info("another attempt committed this run's snapshot first; announcing it", { snapshot_id: snapshotId });
          const snapshot = await repo.loadSnapshot(snapshotId);
          await publishCompleted(deps, req, snapshot, snapshot.stats, { executor, startedAt, traceId });
          return;
        }
        throw err;
      }
      await publishCompleted(deps, req, committed.snapshot, committed.stats, { executor, startedAt, traceId });
      log.info("backup completed", { snapshot_id: committed.snapshot.id, bytes_stored: committed.stats.bytesStored });
    } finally {
      await repo.close();
    }
  } catch (err) {
    // Stopping (SIGTERM): the bus leaves the work item unacked and it is delivered again, so this
    // attempt's failure is not the run's end.
    const stopping = msg.signal.aborted;
    const e = stopping
      ? new IotvaultError("CANCELLED", "the executor stopped during the backup; the run will be delivered again", {
          retryable: true,
        })
      : toIotvaultError(err, "backup failed");
    const willRetry = stopping || (e.retryable && attempt < deps.maxDeliver);
    log.warn("backup attempt failed", { code: e.code, error: e.message, will_retry: willRetry });
    await deps.bus
      .publish(
        SUBJECTS.backupFailed,
        BackupFailed,
        {
          runId: req.runId,
          jobId: job.id,
          jobName: job.name,
          error: toErrorInfo(e),
          attempt,
          willRetry,
          at: new Date(),
          traceId,
        },
        { msgId: `${req.runId}:failed:${attempt}` },
      )
      .catch((pubErr: unknown) => log.error("could not publish backup.failed", { error: String(pubErr) }));
    throw e;
  }
}

/** The parent snapshot: the job's newest (incremental) or newest full (differential); none for full. */
async function findParent(repo: Repository, jobId: string, type: BackupType): Promise<SnapshotManifest | undefined> {
  if (type === BackupType.BACKUP_TYPE_FULL) return undefined;
  const all = (await repo.listSnapshots()).filter((s) => s.jobId === jobId);
  if (type === BackupType.BACKUP_TYPE_DIFFERENTIAL) return all.find((s) => s.backupType === "full");
  return all[0];
}

/** The repository's name of a backup type (snapshot manifests store "full" | "incremental" | "differential"). */
function typeName(type: BackupType): BackupTypeName {
  switch (type) {
    case BackupType.BACKUP_TYPE_FULL:
      return "full";
    case BackupType.BACKUP_TYPE_DIFFERENTIAL:
      return "differential";
    default:
      return "incremental";
  }
}

async function publishCompleted(
  deps: BackupRunDeps,
  req: BackupRequested,
  snapshot: SnapshotManifest,
  stats: BackupStatsInfo,
  ctx: { executor: string; startedAt: Date; traceId: string },
): Promise<void> {
  const job = req.job!;
  await deps.bus.publish(
    SUBJECTS.backupCompleted,
    BackupCompleted,
    {
      runId: req.runId,
      jobId: job.id,
      jobName: job.name,
      repository: job.repository,
      snapshotId: snapshot.id,
      parentSnapshotId: snapshot.parent ?? "",
      backupType: req.backupType,
      source: job.source,
      site: job.site,
      executor: ctx.executor,
      stats: toProtoStats(stats, typeof snapshot.metadata["warnings"] === "number" ? snapshot.metadata["warnings"] : 0),
      startedAt: ctx.startedAt,
      finishedAt: new Date(),
      traceId: ctx.traceId,
      snapshotTime: new Date(snapshot.time),
      hostname: snapshot.hostname,
    },
    { msgId: `${req.runId}:completed` },
  );
}

/** The run's counters; `warnings` comes from the manifest's metadata (the source's count). */
export function toProtoStats(s: BackupStatsInfo, warnings: number): BackupStats {
  const b = (n: number) => BigInt(Math.max(0, Math.round(n)));
  return {
    warnings: b(warnings),
    filesNew: b(s.filesNew),
    filesChanged: b(s.filesChanged),
    filesUnchanged: b(s.filesUnchanged),
    dirs: b(s.dirs),
    symlinks: b(s.symlinks),
    totalBytes: b(s.totalBytes),
    bytesRead: b(s.bytesRead),
    bytesNew: b(s.bytesNew),
    bytesStored: b(s.bytesStored),
    chunksTotal: b(s.chunksTotal),
    chunksNew: b(s.chunksNew),
    packsWritten: b(s.packsWritten),
    durationMs: b(s.durationMs),
  };
}

interface ProgressUpdate {
  bytesDone?: number;
  bytesNew?: number;
  filesDone?: number;
  currentPath?: string;
}

/** Publishes progress at most once per interval, without ever blocking the backup. */
function progressPublisher(
  deps: BackupRunDeps,
  runId: string,
  jobId: string,
  attempt: number,
  log: Logger,
): (u: ProgressUpdate) => void {
  let last = 0;
  let seq = 0;
  const state = { bytesDone: 0, bytesNew: 0, filesDone: 0, currentPath: "" };
  return (u) => {
    state.bytesDone = Math.max(state.bytesDone, u.bytesDone ?? 0);
    state.bytesNew = Math.max(state.bytesNew, u.bytesNew ?? 0);
    state.filesDone = Math.max(state.filesDone, u.filesDone ?? 0);
    if (u.currentPath) state.currentPath = u.currentPath;
    const now = Date.now();
    if (now - last < deps.progressIntervalMs) return;
    last = now;
    const n = ++seq;
    deps.bus
      .publish(
        SUBJECTS.backupProgress,
        BackupProgress,
        {
          runId,
          jobId,
          filesDone: BigInt(state.filesDone),
          bytesDone: BigInt(state.bytesDone),
          filesTotal: 0n,
          bytesTotal: 0n,
          bytesNew: BigInt(state.bytesNew),
          currentPath: state.currentPath,
          at: new Date(),
        },
        { msgId: `${runId}:progress:${attempt}:${n}` },
      )
      .catch((err: unknown) => log.warn("could not publish progress", { error: String(err) }));
  };
}

/**
 * A work item was dead-lettered without this executor publishing the run's end (a worker that
 * died on its last delivery, found by the max-deliveries advisory): announce the final failure
 * so that the catalog and subscribers do not wait for the run forever. The message id is the one
 * the handler would have used for that attempt, so a failure it did publish is not repeated.
 */
export async function announceDeadLetteredRun(
  bus: Bus,
  letter: { reason: string; deliveries: number; payload: BackupRequested | undefined },
): Promise<void> {
  const req = letter.payload;
  if (!req?.runId || !req.job) return; // malformed: no run to announce
  await bus.publish(
    SUBJECTS.backupFailed,
    BackupFailed,
    {
      runId: req.runId,
      jobId: req.job.id,
      jobName: req.job.name,
      error: {
        code: "UNAVAILABLE",
        message: `the run was abandoned: ${letter.reason}`,
        retryable: false,
        hint: "see the executor logs; trigger the job again with `iotvault backup <job>`",
      },
      attempt: letter.deliveries,
      willRetry: false,
      at: new Date(),
      traceId: "",
    },
    { msgId: `${req.runId}:failed:${letter.deliveries}` },
  );
}

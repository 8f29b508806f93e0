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
import { IotvaultError, isCode, redactUrl, toErrorInfo, toIotvaultError } from "@iotvault/errors";
import {
  BackupCompleted,
  BackupFailed,
  BackupProgress,
  BackupStarted,
  BackupType,
  SUBJECTS,
  SnapshotsForgotten,
  type BackupRequested,
  type BackupStats,
} from "@iotvault/proto";
import {
  Repository,
  policyFromJobRetention,
  type BackupWriter,
  type RepositorySecret,
  type BackupStatsInfo,
  type BackupTypeName,
  type SnapshotManifest,
} from "@iotvault/repo";
import type { ObjectStore } from "@iotvault/storage";
import { sourceAdapterFor, type RecoveryPoint } from "@iotvault/sources/core";
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
  /** Services a source adapter may need (e.g. `bus` for kv: sources). */
  sourceServices?: Readonly<Record<string, unknown>>;
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
    // An unknown source is a permanent error, found before the repository is opened.
    for (const s of [job.source, ...job.groupSources]) sourceAdapterFor(s);
    const store = deps.storeFor(job.repository);
    const repo = await tracer().startActiveSpan("executor.open-repository", async (span) => {
      try {
        // The index is loaded by startBackup, at the same time as it takes the lock.
        return await Repository.open(store, deps.password(), { ...deps.repositoryOptions, loadIndex: false });
      } finally {
        span.end();
      }
    });
    try {
      const snapshotId = repo.snapshotIdFor(req.runId);
      // Whether an earlier attempt committed this run, and the snapshots a parent is chosen
      // from, are asked for at once.
      const [committed, snapshots] = await Promise.all([
        repo.hasSnapshot(snapshotId),
        req.backupType === BackupType.BACKUP_TYPE_FULL ? [] : repo.listSnapshots(),
      ]);
      if (committed) {
        log.info("snapshot of this run already committed by an earlier attempt; announcing it again", {
          snapshot_id: snapshotId,
        });
        const snapshot = await repo.loadSnapshot(snapshotId);
        await publishCompleted(deps, req, snapshot, snapshot.stats, { executor, startedAt, traceId, store });
        return;
      }
      // The members of the run: the job's source, plus a consistency group's other sources.
      // PostgreSQL members go first (their recovery point is marked after the others).
      const sources = [job.source, ...job.groupSources];
      const members = sources.map((source, index) => ({
        source,
        index,
        runKey: index === 0 ? req.runId : `${req.runId}/member-${index}`,
        adapter: sourceAdapterFor(source),
      }));
      const order = [...members].sort((a, b) => Number(!a.adapter.recoveryPoint) - Number(!b.adapter.recoveryPoint));
      const parents = new Map<number, SnapshotManifest | undefined>();
      for (const m of members) parents.set(m.index, findParent(snapshots, job.id, req.backupType, m.source));
      const parent = parents.get(0);
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
      log.info("backup started", {
        source: job.source,
        group: job.groupSources.length ? sources : undefined,
        repository: job.repository,
        parent: parent?.id ?? null,
      });

      const progress = progressPublisher(deps, req.runId, job.id, attempt, log);
      // Every member is captured into its own writer; all are committed together at the end, so
      // that each manifest records the whole group and its recovery point.
      const captured: {
        member: (typeof members)[number];
        writer: BackupWriter;
        warnings: number;
        metadata: Record<string, unknown>;
      }[] = [];
      const committedMembers: {
        source: string;
        snapshot: SnapshotManifest;
        stats: BackupStatsInfo;
        restoreOptions: Record<string, string>;
      }[] = [];
      try {
        for (const member of order) {
          const writer = await repo.startBackup({
            runId: member.runKey,
            parent: parents.get(member.index),
            signal: msg.signal,
            // A prune holding the repository makes the backup wait for it (the bus keeps the work
            // item alive meanwhile) instead of failing.
            lockWaitMs: 30 * 60_000,
            onProgress: (p) =>
              progress({
                bytesDone: p.bytesRead,
                bytesNew: p.bytesNew,
                filesDone: p.filesDone,
                currentPath: p.currentPath,
              }),
          });
          captured.push({ member, writer, warnings: 0, metadata: {} });
          const slot = captured[captured.length - 1]!;
          await tracer().startActiveSpan(
            "executor.read-source",
            { attributes: { "iotvault.source": redactSource(member.source) } },
            async (span) => {
              try {
                let logged = 0;
                const result = await member.adapter.backup({
                  repo,
                  writer,
                  job: {
                    id: job.id,
                    name: job.name,
                    source: member.source,
                    include: job.include,
                    exclude: job.exclude,
                    labels: job.labels,
                  },
                  backupType: typeName(req.backupType),
                  parent: parents.get(member.index),
                  services: deps.sourceServices ?? {},
                  signal: msg.signal,
                  onProgress: (p) =>
                    progress({ bytesDone: p.bytesDone, filesDone: p.filesDone, currentPath: p.currentPath }),
                  // Every item a source could not back up is logged by name (the first 1000 of a run).
                  onWarning: (w) => {
                    if (++logged <= 1000)
                      log.warn("item not backed up", {
                        source: redactSource(member.source),
                        path: w.path,
                        reason: w.message,
                      });
                    else if (logged === 1001) log.warn("more items not backed up; only the first 1000 are logged");
                  },
                });
                span.setAttributes({
                  "iotvault.files": result.files,
                  "iotvault.bytes": result.bytes,
                  "iotvault.warnings": result.warnings,
                });
                slot.warnings = result.warnings;
                slot.metadata = result.metadata;
              } finally {
                span.end();
              }
            },
          );
        }
        // The group's recovery point: marked after every member was captured.
        const points = new Map<number, RecoveryPoint>();
        if (members.length > 1) {
          for (const m of members) {
            const point = await m.adapter.recoveryPoint?.(m.source, `iotvault-${req.runId}`, msg.signal);
            if (point) points.set(m.index, point);
          }
        }
        const capturedAt = new Date();
        const group =
          members.length > 1
            ? {
                id: req.runId,
                startedAt: startedAt.toISOString(),
                capturedAt: capturedAt.toISOString(),
                members: members.map((m) => ({
                  source: redactSource(m.source),
                  snapshotId: repo.snapshotIdFor(m.runKey),
                  recoveryPoint: points.get(m.index)?.description ?? {},
                  restoreOptions: points.get(m.index)?.restoreOptions ?? {},
                })),
              }
            : undefined;
        await tracer().startActiveSpan("executor.commit", async (span) => {
          try {
            for (const c of [...captured].sort((a, b) => a.member.index - b.member.index)) {
              const done = await c.writer.commit({
                jobId: job.id,
                jobName: job.name,
                source: c.member.source,
                backupType: typeName(req.backupType),
                hostname: hostname(),
                time: startedAt,
                tags: [],
                labels: job.labels,
                metadata: {
                  ...c.metadata,
                  site: job.site,
                  trigger: req.trigger,
                  executor,
                  warnings: c.warnings,
                  ...(group ? { group, groupMember: c.member.index } : {}),
                },
              });
              committedMembers.push({
                source: c.member.source,
                snapshot: done.snapshot,
                stats: done.stats,
                restoreOptions: points.get(c.member.index)?.restoreOptions ?? {},
              });
            }
          } finally {
            span.end();
          }
        });
      } catch (err) {
        for (const c of captured) await c.writer.abort().catch(() => undefined);
        if (isCode(err, "ALREADY_EXISTS") && (await repo.hasSnapshot(snapshotId))) {
          // Another attempt of this run (e.g. across a network partition) committed first.
          log.info("another attempt committed this run's snapshot first; announcing it", { snapshot_id: snapshotId });
          const snapshot = await repo.loadSnapshot(snapshotId);
          await publishCompleted(deps, req, snapshot, snapshot.stats, { executor, startedAt, traceId, store });
          return;
        }
        throw err;
      }
      const primary = committedMembers.find((c) => c.source === job.source)!;
      const total = sumStats(committedMembers.map((c) => c.stats));
      await publishCompleted(deps, req, primary.snapshot, total, { executor, startedAt, traceId, store });
      log.info("backup completed", {
        snapshot_id: primary.snapshot.id,
        members: committedMembers.length,
        bytes_stored: total.bytesStored,
      });
      await applyRetention(deps, repo, req, log);
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

/**
 * The job's retention policy, applied after each successful run (forget: manifests only; the
 * data is freed by `iotvault prune`). A failure here does not fail the run: it is logged and
 * the next run tries again.
 */
async function applyRetention(deps: BackupRunDeps, repo: Repository, req: BackupRequested, log: Logger): Promise<void> {
  const job = req.job!;
  const policy = policyFromJobRetention(job.retention, job.timeZone);
  if (!policy) return;
  try {
    const result = await tracer().startActiveSpan("executor.retention", async (span) => {
      try {
        return await repo.forget({ policy, jobId: job.id, lockWaitMs: 60_000 });
      } finally {
        span.end();
      }
    });
    if (result.removed.length === 0) return;
    await deps.bus.publish(
      SUBJECTS.snapshotForgotten,
      SnapshotsForgotten,
      {
        repository: job.repository,
        jobId: job.id,
        snapshotIds: result.removed,
        policy: JSON.stringify(policy),
        at: new Date(),
        traceId: trace.getActiveSpan()?.spanContext().traceId ?? "",
      },
      { msgId: `${req.runId}:forgotten` },
    );
    log.info("retention applied", { forgotten: result.removed.length });
  } catch (err) {
    log.warn("retention policy not applied; the next run tries again", { error: toIotvaultError(err).message });
  }
}

/**
 * The parent snapshot: the job's newest (incremental) or newest full (differential); none for
 * full. `snapshots`: the repository's, newest first.
 */
function findParent(
  snapshots: readonly SnapshotManifest[],
  jobId: string,
  type: BackupType,
  source: string,
): SnapshotManifest | undefined {
  if (type === BackupType.BACKUP_TYPE_FULL) return undefined;
  // The job's snapshots of this source (a consistency group has one snapshot per member).
  const all = snapshots.filter((s) => s.jobId === jobId && s.source === source);
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
  ctx: { executor: string; startedAt: Date; traceId: string; store: ObjectStore },
): Promise<void> {
  const job = req.job!;
  const missingTargets = degradedTargets(ctx.store);
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
      stats: toProtoStats(stats, warningsOf(snapshot)),
      startedAt: ctx.startedAt,
      finishedAt: new Date(),
      traceId: ctx.traceId,
      snapshotTime: new Date(snapshot.time),
      hostname: snapshot.hostname,
      degraded: missingTargets.length > 0,
      missingTargets,
      groupMembers: groupOf(snapshot).map((m) => ({
        source: m.source,
        snapshotId: m.snapshotId,
        restoreOptions: m.restoreOptions,
      })),
    },
    { msgId: `${req.runId}:completed` },
  );
}

interface GroupMemberRecord {
  source: string;
  snapshotId: string;
  recoveryPoint: Record<string, string>;
  restoreOptions: Record<string, string>;
}

/** The consistency group a snapshot belongs to, as its manifest records it (empty when none). */
function groupOf(snapshot: SnapshotManifest): GroupMemberRecord[] {
  const group = snapshot.metadata["group"] as { members?: GroupMemberRecord[] } | undefined;
  return Array.isArray(group?.members) ? group.members : [];
}

function warningsOf(snapshot: SnapshotManifest): number {
  const w = snapshot.metadata["warnings"];
  return typeof w === "number" ? w : 0;
}

/** A group run's counters: the sum over its members. */
function sumStats(all: BackupStatsInfo[]): BackupStatsInfo {
  const out = { ...all[0]! };
  for (const s of all.slice(1)) {
    for (const k of Object.keys(out) as (keyof BackupStatsInfo)[]) {
      if (k === "durationMs") out[k] = Math.max(out[k], s[k]);
      else out[k] += s[k];
    }
  }
  return out;
}

/** A source URL as events and logs may show it (no password). */
function redactSource(source: string): string {
  return redactUrl(source, { onlySchemeUrls: true, unparsable: source });
}

/**
 * The targets of a replicated repository that missed objects of this run (they were down; the
 * gateway copies them later): what the gateway's store reported, none for other stores.
 */
function degradedTargets(store: ObjectStore): string[] {
  const reporting = store as ObjectStore & { missingTargets?: () => string[] };
  return typeof reporting.missingTargets === "function" ? reporting.missingTargets() : [];
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

/**
 * RestoreService.Drill: restore a job's newest snapshot (or a chosen one) into a scratch
 * target, check it, remove the target, and publish the verdict as
 * iotvault.events.drill.completed (which the catalog records).
 *
 * - PostgreSQL snapshots: a scratch cluster on a free port (libs/sources drillPostgres);
 * - file-system snapshots: a temporary directory, every file's checksum verified.
 *
 * A drill that cannot run to the end (no snapshot, wrong key, restore error) is a verdict too:
 * ok false with the error, published and returned like any other.
 */
import { randomBytes } from "node:crypto";
import { mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { trace } from "@opentelemetry/api";
import { IotvaultError, toErrorInfo, toIotvaultError } from "@iotvault/errors";
import {
  DrillCompleted,
  SUBJECTS,
  type DrillCheck,
  type DrillRequest,
  type DrillResult,
  type OperationProgress,
} from "@iotvault/proto";
import { snapshotGroupId, type Repository, type SnapshotManifest } from "@iotvault/repo";
import { drillPostgres, isPgSnapshot, restoreToDirectory } from "@iotvault/sources/core";
import { openLocked, type OperationDeps, type Update } from "./operations.js";

export interface DrillDeps extends OperationDeps {
  /** restore_command of restored PostgreSQL clusters, by repository location and system id. */
  restoreCommand(location: string, systemId: string): string | undefined;
  /** Where scratch targets are made (default the OS temp directory). */
  scratchRoot?: string | undefined;
  /** OS user of scratch PostgreSQL servers when the service runs as root (default postgres). */
  osUser?: string | undefined;
}

const stamp = () =>
  new Date()
    .toISOString()
    .replace(/[-:]/g, "")
    .replace(/\.\d+Z$/, "Z");
const traceId = () => trace.getActiveSpan()?.spanContext().traceId ?? "";

interface Outcome {
  kind: string;
  snapshotId: string;
  checks: DrillCheck[];
  scratch: string;
}

/** The Drill RPC as a stream of progress updates ending with the verdict. */
export function drillOperation(
  deps: DrillDeps,
  req: DrillRequest,
  signal: AbortSignal,
): AsyncGenerator<Update<DrillResult>> {
  if (!req.repository || (!req.jobId && !req.snapshotId)) {
    throw new IotvaultError("INVALID_ARGUMENT", "a drill needs a repository and a job id (or a snapshot id)", {
      hint: "run `iotvault drill <job>`",
    });
  }
  const drillId = `dr-${stamp()}-${randomBytes(4).toString("hex")}`;
  return stream(async (emit) => {
    const started = new Date();
    const log = deps.logger.child({ drill_id: drillId, job: req.jobName || req.jobId });
    let outcome: Outcome = { kind: "", snapshotId: req.snapshotId, checks: [], scratch: "" };
    let error: IotvaultError | undefined;
    try {
      outcome = await runDrill(deps, req, signal, emit, outcome);
    } catch (err) {
      error = toIotvaultError(err, "drill failed");
      if (signal.aborted) throw error;
    }
    const finished = new Date();
    const ok = !error && outcome.checks.length > 0 && outcome.checks.every((c) => c.ok);
    const result: DrillResult = {
      drillId,
      repository: req.repository,
      jobId: req.jobId,
      jobName: req.jobName,
      snapshotId: outcome.snapshotId,
      kind: outcome.kind,
      ok,
      checks: outcome.checks,
      error: error ? toErrorInfo(error) : undefined,
      scratch: req.keep ? outcome.scratch : "",
      durationMs: BigInt(finished.getTime() - started.getTime()),
      startedAt: started,
      finishedAt: finished,
      traceId: traceId(),
    };
    await deps.bus.publish(
      SUBJECTS.drillCompleted,
      DrillCompleted,
      { ...result, requestedBy: req.requestedBy },
      { msgId: `${drillId}:completed` },
    );
    log.info("drill finished", {
      ok,
      snapshot_id: outcome.snapshotId,
      checks: outcome.checks.length,
      error: error?.message ?? null,
    });
    return result;
  });
}

async function runDrill(
  deps: DrillDeps,
  req: DrillRequest,
  signal: AbortSignal,
  emit: (p: OperationProgress) => void,
  outcome: Outcome,
): Promise<Outcome> {
  const { repo, lock } = await openLocked(deps, req.repository, {
    purpose: "restore drill",
    waitMs: 10 * 60_000,
    signal,
  });
  try {
    const snapshot = await chooseSnapshot(repo, req, signal);
    outcome.snapshotId = snapshot.id;
    const onProgress = (p: { filesDone: number; bytesDone: number; currentPath: string }) =>
      emit({
        filesDone: BigInt(p.filesDone),
        bytesDone: BigInt(p.bytesDone),
        filesTotal: 0n,
        bytesTotal: BigInt(snapshot.stats.totalBytes),
        current: p.currentPath,
      });
    if (isPgSnapshot(snapshot)) {
      const verdict = await drillPostgres(repo, snapshot, {
        scratchRoot: deps.scratchRoot,
        keep: req.keep,
        osUser: deps.osUser,
        restoreCommand: (location, systemId) => deps.restoreCommand(location, systemId),
        jobs: req.options["jobs"] ? Number(req.options["jobs"]) : undefined,
        signal,
        onProgress,
      });
      return { kind: verdict.kind, snapshotId: snapshot.id, checks: verdict.checks, scratch: verdict.scratch };
    }
    return await drillDirectory(repo, snapshot, deps, req, signal, onProgress);
  } finally {
    await lock.release().catch(() => undefined);
    await repo.close();
  }
}

/**
 * The snapshot to drill: the one asked for, else the job's newest. For a consistency-group job
 * the newest run has one snapshot per member: the drill takes its PostgreSQL member (the state
 * the others hang on), else a file-system one, else the first.
 */
async function chooseSnapshot(repo: Repository, req: DrillRequest, signal: AbortSignal): Promise<SnapshotManifest> {
  if (req.snapshotId) return repo.loadSnapshot(req.snapshotId, signal);
  const ofJob = (await repo.listSnapshots(signal)).filter((s) => s.jobId === req.jobId);
  const latest = ofJob[0];
  const group = latest ? snapshotGroupId(latest) : undefined;
  const members = group ? ofJob.filter((s) => snapshotGroupId(s) === group) : ofJob.slice(0, 1);
  const newest = members.find(isPgSnapshot) ?? members.find((s) => /^fs:/.test(s.source)) ?? members[0];
  if (!newest) {
    throw new IotvaultError(
      "NOT_FOUND",
      `repository ${req.repository} holds no snapshot of job ${req.jobName || req.jobId}`,
      {
        hint: "run a backup of the job first (`iotvault backup <job> --wait`)",
      },
    );
  }
  return newest;
}

/** A drill of a snapshot restored into a directory (file-system sources). */
async function drillDirectory(
  repo: Repository,
  snapshot: SnapshotManifest,
  deps: DrillDeps,
  req: DrillRequest,
  signal: AbortSignal,
  onProgress: (p: { filesDone: number; bytesDone: number; currentPath: string }) => void,
): Promise<Outcome> {
  const scheme = /^([a-z][a-z0-9+.-]*):/.exec(snapshot.source)?.[1] ?? "";
  if (scheme !== "fs") {
    throw new IotvaultError("UNIMPLEMENTED", `drills of ${scheme || "this kind of"} snapshots are not implemented`, {
      hint: "drills cover PostgreSQL and file-system snapshots; verify others with `iotvault verify --read-data`",
    });
  }
  const scratch = await mkdtemp(join(deps.scratchRoot ?? tmpdir(), "iotvault-drill-"));
  try {
    const r = await restoreToDirectory(repo, snapshot, {
      target: join(scratch, "files"),
      verify: true,
      signal,
      onProgress,
    });
    const expected = snapshot.stats.filesNew + snapshot.stats.filesChanged + snapshot.stats.filesUnchanged;
    return {
      kind: "fs",
      snapshotId: snapshot.id,
      checks: [
        {
          name: "restore",
          ok: r.verified,
          detail: `${r.files} files, ${r.bytes} bytes restored, every checksum verified`,
        },
        {
          name: "files",
          ok: r.files === expected,
          detail: `${r.files} files restored, the backup recorded ${expected}`,
        },
      ],
      scratch,
    };
  } finally {
    if (!req.keep) await rm(scratch, { recursive: true, force: true });
  }
}

/** Runs `work`, streaming its progress (at most every 200 ms, newest only) and then its result. */
async function* stream<R>(work: (emit: (p: OperationProgress) => void) => Promise<R>): AsyncGenerator<Update<R>> {
  const queue: Update<R>[] = [];
  let wake: (() => void) | undefined;
  let finished: { error?: Error } | undefined;
  let last = 0;
  const notify = () => {
    const w = wake;
    wake = undefined;
    w?.();
  };
  work((p) => {
    const now = Date.now();
    if (now - last < 200) return;
    last = now;
    if (queue.length > 0 && "progress" in queue[queue.length - 1]!) queue[queue.length - 1] = { progress: p };
    else queue.push({ progress: p });
    notify();
  }).then(
    (result) => {
      queue.push({ result });
      finished = {};
      notify();
    },
    (error: unknown) => {
      finished = { error: error instanceof Error ? error : toIotvaultError(error) };
      notify();
    },
  );
  for (;;) {
    while (queue.length) yield queue.shift()!;
    if (finished) {
      if (finished.error !== undefined) throw finished.error;
      return;
    }
    await new Promise<void>((r) => (wake = r));
  }
}

/**
 * Restore and Verify, as the gRPC service runs them: open the repository through the gateway,
 * do the work with progress, and publish the lifecycle / verdict events.
 */
import { randomBytes } from "node:crypto";
import { isAbsolute } from "node:path";
import { trace } from "@opentelemetry/api";
import type { Bus } from "@iotvault/bus";
import { IotvaultError, redactUrl, toErrorInfo, toIotvaultError } from "@iotvault/errors";
import {
  RestoreCompleted,
  RestoreFailed,
  RestoreStarted,
  SUBJECTS,
  VerifyCompleted,
  VerifyFailed,
  type OperationProgress,
  type RestoreRequest,
  type RestoreResult,
  type VerifyRequest,
  type VerifyResult,
} from "@iotvault/proto";
import { Repository, type RepositoryLock, type RepositorySecret, type SnapshotManifest } from "@iotvault/repo";
import { sourceAdapterFor } from "@iotvault/sources/core";
import type { ObjectStore } from "@iotvault/storage";
import type { Logger } from "@iotvault/telemetry";

export interface OperationDeps {
  bus: Bus;
  storeFor(repository: string): ObjectStore;
  /** The secret repositories are opened with (passphrase or key file); read on every use. */
  password(): RepositorySecret;
  repositoryOptions: { scryptLogN: number; workers: number };
  logger: Logger;
  /** Services a source adapter may need when restoring (e.g. `bus` for kv: targets). */
  sourceServices?: Readonly<Record<string, unknown>>;
}

export type Update<R> = { progress: OperationProgress } | { result: R };

/**
 * Opens a repository for reading under a shared lock (a prune cannot delete packs while they
 * are read). The index is loaded while the lock is taken and brought up to date under it
 * (Repository.lockIndexed), and the snapshots asked for are loaded meanwhile: one wait for all
 * of it instead of a dozen round trips to the storage-gateway in a row. On error nothing stays
 * locked or open.
 */
export async function openLocked(
  deps: Pick<OperationDeps, "storeFor" | "password" | "repositoryOptions">,
  repository: string,
  lockOptions: { purpose: string; waitMs: number; signal: AbortSignal },
  snapshotIds: readonly string[] = [],
): Promise<{ repo: Repository; lock: RepositoryLock; snapshots: SnapshotManifest[] }> {
  const repo = await Repository.open(deps.storeFor(repository), deps.password(), {
    ...deps.repositoryOptions,
    loadIndex: false,
  });
  // A snapshot that is not there ends the wait for the lock (a prune may hold it for minutes).
  const noSnapshot = new AbortController();
  const loading = Promise.all(snapshotIds.map((id) => repo.loadSnapshot(id, lockOptions.signal)));
  loading.catch(() => noSnapshot.abort());
  const [loaded, locked] = await Promise.allSettled([
    loading,
    repo.lockIndexed("shared", { ...lockOptions, signal: AbortSignal.any([lockOptions.signal, noSnapshot.signal]) }),
  ]);
  if (locked.status === "fulfilled" && loaded.status === "fulfilled") {
    return { repo, lock: locked.value, snapshots: loaded.value };
  }
  if (locked.status === "fulfilled") await locked.value.release().catch(() => undefined);
  await repo.close();
  // The snapshot's error first: when it is missing, the lock's is only "cancelled".
  throw loaded.status === "rejected" ? loaded.reason : (locked as PromiseRejectedResult).reason;
}

const stamp = () =>
  new Date()
    .toISOString()
    .replace(/[-:]/g, "")
    .replace(/\.\d+Z$/, "Z");
const newId = (prefix: string) => `${prefix}-${stamp()}-${randomBytes(4).toString("hex")}`;
const traceId = () => trace.getActiveSpan()?.spanContext().traceId ?? "";

/** Progress values are pushed into a queue that the RPC's async generator drains. */
class Channel<T> {
  private items: T[] = [];
  private wake: (() => void) | undefined;
  private closed = false;
  private failure: Error | undefined;

  push(item: T): void {
    this.items.push(item);
    this.wake?.();
  }

  /** Keeps only the newest pending progress (a slow client gets fewer, fresher updates). */
  replaceLast(item: T, isProgress: (t: T) => boolean): void {
    const last = this.items.at(-1);
    if (last !== undefined && isProgress(last)) this.items[this.items.length - 1] = item;
    else this.push(item);
    this.wake?.();
  }

  close(err?: unknown): void {
    this.closed = true;
    if (err !== undefined) this.failure = toIotvaultError(err);
    this.wake?.();
  }

  async *drain(): AsyncGenerator<T> {
    for (;;) {
      while (this.items.length) yield this.items.shift()!;
      if (this.closed) {
        if (this.failure !== undefined) throw this.failure;
        return;
      }
      await new Promise<void>((r) => (this.wake = r));
      this.wake = undefined;
    }
  }
}

function run<R>(work: (emit: (p: OperationProgress) => void) => Promise<R>): AsyncGenerator<Update<R>> {
  const ch = new Channel<Update<R>>();
  const isProgress = (u: Update<R>) => "progress" in u;
  let last = 0;
  work((p) => {
    const now = Date.now();
    if (now - last < 200) return;
    last = now;
    ch.replaceLast({ progress: p }, isProgress);
  }).then(
    (result) => {
      ch.push({ result });
      ch.close();
    },
    (err: unknown) => ch.close(err),
  );
  return ch.drain();
}

export function restoreOperation(
  deps: OperationDeps,
  req: RestoreRequest,
  signal: AbortSignal,
): AsyncGenerator<Update<RestoreResult>> {
  // A directory (absolute path), or a URL of the snapshot's kind of source (postgres://...).
  const target = req.target || req.targetDir;
  if (!target || (!req.target && !isAbsolute(req.targetDir))) {
    throw new IotvaultError(
      "INVALID_ARGUMENT",
      `restore target "${target}" must be an absolute directory path or a target URL`,
    );
  }
  // What events, results and logs show: a target URL never carries its password there.
  const shown = redactTarget(target);
  const restoreId = newId("rs");
  return run(async (emit) => {
    const started = new Date();
    const log = deps.logger.child({ restore_id: restoreId, snapshot: req.snapshotId });
    let snapshotId = req.snapshotId;
    try {
      const { repo, lock, snapshots } = await openLocked(
        deps,
        req.repository,
        { purpose: `restore ${restoreId}`, waitMs: 10 * 60_000, signal },
        [req.snapshotId],
      );
      try {
        const snapshot = snapshots[0]!;
        snapshotId = snapshot.id;
        await deps.bus.publish(
          SUBJECTS.restoreStarted,
          RestoreStarted,
          {
            restoreId,
            repository: req.repository,
            snapshotId,
            target: shown,
            include: req.include,
            startedAt: started,
            traceId: traceId(),
          },
          { msgId: `${restoreId}:started` },
        );
        const totals = snapshot.stats;
        const r = await sourceAdapterFor(snapshot.source).restore({
          repo,
          snapshot,
          target,
          include: req.include,
          overwrite: req.overwrite,
          verify: req.verify,
          allowExternalSymlinks: req.allowExternalSymlinks,
          options: req.options,
          services: deps.sourceServices ?? {},
          signal,
          onProgress: (p) =>
            emit({
              filesDone: BigInt(p.filesDone),
              bytesDone: BigInt(p.bytesDone),
              filesTotal: BigInt(totals.filesNew + totals.filesChanged + totals.filesUnchanged),
              bytesTotal: BigInt(totals.totalBytes),
              current: p.currentPath,
            }),
        });
        const finished = new Date();
        const result: RestoreResult = {
          restoreId,
          snapshotId,
          targetDir: shown,
          details: JSON.stringify(r.details),
          files: BigInt(r.files),
          dirs: BigInt(r.dirs),
          symlinks: BigInt(r.symlinks),
          bytes: BigInt(r.bytes),
          verified: r.verified,
          durationMs: BigInt(finished.getTime() - started.getTime()),
          traceId: traceId(),
        };
        await deps.bus.publish(
          SUBJECTS.restoreCompleted,
          RestoreCompleted,
          {
            restoreId,
            repository: req.repository,
            snapshotId,
            target: shown,
            files: result.files,
            dirs: result.dirs,
            symlinks: result.symlinks,
            bytes: result.bytes,
            verified: r.verified,
            startedAt: started,
            finishedAt: finished,
            traceId: traceId(),
            details: result.details,
          },
          { msgId: `${restoreId}:completed` },
        );
        await publishShaclVerdict(deps, {
          restoreId,
          repository: req.repository,
          snapshotId,
          details: r.details,
          started,
          finished,
        });
        log.info("restore completed", { files: r.files, bytes: r.bytes, verified: r.verified });
        return result;
      } finally {
        await lock.release().catch(() => undefined);
        await repo.close();
      }
    } catch (err) {
      const e = toIotvaultError(err, "restore failed");
      log.warn("restore failed", { code: e.code, error: e.message });
      await deps.bus
        .publish(
          SUBJECTS.restoreFailed,
          RestoreFailed,
          {
            restoreId,
            repository: req.repository,
            snapshotId,
            target: shown,
            error: toErrorInfo(e),
            at: new Date(),
            traceId: traceId(),
          },
          { msgId: `${restoreId}:failed` },
        )
        .catch(() => undefined);
      throw e;
    }
  });
}

export function verifyOperation(
  deps: OperationDeps,
  req: VerifyRequest,
  signal: AbortSignal,
): AsyncGenerator<Update<VerifyResult>> {
  const verifyId = newId("vf");
  const percent = req.readData ? (req.readDataPercent > 0 ? Math.min(100, req.readDataPercent) : 100) : 0;
  return run(async (emit) => {
    const started = new Date();
    let snapshotId = req.snapshotId;
    try {
      const { repo, lock, snapshots } = await openLocked(
        deps,
        req.repository,
        { purpose: `verify ${verifyId}`, waitMs: 10 * 60_000, signal },
        snapshotId ? [snapshotId] : [],
      );
      try {
        if (snapshots[0]) snapshotId = snapshots[0].id;
        const report = await repo.verify({
          readData: req.readData,
          readDataPercent: percent || undefined,
          snapshotId: snapshotId || undefined,
          signal,
          onProgress: (p) =>
            emit({
              filesDone: BigInt(p.done),
              bytesDone: 0n,
              filesTotal: BigInt(p.total),
              bytesTotal: 0n,
              current: p.phase,
            }),
        });
        const finished = new Date();
        const result: VerifyResult = {
          verifyId,
          repository: req.repository,
          snapshotId,
          ok: report.ok,
          readData: req.readData,
          readDataPercent: percent,
          snapshotsChecked: BigInt(report.snapshotsChecked),
          packsChecked: BigInt(report.packsChecked),
          chunksChecked: BigInt(report.chunksChecked),
          bytesRead: BigInt(report.bytesRead),
          problems: report.problems.map((p) => ({
            kind: p.kind,
            object: p.object,
            message: p.message,
            paths: p.paths ?? [],
          })),
          startedAt: started,
          finishedAt: finished,
          traceId: traceId(),
        };
        await deps.bus.publish(SUBJECTS.verifyCompleted, VerifyCompleted, result, { msgId: `${verifyId}:completed` });
        return result;
      } finally {
        await lock.release().catch(() => undefined);
        await repo.close();
      }
    } catch (err) {
      const e = toIotvaultError(err, "verify failed");
      await deps.bus
        .publish(
          SUBJECTS.verifyFailed,
          VerifyFailed,
          {
            verifyId,
            repository: req.repository,
            snapshotId,
            error: toErrorInfo(e),
            at: new Date(),
            traceId: traceId(),
          },
          { msgId: `${verifyId}:failed` },
        )
        .catch(() => undefined);
      throw e;
    }
  });
}

/** The SHACL verdict a restore was asked for (`--option shacl=...`), in the restore's details. */
interface ShaclVerdictShape {
  shapes: string;
  conforms: boolean;
  violations: number;
  results: number;
  details: { severity: string; focusNode: string; path: string; value: string; message: string; sourceShape: string }[];
}

/**
 * Publishes the SHACL verdict of a restore as a verify.completed event (check "shacl"), so that
 * the catalog keeps it with the other verdicts; violations are its problems (SHACL_VIOLATION).
 */
async function publishShaclVerdict(
  deps: OperationDeps,
  r: {
    restoreId: string;
    repository: string;
    snapshotId: string;
    details: Record<string, unknown>;
    started: Date;
    finished: Date;
  },
): Promise<void> {
  const shacl = r.details["shacl"] as ShaclVerdictShape | undefined;
  if (!shacl) return;
  const verifyId = `vf-shacl-${r.restoreId}`;
  await deps.bus.publish(
    SUBJECTS.verifyCompleted,
    VerifyCompleted,
    {
      verifyId,
      repository: r.repository,
      snapshotId: r.snapshotId,
      readData: false,
      readDataPercent: 0,
      ok: shacl.conforms,
      snapshotsChecked: 1n,
      packsChecked: 0n,
      chunksChecked: 0n,
      bytesRead: 0n,
      problems: shacl.details.map((d) => ({
        kind: "SHACL_VIOLATION",
        object: d.focusNode,
        message: `${d.severity} ${d.path ? `on ${d.path}` : ""}: ${d.message || "constraint not met"}${d.value ? ` (value ${d.value})` : ""}`,
        paths: [d.sourceShape],
      })),
      startedAt: r.started,
      finishedAt: r.finished,
      traceId: traceId(),
      check: "shacl",
      restoreId: r.restoreId,
      details: JSON.stringify(shacl),
    },
    { msgId: `${verifyId}:completed` },
  );
}

/** A target URL without user password (targets like postgres://user:secret@host/db). */
export function redactTarget(target: string): string {
  return redactUrl(target, {
    onlySchemeUrls: true,
    secretParams: /pass|secret|token/i,
    unparsable: "<unparsable target>",
  });
}

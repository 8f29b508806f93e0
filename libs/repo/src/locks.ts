/**
 * Repository locks (`locks/<random id>`): how backups, forget, prune and key rotation keep out
 * of each other's way (restic's protocol). A lock is an encrypted JSON object bound to its key:
 *
 * ```json
 * { "version": 1, "exclusive": false, "hostname": "edge-gw-1", "pid": 4242, "purpose": "backup run-7",
 *   "createdAt": "2026-11-25T02:00:00.000Z", "refreshedAt": "2026-11-25T02:05:00.000Z" }
 * ```
 *
 * Taking a lock: write it, then list every lock. A shared lock conflicts with a non-stale
 * exclusive lock; an exclusive lock conflicts with any other non-stale lock. On a conflict the
 * lock is removed again and, while `waitMs` allows, the attempt is repeated every second. A held
 * lock is rewritten every `refreshMs` by an unref'd timer; a lock is stale when it was not
 * refreshed for `staleMs`, or at once when it names this host and a pid that no longer runs.
 * Stale locks are ignored, and removed by whoever takes an exclusive lock.
 *
 * ```ts
 * const lock = await repo.lock("exclusive", { purpose: "prune", waitMs: 60_000 });
 * try { ... } finally { await lock.release(); }
 * ```
 */
import { randomBytes } from "node:crypto";
import { hostname } from "node:os";
import { setTimeout as sleep } from "node:timers/promises";
import { IotvaultError, isNotFound } from "@iotvault/errors";
import { cancelled, storeError, throwIfAborted, type RepoCore } from "./core.js";
import { KEYS, corrupt, isId, lockKey, parseJsonObject } from "./format.js";

export const LOCK_VERSION = 1;

/** A lock this process holds. */
export interface RepositoryLock {
  readonly id: string;
  readonly exclusive: boolean;
  /** Stops refreshing and deletes the lock object. Calling it twice is harmless. */
  release(): Promise<void>;
}

/** A lock as `listLocks` shows it. */
export interface LockInfo {
  id: string;
  exclusive: boolean;
  hostname: string;
  pid: number;
  purpose: string;
  createdAt: string;
  refreshedAt: string;
  /** Not refreshed for the stale time, or its process is gone (same host): ignored by lockers. */
  stale: boolean;
}

export type LockKind = "shared" | "exclusive";

export interface LockOptions {
  /** Keep trying this long while another lock is in the way (default 0: fail at once). */
  waitMs?: number | undefined;
  /** What the lock is for, shown to whoever it blocks ("backup <run id>", "prune"). */
  purpose?: string | undefined;
  signal?: AbortSignal | undefined;
}

/** Timing of locks; the defaults are those of the format (5 min refresh, 30 min stale). */
export interface LockTiming {
  refreshMs: number;
  staleMs: number;
  /** Pause between two attempts while waiting. */
  retryMs: number;
}

export const DEFAULT_LOCK_TIMING: Readonly<LockTiming> = { refreshMs: 5 * 60_000, staleMs: 30 * 60_000, retryMs: 1000 };

/** Validates the lock timing options of a repository. */
export function resolveLockTiming(o: {
  lockRefreshMs?: number | undefined;
  lockStaleMs?: number | undefined;
}): LockTiming {
  const refreshMs = o.lockRefreshMs ?? DEFAULT_LOCK_TIMING.refreshMs;
  const staleMs = o.lockStaleMs ?? DEFAULT_LOCK_TIMING.staleMs;
  if (!Number.isInteger(refreshMs) || refreshMs < 10) {
    throw new IotvaultError("INVALID_ARGUMENT", `lockRefreshMs must be an integer >= 10, got ${refreshMs}`);
  }
  if (!Number.isInteger(staleMs) || staleMs < 2 * refreshMs) {
    throw new IotvaultError(
      "INVALID_ARGUMENT",
      `lockStaleMs must be an integer of at least twice lockRefreshMs (${2 * refreshMs}), got ${staleMs}`,
    );
  }
  return { refreshMs, staleMs, retryMs: DEFAULT_LOCK_TIMING.retryMs };
}

/** The stored content of a lock. */
export interface LockRecord {
  exclusive: boolean;
  hostname: string;
  pid: number;
  purpose: string;
  createdAt: string;
  refreshedAt: string;
}

export function encodeLock(record: LockRecord): Buffer {
  const { exclusive, hostname: host, pid, purpose, createdAt, refreshedAt } = record;
  return Buffer.from(
    JSON.stringify({ version: LOCK_VERSION, exclusive, hostname: host, pid, purpose, createdAt, refreshedAt }),
  );
}

export function decodeLock(plain: Uint8Array, id: string): LockRecord {
  const what = `lock ${id}`;
  const o = parseJsonObject(plain, what);
  if (o["version"] !== LOCK_VERSION) throw corrupt(`${what} has an unknown version`);
  const { exclusive, hostname: host, pid, purpose, createdAt, refreshedAt } = o;
  if (
    typeof exclusive !== "boolean" ||
    typeof host !== "string" ||
    typeof pid !== "number" ||
    !Number.isSafeInteger(pid) ||
    typeof purpose !== "string" ||
    typeof createdAt !== "string" ||
    typeof refreshedAt !== "string"
  ) {
    throw corrupt(`${what} has missing or invalid fields`);
  }
  return { exclusive, hostname: host, pid, purpose, createdAt, refreshedAt };
}

/** Writes (or rewrites) a lock object. Exported for tests that plant old or foreign locks. */
export async function writeLock(core: RepoCore, id: string, record: LockRecord, signal?: AbortSignal): Promise<void> {
  const key = lockKey(id);
  try {
    await core.store.put(key, core.sealObject(key, encodeLock(record)), { signal });
  } catch (err) {
    throw storeError(err, `writing lock ${id}`);
  }
}

/** Whether a process with this pid runs on this host (EPERM: it runs, as another user). */
function processAlive(pid: number): boolean {
  if (pid === process.pid) return true;
  if (pid <= 0) return false;
  try {
    process.kill(pid, 0);
    return true;
  } catch (err) {
    return (err as { code?: unknown }).code === "EPERM";
  }
}

function isStale(record: LockRecord, now: number, timing: LockTiming): boolean {
  const refreshed = Date.parse(record.refreshedAt);
  if (!Number.isFinite(refreshed) || now - refreshed > timing.staleMs) return true;
  return record.hostname === hostname() && !processAlive(record.pid);
}

/**
 * Every lock in the repository. A lock object that cannot be read (damaged, another key, a newer
 * version) is shown as an exclusive lock of an unknown owner, stale once the object itself is
 * older than the stale time: when in doubt, a lock blocks.
 */
export async function readLocks(core: RepoCore, timing: LockTiming, signal?: AbortSignal): Promise<LockInfo[]> {
  const found: { id: string; modifiedAt: Date }[] = [];
  try {
    for await (const info of core.store.list(KEYS.lockPrefix)) {
      const id = info.key.slice(KEYS.lockPrefix.length);
      if (isId(id)) found.push({ id, modifiedAt: info.modifiedAt });
    }
  } catch (err) {
    throw storeError(err, `listing the locks of ${core.store.location}`);
  }
  const locks: LockInfo[] = [];
  for (const { id, modifiedAt } of found) {
    throwIfAborted(signal, "reading the repository locks");
    const info = await readLock(core, id, modifiedAt, timing, signal);
    if (info) locks.push(info);
  }
  return locks.sort((a, b) => a.createdAt.localeCompare(b.createdAt));
}

async function readLock(
  core: RepoCore,
  id: string,
  modifiedAt: Date,
  timing: LockTiming,
  signal: AbortSignal | undefined,
): Promise<LockInfo | undefined> {
  const key = lockKey(id);
  try {
    const record = decodeLock(
      await core.openObject(key, await core.store.get(key, undefined, signal), `lock ${id}`),
      id,
    );
    return { id, ...record, stale: isStale(record, Date.now(), timing) };
  } catch (err) {
    if (isNotFound(err)) return undefined; // released meanwhile
    if ((err as { name?: unknown } | null)?.name === "AbortError") throw cancelled("reading the repository locks");
    const at = modifiedAt.toISOString();
    return {
      id,
      exclusive: true,
      hostname: "unknown",
      pid: 0,
      purpose: "an unreadable lock object",
      createdAt: at,
      refreshedAt: at,
      stale: Date.now() - modifiedAt.getTime() > timing.staleMs,
    };
  }
}

function lockedError(by: LockInfo, timing: LockTiming): IotvaultError {
  const minutes = Math.max(1, Math.round(timing.staleMs / 60_000));
  return new IotvaultError(
    "FAILED_PRECONDITION",
    `the repository is locked by ${by.purpose} on ${by.hostname} (pid ${by.pid}) since ${by.createdAt}`,
    {
      hint:
        `wait for it to finish and try again; a lock whose process is gone is ignored once it was not ` +
        `refreshed for ${minutes} minutes (at once on its own host)`,
      retryable: true,
      details: { lock: by.id, hostname: by.hostname, pid: String(by.pid) },
    },
  );
}

/** A lock held by this process; refreshed by a timer until released. */
export class HeldLock implements RepositoryLock {
  private readonly timer: NodeJS.Timeout;
  private chain: Promise<boolean> = Promise.resolve(true);
  private queued = 0;
  private lastRefreshed: number;
  private lost: string | undefined;
  private released = false;

  constructor(
    private readonly core: RepoCore,
    readonly id: string,
    readonly exclusive: boolean,
    private readonly record: LockRecord,
    private readonly timing: LockTiming,
    private readonly onRelease: (lock: HeldLock) => void,
    /** The other locks in the listing that admitted this one (stale ones included). */
    readonly others: readonly LockInfo[] = [],
  ) {
    this.lastRefreshed = Date.parse(record.refreshedAt);
    this.timer = setInterval(() => {
      if (this.queued === 0) void this.refresh();
    }, timing.refreshMs);
    this.timer.unref();
  }

  /**
   * Throws FAILED_PRECONDITION when the lock cannot be trusted any more: it was not refreshed in
   * time (others may already take it for stale), or its object was removed. Otherwise refreshes
   * it now, so that the caller has a full stale period before anyone may ignore it.
   */
  async check(what: string): Promise<void> {
    if (this.released) throw new IotvaultError("FAILED_PRECONDITION", `${what}: the repository lock was released`);
    this.noteAge();
    if (this.lost === undefined && !(await this.refresh())) {
      this.lost ??= "it could not be refreshed";
    }
    if (this.lost !== undefined) {
      throw new IotvaultError("FAILED_PRECONDITION", `${what}: the repository lock ${this.id} was lost: ${this.lost}`, {
        hint: "it stopped before writing anything that needs the lock; run it again (a backup reuses its stored data, a prune resumes)",
        retryable: true,
      });
    }
  }

  async release(): Promise<void> {
    if (this.released) return;
    this.released = true;
    clearInterval(this.timer);
    this.onRelease(this);
    await this.chain; // a refresh in flight must not re-create the object after the delete
    try {
      await this.core.store.delete(lockKey(this.id));
    } catch (err) {
      throw storeError(err, `removing lock ${this.id}`);
    }
  }

  /** Refreshes once after any refresh already queued; true when the lock is still ours. */
  private refresh(): Promise<boolean> {
    this.queued++;
    const run = this.chain.then(async () => {
      try {
        return await this.refreshNow();
      } finally {
        this.queued--;
      }
    });
    this.chain = run;
    return run;
  }

  private async refreshNow(): Promise<boolean> {
    if (this.released || this.lost !== undefined) return false;
    this.noteAge();
    if (this.lost !== undefined) return false;
    try {
      if ((await this.core.store.stat(lockKey(this.id))) === undefined) {
        this.lost = "its lock object was removed (another process took it for stale)";
        return false;
      }
      const now = new Date();
      await writeLock(this.core, this.id, { ...this.record, refreshedAt: now.toISOString() });
      this.lastRefreshed = now.getTime();
      return true;
    } catch {
      return false; // tried again at the next tick; check() fails once the lock is too old
    }
  }

  /** A lock not refreshed for (stale - refresh) may already be ignored by others: it is lost. */
  private noteAge(): void {
    const age = Date.now() - this.lastRefreshed;
    if (this.lost === undefined && age > this.timing.staleMs - this.timing.refreshMs) {
      this.lost = `it was last refreshed ${(age / 1000).toFixed(1)} s ago`;
    }
  }
}

/** The locks of one Repository: timing, and the locks it holds (released on close). */
export class RepoLocks {
  private readonly held = new Set<HeldLock>();

  constructor(readonly timing: LockTiming) {}

  async acquire(core: RepoCore, kind: LockKind, options: LockOptions = {}): Promise<HeldLock> {
    if (kind !== "shared" && kind !== "exclusive") {
      throw new IotvaultError("INVALID_ARGUMENT", `a lock is "shared" or "exclusive", got ${JSON.stringify(kind)}`);
    }
    const exclusive = kind === "exclusive";
    const waitMs = options.waitMs ?? 0;
    if (!Number.isFinite(waitMs) || waitMs < 0) {
      throw new IotvaultError("INVALID_ARGUMENT", `waitMs must be a number >= 0, got ${waitMs}`);
    }
    const purpose = options.purpose?.trim() || (exclusive ? "an exclusive operation" : "a shared operation");
    const deadline = Date.now() + waitMs;
    const id = randomBytes(32).toString("hex");
    for (;;) {
      throwIfAborted(options.signal, `waiting for the repository lock (${purpose})`);
      const now = new Date().toISOString();
      const record: LockRecord = {
        exclusive,
        hostname: hostname(),
        pid: process.pid,
        purpose,
        createdAt: now,
        refreshedAt: now,
      };
      await writeLock(core, id, record, options.signal);
      const { conflict, stale, others } = await this.conflicts(core, id, exclusive, options.signal).catch(
        async (err: unknown) => {
          await this.removeQuietly(core, id);
          throw err;
        },
      );
      if (!conflict) {
        const lock = new HeldLock(core, id, exclusive, record, this.timing, (l) => this.held.delete(l), others);
        this.held.add(lock);
        if (exclusive) await this.removeStale(core, stale);
        return lock;
      }
      await this.removeQuietly(core, id);
      const remaining = deadline - Date.now();
      if (remaining <= 0) throw lockedError(conflict, this.timing);
      try {
        await sleep(Math.min(this.timing.retryMs, remaining), undefined, { signal: options.signal });
      } catch {
        throw cancelled(`waiting for the repository lock (${purpose})`);
      }
    }
  }

  list(core: RepoCore, signal?: AbortSignal): Promise<LockInfo[]> {
    return readLocks(core, this.timing, signal);
  }

  /** Releases every lock still held (on close); errors are ignored, the locks go stale anyway. */
  async releaseAll(): Promise<void> {
    await Promise.all([...this.held].map((l) => l.release().catch(() => undefined)));
  }

  private async conflicts(
    core: RepoCore,
    ownId: string,
    exclusive: boolean,
    signal: AbortSignal | undefined,
  ): Promise<{ conflict: LockInfo | undefined; stale: LockInfo[]; others: LockInfo[] }> {
    const others = (await readLocks(core, this.timing, signal)).filter((l) => l.id !== ownId);
    const conflict = others.find((l) => !l.stale && (exclusive || l.exclusive));
    return { conflict, stale: others.filter((l) => l.stale), others };
  }

  /** Deletes locks found stale (ignored by everyone anyway); errors are ignored. */
  async removeStale(core: RepoCore, locks: readonly LockInfo[]): Promise<void> {
    for (const l of locks) if (l.stale) await this.removeQuietly(core, l.id);
  }

  private async removeQuietly(core: RepoCore, id: string): Promise<void> {
    await core.store.delete(lockKey(id)).catch(() => undefined);
  }
}

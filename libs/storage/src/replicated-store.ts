/**
 * ReplicatedStore: one repository on several targets (a primary and replicas, any mix of local
 * directories, S3 and SFTP), behind the one ObjectStore interface.
 *
 * ```ts
 * const store = await ReplicatedStore.open(
 *   [
 *     { url: "file:///srv/iotvault/main", store: new LocalDirectoryStore("/srv/iotvault/main") },
 *     { url: "s3://backups/main?endpoint=minio:9000&region=us-east-1&tls=false", store: s3 },
 *   ],
 *   { journalPath: "/var/lib/iotvault/gateway/journals/main.journal", logger },
 * );
 * const { missingTargets } = await store.putStream("data/ab/ab12...", chunks, { expectedSize });
 * const pack = await store.get("data/ab/ab12..."); // checked against its name, another copy if bad
 * await store.heal();                               // copies what a target missed while it was down
 * await store.close();
 * ```
 *
 * - **Writes** go to every available target in parallel (one upload read once, see fanOut),
 *   each with the atomicity of its store. A put succeeds when at least one target stored the
 *   object; the targets that failed as unreachable (UNAVAILABLE, DEADLINE_EXCEEDED,
 *   FAILED_PRECONDITION) are returned in `missingTargets` and recorded in the copy journal
 *   (fsynced before the put returns). A target known to be down is not tried until it answers
 *   again (the heal pass probes it). A put that no target stored fails with UNAVAILABLE.
 * - **A permanent error on one target** (PERMISSION_DENIED, RESOURCE_EXHAUSTED, ...) fails the
 *   put with that target's error even when other targets stored the object: replicas must not
 *   silently diverge. The object stays where it was stored and is journaled for the failing
 *   target, so that the replicas converge once the cause is fixed. Deletes follow the same rules.
 * - **Reads** try the targets in order (available ones first, then those known to be down, then
 *   those the journal says miss the object or hold a damaged copy) and fall back to the next on
 *   any error but CANCELLED, and on NOT_FOUND. A whole-object read of a pack
 *   (`data/<xx>/<sha256>`) is checked against its name: a mismatch is logged, journaled for
 *   repair from a good copy, and served from another target. `stat` answers from the first
 *   target that has the object; `list` is the union of the available targets' listings, each
 *   key once.
 * - **One operation per key at a time** in this process (writes, deletes, copies of the heal
 *   pass), so that a copy never overwrites a newer write.
 */
import { createHash } from "node:crypto";
import { IotvaultError, isCode } from "@iotvault/errors";
import { CopyJournal, type CopyJournalOpenReport } from "./copy-journal.js";
import { fanOut } from "./fan-out.js";
import { checkKey, checkPrefix, resolveRange } from "./keys.js";
import type {
  ByteRange,
  GetStreamOptions,
  ObjectInfo,
  PutOptions,
  PutStreamOptions,
  PutStreamResult,
  StreamingObjectStore,
} from "./object-store.js";
import { healPass, reconcileTargets, type HealOptions, type HealResult, type ReconcileResult } from "./replica-heal.js";
import {
  isUnavailability,
  packIdOf,
  ReplicaSet,
  type ReplicaTarget,
  type ReplicationLogger,
  type TargetFailure,
  type TargetState,
} from "./replica-set.js";
import { cancelledError, putFromStream, readObjectStream } from "./streams.js";

export interface ReplicatedStoreOptions {
  /** Where target outages, recoveries, damaged copies and healed targets are reported. */
  logger?: ReplicationLogger | undefined;
  /**
   * Whole-pack reads up to this size are checked against the pack's name before their first
   * byte is returned, so that a damaged copy is replaced by another target's (default 32 MiB).
   * Larger packs are streamed and checked at their end (DATA_CORRUPT then; a retry reads
   * another target).
   */
  verifyBufferBytes?: number | undefined;
  /** Objects a heal pass copies at once per target (default 4). */
  healConcurrency?: number | undefined;
}

/** What a replicated put reports beyond PutStreamResult. */
export interface ReplicatedPutResult extends PutStreamResult {
  /** Targets that did not get the object now (down); the journal has it for them. */
  missingTargets: string[];
}

/** The state of one target, as ListRepositories shows it. */
export interface TargetStatusInfo {
  url: string;
  /** False while the last operation on the target failed as unreachable. */
  available: boolean;
  /** Journal entries waiting for the target: objects to copy to it, deletes to replay. */
  pendingCopies: number;
  /** The last error of the target, "" once it answers again. */
  lastError: string;
}

/** The targets a put (of any store) reported as missing: `missingTargets` of a ReplicatedStore's result. */
export function missingTargetsOf(result: object): string[] {
  const missing = (result as { missingTargets?: unknown }).missingTargets;
  return Array.isArray(missing) ? missing.filter((m): m is string => typeof m === "string") : [];
}

const DEFAULT_VERIFY_BUFFER_BYTES = 32 * 1024 * 1024;

type Outcome<T> = { target: TargetState; ok: true; value: T } | { target: TargetState; ok: false; error: unknown };

export class ReplicatedStore implements StreamingObjectStore {
  readonly location: string;
  private readonly set: ReplicaSet;
  private readonly verifyBufferBytes: number;
  private readonly healConcurrency: number;

  /**
   * Opens (or creates) the copy journal at `journalPath` for these targets and wraps them.
   * The targets' stores are not contacted.
   */
  static async open(
    targets: readonly ReplicaTarget[],
    options: ReplicatedStoreOptions & { journalPath: string },
  ): Promise<ReplicatedStore> {
    const journal = await CopyJournal.open(options.journalPath, { targets: targets.map((t) => t.url) });
    return new ReplicatedStore(targets, journal, options);
  }

  /** `journal` must have been opened for exactly these target URLs, in this order. */
  constructor(targets: readonly ReplicaTarget[], journal: CopyJournal, options: ReplicatedStoreOptions = {}) {
    const urls = targets.map((t) => t.url);
    if (targets.length === 0 || urls.join("\n") !== journal.targets.join("\n")) {
      throw new IotvaultError("INVALID_ARGUMENT", "a ReplicatedStore needs targets, and a journal opened for them", {
        hint: "open the CopyJournal with the targets' URLs in the same order (ReplicatedStore.open does it)",
      });
    }
    this.set = new ReplicaSet(targets, journal, options.logger);
    const replicas = targets.length - 1;
    this.location = `${targets[0]!.store.location} (+${replicas} replica${replicas === 1 ? "" : "s"})`;
    this.verifyBufferBytes = options.verifyBufferBytes ?? DEFAULT_VERIFY_BUFFER_BYTES;
    this.healConcurrency = Math.max(1, options.healConcurrency ?? 4);
  }

  /** The target URLs, primary first. */
  get targets(): string[] {
    return this.set.targets.map((t) => t.url);
  }

  /** What the journal's open found (entries dropped, unreadable lines, reconciliation needed). */
  get journalReport(): CopyJournalOpenReport {
    return this.set.journal.report;
  }

  /** Journal entries waiting, all targets together. */
  get pendingCopies(): number {
    return this.set.journal.size;
  }

  /** True until reconcile() has compared the targets' listings once for this set of targets. */
  get reconcileNeeded(): boolean {
    return this.set.journal.reconcileNeeded;
  }

  targetStatus(): TargetStatusInfo[] {
    return this.set.targets.map((t) => ({
      url: t.url,
      available: t.available,
      pendingCopies: this.set.journal.count(t.url),
      lastError: t.lastError,
    }));
  }

  /** The ObjectStore put (`{ existed }` only); putStream() also reports the missing targets. */
  async put(key: string, data: Uint8Array, options: PutOptions = {}): Promise<{ existed: boolean }> {
    this.checkWrite(key, options.signal);
    const putOne = (t: TargetState) =>
      t.store.put(key, data, options).then(({ existed }) => ({ existed, size: data.length }));
    const result = await this.set.locks.run(key, () =>
      this.putLocked(key, options, (writers) => settleAll(writers, putOne)),
    );
    return { existed: result.existed };
  }

  async putStream(
    key: string,
    chunks: AsyncIterable<Uint8Array>,
    options: PutStreamOptions = {},
  ): Promise<ReplicatedPutResult> {
    this.checkWrite(key, options.signal);
    return this.set.locks.run(key, () =>
      this.putLocked(key, options, (writers) => this.streamTo(writers, key, chunks, options)),
    );
  }

  async get(key: string, range?: ByteRange, signal?: AbortSignal): Promise<Buffer> {
    this.checkRead(key, range, signal);
    const packId = wholeObject(range) ? packIdOf(key) : undefined;
    const failures: TargetFailure[] = [];
    for (const target of this.set.readOrder(key)) {
      let data: Buffer;
      try {
        data = await target.store.get(key, range, signal);
      } catch (error) {
        this.readFailed(target, error, failures, signal);
        continue;
      }
      this.set.markUp(target);
      if (packId !== undefined && sha256(data) !== packId) {
        failures.push({ target, error: await this.damagedCopy(target, key) });
        continue;
      }
      return data;
    }
    throw this.set.readFailure(key, failures);
  }

  async *getStream(key: string, range?: ByteRange, options: GetStreamOptions = {}): AsyncGenerator<Buffer> {
    this.checkRead(key, range, options.signal);
    const packId = wholeObject(range) ? packIdOf(key) : undefined;
    const failures: TargetFailure[] = [];
    for (const target of this.set.readOrder(key)) {
      const source = readObjectStream(target.store, key, range, options);
      try {
        let head: Head;
        try {
          // A pack is read up to the verify limit before anything is returned; other objects
          // up to their first chunk, so that a target that fails at once is skipped.
          head = await readHead(source, packId === undefined ? 0 : this.verifyBufferBytes);
        } catch (error) {
          this.readFailed(target, error, failures, options.signal);
          continue;
        }
        this.set.markUp(target);
        const hash = packId === undefined ? undefined : createHash("sha256");
        for (const chunk of head.chunks) hash?.update(chunk);
        if (head.ended && hash && hash.digest("hex") !== packId) {
          failures.push({ target, error: await this.damagedCopy(target, key) });
          continue;
        }
        yield* head.chunks;
        if (head.ended) return;
        try {
          for await (const chunk of source) {
            hash?.update(chunk);
            yield chunk;
          }
        } catch (error) {
          this.set.noteFailure(target, error);
          throw error;
        }
        if (hash && hash.digest("hex") !== packId) throw await this.damagedCopy(target, key);
        return;
      } finally {
        await source.return(undefined);
      }
    }
    throw this.set.readFailure(key, failures);
  }

  async stat(key: string): Promise<ObjectInfo | undefined> {
    checkKey(key);
    const failures: TargetFailure[] = [];
    let surelyMissing = false;
    for (const target of this.set.readOrder(key)) {
      try {
        const info = await target.store.stat(key);
        this.set.markUp(target);
        if (info) return info;
        surelyMissing ||= this.set.isAuthoritative(target, key);
      } catch (error) {
        this.readFailed(target, error, failures, undefined);
      }
    }
    if (surelyMissing || failures.length === 0) return undefined;
    if (failures.some((f) => isUnavailability(f.error))) throw this.set.allFailed(`stat ${key}`, failures);
    throw failures[0]!.error;
  }

  async *list(prefix: string): AsyncIterable<ObjectInfo> {
    checkPrefix(prefix);
    const seen = new Set<string>();
    const failures: TargetFailure[] = [];
    let answered = 0;
    for (const target of this.set.writeTargets()) {
      try {
        for await (const info of target.store.list(prefix)) {
          if (seen.has(info.key) || this.set.journal.entry(target.url, info.key)?.op === "delete") continue;
          seen.add(info.key);
          yield info;
        }
        this.set.markUp(target);
        answered++;
      } catch (error) {
        this.readFailed(target, error, failures, undefined);
      }
    }
    if (answered === 0) throw this.set.readFailure(prefix, failures);
  }

  async delete(key: string): Promise<boolean> {
    checkKey(key);
    return this.set.locks.run(key, async () => {
      const writers = this.set.writeTargets();
      const skipped = this.set.targets.filter((t) => !writers.includes(t));
      const outcomes = await settleAll(writers, (t) => t.store.delete(key));
      const done = await this.settle(key, "delete", outcomes, skipped);
      return done.some((deleted) => deleted);
    });
  }

  /**
   * One heal pass: probes the targets that are down, copies every journaled object to the
   * targets that miss it (streaming, from a target that has it; packs checked against their
   * name) and replays journaled deletes. Logs one info line per target it brings up to date.
   */
  heal(options: HealOptions = {}): Promise<HealResult> {
    return healPass(this.set, { concurrency: this.healConcurrency, ...options });
  }

  /**
   * Compares the listings of every target and journals a copy for each object a target lacks
   * (a new replica of an existing repository, a journal lost or damaged). Needs every target
   * reachable; otherwise it reports `complete: false` and changes nothing else.
   */
  reconcile(options: { signal?: AbortSignal | undefined } = {}): Promise<ReconcileResult> {
    return reconcileTargets(this.set, options);
  }

  /** Closes the journal (compacted) and the targets' stores that have a close(). */
  async close(): Promise<void> {
    await this.set.journal.close();
    for (const target of this.set.targets) {
      const closable = target.store as { close?: () => Promise<void> };
      if (typeof closable.close === "function") await closable.close().catch(() => undefined);
    }
  }

  private checkWrite(key: string, signal: AbortSignal | undefined): void {
    checkKey(key);
    if (signal?.aborted) throw cancelledError(`put of ${key} to ${this.location}`, signal);
  }

  private checkRead(key: string, range: ByteRange | undefined, signal: AbortSignal | undefined): void {
    checkKey(key);
    resolveRange(Number.MAX_SAFE_INTEGER, range); // INVALID_ARGUMENT for a bad range
    if (signal?.aborted) throw cancelledError(`read of ${key} from ${this.location}`, signal);
  }

  /** Records a failed read; a cancelled one ends the read. */
  private readFailed(
    target: TargetState,
    error: unknown,
    failures: TargetFailure[],
    signal: AbortSignal | undefined,
  ): void {
    if (signal?.aborted || isCode(error, "CANCELLED")) throw error;
    this.set.noteFailure(target, error);
    failures.push({ target, error });
  }

  private async putLocked(
    key: string,
    options: PutStreamOptions,
    writeTo: (writers: TargetState[]) => Promise<Outcome<PutStreamResult>[]>,
  ): Promise<ReplicatedPutResult> {
    let writers = this.set.writeTargets();
    let skipped = this.set.targets.filter((t) => !writers.includes(t));
    if (options.ifAbsent) {
      const check = await this.checkAbsent(key, writers, skipped);
      if ("existing" in check) return check.existing;
      ({ writers, skipped } = check);
    }
    const outcomes = await writeTo(writers);
    const stored = await this.settle(key, "copy", outcomes, skipped);
    if (options.signal?.aborted) throw cancelledError(`put of ${key} to ${this.location}`, options.signal);
    const first = stored[0]!;
    const missingTargets = [...skipped.map((t) => t.url), ...outcomes.filter((o) => !o.ok).map((o) => o.target.url)];
    return { existed: stored.some((s) => s.existed), size: first.size, sha256: first.sha256, missingTargets };
  }

  /**
   * ifAbsent across targets: the object exists if any reachable target has it (the others
   * are journaled for a copy); otherwise the write goes to the targets that answered.
   */
  private async checkAbsent(
    key: string,
    writers: TargetState[],
    skipped: TargetState[],
  ): Promise<{ existing: ReplicatedPutResult } | { writers: TargetState[]; skipped: TargetState[] }> {
    const answers = await settleAll(writers, (t) => t.store.stat(key));
    const failed = answers.filter((a) => !a.ok);
    for (const f of failed) this.set.noteFailure(f.target, f.error);
    const holder = answers.find((a) => a.ok && a.value !== undefined);
    if (holder?.ok && holder.value) {
      const lacking = answers.filter((a) => a.ok && a.value === undefined).map((a) => a.target);
      await this.set.journal.record(lacking.map((t) => ({ target: t.url, key, op: "copy" as const })));
      const missing = [...skipped, ...failed.map((f) => f.target), ...lacking].map((t) => t.url);
      return { existing: { existed: true, size: holder.value.size, missingTargets: missing } };
    }
    const reachable = answers.filter((a) => a.ok).map((a) => a.target);
    if (reachable.length === 0) {
      const permanent = failed.find((f) => !isUnavailability(f.error));
      throw permanent ? permanent.error : this.set.allFailed(`check whether ${key} exists`, failed);
    }
    return { writers: reachable, skipped: [...skipped, ...failed.map((f) => f.target)] };
  }

  /** Streams one upload to every writer (read once, each target at its own pace). */
  private async streamTo(
    writers: TargetState[],
    key: string,
    chunks: AsyncIterable<Uint8Array>,
    options: PutStreamOptions,
  ): Promise<Outcome<PutStreamResult>[]> {
    const forward: PutStreamOptions = {
      expectedSize: options.expectedSize,
      expectedSha256: options.expectedSha256,
      maxBytes: options.maxBytes,
      ifAbsent: options.ifAbsent,
      signal: options.signal,
    };
    if (writers.length === 1) return settleAll(writers, (t) => putFromStream(t.store, key, chunks, forward));
    const fan = fanOut(chunks, writers.length, { signal: options.signal, what: `put of ${key} to ${this.location}` });
    const outcomes = await settleAll(writers, async (t, i) => {
      try {
        return await putFromStream(t.store, key, fan.branches[i]!, forward);
      } finally {
        fan.detach(i);
      }
    });
    await fan.done;
    return outcomes;
  }

  /**
   * The rules of a write or delete, once every target answered: targets that failed are
   * journaled (if any target succeeded), a permanent error is thrown, no success at all is
   * UNAVAILABLE. Returns the successful targets' values.
   */
  private async settle<T>(
    key: string,
    op: "copy" | "delete",
    outcomes: Outcome<T>[],
    skipped: TargetState[],
  ): Promise<T[]> {
    const succeeded: TargetState[] = [];
    const values: T[] = [];
    const failures: TargetFailure[] = [];
    for (const o of outcomes) {
      if (o.ok) {
        this.set.markUp(o.target);
        succeeded.push(o.target);
        values.push(o.value);
      } else {
        this.set.noteFailure(o.target, o.error);
        failures.push({ target: o.target, error: o.error });
      }
    }
    if (succeeded.length > 0) {
      const behind = [...skipped, ...failures.map((f) => f.target)];
      await this.set.journal.record(behind.map((t) => ({ target: t.url, key, op })));
      for (const target of succeeded) {
        const pending = this.set.journal.entry(target.url, key);
        if (pending) await this.set.journal.resolve(pending); // this target is up to date now
      }
    }
    const permanent = failures.find((f) => !isUnavailability(f.error));
    if (permanent) throw permanent.error;
    if (succeeded.length === 0) throw this.set.allFailed(op === "copy" ? `store ${key}` : `delete ${key}`, failures);
    return values;
  }

  /** A copy that does not match its name: logged, journaled for repair, DATA_CORRUPT returned. */
  private async damagedCopy(target: TargetState, key: string): Promise<IotvaultError> {
    this.set.logger?.warn("a copy of a pack does not match its SHA-256 name; reading another target and repairing it", {
      target: target.url,
      key,
    });
    await this.set.journal.record([{ target: target.url, key, op: "copy" }]);
    return new IotvaultError("DATA_CORRUPT", `the copy of ${key} on ${target.url} does not match its SHA-256 name`, {
      retryable: true,
      hint: "the copy is journaled for repair from another target; reading again uses another copy",
      details: { key, target: target.url },
    });
  }
}

interface Head {
  chunks: Buffer[];
  /** True when the source has nothing more. */
  ended: boolean;
}

/** Reads chunks until more than `limit` bytes (at least one chunk) or the end. */
async function readHead(source: AsyncGenerator<Buffer>, limit: number): Promise<Head> {
  const chunks: Buffer[] = [];
  let bytes = 0;
  do {
    const next = await source.next();
    if (next.done) return { chunks, ended: true };
    chunks.push(next.value);
    bytes += next.value.length;
  } while (bytes <= limit);
  return { chunks, ended: false };
}

async function settleAll<T>(
  targets: readonly TargetState[],
  operation: (target: TargetState, index: number) => Promise<T>,
): Promise<Outcome<T>[]> {
  return Promise.all(
    targets.map(async (target, index): Promise<Outcome<T>> => {
      try {
        return { target, ok: true, value: await operation(target, index) };
      } catch (error) {
        return { target, ok: false, error };
      }
    }),
  );
}

function wholeObject(range: ByteRange | undefined): boolean {
  return range === undefined || (range.offset === 0 && range.length === undefined);
}

function sha256(data: Uint8Array): string {
  return createHash("sha256").update(data).digest("hex");
}

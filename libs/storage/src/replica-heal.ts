/**
 * Self-heal of a replicated repository (used by ReplicatedStore.heal and .reconcile): replays
 * the copy journal against the targets that are reachable, and finds by listing what a target
 * lacks when the journal cannot say (a new replica, a damaged journal).
 */
import { isCode } from "@iotvault/errors";
import type { JournalEntry } from "./copy-journal.js";
import { isUnavailability, packIdOf, type ReplicaSet, type TargetState } from "./replica-set.js";
import { cancelledError, putFromStream, readObjectStream } from "./streams.js";

export interface HealOptions {
  signal?: AbortSignal | undefined;
  /** Objects copied at once per target. */
  concurrency?: number | undefined;
}

export interface HealResult {
  /** Objects copied to a target that missed them (or held a damaged copy). */
  copied: number;
  /** Journaled deletes replayed. */
  deleted: number;
  /** Entries that could not be done this time (kept for the next pass). */
  failed: number;
  /** Entries still pending after the pass, all targets together. */
  remaining: number;
  /** Targets this pass brought up to date (their pending count went to 0). */
  healedTargets: string[];
}

export interface ReconcileResult {
  /** Copies journaled because a target lacked an object the others had. */
  journaled: number;
  /** False when a target could not be listed: run it again later. */
  complete: boolean;
}

/** The key a probe of a down target stats: any answer but unreachable means "up". */
const PROBE_KEY = "config";

/**
 * What became of one entry. "failed": no source could deliver it this time (kept);
 * "target-down" / "target-error": the target itself failed, as unreachable or otherwise (kept,
 * and the pass stops for this target: the next pass tries again after a backoff).
 */
type EntryOutcome = "copied" | "deleted" | "gone" | "stale" | "failed" | "target-down" | "target-error";

/** One pass over every target with pending entries. */
export async function healPass(set: ReplicaSet, options: HealOptions = {}): Promise<HealResult> {
  const result: HealResult = { copied: 0, deleted: 0, failed: 0, remaining: 0, healedTargets: [] };
  for (const target of set.targets) {
    if (options.signal?.aborted) break;
    if (set.journal.count(target.url) === 0) continue;
    if (!target.available && !(await probe(set, target))) continue;
    const tally = await healTarget(set, target, options);
    result.copied += tally.copied;
    result.deleted += tally.deleted;
    result.failed += tally.failed;
    if (set.journal.count(target.url) === 0 && tally.copied + tally.deleted > 0) {
      result.healedTargets.push(target.url);
      set.logger?.info("replication target healed: every object it missed is copied", {
        target: target.url,
        copied: tally.copied,
        deletes_replayed: tally.deleted,
      });
    }
  }
  result.remaining = set.journal.size;
  return result;
}

/** Stats a fixed key on a target marked down; true (and marked up) when it answers. */
async function probe(set: ReplicaSet, target: TargetState): Promise<boolean> {
  try {
    await target.store.stat(PROBE_KEY);
  } catch (err) {
    set.noteFailure(target, err);
    if (isUnavailability(err)) return false;
  }
  set.markUp(target);
  return true;
}

/** Replays the target's entries, `concurrency` at a time; stops when the target fails. */
async function healTarget(
  set: ReplicaSet,
  target: TargetState,
  options: HealOptions,
): Promise<{ copied: number; deleted: number; failed: number }> {
  const entries = set.journal.entries(target.url);
  const tally = { copied: 0, deleted: 0, failed: 0 };
  let next = 0;
  let stop = false;
  const worker = async (): Promise<void> => {
    while (!stop && next < entries.length && !options.signal?.aborted) {
      const entry = entries[next++]!;
      const outcome = await set.locks.run(entry.key, () => healEntry(set, target, entry, options.signal));
      if (outcome === "copied") tally.copied++;
      else if (outcome === "deleted") tally.deleted++;
      else if (outcome === "failed") tally.failed++;
      else if (outcome === "target-error") {
        tally.failed++;
        stop = true;
      } else if (outcome === "target-down") stop = true;
    }
  };
  await Promise.all(Array.from({ length: Math.max(1, options.concurrency ?? 4) }, worker));
  return tally;
}

async function healEntry(
  set: ReplicaSet,
  target: TargetState,
  entry: JournalEntry,
  signal: AbortSignal | undefined,
): Promise<EntryOutcome> {
  if (set.journal.entry(target.url, entry.key)?.seq !== entry.seq) return "stale"; // a write settled it
  if (entry.op === "copy") return copyEntry(set, target, entry, signal);
  try {
    await target.store.delete(entry.key);
  } catch (err) {
    return targetFailed(set, target, err, signal);
  }
  set.markUp(target);
  await set.journal.resolve(entry);
  return "deleted";
}

/**
 * Copies the object from the first other target that has it, streaming (the target's own
 * write checks the size, and a pack's SHA-256 against its name). A source with a damaged
 * copy is journaled for repair itself and the next source is tried. When no target has the
 * object any more (deleted since), the entry is dropped.
 */
async function copyEntry(
  set: ReplicaSet,
  target: TargetState,
  entry: JournalEntry,
  signal: AbortSignal | undefined,
): Promise<EntryOutcome> {
  const { key } = entry;
  let sourceTrouble = false;
  for (const source of set.readOrder(key).filter((t) => t !== target)) {
    let size: number;
    try {
      const info = await source.store.stat(key);
      if (!info) continue;
      size = info.size;
    } catch (err) {
      if (signal?.aborted) throw cancelledError(`copy of ${key}`, signal);
      set.noteFailure(source, err);
      sourceTrouble = true;
      continue;
    }
    let sourceError: { error: unknown } | undefined;
    const chunks = watch(readObjectStream(source.store, key, undefined, { signal }), (error) => {
      sourceError = { error };
    });
    try {
      await putFromStream(target.store, key, chunks, { expectedSize: size, expectedSha256: packIdOf(key), signal });
    } catch (err) {
      if (signal?.aborted) throw cancelledError(`copy of ${key}`, signal);
      if (sourceError === undefined && !isCode(err, "DATA_CORRUPT") && !isCode(err, "INVALID_ARGUMENT")) {
        return targetFailed(set, target, err, signal);
      }
      await sourceFailed(set, source, key, sourceError?.error ?? err);
      sourceTrouble = true;
      continue;
    }
    set.markUp(target);
    await set.journal.resolve(entry);
    return "copied";
  }
  if (sourceTrouble) return "failed";
  await set.journal.resolve(entry); // no target has it: it was deleted after the entry
  return "gone";
}

/** A failure of the target being healed: down, or failing (e.g. full, permissions); logged. */
function targetFailed(
  set: ReplicaSet,
  target: TargetState,
  err: unknown,
  signal: AbortSignal | undefined,
): "target-down" | "target-error" {
  if (signal?.aborted) throw cancelledError(`heal of ${target.url}`, signal);
  set.noteFailure(target, err);
  if (isUnavailability(err)) return "target-down";
  set.logger?.warn("a replication target refuses the objects it missed; the next pass tries again", {
    target: target.url,
    error: target.lastError,
    pending_copies: set.journal.count(target.url),
  });
  return "target-error";
}

/** A source that could not deliver a good copy: noted; a damaged pack is journaled for repair. */
async function sourceFailed(set: ReplicaSet, source: TargetState, key: string, err: unknown): Promise<void> {
  set.noteFailure(source, err);
  if (isCode(err, "DATA_CORRUPT") && packIdOf(key) !== undefined) {
    set.logger?.warn("a copy of a pack does not match its SHA-256 name; repairing it from another target", {
      target: source.url,
      key,
    });
    await set.journal.record([{ target: source.url, key, op: "copy" }]);
  }
}

/** Passes the chunks through and tells `onError` when the source itself fails. */
async function* watch(source: AsyncIterable<Buffer>, onError: (error: unknown) => void): AsyncGenerator<Buffer> {
  try {
    yield* source;
  } catch (error) {
    onError(error);
    throw error;
  }
}

/** Lists every target and journals a copy for each object a target lacks (see ReconcileResult). */
export async function reconcileTargets(
  set: ReplicaSet,
  options: { signal?: AbortSignal | undefined },
): Promise<ReconcileResult> {
  const listings = new Map<TargetState, Set<string>>();
  for (const target of set.targets) {
    if (options.signal?.aborted) throw cancelledError("reconciliation of the targets", options.signal);
    try {
      const keys = new Set<string>();
      for await (const info of target.store.list("")) keys.add(info.key);
      listings.set(target, keys);
      set.markUp(target);
    } catch (err) {
      set.noteFailure(target, err);
      return { journaled: 0, complete: false };
    }
  }
  const all = new Set<string>();
  for (const keys of listings.values()) for (const key of keys) all.add(key);
  // An object with a pending delete somewhere was deleted: never copy it back.
  const deleting = (key: string) => set.targets.some((t) => set.journal.entry(t.url, key)?.op === "delete");
  const missing: { target: string; key: string; op: "copy" }[] = [];
  for (const [target, keys] of listings) {
    for (const key of all) {
      if (!keys.has(key) && set.journal.entry(target.url, key) === undefined && !deleting(key)) {
        missing.push({ target: target.url, key, op: "copy" });
      }
    }
  }
  await set.journal.record(missing);
  await set.journal.markReconciled();
  if (missing.length > 0) {
    set.logger?.info("reconciled the targets' listings: objects a target lacks are journaled for copying", {
      journaled: missing.length,
    });
  }
  return { journaled: missing.length, complete: true };
}

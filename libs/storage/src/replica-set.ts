/**
 * The shared state of a replicated repository (internal to ReplicatedStore and its heal pass):
 * the targets with their availability, the copy journal, the per-key locks, and the rules that
 * order targets for reads and writes and classify their errors.
 */
import { IotvaultError, isCode, type ErrorCode } from "@iotvault/errors";
import type { CopyJournal } from "./copy-journal.js";
import { KeyedLock } from "./keyed-lock.js";
import type { ObjectStore } from "./object-store.js";

/** One target of a replicated repository. */
export interface ReplicaTarget {
  /** The target's URL without credentials: its name in status, journal and missing_targets. */
  readonly url: string;
  readonly store: ObjectStore;
}

/** Where ReplicatedStore reports what happens to its targets (structurally a @iotvault/telemetry Logger). */
export interface ReplicationLogger {
  info(message: string, fields?: Record<string, unknown>): void;
  warn(message: string, fields?: Record<string, unknown>): void;
}

/**
 * Errors that say "this target cannot be reached now" rather than "this request is wrong":
 * the write goes on without the target (degraded) and the journal remembers what it missed.
 * FAILED_PRECONDITION is a missing mount or bucket (a LocalDirectoryStore whose root is gone).
 */
const UNAVAILABILITY: ReadonlySet<ErrorCode> = new Set<ErrorCode>([
  "UNAVAILABLE",
  "DEADLINE_EXCEEDED",
  "FAILED_PRECONDITION",
]);

export function isUnavailability(err: unknown): boolean {
  return err instanceof IotvaultError && UNAVAILABILITY.has(err.code);
}

const PACK_KEY = /^data\/([0-9a-f]{2})\/([0-9a-f]{64})$/;

/** The SHA-256 a key promises (`data/<xx>/<sha256>` packs are named by their content), if any. */
export function packIdOf(key: string): string | undefined {
  const match = PACK_KEY.exec(key);
  return match && match[2]!.startsWith(match[1]!) ? match[2] : undefined;
}

export class TargetState {
  available = true;
  lastError = "";

  constructor(
    readonly url: string,
    readonly store: ObjectStore,
    readonly index: number,
  ) {}
}

/** A failure of one target, for messages. */
export interface TargetFailure {
  target: TargetState;
  error: unknown;
}

export class ReplicaSet {
  readonly targets: readonly TargetState[];
  readonly locks = new KeyedLock();

  constructor(
    targets: readonly ReplicaTarget[],
    readonly journal: CopyJournal,
    readonly logger: ReplicationLogger | undefined,
  ) {
    this.targets = targets.map((t, index) => new TargetState(t.url, t.store, index));
  }

  get primary(): TargetState {
    return this.targets[0]!;
  }

  /** Targets a write goes to: the available ones, or every target when none is known to be up. */
  writeTargets(): TargetState[] {
    const up = this.targets.filter((t) => t.available);
    return up.length > 0 ? up : [...this.targets];
  }

  /**
   * Targets to read `key` from, best first: available targets that hold it, then those known
   * to be down, then those that miss it or hold an old or damaged copy (a pending copy: last
   * resort). A target with a pending delete of `key` is left out: it holds a deleted object.
   */
  readOrder(key: string): TargetState[] {
    const rank = (t: TargetState): number => {
      const pending = this.journal.entry(t.url, key);
      if (pending?.op === "delete") return -1;
      if (pending) return 2;
      return t.available ? 0 : 1;
    };
    return this.targets
      .map((t) => ({ t, r: rank(t) }))
      .filter(({ r }) => r >= 0)
      .sort((a, b) => a.r - b.r || a.t.index - b.t.index)
      .map(({ t }) => t);
  }

  /** True when `target` has no pending entry for `key`: its answer about the key is to be believed. */
  isAuthoritative(target: TargetState, key: string): boolean {
    return this.journal.entry(target.url, key) === undefined;
  }

  markUp(target: TargetState): void {
    if (target.available) return;
    target.available = true;
    target.lastError = "";
    this.logger?.info("replication target reachable again", {
      target: target.url,
      pending_copies: this.journal.count(target.url),
    });
  }

  markDown(target: TargetState, err: unknown): void {
    target.lastError = messageOf(err);
    if (!target.available) return;
    target.available = false;
    this.logger?.warn("replication target unavailable; writes go on without it and are copied later", {
      target: target.url,
      error: target.lastError,
    });
  }

  /** Notes a failed operation: an unreachable target goes down, another error is remembered. */
  noteFailure(target: TargetState, err: unknown): void {
    if (isUnavailability(err)) this.markDown(target, err);
    else if (!isCode(err, "NOT_FOUND") && !isCode(err, "CANCELLED")) target.lastError = messageOf(err);
  }

  /** UNAVAILABLE: no target could do `what`; names each target's error. */
  allFailed(what: string, failures: readonly TargetFailure[]): IotvaultError {
    const reasons = failures.map((f) => `${f.target.url}: ${messageOf(f.error)}`).join("; ");
    return new IotvaultError("UNAVAILABLE", `no target of the repository could ${what} (${reasons})`, {
      retryable: true,
      hint: "bring a target of the repository back (mount its volume, start its S3 or SFTP server); one reachable target is enough",
      details: { targets: failures.map((f) => f.target.url).join(" ") },
    });
  }

  /**
   * The error of a read that no target could serve: NOT_FOUND when a target that should hold
   * the object says it has none; UNAVAILABLE when a target that might hold it is unreachable;
   * otherwise the first target's own error.
   */
  readFailure(key: string, failures: readonly TargetFailure[]): unknown {
    const missing = failures.find((f) => isCode(f.error, "NOT_FOUND") && this.isAuthoritative(f.target, key));
    if (missing) return missing.error;
    if (failures.some((f) => isUnavailability(f.error))) return this.allFailed(`read ${key}`, failures);
    const other = failures.find((f) => !isCode(f.error, "NOT_FOUND"));
    if (other) return other.error;
    return (
      failures[0]?.error ??
      new IotvaultError("NOT_FOUND", `object ${key} not found in any target of the repository`, {
        details: { key },
      })
    );
  }
}

export function messageOf(err: unknown): string {
  return err instanceof Error ? err.message : String(err);
}

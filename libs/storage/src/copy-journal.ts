/**
 * The copy journal of a replicated repository: which objects which targets are missing (a
 * `copy` to make) or still hold after a delete (a `delete` to replay). ReplicatedStore records
 * an entry whenever a write or delete could not reach a target, and its heal pass resolves the
 * entry once the target has caught up.
 *
 * ```ts
 * const journal = await CopyJournal.open("/var/lib/iotvault/gateway/journals/main.journal", {
 *   targets: ["file:///srv/a", "s3://backups?endpoint=minio:9000&region=us-east-1&tls=false"],
 * });
 * await journal.record([{ target: "file:///srv/a", key: "data/ab/ab12...", op: "copy" }]); // durable on return
 * for (const entry of journal.entries("file:///srv/a")) await journal.resolve(entry);
 * await journal.close();
 * ```
 *
 * The file is append-only JSON lines: a header (`{"format":"iotvault-copy-journal","version":1,
 * "targets":[...],"reconciled":true}`), then one line per entry (`{"op":"copy"|"delete",
 * "target","key","seq"}`) or resolution (`{"op":"done","target","key","seq"}`, which removes the
 * entry of that sequence number). The latest entry of a (target, key) wins. Every record() is
 * written and fsynced before it resolves (concurrent callers share one fsync); the file is
 * rewritten without the resolved lines (temp file, fsync, rename, fsync of the directory) when
 * it is opened, closed, after a failed append, and when it holds many obsolete lines.
 */
import { randomBytes } from "node:crypto";
import { createReadStream } from "node:fs";
import { mkdir, open, readdir, rename, stat, unlink, type FileHandle } from "node:fs/promises";
import { basename, dirname, join } from "node:path";
import { createInterface } from "node:readline";
import { IotvaultError, toIotvaultError } from "@iotvault/errors";

/** What a target still needs: the object copied to it, or deleted from it. */
export type CopyOperation = "copy" | "delete";

export interface JournalEntry {
  /** The target's URL (without credentials), as given in `targets`. */
  readonly target: string;
  readonly key: string;
  readonly op: CopyOperation;
  /** Increases with every entry; a resolution names the entry it resolves. */
  readonly seq: number;
}

export interface CopyJournalOptions {
  /** The repository's targets, primary first. Entries of other targets are dropped at open. */
  targets: readonly string[];
  /** Rewrite the file once it holds more than this many lines beyond the live entries (default 10,000). */
  compactAfterLines?: number | undefined;
}

/** What open() found in an existing file. */
export interface CopyJournalOpenReport {
  /** There was no journal file: this is a new repository or a new set of targets. */
  created: boolean;
  /** Entries dropped because their target is no longer one of the repository's. */
  droppedEntries: number;
  /** Lines that could not be read (a torn last line after a crash, or damage). */
  skippedLines: number;
  /**
   * True until reconcile has compared the targets' listings once for this set of targets: a
   * new journal, a target added, unreadable lines, or a reconciliation that did not finish.
   */
  reconcileNeeded: boolean;
}

const FORMAT = "iotvault-copy-journal";
const DEFAULT_COMPACT_AFTER_LINES = 10_000;
const WRITE_BATCH_LINES = 1000;

interface Header {
  format: typeof FORMAT;
  version: 1;
  targets: string[];
  reconciled: boolean;
}

interface Waiter {
  resolve: () => void;
  reject: (err: unknown) => void;
}

/** A durable map of (target, key) -> pending copy or delete, kept in one append-only file. */
export class CopyJournal {
  private readonly live = new Map<string, Map<string, JournalEntry>>();
  private nextSeq = 1;
  private reconciled: boolean;
  private handle: FileHandle | undefined;
  private linesInFile = 0;
  private needsRewrite = false;
  private closed = false;
  private queued: string[] = [];
  private waiters: Waiter[] = [];
  private flushing: Promise<void> | undefined;
  private readonly compactAfterLines: number;

  private constructor(
    readonly path: string,
    readonly targets: readonly string[],
    readonly report: CopyJournalOpenReport,
    options: CopyJournalOptions,
  ) {
    for (const target of targets) this.live.set(target, new Map());
    this.reconciled = !report.reconcileNeeded;
    this.compactAfterLines = options.compactAfterLines ?? DEFAULT_COMPACT_AFTER_LINES;
  }

  /**
   * Reads the journal at `path` (a missing file is an empty journal; its directory is created
   * 0700), keeps the entries of `targets`, and rewrites the file compacted. Unreadable lines are
   * skipped and reported, never fatal: reconcile() finds whatever they held.
   */
  static async open(path: string, options: CopyJournalOptions): Promise<CopyJournal> {
    if (options.targets.length === 0 || new Set(options.targets).size !== options.targets.length) {
      throw new IotvaultError("INVALID_ARGUMENT", "a copy journal needs distinct target names", {
        hint: "pass each target URL of the repository once",
      });
    }
    await mkdir(dirname(path), { recursive: true, mode: 0o700 });
    await removeStaleTemps(path);
    const loaded = await readJournal(path, options.targets);
    const journal = new CopyJournal(path, options.targets, loaded.report, options);
    for (const entry of loaded.entries) journal.live.get(entry.target)?.set(entry.key, entry);
    journal.nextSeq = loaded.maxSeq + 1;
    await journal.rewrite();
    return journal;
  }

  /** True until reconcile() has compared every target once (see CopyJournalOpenReport). */
  get reconcileNeeded(): boolean {
    return !this.reconciled;
  }

  /** Entries pending, all targets together. */
  get size(): number {
    let total = 0;
    for (const entries of this.live.values()) total += entries.size;
    return total;
  }

  /** Entries pending for one target. */
  count(target: string): number {
    return this.live.get(target)?.size ?? 0;
  }

  /** The pending entry of (target, key), if any. */
  entry(target: string, key: string): JournalEntry | undefined {
    return this.live.get(target)?.get(key);
  }

  /** A snapshot of the entries pending for `target` (at most `limit`), oldest first. */
  entries(target: string, limit = Number.POSITIVE_INFINITY): JournalEntry[] {
    const out: JournalEntry[] = [];
    for (const entry of this.live.get(target)?.values() ?? []) {
      if (out.length >= limit) break;
      out.push(entry);
    }
    return out;
  }

  /**
   * Records entries (each replaces the pending entry of its target and key); resolves once they
   * are on disk. The in-memory view changes at once, so that reads and heal passes see it.
   */
  record(entries: readonly { target: string; key: string; op: CopyOperation }[]): Promise<void> {
    if (entries.length === 0) return Promise.resolve();
    this.checkOpen();
    const lines: string[] = [];
    for (const { target, key, op } of entries) {
      const forTarget = this.live.get(target);
      if (!forTarget) {
        throw new IotvaultError("INVALID_ARGUMENT", `${target} is not a target of the journal ${this.path}`, {
          hint: "record entries for the repository's own targets only",
        });
      }
      const entry: JournalEntry = { target, key, op, seq: this.nextSeq++ };
      forTarget.delete(key); // re-inserted last: entries() stays in order of recording
      forTarget.set(key, entry);
      lines.push(`${JSON.stringify({ op, target, key, seq: entry.seq })}\n`);
    }
    return this.append(lines);
  }

  /**
   * Removes `entry` if it is still the pending entry of its target and key (a newer one stays).
   * Returns whether it removed it; the resolution is on disk when the promise settles.
   */
  async resolve(entry: JournalEntry): Promise<boolean> {
    this.checkOpen();
    const forTarget = this.live.get(entry.target);
    if (forTarget?.get(entry.key)?.seq !== entry.seq) return false;
    forTarget.delete(entry.key);
    await this.append([`${JSON.stringify({ op: "done", target: entry.target, key: entry.key, seq: entry.seq })}\n`]);
    return true;
  }

  /** Notes that reconcile() compared every target; persisted in the header. */
  async markReconciled(): Promise<void> {
    this.checkOpen();
    if (this.reconciled) return;
    this.reconciled = true;
    this.needsRewrite = true;
    await this.append([]);
  }

  /** Writes what is queued, compacts the file and closes it. Later calls to record() fail. */
  async close(): Promise<void> {
    if (this.closed) return;
    await this.flushing;
    this.closed = true;
    try {
      await this.rewrite();
    } finally {
      await this.handle?.close().catch(() => undefined);
      this.handle = undefined;
    }
  }

  private checkOpen(): void {
    if (this.closed) {
      throw new IotvaultError("FAILED_PRECONDITION", `the copy journal ${this.path} is closed`, {
        hint: "this is a bug: the repository was used after the gateway closed it",
      });
    }
  }

  /** Queues lines; one writer appends and fsyncs everything queued so far (group commit). */
  private append(lines: string[]): Promise<void> {
    return new Promise<void>((resolve, reject) => {
      this.queued.push(...lines);
      this.waiters.push({ resolve, reject });
      this.flushing ??= this.flushLoop();
    });
  }

  private async flushLoop(): Promise<void> {
    try {
      while (this.waiters.length > 0) {
        const lines = this.queued.splice(0);
        const waiters = this.waiters.splice(0);
        try {
          await this.writeLines(lines);
          for (const waiter of waiters) waiter.resolve();
        } catch (err) {
          this.needsRewrite = true; // a failed append may have left a partial line
          const error = journalError(err, this.path);
          for (const waiter of waiters) waiter.reject(error);
        }
      }
    } finally {
      this.flushing = undefined;
    }
  }

  private async writeLines(lines: string[]): Promise<void> {
    const obsolete = this.linesInFile + lines.length - this.size - 1;
    if (this.needsRewrite || obsolete > this.compactAfterLines) {
      await this.rewrite(); // the live map already holds what `lines` say
      return;
    }
    if (lines.length === 0) return;
    if (!this.handle) this.handle = await open(this.path, "a", 0o600);
    await this.handle.appendFile(lines.join(""));
    await this.handle.datasync();
    this.linesInFile += lines.length;
  }

  /** Replaces the file with the header and the live entries (temp file, fsync, rename, fsync dir). */
  private async rewrite(): Promise<void> {
    const temp = `${this.path}.tmp~${randomBytes(6).toString("hex")}`;
    const header: Header = { format: FORMAT, version: 1, targets: [...this.targets], reconciled: this.reconciled };
    const out = await open(temp, "w", 0o600);
    let lines = 1;
    try {
      let batch = [`${JSON.stringify(header)}\n`];
      for (const entries of this.live.values()) {
        for (const { op, target, key, seq } of entries.values()) {
          batch.push(`${JSON.stringify({ op, target, key, seq })}\n`);
          lines++;
          if (batch.length >= WRITE_BATCH_LINES) {
            await out.appendFile(batch.join(""));
            batch = [];
          }
        }
      }
      await out.appendFile(batch.join(""));
      await out.sync();
    } catch (err) {
      await out.close().catch(() => undefined);
      await unlink(temp).catch(() => undefined);
      throw err;
    }
    await out.close();
    await rename(temp, this.path);
    await syncDirectory(dirname(this.path));
    await this.handle?.close().catch(() => undefined);
    this.handle = undefined;
    this.linesInFile = lines;
    this.needsRewrite = false;
  }
}

interface Loaded {
  entries: JournalEntry[];
  maxSeq: number;
  report: CopyJournalOpenReport;
}

/** Replays the file: the latest entry per (target, key) wins, a resolution removes its entry. */
async function readJournal(path: string, targets: readonly string[]): Promise<Loaded> {
  const known = new Set(targets);
  const live = new Map<string, JournalEntry>();
  const report: CopyJournalOpenReport = { created: false, droppedEntries: 0, skippedLines: 0, reconcileNeeded: false };
  let header: Header | undefined;
  let maxSeq = 0;
  let lineNo = 0;
  if (!(await exists(path))) {
    return { entries: [], maxSeq, report: { ...report, created: true, reconcileNeeded: true } };
  }
  const lines = createInterface({ input: createReadStream(path, { encoding: "utf8" }), crlfDelay: Infinity });
  for await (const text of lines) {
    lineNo++;
    if (text.trim() === "") continue;
    const line = parseLine(text);
    if (lineNo === 1 && isHeader(line)) {
      header = line;
      continue;
    }
    if (!isEntryLine(line)) {
      report.skippedLines++;
      continue;
    }
    maxSeq = Math.max(maxSeq, line.seq);
    const id = `${line.target}\n${line.key}`;
    if (line.op === "done") {
      if (live.get(id)?.seq === line.seq) live.delete(id);
    } else {
      live.delete(id);
      live.set(id, { target: line.target, key: line.key, op: line.op, seq: line.seq });
    }
  }
  const entries = [...live.values()].filter((entry) => known.has(entry.target));
  report.droppedEntries = live.size - entries.length;
  const recorded = new Set(header?.targets ?? []);
  const targetAdded = targets.some((target) => !recorded.has(target));
  report.reconcileNeeded = !header?.reconciled || targetAdded || report.skippedLines > 0;
  return { entries, maxSeq, report };
}

type EntryLine = { op: CopyOperation | "done"; target: string; key: string; seq: number };

function parseLine(text: string): unknown {
  try {
    return JSON.parse(text);
  } catch {
    return undefined;
  }
}

function isHeader(line: unknown): line is Header {
  const h = line as Partial<Header> | undefined;
  return h?.format === FORMAT && h.version === 1 && Array.isArray(h.targets) && typeof h.reconciled === "boolean";
}

function isEntryLine(line: unknown): line is EntryLine {
  const e = line as Partial<EntryLine> | undefined;
  return (
    (e?.op === "copy" || e?.op === "delete" || e?.op === "done") &&
    typeof e.target === "string" &&
    typeof e.key === "string" &&
    Number.isSafeInteger(e.seq)
  );
}

async function exists(path: string): Promise<boolean> {
  try {
    await stat(path);
    return true;
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === "ENOENT") return false;
    throw journalError(err, path);
  }
}

/** Temp files of a rewrite interrupted by a crash (the journal itself was never touched). */
async function removeStaleTemps(path: string): Promise<void> {
  const prefix = `${basename(path)}.tmp~`;
  for (const name of await readdir(dirname(path))) {
    if (name.startsWith(prefix)) await unlink(join(dirname(path), name)).catch(() => undefined);
  }
}

async function syncDirectory(dir: string): Promise<void> {
  const handle = await open(dir, "r");
  try {
    await handle.sync();
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code;
    if (code !== "EINVAL" && code !== "ENOTSUP" && code !== "EISDIR") throw err;
  } finally {
    await handle.close();
  }
}

function journalError(err: unknown, path: string): IotvaultError {
  const e = toIotvaultError(err, `cannot write the copy journal ${path}`);
  return new IotvaultError(e.code === "INTERNAL" ? "UNAVAILABLE" : e.code, e.message, {
    cause: err,
    retryable: true,
    hint: "the gateway must record which objects a replica is missing before it answers: free space on the gateway's state volume and check its permissions",
  });
}

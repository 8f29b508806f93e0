/**
 * Large files that changed since the parent snapshot, read ahead of their place in the walk.
 *
 * An incremental backup's walk spends most of its time on unchanged files while the worker
 * threads wait; a large changed file (a historian log with rows inserted, a database file)
 * found near the end of the walk then keeps one or two threads busy after everything else is
 * done. The parent's tree says where its large files are: each of them whose lstat differs
 * from its parent node is read now through the writer (readLocalFileEarly), one at a time in
 * tree order (one worker thread; the others keep sealing what the walk adds), and the walk
 * hands the read to addLocalFile when it gets there. Before the walk reads a large changed file
 * it claims it, once the scan (which is far ahead: it decodes only the large files' lines)
 * has decided on that path: it gets the read started earlier, or one started then when no
 * other is in progress, or reads the file itself.
 *
 * Only what the walk would read is read early: a path that is unsafe, excluded, not included,
 * reached through a symlink (its real path is not the root's plus its path), not a regular
 * file or not larger than LOCAL_FILE_MAX_BYTES is left to the walk. Nothing here can fail a
 * backup: an error ends the head start, and the walk reads what it needs. With a single
 * pipeline thread nothing is read early (the same work in another order on the same thread).
 */
import type { BigIntStats } from "node:fs";
import { lstat, realpath } from "node:fs/promises";
import { join } from "node:path";
import {
  LOCAL_FILE_MAX_BYTES,
  comparePaths,
  unsafePathReason,
  type BackupWriter,
  type EarlyLocalFile,
  type Repository,
  type SnapshotManifest,
  type TreeNode,
} from "@iotvault/repo";

export interface EarlyReadsOptions {
  root: string;
  parent: SnapshotManifest;
  /** Whether the walk would back up this path (include and exclude rules, ancestors too). */
  backedUp(path: string): boolean;
  /** Whether a file with this stat is changed against its parent node (read again by the walk). */
  changed(previous: TreeNode, stat: BigIntStats): boolean;
  /** Reads to try while a file keeps changing under the read. */
  attempts: number;
  signal?: AbortSignal | undefined;
  /** Called with each path read early. */
  onRead?: ((path: string) => void) | undefined;
}

interface Decided {
  path: string;
  abs: string;
}

/** The scan of the parent's large files, the queue of files to read early, the read in progress. */
export class EarlyReads {
  /** Reads started and not yet claimed, by path. */
  private readonly handles = new Map<string, EarlyLocalFile>();
  /** Files decided on and not yet started, in tree order. */
  private readonly queue: Decided[] = [];
  /** The last path the scan decided on; the scan is done when `scanning` is false. */
  private decidedUpTo: string | undefined;
  private scanning = true;
  private waiters: (() => void)[] = [];
  /** The last path the walk reached. */
  private reachedPath: string | undefined;
  private reading: Promise<void> | undefined;
  private stopped = false;
  private readonly scan: Promise<void>;
  /** Files read early so far (for tests and benchmarks). */
  started = 0;

  constructor(
    private readonly repo: Repository,
    private readonly writer: BackupWriter,
    private readonly options: EarlyReadsOptions,
  ) {
    this.scan = this.runScan();
  }

  /** The walk got to `path` (in walk order): files up to it are the walk's to read. */
  reached(path: string): void {
    this.reachedPath = path;
  }

  /**
   * Called by the walk before it reads a large file: waits until the scan has decided on
   * `path`, then hands out its early read (once), or undefined: the walk reads it itself.
   */
  async claim(path: string): Promise<EarlyLocalFile | undefined> {
    while (this.scanning && !this.stopped && !this.decided(path)) {
      await new Promise<void>((resolve) => this.waiters.push(resolve));
    }
    const queued = this.queue.findIndex((d) => d.path === path);
    // Decided on and not started yet: started now unless another read is in progress.
    if (queued >= 0) this.start(this.queue.splice(queued, 1)[0]!, true);
    const handle = this.handles.get(path);
    if (handle) this.handles.delete(path);
    return handle;
  }

  /** Starts no more reads, and waits for the scan and the read in progress. */
  async close(): Promise<void> {
    this.stopped = true;
    this.queue.length = 0;
    this.wake();
    await this.scan;
    await this.reading;
  }

  private decided(path: string): boolean {
    return this.decidedUpTo !== undefined && comparePaths(this.decidedUpTo, path) >= 0;
  }

  /** The walk went past `path` (at it, it may still claim it). */
  private walkIsPast(path: string): boolean {
    return this.reachedPath !== undefined && comparePaths(path, this.reachedPath) < 0;
  }

  private wake(): void {
    for (const w of this.waiters.splice(0)) w();
  }

  private async runScan(): Promise<void> {
    const o = this.options;
    try {
      const tree = this.repo.readTree(o.parent, o.signal, { filesOfAtLeast: LOCAL_FILE_MAX_BYTES + 1 });
      let realRoot: string | undefined;
      for await (const previous of tree) {
        if (this.stopped || o.signal?.aborted) return;
        const path = previous.path;
        if (unsafePathReason(path) === undefined && o.backedUp(path)) {
          const abs = join(o.root, path);
          realRoot ??= await realpath(o.root);
          if (await this.worthReading(previous, abs, join(realRoot, path))) {
            this.queue.push({ path, abs });
            this.next();
          }
        }
        this.decidedUpTo = path;
        this.wake();
      }
    } catch {
      // a head start lost, nothing else: the walk reads every file it needs
    } finally {
      this.scanning = false;
      this.wake();
    }
  }

  /** A regular file, larger than what is read whole, changed, reached without a symlink. */
  private async worthReading(previous: TreeNode, abs: string, expectedReal: string): Promise<boolean> {
    let stat: BigIntStats;
    try {
      stat = await lstat(abs, { bigint: true });
    } catch {
      return false;
    }
    if (!stat.isFile() || stat.size <= BigInt(LOCAL_FILE_MAX_BYTES) || !this.options.changed(previous, stat)) {
      return false;
    }
    return (await realpath(abs).catch(() => "")) === expectedReal;
  }

  /** Starts the next queued read the walk has not gone past, when none is in progress. */
  private next(): void {
    while (!this.reading && !this.stopped && this.queue.length > 0) this.start(this.queue.shift()!, false);
  }

  /** Reads `d` early when no read is in progress (and the walk is not past it, unless it claims it). */
  private start(d: Decided, claimed: boolean): void {
    if (this.reading || this.stopped || (!claimed && this.walkIsPast(d.path))) return;
    let handle: EarlyLocalFile | undefined;
    try {
      handle = this.writer.readLocalFileEarly(d.abs, { attempts: this.options.attempts });
    } catch {
      handle = undefined; // the backup is over or failing: the walk sees why
    }
    if (!handle) {
      // (or a single pipeline thread: nothing to gain)
      this.stopped = true;
      this.queue.length = 0;
      return;
    }
    this.handles.set(d.path, handle);
    this.started++;
    try {
      this.options.onRead?.(d.path);
    } catch {
      // a failing callback never fails the backup
    }
    this.reading = handle.done.then(() => {
      this.reading = undefined;
      this.next();
    });
  }
}

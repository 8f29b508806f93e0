/**
 * File-system backup: walks a directory in sorted order and feeds a BackupWriter. With a
 * parent snapshot, files whose size, mtime, ctime and inode are unchanged are not read again
 * (a streaming merge-join of the walk with the parent's tree: no map of the parent in memory).
 */
import type { BigIntStats } from "node:fs";
import { readlink, stat } from "node:fs/promises";
import { IotvaultError, toIotvaultError } from "@iotvault/errors";
import {
  LOCAL_FILE_MAX_BYTES,
  comparePaths,
  type BackupWriter,
  type EarlyLocalFile,
  type LocalFileStat,
  type Repository,
  type SnapshotManifest,
  type TreeNode,
} from "@iotvault/repo";
import { EarlyReads } from "./early.js";
import { compileGlobs, isUnder } from "./globs.js";
import { InFlight } from "./in-flight.js";
import { walk, type WalkEntry } from "./walk.js";

export interface FsProgress {
  filesDone: number;
  bytesDone: number;
  currentPath: string;
}

export interface FsWarning {
  path: string;
  message: string;
}

export interface BackupDirectoryOptions {
  root: string;
  /** picomatch globs on root-relative paths; empty or absent = everything. */
  include?: string[] | undefined;
  exclude?: string[] | undefined;
  /** The previous snapshot of the same source: unchanged files are taken from it. */
  parent?: SnapshotManifest | undefined;
  signal?: AbortSignal | undefined;
  onProgress?: ((p: FsProgress) => void) | undefined;
  /** Files skipped (vanished, unreadable, special, changing while read) are reported here. */
  onWarning?: ((w: FsWarning) => void) | undefined;
  /**
   * With a parent: read the parent's large files that changed ahead of their place in the walk
   * (see early.ts). Default true; the snapshot is the same either way.
   */
  earlyReads?: boolean | undefined;
  /** Called with the path of each file read ahead of the walk (see earlyReads). */
  onEarlyRead?: ((path: string) => void) | undefined;
}

export interface BackupDirectoryResult {
  files: number;
  dirs: number;
  symlinks: number;
  /** Plain bytes of the files in the snapshot (read or unchanged). */
  bytes: number;
  /** Files that were not read again because the parent snapshot has them unchanged. */
  unchanged: number;
  /** Large changed files read ahead of their place in the walk (see earlyReads). */
  readEarly: number;
  /** Entries skipped with a warning. */
  warnings: number;
}

/** Attempts to read a file that keeps changing while it is read, before it is skipped. */
const READ_ATTEMPTS = 3;

/** Progress callbacks come at most this often (one per small file would cost more than the file). */
export const PROGRESS_INTERVAL_MS = 100;
/**
 * Writer calls left pending at most, and the bytes of the small files among them (read and
 * sealed in worker threads; their results wait for their turn in the tree): enough to keep
 * every worker busy, few enough to bound memory.
 */
const IN_FLIGHT_CALLS = 256;
const IN_FLIGHT_BYTES = 16 * 1024 * 1024;

type Step =
  | { kind: "dir"; entry: WalkEntry }
  | { kind: "symlink"; entry: WalkEntry }
  | { kind: "unchanged"; entry: WalkEntry; previous: TreeNode }
  | { kind: "file"; entry: WalkEntry; previous: TreeNode | undefined };

function readTarget(abs: string): Promise<string | Error> {
  return readlink(abs).catch((err: unknown) => (err instanceof Error ? err : new Error(String(err))));
}

/**
 * Backs up `options.root` into `writer` (the caller commits it).
 *
 * ```ts
 * const writer = await repo.startBackup({ runId, parent });
 * const result = await backupDirectory(repo, writer, { root: "/srv/iot", exclude: ["*.tmp"], parent });
 * await writer.commit({ jobId, jobName, source: "fs:/srv/iot", backupType: "incremental" });
 * ```
 */
export async function backupDirectory(
  repo: Repository,
  writer: BackupWriter,
  options: BackupDirectoryOptions,
): Promise<BackupDirectoryResult> {
  const root = await checkRoot(options.root);
  const run = new FsBackup(repo, writer, options);
  try {
    for await (const entry of walk(root, run.hooks)) {
      options.signal?.throwIfAborted();
      for (const step of await run.plan(entry)) await run.execute(step);
    }
    await run.inFlight.drain();
  } catch (err) {
    await run.inFlight.discard();
    throw asCancelled(err) ?? err;
  } finally {
    await run.close();
  }
  return run.result;
}

/** An AbortSignal's AbortError as CANCELLED; undefined for other errors. */
export function asCancelled(err: unknown): IotvaultError | undefined {
  if ((err as { name?: unknown } | null)?.name !== "AbortError") return undefined;
  return new IotvaultError("CANCELLED", "the file-system operation was cancelled", { cause: err });
}

async function checkRoot(root: string): Promise<string> {
  let info: BigIntStats;
  try {
    info = await stat(root, { bigint: true });
  } catch (err) {
    throw toIotvaultError(err, `source root ${root}`);
  }
  if (!info.isDirectory()) {
    throw new IotvaultError("INVALID_ARGUMENT", `source root ${root} is not a directory`, {
      hint: "point the fs: source at a directory",
    });
  }
  return root;
}

class FsBackup {
  readonly result: BackupDirectoryResult = {
    files: 0,
    dirs: 0,
    symlinks: 0,
    bytes: 0,
    unchanged: 0,
    readEarly: 0,
    warnings: 0,
  };
  readonly inFlight = new InFlight();
  private lastProgress = -Infinity;
  readonly hooks;
  private readonly include: ((p: string) => boolean) | undefined;
  private readonly exclude: ((p: string) => boolean) | undefined;
  private readonly parent: ParentCursor | undefined;
  private readonly early: EarlyReads | undefined;
  /** Directories whose node waits for an included descendant (include mode only). */
  private readonly pendingDirs: WalkEntry[] = [];
  /** The innermost included directory on the current path: everything under it is included. */
  private readonly includedDirs: string[] = [];

  constructor(
    private readonly repo: Repository,
    private readonly writer: BackupWriter,
    private readonly options: BackupDirectoryOptions,
  ) {
    this.include = options.include?.length ? compileGlobs(options.include, "include") : undefined;
    this.exclude = options.exclude?.length ? compileGlobs(options.exclude, "exclude") : undefined;
    this.parent = options.parent
      ? new ParentCursor(repo.readTree(options.parent, options.signal, { frozen: true }), (m) =>
          this.warn("(parent snapshot)", m),
        )
      : undefined;
    this.early =
      options.parent && options.earlyReads !== false
        ? new EarlyReads(repo, writer, {
            root: options.root,
            parent: options.parent,
            backedUp: (path) => this.backedUp(path),
            changed: (previous, stat) => !unchanged(previous, stat),
            attempts: READ_ATTEMPTS,
            signal: options.signal,
            onRead: options.onEarlyRead,
          })
        : undefined;
    this.hooks = {
      accept: (path: string) => !this.exclude?.(path),
      warn: (path: string, message: string) => this.warn(path, message),
      signal: options.signal,
    };
  }

  async close(): Promise<void> {
    await this.early?.close();
    this.result.readEarly = this.early?.started ?? 0;
    await this.parent?.close();
  }

  /** Whether the walk backs up `path`: no excluded ancestor or itself, and included (or an ancestor is). */
  private backedUp(path: string): boolean {
    let included = !this.include;
    for (let end = path.indexOf("/"); ; end = path.indexOf("/", end + 1)) {
      const prefix = end < 0 ? path : path.slice(0, end);
      if (this.exclude?.(prefix)) return false;
      included ||= this.include!(prefix);
      if (end < 0) return included;
    }
  }

  /** Decides, in walk order, what to do with an entry (include rules, the parent's node). */
  async plan(entry: WalkEntry): Promise<Step[]> {
    if (entry.kind === "other") {
      this.warn(entry.path, "skipped: sockets, FIFOs and device files are not backed up");
      return [];
    }
    this.early?.reached(entry.path);
    if (!this.included(entry)) return [];
    const steps: Step[] = this.pendingDirs.splice(0).map((dir) => ({ kind: "dir", entry: dir }));
    if (entry.kind === "dir") steps.push({ kind: "dir", entry });
    else if (entry.kind === "symlink") steps.push({ kind: "symlink", entry });
    else steps.push(await this.planFile(entry));
    return steps;
  }

  private async planFile(entry: WalkEntry): Promise<Step> {
    const previous = await this.parent?.find(entry.path);
    if (previous && unchanged(previous, entry.stat)) return { kind: "unchanged", entry, previous };
    return { kind: "file", entry, previous };
  }

  /**
   * Carries out one step, in walk order. Writer calls for directories, symlinks, unchanged and
   * small files are left pending (the writer keeps their order) so that small files are hashed
   * and sealed in parallel; a large file is streamed and awaited.
   */
  async execute(step: Step): Promise<void> {
    switch (step.kind) {
      case "dir":
        this.inFlight.add(this.writer.addNode(baseNode(step.entry, "dir")).then(() => void this.result.dirs++));
        break;
      case "symlink":
        this.addSymlink(step.entry, await readTarget(step.entry.abs));
        break;
      case "unchanged":
        if (!this.addUnchanged(step.entry, step.previous)) this.addFile(step.entry, true);
        break;
      case "file": {
        // A large file the early reads may have started: their scan decides on it first.
        const early =
          step.entry.stat.size > BigInt(LOCAL_FILE_MAX_BYTES) ? await this.early?.claim(step.entry.path) : undefined;
        this.addFile(step.entry, step.previous !== undefined, early);
        break;
      }
    }
    await this.inFlight.settle(IN_FLIGHT_CALLS, IN_FLIGHT_BYTES);
  }

  /** Include logic: a node is included when it or one of its ancestors matches. */
  private included(entry: WalkEntry): boolean {
    if (!this.include) return true;
    while (this.includedDirs.length > 0 && !isUnder(this.includedDirs[this.includedDirs.length - 1]!, entry.path)) {
      this.includedDirs.pop();
    }
    while (this.pendingDirs.length > 0 && !isUnder(this.pendingDirs[this.pendingDirs.length - 1]!.path, entry.path)) {
      this.pendingDirs.pop();
    }
    const yes = this.includedDirs.length > 0 || this.include(entry.path);
    if (entry.kind === "dir") {
      if (yes) this.includedDirs.push(entry.path);
      else this.pendingDirs.push(entry);
    }
    return yes;
  }

  private addSymlink(entry: WalkEntry, target: string | Error): void {
    if (target instanceof Error) {
      this.warn(entry.path, `skipped, the symlink cannot be read: ${target.message}`);
      return;
    }
    this.inFlight.add(
      this.writer.addNode({ ...baseNode(entry, "symlink"), target }).then(() => void this.result.symlinks++),
    );
  }

  /** Adds a file from the parent snapshot; false when its chunks are gone (read it again). */
  private addUnchanged(entry: WalkEntry, previous: TreeNode): boolean {
    if (!(previous.chunks ?? []).every((id) => this.repo.hasChunk(id))) return false;
    const size = Number(entry.stat.size);
    // The parent's node itself when nothing about the file changed: the writer then copies the
    // line it was stored as (most nodes of an incremental backup).
    const node = sameOwnerAndMode(previous, entry.stat)
      ? previous
      : { ...fileNode(entry.path, entry.stat), ...contentOf(previous) };
    this.inFlight.add(this.writer.addUnchangedFile(node).then(() => this.fileDone(entry.path, size, true)));
    return true;
  }

  /**
   * The writer reads, hashes and seals the file in a worker thread (whole when small, a segment
   * at a time through one worker when large), read again while it changes; the call is left
   * pending. A streamed file's memory is bounded by the writer (a few segments), so it does not
   * count towards the bytes in flight: small files go on being sealed by the other workers.
   */
  private addFile(entry: WalkEntry, existedInParent: boolean, early?: EarlyLocalFile): void {
    const size = Number(entry.stat.size);
    const outcome = this.writer.addLocalFile(entry.abs, size, {
      existedInParent,
      attempts: READ_ATTEMPTS,
      early,
      node: (stat) => localFileNode(entry.path, stat),
    });
    this.inFlight.add(
      outcome.then((o) =>
        o.added ? this.fileDone(entry.path, o.node.size ?? 0, false) : this.warn(entry.path, o.message),
      ),
      size <= LOCAL_FILE_MAX_BYTES ? size : 0,
    );
  }

  private fileDone(path: string, size: number, wasUnchanged: boolean): void {
    this.result.files++;
    this.result.bytes += size;
    if (wasUnchanged) this.result.unchanged++;
    const now = performance.now();
    if (now - this.lastProgress < PROGRESS_INTERVAL_MS) return;
    this.lastProgress = now;
    try {
      this.options.onProgress?.({ filesDone: this.result.files, bytesDone: this.result.bytes, currentPath: path });
    } catch {
      // a failing progress callback never fails the backup
    }
  }

  private warn(path: string, message: string): void {
    this.result.warnings++;
    try {
      this.options.onWarning?.({ path, message });
    } catch {
      // ignore
    }
  }
}

/** Read errors of the source file (not of the repository): EIO, EACCES mid-read, ... */

function baseNode(entry: WalkEntry, type: "dir" | "symlink"): TreeNode {
  const s = entry.stat;
  return {
    path: entry.path,
    type,
    mode: Number(s.mode & 0o7777n),
    mtimeNs: s.mtimeNs.toString(),
    uid: Number(s.uid),
    gid: Number(s.gid),
  };
}

function fileNode(path: string, s: BigIntStats): Omit<TreeNode, "chunks" | "sha256"> {
  return {
    path,
    type: "file",
    mode: Number(s.mode & 0o7777n),
    mtimeNs: s.mtimeNs.toString(),
    uid: Number(s.uid),
    gid: Number(s.gid),
    size: Number(s.size),
    inode: s.ino.toString(),
    dev: s.dev.toString(),
    ctimeNs: s.ctimeNs.toString(),
  };
}

/** The node of a file read by the writer, from the stat it was opened under. */
export function localFileNode(path: string, s: LocalFileStat): Omit<TreeNode, "chunks" | "sha256"> {
  return {
    path,
    type: "file",
    mode: s.mode & 0o7777,
    mtimeNs: s.mtimeNs.toString(),
    uid: s.uid,
    gid: s.gid,
    size: s.size,
    inode: s.ino.toString(),
    dev: s.dev.toString(),
    ctimeNs: s.ctimeNs.toString(),
  };
}

function unchanged(previous: TreeNode, s: BigIntStats): boolean {
  return (
    previous.type === "file" &&
    previous.chunks !== undefined &&
    previous.sha256 !== undefined &&
    previous.size === Number(s.size) &&
    previous.mtimeNs === s.mtimeNs.toString() &&
    previous.ctimeNs === s.ctimeNs.toString() &&
    previous.inode === s.ino.toString()
  );
}

/** With unchanged(): the rest of a file node (its path is the walk's, its content the parent's). */
function sameOwnerAndMode(previous: TreeNode, s: BigIntStats): boolean {
  return (
    previous.mode === Number(s.mode & 0o7777n) &&
    previous.uid === Number(s.uid) &&
    previous.gid === Number(s.gid) &&
    previous.dev === s.dev.toString()
  );
}

function contentOf(previous: TreeNode): Pick<TreeNode, "chunks" | "sha256"> {
  return { chunks: previous.chunks ?? [], sha256: previous.sha256 ?? "" };
}

/**
 * Walks the parent's tree alongside the directory walk. `find` must be called with paths in
 * increasing comparePaths order (the walk order); each parent node is looked at once.
 */
class ParentCursor {
  private readonly iterator: AsyncIterator<TreeNode>;
  private current: TreeNode | undefined;
  private done = false;

  constructor(
    tree: AsyncIterable<TreeNode>,
    private readonly warn: (message: string) => void,
  ) {
    this.iterator = tree[Symbol.asyncIterator]();
  }

  async close(): Promise<void> {
    if (this.done) return;
    this.done = true;
    await this.iterator.return?.().catch(() => undefined);
  }

  async find(path: string): Promise<TreeNode | undefined> {
    while (!this.done) {
      if (!this.current && !(await this.advance())) return undefined;
      const order = comparePaths(this.current!.path, path);
      if (order > 0) return undefined;
      const node = this.current;
      this.current = undefined;
      if (order === 0) return node;
    }
    return undefined;
  }

  private async advance(): Promise<boolean> {
    try {
      const next = await this.iterator.next();
      if (next.done) {
        this.done = true;
        return false;
      }
      this.current = next.value;
      return true;
    } catch (err) {
      this.done = true;
      this.warn(`the parent snapshot's tree cannot be read (${(err as Error).message}); every file is read again`);
      return false;
    }
  }
}

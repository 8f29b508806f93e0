/**
 * File-system restore: writes a snapshot (or the nodes matching include globs, plus the
 * directories leading to them) into a target directory, confined to it:
 *  - a node path that is absolute or has "." / ".." / empty segments is refused;
 *  - every parent directory is checked with lstat and never followed when it is a symlink;
 *  - files are written to a temporary name (O_CREAT|O_EXCL|O_NOFOLLOW) and renamed into place;
 *  - a symlink whose target resolves outside the target is refused unless allowed, and even
 *    then nothing is ever written through it. The check is lexical when the link is made, and
 *    again at the end through the restored tree itself (following the links on the way), so a
 *    chain of links that each look inside (`x -> .`, `a -> x/x/../..`) cannot point out.
 * Directory modes and times are set after their contents (on leaving them in the walk).
 *
 * Decision: the target side uses synchronous fs calls (as the backup's walk does): on many
 * small files they cost a fraction of the async API's thread-pool round trips, and each blocks
 * the event loop only for one small operation. A file is created, and after its content (written
 * by the worker threads) gets its owner, mode, times and final name, with synchronous calls while
 * those stay fast; after a few slow ones (NFS, a congested disk) through the thread pool, so that
 * a slow file system never holds the event loop (the transfers from the repository).
 */
import { randomBytes } from "node:crypto";
import {
  closeSync,
  constants,
  fchmodSync,
  fchownSync,
  futimesSync,
  lchownSync,
  lstatSync,
  lutimesSync,
  mkdirSync,
  openSync,
  readFileSync,
  renameSync,
  open,
  close,
  fchmod,
  fchown,
  futimes,
  rename,
  unlink,
  readlinkSync,
  symlinkSync,
  unlinkSync,
  type BigIntStats,
} from "node:fs";
import { mkdir, realpath } from "node:fs/promises";
import { dirname, join, resolve, sep } from "node:path";
import { promisify } from "node:util";
import { IotvaultError, toIotvaultError } from "@iotvault/errors";
import {
  NEW_FILE_FLAGS,
  unsafePathReason,
  type FileReader,
  type Repository,
  type SnapshotManifest,
  type TreeNode,
} from "@iotvault/repo";
import { PROGRESS_INTERVAL_MS, asCancelled, type FsProgress } from "./backup.js";
import { compileGlobs, isUnder } from "./globs.js";

export interface RestoreDirectoryOptions {
  /** The directory to restore into; created when missing. */
  target: string;
  /** Restore only nodes matching these globs (and everything under matching directories). */
  include?: string[] | undefined;
  /** Replace existing files and symlinks in the target (directories are merged, never replaced). */
  overwrite?: boolean | undefined;
  /** Allow symlinks whose target points outside the restore directory. */
  allowExternalSymlinks?: boolean | undefined;
  /** Read every restored file back and compare its sha256 with the snapshot's. */
  verify?: boolean | undefined;
  /**
   * Create files and set their metadata and names through the thread pool from the start (a
   * target file system known to be slow); by default that happens after SLOW_CALLS_LIMIT slow
   * synchronous calls.
   */
  fileCallsInThreadPool?: boolean | undefined;
  signal?: AbortSignal | undefined;
  onProgress?: ((p: FsProgress) => void) | undefined;
}

export interface RestoreDirectoryResult {
  files: number;
  dirs: number;
  symlinks: number;
  bytes: number;
  verified: boolean;
}

const IS_ROOT = typeof process.getuid === "function" && process.getuid() === 0;
const EUID = process.geteuid?.() ?? -1;
const EGID = process.getegid?.() ?? -1;
/**
 * The process's umask, from /proc (process.umask() without an argument is deprecated, and
 * setting it to read it back would race with other threads); unknown = every bit masked, so
 * that each file gets its fchmod.
 */
const UMASK = (() => {
  try {
    const m = /^Umask:\s+([0-7]+)$/m.exec(readFileSync("/proc/self/status", "utf8"));
    return m ? parseInt(m[1]!, 8) : 0o777;
  } catch {
    return 0o777;
  }
})();

/** Plain bytes fetched from the repository ahead of the writes (the memory a restore holds). */
const AHEAD_BYTES = 64 * 1024 * 1024;
/**
 * Creating a file, and setting its owner, mode, times and name, takes a few microseconds per
 * call on a local file system, where each thread-pool round trip costs more than the call (a
 * restore of 26,000 files: 1-2 s and 2-3 CPU-s less done synchronously; docs/performance.md).
 * Once this many files took longer than SLOW_CALLS_MS for either, the rest of the restore uses
 * the thread pool.
 */
const SLOW_CALLS_MS = 2;
const SLOW_CALLS_LIMIT = 8;
/**
 * Files queued for writing at once, and their chunks at most. The reader merges the chunks of
 * the files queued into ranged gets, so it must see well past its look-ahead: with 512 files
 * / 64 MiB (the look-ahead itself) the gets of a 1 GiB restore averaged ~85 KB, with 4,096
 * files they are a few times larger and the storage-gateway's CPU halves (docs/performance.md).
 * Queued chunks are not held (AHEAD_BYTES bounds what is fetched and not written), each is a
 * small record; they are bounded by count, not size: a size bound (it was 256 MiB) stopped the
 * walk behind one large file (a 640 MiB relation file) and the files after it were fetched in a
 * second, smaller window once it was written. Each queued file holds a descriptor: at most a
 * quarter of the process's limit of open files.
 */
const FILES_IN_FLIGHT = Math.min(4096, Math.max(64, Math.floor(openFilesLimit() / 4)));
const CHUNKS_IN_FLIGHT = 16384;

/** The soft limit of open files (Node raises it to the hard limit at start); 1024 when unknown. */
function openFilesLimit(): number {
  try {
    const line = /^Max open files\s+(\S+)/m.exec(readFileSync("/proc/self/limits", "utf8"));
    if (line?.[1] === "unlimited") return Number.MAX_SAFE_INTEGER;
    const n = Number(line?.[1]);
    return Number.isInteger(n) && n > 0 ? n : 1024;
  } catch {
    return 1024;
  }
}

/**
 * Restores `snapshot` into `options.target`.
 *
 * ```ts
 * const snapshot = await repo.loadSnapshot("3f9a2c");
 * await restoreToDirectory(repo, snapshot, { target: "/srv/restore", include: ["etc/**"], verify: true });
 * ```
 */
export async function restoreToDirectory(
  repo: Repository,
  snapshot: SnapshotManifest,
  options: RestoreDirectoryOptions,
): Promise<RestoreDirectoryResult> {
  const target = resolve(options.target);
  try {
    await mkdir(target, { recursive: true });
    const reader = repo.readFiles({ signal: options.signal, aheadBytes: AHEAD_BYTES });
    const run = new FsRestore(reader, await realpath(target), options);
    try {
      for await (const node of repo.readTree(snapshot, options.signal)) await run.visit(node);
      await run.finish();
    } catch (err) {
      reader.close();
      await run.abandon();
      throw err;
    }
    reader.close();
    return run.result;
  } catch (err) {
    throw asCancelled(err) ?? toIotvaultError(err, `restoring into ${target}`);
  }
}

const refuse = (
  code: "PERMISSION_DENIED" | "INVALID_ARGUMENT" | "ALREADY_EXISTS",
  path: string,
  why: string,
  hint?: string,
) => new IotvaultError(code, `refusing to restore ${JSON.stringify(path)}: ${why}`, hint ? { hint } : {});

/**
 * A time for utimes: seconds as a double, which libuv truncates to nanoseconds. A double holds
 * about 0.24 us at today's epoch, so times are restored to the microsecond; the half-microsecond
 * added keeps the truncation from landing one microsecond early.
 */
function seconds(ns: string): number {
  return Number(BigInt(ns) / 1000n) / 1e6 + 5e-7;
}

class FsRestore {
  readonly result: RestoreDirectoryResult;
  private readonly include: ((p: string) => boolean) | undefined;
  /** Directories restored on the current path; their mode and times are set on leaving them. */
  private readonly openDirs: { node: TreeNode; abs: string }[] = [];
  /** Directory nodes not yet created, waiting for an included descendant (include mode). */
  private readonly pendingDirs: TreeNode[] = [];
  private readonly includedDirs: string[] = [];
  /** Root-relative directories known to be real directories in the target (checked or created). */
  private readonly realDirs = new Set<string>([""]);
  /** Directories this restore created (empty then): a file in one needs no check for an existing one. */
  private readonly createdDirs = new Set<string>();
  /** Temporary names: a random prefix per restore and a counter (O_EXCL catches any clash). */
  private readonly tempPrefix = `.iotvault-restore-${randomBytes(6).toString("hex")}-`;
  private tempCount = 0;
  /** Files being written, and those of each directory (its mode and times are set after them). */
  private readonly writing = new Set<Promise<void>>();
  private chunksWriting = 0;
  /** Woken when a file in flight is done (the walk waits for room). */
  private roomWaiter: (() => void) | undefined;
  private readonly writingIn = new Map<string, Set<Promise<void>>>();
  /** Directories left in the walk whose metadata waits for their files. */
  private readonly finalizing = new Set<Promise<void>>();
  private failure: { error: unknown } | undefined;
  private lastProgress = -Infinity;
  /** Synchronous creations or metadata updates that took longer than SLOW_CALLS_MS. */
  private slowCalls = 0;
  /** Symlinks this restore made (root-relative), checked again through the final tree. */
  private readonly linksMade: string[] = [];

  constructor(
    private readonly reader: FileReader,
    private readonly base: string,
    private readonly options: RestoreDirectoryOptions,
  ) {
    this.include = options.include?.length ? compileGlobs(options.include, "include") : undefined;
    this.result = { files: 0, dirs: 0, symlinks: 0, bytes: 0, verified: options.verify === true };
  }

  /** Restores one node (a file's content is written in the background, see restoreFile). */
  async visit(node: TreeNode): Promise<void> {
    this.options.signal?.throwIfAborted();
    if (this.failure) throw this.failure.error;
    const unsafe = unsafePathReason(node.path);
    if (unsafe)
      throw refuse("INVALID_ARGUMENT", node.path, unsafe, "the snapshot is damaged or was made by a hostile writer");
    this.leaveDirsNotAbove(node.path);
    if (!this.included(node)) return;
    for (const dir of this.pendingDirs.splice(0)) this.restoreDir(dir);
    if (node.type === "dir") this.restoreDir(node);
    else if (node.type === "symlink") this.restoreSymlink(node);
    else await this.restoreFile(node);
  }

  /** Waits for the files being written, then sets the metadata of the directories still open. */
  async finish(): Promise<void> {
    while (this.openDirs.length > 0) this.leaveDir(this.openDirs.pop()!);
    while (this.writing.size > 0 || this.finalizing.size > 0) {
      await Promise.allSettled([...this.writing, ...this.finalizing]);
    }
    if (this.failure) throw this.failure.error;
    if (!this.options.allowExternalSymlinks) this.checkLinksInside();
  }

  /**
   * Resolves every symlink this restore made through the restored tree (links followed as the
   * kernel would) and removes, then refuses, any that ends outside the restore directory.
   */
  private checkLinksInside(): void {
    const escaping = this.linksMade.filter((rel) => !resolvesInside(this.base, this.abs(rel)));
    if (escaping.length === 0) return;
    for (const rel of escaping) ignoreError(() => unlinkSync(this.abs(rel)));
    this.result.symlinks -= escaping.length;
    const more = escaping.length > 1 ? ` (and ${escaping.length - 1} more)` : "";
    throw refuse(
      "PERMISSION_DENIED",
      escaping[0]!,
      `through other symlinks in the restored tree it points outside the restore directory${more}; removed`,
      "pass allowExternalSymlinks to restore it anyway (nothing is written through it)",
    );
  }

  /** After a failure: lets the writes in flight end (each removes its temporary file). */
  async abandon(): Promise<void> {
    while (this.writing.size > 0 || this.finalizing.size > 0) {
      await Promise.allSettled([...this.writing, ...this.finalizing]);
    }
  }

  private included(node: TreeNode): boolean {
    if (!this.include) return true;
    while (this.includedDirs.length > 0 && !isUnder(this.includedDirs[this.includedDirs.length - 1]!, node.path)) {
      this.includedDirs.pop();
    }
    while (this.pendingDirs.length > 0 && !isUnder(this.pendingDirs[this.pendingDirs.length - 1]!.path, node.path)) {
      this.pendingDirs.pop();
    }
    const yes = this.includedDirs.length > 0 || this.include(node.path);
    if (node.type === "dir") {
      if (yes) this.includedDirs.push(node.path);
      else this.pendingDirs.push(node);
    }
    return yes;
  }

  private leaveDirsNotAbove(path: string): void {
    while (this.openDirs.length > 0 && !isUnder(this.openDirs[this.openDirs.length - 1]!.node.path, path)) {
      this.leaveDir(this.openDirs.pop()!);
    }
  }

  /** A directory's metadata is set once the files written into it are in place. */
  private leaveDir(dir: { node: TreeNode; abs: string }): void {
    const files = this.writingIn.get(dir.node.path);
    this.writingIn.delete(dir.node.path);
    if (!files || files.size === 0) {
      this.finalizeDir(dir);
      return;
    }
    const task = Promise.allSettled([...files]).then(() => {
      if (!this.failure) this.finalizeDir(dir);
    });
    void this.track(task, this.finalizing);
  }

  /** Keeps `task` in `set` until it settles; its failure becomes the restore's failure. */
  private track(task: Promise<void>, set: Set<Promise<void>>): Promise<void> {
    const settled = task.catch((error: unknown) => {
      this.failure ??= { error };
    });
    set.add(settled);
    void settled.finally(() => set.delete(settled));
    return settled;
  }

  private abs(path: string): string {
    return join(this.base, ...path.split("/"));
  }

  /** Makes sure every ancestor of `path` is a real directory inside the target (never a symlink). */
  private ensureParents(path: string): void {
    const segments = path.split("/");
    let rel = "";
    for (const segment of segments.slice(0, -1)) {
      rel = rel === "" ? segment : `${rel}/${segment}`;
      if (this.realDirs.has(rel)) continue;
      const info = lstatOrUndefined(this.abs(rel));
      if (!info) {
        mkdirSync(this.abs(rel), { mode: 0o755 });
        this.createdDirs.add(rel);
      } else if (info.isSymbolicLink()) {
        throw refuse(
          "PERMISSION_DENIED",
          path,
          `its parent ${rel} is a symlink in the target; nothing is written through it`,
        );
      } else if (!info.isDirectory()) {
        throw refuse("PERMISSION_DENIED", path, `its parent ${rel} is not a directory in the target`);
      }
      this.realDirs.add(rel);
    }
  }

  private restoreDir(node: TreeNode): void {
    this.ensureParents(node.path);
    const abs = this.abs(node.path);
    const info = lstatOrUndefined(abs);
    if (info?.isSymbolicLink()) {
      throw refuse("PERMISSION_DENIED", node.path, "a symlink exists at this path in the target; it is not followed");
    }
    if (info && !info.isDirectory()) {
      if (!this.options.overwrite) throw this.exists(node.path);
      unlinkSync(abs);
    }
    if (!info?.isDirectory()) {
      mkdirSync(abs, { mode: 0o700 });
      this.createdDirs.add(node.path);
    }
    this.realDirs.add(node.path);
    this.openDirs.push({ node, abs });
    this.result.dirs++;
  }

  /** Sets a directory's owner, mode and times after its contents, without following symlinks. */
  private finalizeDir(dir: { node: TreeNode; abs: string }): void {
    const fd = openSync(dir.abs, constants.O_RDONLY | constants.O_DIRECTORY | constants.O_NOFOLLOW);
    try {
      applyMetadata(fd, dir.node);
    } finally {
      closeSync(fd);
    }
  }

  private restoreSymlink(node: TreeNode): void {
    const linkText = node.target ?? "";
    this.ensureParents(node.path);
    const abs = this.abs(node.path);
    if (!this.options.allowExternalSymlinks) {
      const pointsTo = resolve(dirname(abs), linkText);
      if (pointsTo !== this.base && !pointsTo.startsWith(this.base + sep)) {
        throw refuse(
          "PERMISSION_DENIED",
          node.path,
          `the symlink target ${JSON.stringify(linkText)} points outside the restore directory`,
          "pass allowExternalSymlinks to restore it anyway (nothing is written through it)",
        );
      }
    }
    this.checkReplaceable(node.path, abs);
    const tmp = join(dirname(abs), tempName());
    symlinkSync(linkText, tmp);
    try {
      if (IS_ROOT) ignoreError(() => lchownSync(tmp, node.uid, node.gid));
      const t = seconds(node.mtimeNs);
      lutimesSync(tmp, t, t);
      renameSync(tmp, abs);
    } catch (err) {
      ignoreError(() => unlinkSync(tmp));
      throw err;
    }
    this.realDirs.delete(node.path);
    this.linksMade.push(node.path);
    this.result.symlinks++;
  }

  /**
   * Checks the file's place now (in walk order), then creates it under a temporary name, has the
   * repository's reader write its content (worker threads, positioned writes; every chunk
   * checked), then sets its metadata and renames it into place (synchronous calls while they
   * are fast, see SLOW_CALLS_MS): the walk goes on while the content is fetched and written.
   * Up to FILES_IN_FLIGHT files at once, so that the reader sees far enough ahead to fetch in
   * large requests.
   */
  private async restoreFile(node: TreeNode): Promise<void> {
    this.ensureParents(node.path);
    const abs = this.abs(node.path);
    const dir = node.path.includes("/") ? node.path.slice(0, node.path.lastIndexOf("/")) : "";
    // A directory this restore created held nothing else: no existing file to check for.
    if (!this.createdDirs.has(dir)) this.checkReplaceable(node.path, abs);
    const tmp = join(dirname(abs), `${this.tempPrefix}${this.tempCount++}.tmp`);
    const chunks = node.chunks?.length ?? 0;
    this.chunksWriting += chunks;
    const task = this.track(this.writeFile(node, tmp, abs, this.createdDirs.has(dir)), this.writing);
    let files = this.writingIn.get(dir);
    if (!files) this.writingIn.set(dir, (files = new Set()));
    files.add(task);
    void task.finally(() => {
      files.delete(task);
      this.chunksWriting -= chunks;
      this.roomWaiter?.();
    });
    // (Not Promise.race over the set: with hundreds of files in flight that costs more than the files.)
    while (this.writing.size >= FILES_IN_FLIGHT || (this.chunksWriting > CHUNKS_IN_FLIGHT && this.writing.size > 1)) {
      await new Promise<void>((resolve) => (this.roomWaiter = resolve));
      this.roomWaiter = undefined;
    }
    if (this.failure) throw this.failure.error;
  }

  /** Reads a written file back (in the repository's worker threads) and compares it with the snapshot. */
  private async verifyWritten(fd: number, node: TreeNode, size: number): Promise<void> {
    const back = await this.reader.readBack(fd, size);
    if (back.size !== size || (node.sha256 !== undefined && back.sha256 !== node.sha256)) {
      throw new IotvaultError("DATA_CORRUPT", `restored file ${node.path} does not read back as written`, {
        hint: "check the target file system for errors (disk, NFS)",
      });
    }
  }

  private async writeFile(node: TreeNode, tmp: string, abs: string, inCreatedDir: boolean): Promise<void> {
    // The final mode at creation when the umask keeps it whole (no fchmod then); else 0600 and fchmod.
    const modeAtCreation = (node.mode & 0o7000) === 0 && (node.mode & UMASK) === 0;
    const createMode = modeAtCreation ? node.mode : 0o600;
    // A new file is owned by this process; in a directory this restore made (no setgid
    // parent) no chown is needed when that is the owner recorded.
    const owned = inCreatedDir && node.uid === EUID && node.gid === EGID;
    const chown = IS_ROOT && !owned;
    const chmod = !modeAtCreation || chown;
    const t = seconds(node.mtimeNs);
    if (node.chunks?.length === 1 && node.sha256 !== undefined && !this.options.verify && this.syncCalls()) {
      // One chunk, on a file system whose calls are fast: the worker that opens the chunk makes
      // the file, the same calls in the same order (see NewFile), while this thread goes on.
      const size = await this.reader.create(node, {
        tmp,
        final: abs,
        mode: createMode,
        chown: chown ? [node.uid, node.gid] : undefined,
        chmod: chmod ? node.mode : undefined,
        mtime: t,
      });
      this.fileDone(node, size);
      return;
    }
    let fd: number;
    if (this.syncCalls()) {
      const started = performance.now();
      fd = openSync(tmp, NEW_FILE_FLAGS, createMode);
      this.timed(started);
    } else fd = await fsAsync.open(tmp, NEW_FILE_FLAGS, createMode);
    let closed = false;
    try {
      const size = await this.reader.write(node, fd);
      if (this.options.verify) await this.verifyWritten(fd, node, size);
      if (!this.syncCalls()) {
        if (chown) await fsAsync.fchown(fd, node.uid, node.gid).catch(() => undefined);
        if (chmod) await fsAsync.fchmod(fd, node.mode);
        await fsAsync.futimes(fd, t, t);
        closed = true;
        await fsAsync.close(fd);
        await fsAsync.rename(tmp, abs);
      } else {
        const started = performance.now();
        if (chown) ignoreError(() => fchownSync(fd, node.uid, node.gid));
        if (chmod) fchmodSync(fd, node.mode);
        futimesSync(fd, t, t);
        closed = true;
        closeSync(fd);
        renameSync(tmp, abs);
        this.timed(started);
      }
      this.fileDone(node, size);
    } catch (err) {
      if (!closed) await fsAsync.close(fd).catch(() => undefined);
      await fsAsync.unlink(tmp).catch(() => undefined);
      throw err;
    }
  }

  private fileDone(node: TreeNode, size: number): void {
    this.realDirs.delete(node.path);
    this.result.files++;
    this.result.bytes += size;
    this.progress(node.path);
  }

  /** Whether files are created and finished with synchronous calls (see SLOW_CALLS_MS). */
  private syncCalls(): boolean {
    return !this.options.fileCallsInThreadPool && this.slowCalls < SLOW_CALLS_LIMIT;
  }

  private timed(started: number): void {
    if (performance.now() - started > SLOW_CALLS_MS) this.slowCalls++;
  }

  /** An existing file or symlink may be replaced only with `overwrite`; a directory never. */
  private checkReplaceable(path: string, abs: string): void {
    const info = lstatOrUndefined(abs);
    if (!info) return;
    if (info.isDirectory()) throw refuse("ALREADY_EXISTS", path, "a directory exists at this path in the target");
    if (!this.options.overwrite) throw this.exists(path);
  }

  private exists(path: string): IotvaultError {
    return refuse(
      "ALREADY_EXISTS",
      path,
      "it already exists in the target",
      "restore into an empty directory, or pass overwrite to replace existing files",
    );
  }

  private progress(path: string): void {
    const now = performance.now();
    if (now - this.lastProgress < PROGRESS_INTERVAL_MS) return;
    this.lastProgress = now;
    try {
      this.options.onProgress?.({ filesDone: this.result.files, bytesDone: this.result.bytes, currentPath: path });
    } catch {
      // a failing progress callback never fails the restore
    }
  }
}

function tempName(): string {
  return `.iotvault-restore-${randomBytes(8).toString("hex")}.tmp`;
}

/** At most this many links are followed in one resolution (as Linux's MAXSYMLINKS). */
const MAX_LINK_HOPS = 40;

/**
 * Whether the symlink at `linkAbs` (inside `base`, a real path) resolves inside `base`, following
 * the links on the way as path resolution would. Missing components are taken lexically (a
 * dangling link is judged by where it would point); a loop or too many hops counts as outside.
 */
function resolvesInside(base: string, linkAbs: string): boolean {
  const first = readlinkSync(linkAbs);
  const parts = first.startsWith(sep)
    ? []
    : dirname(linkAbs)
        .split(sep)
        .filter((s) => s !== "");
  let pending = first.split(sep);
  let hops = 1;
  while (pending.length > 0) {
    const seg = pending.shift()!;
    if (seg === "" || seg === ".") continue;
    if (seg === "..") {
      parts.pop();
      continue;
    }
    parts.push(seg);
    const here = sep + parts.join(sep);
    const info = lstatOrUndefined(here);
    if (!info?.isSymbolicLink()) continue;
    if (++hops > MAX_LINK_HOPS) return false;
    const text = readlinkSync(here);
    parts.pop();
    if (text.startsWith(sep)) parts.length = 0;
    pending = [...text.split(sep), ...pending];
  }
  const end = sep + parts.join(sep);
  return end === base || end.startsWith(base + sep);
}

function lstatOrUndefined(abs: string): BigIntStats | undefined {
  try {
    return lstatSync(abs, { bigint: true });
  } catch (err) {
    if ((err as { code?: unknown }).code === "ENOENT") return undefined;
    throw err;
  }
}

function ignoreError(fn: () => void): void {
  try {
    fn();
  } catch {
    // best effort (cleanup, ownership as root on file systems that refuse it)
  }
}

/** The descriptor-level calls of node:fs as promises (node:fs/promises has FileHandles only). */
const fsAsync = {
  open: promisify(open),
  close: promisify(close),
  fchmod: promisify(fchmod),
  fchown: promisify(fchown),
  futimes: promisify(futimes),
  rename: promisify(rename),
  unlink: promisify(unlink),
};

/** Owner (when root), mode (after chown, which clears setuid bits) and times, on an open descriptor. */
function applyMetadata(fd: number, node: TreeNode): void {
  if (IS_ROOT) ignoreError(() => fchownSync(fd, node.uid, node.gid));
  fchmodSync(fd, node.mode);
  const t = seconds(node.mtimeNs);
  futimesSync(fd, t, t);
}

/**
 * File-system restore: writes a snapshot (or the nodes matching include globs, plus the
 * directories leading to them) into a target directory, confined to it:
 *  - a node path that is absolute or has "." / ".." / empty segments is refused;
 *  - every parent directory is checked with lstat and never followed when it is a symlink;
 *  - files are written to a temporary name (O_CREAT|O_EXCL|O_NOFOLLOW) and renamed into place;
 *  - a symlink whose target resolves outside the target is refused unless allowed, and even
 *    then nothing is ever written through it.
 * Directory modes and times are set after their contents (on leaving them in the walk).
 *
 * Decision: the target side uses synchronous fs calls (as the backup's walk does): on many
 * small files they cost a fraction of the async API's thread-pool round trips, and each blocks
 * the event loop only for one small operation. Contents of small files are read from the
 * repository ahead, a few at a time, while earlier files are written.
 */
import { randomBytes, createHash } from "node:crypto";
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
  readSync,
  renameSync,
  symlinkSync,
  unlinkSync,
  writeSync,
  type BigIntStats,
} from "node:fs";
import { mkdir, realpath } from "node:fs/promises";
import { dirname, join, resolve, sep } from "node:path";
import { IotvaultError, toIotvaultError } from "@iotvault/errors";
import { unsafePathReason, type Repository, type SnapshotManifest, type TreeNode } from "@iotvault/repo";
import { asCancelled, type FsProgress } from "./backup.js";
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

/** Files up to this size are read from the repository ahead, whole. */
const AHEAD_FILE = 1024 * 1024;
const AHEAD_NODES = 64;
const AHEAD_BYTES = 32 * 1024 * 1024;

interface Ready {
  node: TreeNode;
  content?: Promise<Buffer> | undefined;
}

/**
 * Keeps a window of upcoming nodes and starts reading the content of small files among them
 * (only those the include globs select directly). Memory: at most AHEAD_NODES nodes and
 * AHEAD_BYTES of contents.
 */
class ContentAhead {
  private readonly queue: (Ready & { bytes: number })[] = [];
  private bytes = 0;
  private readonly include: ((p: string) => boolean) | undefined;

  constructor(
    private readonly repo: Repository,
    private readonly options: RestoreDirectoryOptions,
  ) {
    this.include = options.include?.length ? compileGlobs(options.include, "include") : undefined;
  }

  /** Adds a node; returns the nodes that must be handled now to stay within the window. */
  push(node: TreeNode): Ready[] {
    const small =
      node.type === "file" && (node.size ?? Infinity) <= AHEAD_FILE && unsafePathReason(node.path) === undefined;
    const wanted = small && (!this.include || this.include(node.path));
    const content = wanted ? readWhole(this.repo, node, this.options.signal) : undefined;
    const bytes = wanted ? (node.size ?? 0) : 0;
    this.queue.push({ node, content, bytes });
    this.bytes += bytes;
    const out: Ready[] = [];
    while (this.queue.length > AHEAD_NODES || this.bytes > AHEAD_BYTES) out.push(this.take());
    return out;
  }

  drain(): Ready[] {
    const out: Ready[] = [];
    while (this.queue.length > 0) out.push(this.take());
    return out;
  }

  /** Lets reads still running finish (their failures are dropped: the restore already failed). */
  async discard(): Promise<void> {
    await Promise.allSettled(this.queue.splice(0).flatMap((r) => (r.content ? [r.content] : [])));
    this.bytes = 0;
  }

  private take(): Ready {
    const next = this.queue.shift()!;
    this.bytes -= next.bytes;
    return { node: next.node, content: next.content };
  }
}

function readWhole(repo: Repository, node: TreeNode, signal: AbortSignal | undefined): Promise<Buffer> {
  const read = (async () => {
    const parts: Buffer[] = [];
    for await (const part of repo.readFile(node, signal)) parts.push(part);
    return parts.length === 1 ? parts[0]! : Buffer.concat(parts);
  })();
  read.catch(() => undefined); // awaited in order later; never an unhandled rejection meanwhile
  return read;
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
    const run = new FsRestore(repo, await realpath(target), options);
    const ahead = new ContentAhead(repo, options);
    try {
      for await (const node of repo.readTree(snapshot, options.signal)) {
        for (const ready of ahead.push(node)) await run.visit(ready.node, ready.content);
      }
      for (const ready of ahead.drain()) await run.visit(ready.node, ready.content);
    } finally {
      await ahead.discard();
    }
    run.finish();
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

  constructor(
    private readonly repo: Repository,
    private readonly base: string,
    private readonly options: RestoreDirectoryOptions,
  ) {
    this.include = options.include?.length ? compileGlobs(options.include, "include") : undefined;
    this.result = { files: 0, dirs: 0, symlinks: 0, bytes: 0, verified: options.verify === true };
  }

  /** Restores one node; `content` is the file's content when it was read ahead. */
  async visit(node: TreeNode, content?: Promise<Buffer>): Promise<void> {
    this.options.signal?.throwIfAborted();
    const unsafe = unsafePathReason(node.path);
    if (unsafe)
      throw refuse("INVALID_ARGUMENT", node.path, unsafe, "the snapshot is damaged or was made by a hostile writer");
    this.leaveDirsNotAbove(node.path);
    if (!this.included(node)) return;
    for (const dir of this.pendingDirs.splice(0)) this.restoreDir(dir);
    if (node.type === "dir") this.restoreDir(node);
    else if (node.type === "symlink") this.restoreSymlink(node);
    else await this.restoreFile(node, content);
  }

  finish(): void {
    while (this.openDirs.length > 0) this.finalizeDir(this.openDirs.pop()!);
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
      this.finalizeDir(this.openDirs.pop()!);
    }
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
    if (!info?.isDirectory()) mkdirSync(abs, { mode: 0o700 });
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
    this.result.symlinks++;
  }

  private async restoreFile(node: TreeNode, content: Promise<Buffer> | undefined): Promise<void> {
    this.ensureParents(node.path);
    const abs = this.abs(node.path);
    this.checkReplaceable(node.path, abs);
    // Read ahead, or read now and stream (large files); every chunk is checked by the repository.
    const source: AsyncIterable<Buffer> = content ? once(await content) : this.repo.readFile(node, this.options.signal);
    const tmp = join(dirname(abs), tempName());
    const fd = openSync(tmp, constants.O_RDWR | constants.O_CREAT | constants.O_EXCL | constants.O_NOFOLLOW, 0o600);
    let closed = false;
    try {
      const size = await writeContent(fd, source);
      if (this.options.verify) verifyWritten(fd, node, size);
      applyMetadata(fd, node);
      closeSync(fd);
      closed = true;
      renameSync(tmp, abs);
      this.realDirs.delete(node.path);
      this.result.files++;
      this.result.bytes += size;
      this.progress(node.path);
    } catch (err) {
      if (!closed) ignoreError(() => closeSync(fd));
      ignoreError(() => unlinkSync(tmp));
      throw err;
    }
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

async function* once(data: Buffer): AsyncGenerator<Buffer> {
  yield data;
}

async function writeContent(fd: number, content: AsyncIterable<Buffer>): Promise<number> {
  let position = 0;
  for await (const chunk of content) {
    let done = 0;
    while (done < chunk.length) done += writeSync(fd, chunk, done, chunk.length - done, position + done);
    position += chunk.length;
  }
  return position;
}

function verifyWritten(fd: number, node: TreeNode, size: number): void {
  const hash = createHash("sha256");
  const buffer = Buffer.allocUnsafe(Math.min(1024 * 1024, Math.max(1, size)));
  let position = 0;
  for (;;) {
    const bytesRead = readSync(fd, buffer, 0, buffer.length, position);
    if (bytesRead === 0) break;
    hash.update(buffer.subarray(0, bytesRead));
    position += bytesRead;
  }
  if (position !== size || (node.sha256 !== undefined && hash.digest("hex") !== node.sha256)) {
    throw new IotvaultError("DATA_CORRUPT", `restored file ${node.path} does not read back as written`, {
      hint: "check the target file system for errors (disk, NFS)",
    });
  }
}

/** Owner (when root), mode (after chown, which clears setuid bits) and times, on an open descriptor. */
function applyMetadata(fd: number, node: TreeNode): void {
  if (IS_ROOT) ignoreError(() => fchownSync(fd, node.uid, node.gid));
  fchmodSync(fd, node.mode);
  const t = seconds(node.mtimeNs);
  futimesSync(fd, t, t);
}

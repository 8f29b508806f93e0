/**
 * Copying a PostgreSQL data directory into a BackupWriter, between pg_backup_start and
 * pg_backup_stop. It walks the directory with the file-system source's walk (sorted, no
 * symlinks followed) and merge-joins it with the parent snapshot's tree like the file-system
 * source does, with PostgreSQL's rules:
 *
 * - what PostgreSQL's documentation says to leave out is left out (pg_wal/*, postmaster.pid,
 *   pg_replslot/*, pg_stat_tmp/*, temporary relations, unlogged relations but their init
 *   fork, pg_internal.init, ...);
 * - a file that changes while it is read is kept as read: WAL replay repairs torn pages (the
 *   file-system source would read it again and finally skip it, which would break the backup);
 *   a file that vanishes is dropped silently (a dropped relation);
 * - a file whose size, mtime, ctime and inode equal the parent's node is not read again, unless
 *   its recorded mtime is within RACY_WINDOW_MS of the parent's start or later (racy mtime: a
 *   write in the same clock tick as the parent's read would be invisible).
 */
import { closeSync, constants, fstatSync, openSync, readdirSync, readSync, type BigIntStats } from "node:fs";
import { readlink } from "node:fs/promises";
import { IotvaultError } from "@iotvault/errors";
import {
  LOCAL_FILE_MAX_BYTES,
  comparePaths,
  type BackupWriter,
  type Repository,
  type SnapshotManifest,
  type TreeNode,
} from "@iotvault/repo";
import { localFileNode } from "../fs/backup.js";
import { InFlight } from "../fs/in-flight.js";
import { walk, type WalkEntry } from "../fs/walk.js";
import type { SourceProgress } from "../adapter.js";

/** Directories whose contents are not backed up (the directories themselves are). */
export const CONTENTS_EXCLUDED = new Set([
  "pg_wal",
  "pg_replslot",
  "pg_dynshmem",
  "pg_notify",
  "pg_serial",
  "pg_snapshots",
  "pg_stat_tmp",
  "pg_subtrans",
]);

/** Top-level files that are not backed up. */
export const FILES_EXCLUDED = new Set([
  "postmaster.pid",
  "postmaster.opts",
  "backup_label",
  "backup_label.old",
  "tablespace_map",
  "tablespace_map.old",
  "backup_manifest",
  "postgresql.auto.conf.tmp",
  "current_logfiles.tmp",
  "recovery.signal",
  "standby.signal",
]);

/** A file modified this close to the parent's start (or later) is read again. */
export const RACY_WINDOW_MS = 3000;

const TEMP_RELATION = /^t\d+_\d+/;
const RELATION_FORK = /^(\d+)(?:_fsm|_vm|\.\d+)?$/;
const IN_FLIGHT_CALLS = 256;
const IN_FLIGHT_BYTES = 64 * 1024 * 1024;
const PROGRESS_MS = 200;

export interface CopyOptions {
  root: string;
  parent?: SnapshotManifest | undefined;
  /** The parent backup's start (ms since the epoch) for the racy-mtime rule. */
  parentStartMs?: number | undefined;
  signal?: AbortSignal | undefined;
  onProgress?: ((p: SourceProgress) => void) | undefined;
}

export interface CopyResult {
  files: number;
  dirs: number;
  symlinks: number;
  /** Plain bytes of the files in the snapshot. */
  bytes: number;
  unchanged: number;
  filesRead: number;
  bytesRead: number;
  vanished: number;
  /** Paths of the files read (up to 100 000), for tests and logs. */
  readPaths: string[];
}

/** Relation file numbers of unlogged relations (they have an _init fork), per directory. */
export function unloggedRelations(root: string): Set<string> {
  const out = new Set<string>();
  const dirs = ["global"];
  try {
    for (const db of readdirSync(`${root}/base`)) dirs.push(`base/${db}`);
  } catch {
    // no base directory: nothing to find
  }
  for (const dir of dirs) {
    let names: string[];
    try {
      names = readdirSync(`${root}/${dir}`);
    } catch {
      continue;
    }
    for (const name of names) {
      const m = /^(\d+)_init$/.exec(name);
      if (m) out.add(`${dir}/${m[1]}`);
    }
  }
  return out;
}

/** True when a data-directory path is left out of a physical backup. */
export function isExcluded(path: string, unlogged: ReadonlySet<string>): boolean {
  const slash = path.indexOf("/");
  const top = slash < 0 ? path : path.slice(0, slash);
  const name = path.slice(path.lastIndexOf("/") + 1);
  if (slash < 0 && FILES_EXCLUDED.has(path)) return true;
  if (slash >= 0 && CONTENTS_EXCLUDED.has(top)) return true;
  if (name.startsWith("pg_internal.init") || name.startsWith("pgsql_tmp")) return true;
  if (top === "base" || top === "global") {
    if (TEMP_RELATION.test(name)) return true;
    const fork = RELATION_FORK.exec(name);
    if (fork && unlogged.has(`${path.slice(0, path.lastIndexOf("/"))}/${fork[1]}`)) return true;
  }
  return false;
}

/** The parent's tree, walked alongside the directory (paths asked for in increasing order). */
class ParentTree {
  private readonly iterator: AsyncIterator<TreeNode> | undefined;
  private current: TreeNode | undefined;
  private done = false;

  constructor(tree: AsyncIterable<TreeNode> | undefined) {
    this.iterator = tree?.[Symbol.asyncIterator]();
    this.done = tree === undefined;
  }

  async find(path: string): Promise<TreeNode | undefined> {
    while (!this.done) {
      if (!this.current) {
        const next = await this.iterator!.next();
        if (next.done) {
          this.done = true;
          return undefined;
        }
        this.current = next.value;
      }
      const order = comparePaths(this.current.path, path);
      if (order > 0) return undefined;
      const node = this.current;
      this.current = undefined;
      if (order === 0) return node;
    }
    return undefined;
  }

  async close(): Promise<void> {
    if (this.done) return;
    this.done = true;
    await this.iterator?.return?.().catch(() => undefined);
  }
}

function baseNode(path: string, s: BigIntStats, type: "dir" | "symlink" | "file"): TreeNode {
  return {
    path,
    type,
    mode: Number(s.mode & 0o7777n),
    mtimeNs: s.mtimeNs.toString(),
    uid: Number(s.uid),
    gid: Number(s.gid),
  };
}

function fileNode(path: string, s: BigIntStats): Omit<TreeNode, "chunks" | "sha256"> {
  return {
    ...baseNode(path, s, "file"),
    size: Number(s.size),
    inode: s.ino.toString(),
    dev: s.dev.toString(),
    ctimeNs: s.ctimeNs.toString(),
  };
}

/** Reads a small file whole, as it is now; undefined when it vanished. */
function readSmall(abs: string): { stat: BigIntStats; data: Buffer } | undefined {
  let fd: number;
  try {
    fd = openSync(abs, constants.O_RDONLY | constants.O_NOFOLLOW);
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === "ENOENT") return undefined;
    throw err;
  }
  try {
    const stat = fstatSync(fd, { bigint: true });
    const parts: Buffer[] = [];
    let total = 0;
    let want = Math.max(8192, Number(stat.size));
    for (;;) {
      const buf = Buffer.allocUnsafe(want);
      const n = readSync(fd, buf, 0, buf.length, total);
      if (n === 0) break;
      parts.push(n === buf.length ? buf : buf.subarray(0, n));
      total += n;
      want = 1024 * 1024;
    }
    return { stat, data: parts.length === 1 ? parts[0]! : Buffer.concat(parts, total) };
  } finally {
    closeSync(fd);
  }
}

async function* once(data: Buffer): AsyncGenerator<Buffer> {
  yield data;
}

class DataDirCopy {
  readonly result: CopyResult = {
    files: 0,
    dirs: 0,
    symlinks: 0,
    bytes: 0,
    unchanged: 0,
    filesRead: 0,
    bytesRead: 0,
    vanished: 0,
    readPaths: [],
  };
  readonly inFlight = new InFlight();
  readonly parent: ParentTree;
  private readonly racyLimitNs: bigint;
  private lastProgress = 0;

  constructor(
    private readonly repo: Repository,
    private readonly writer: BackupWriter,
    private readonly options: CopyOptions,
  ) {
    this.parent = new ParentTree(options.parent ? repo.readTree(options.parent, options.signal) : undefined);
    this.racyLimitNs = BigInt(Math.max(0, (options.parentStartMs ?? 0) - RACY_WINDOW_MS)) * 1_000_000n;
  }

  async entry(e: WalkEntry): Promise<void> {
    if (e.kind === "dir") {
      this.inFlight.add(this.writer.addNode(baseNode(e.path, e.stat, "dir")).then(() => void this.result.dirs++));
    } else if (e.kind === "symlink" && CONTENTS_EXCLUDED.has(e.path)) {
      // pg_wal (initdb -X) or another left-out directory moved elsewhere: a restored cluster gets
      // an empty directory of its own, never a link into the original cluster's files.
      const node: TreeNode = { ...baseNode(e.path, e.stat, "dir"), mode: 0o700 };
      this.inFlight.add(this.writer.addNode(node).then(() => void this.result.dirs++));
    } else if (e.kind === "symlink") {
      const target = await readlink(e.abs).catch(() => undefined);
      if (target !== undefined) {
        this.inFlight.add(
          this.writer
            .addNode({ ...baseNode(e.path, e.stat, "symlink"), target })
            .then(() => void this.result.symlinks++),
        );
      }
    } else if (e.kind === "file") {
      const previous = await this.parent.find(e.path);
      if (previous && this.unchanged(previous, e.stat)) this.addUnchanged(e, previous);
      else await this.addFile(e);
    }
    await this.inFlight.settle(IN_FLIGHT_CALLS, IN_FLIGHT_BYTES);
  }

  private unchanged(previous: TreeNode, s: BigIntStats): boolean {
    return (
      previous.type === "file" &&
      previous.chunks !== undefined &&
      previous.sha256 !== undefined &&
      previous.size === Number(s.size) &&
      previous.mtimeNs === s.mtimeNs.toString() &&
      previous.ctimeNs === s.ctimeNs.toString() &&
      previous.inode === s.ino.toString() &&
      BigInt(previous.mtimeNs) < this.racyLimitNs &&
      previous.chunks.every((id) => this.repo.hasChunk(id))
    );
  }

  private addUnchanged(e: WalkEntry, previous: TreeNode): void {
    const node: TreeNode = {
      ...fileNode(e.path, e.stat),
      chunks: previous.chunks ?? [],
      sha256: previous.sha256 ?? "",
    };
    this.inFlight.add(
      this.writer.addUnchangedFile(node).then(() => {
        this.result.unchanged++;
        this.fileDone(e.path, node.size ?? 0);
      }),
    );
  }

  private noteRead(path: string, bytes: number): void {
    this.result.filesRead++;
    if (this.result.readPaths.length < 100_000) this.result.readPaths.push(path);
    this.result.bytesRead += bytes;
  }

  private async addFile(e: WalkEntry): Promise<void> {
    if (Number(e.stat.size) <= LOCAL_FILE_MAX_BYTES) {
      const read = readSmall(e.abs);
      if (!read) {
        this.result.vanished++;
        return;
      }
      this.noteRead(e.path, read.data.length);
      const added = this.writer.addFile(fileNode(e.path, read.stat), once(read.data), {
        existedInParent: !!this.options.parent,
        transfer: true,
      });
      this.inFlight.add(
        added.then((n) => this.fileDone(e.path, n.size ?? 0)),
        read.data.length,
      );
      return;
    }
    // A large relation file is streamed through the workers a segment at a time (hashing,
    // chunking and sealing off this thread). Pages written meanwhile are kept as read: WAL
    // replay repairs torn pages, as for any base backup. Pages are updated in place and never
    // shift, so fixed-size chunks dedup as well as content-defined ones, without their cost.
    const outcome = this.writer.addLocalFile(e.abs, Number(e.stat.size), {
      existedInParent: !!this.options.parent,
      tolerateChanges: true,
      fixedChunks: true,
      node: (stat) => localFileNode(e.path, stat),
    });
    this.inFlight.add(
      outcome.then((o) => {
        if (o.added) {
          this.noteRead(e.path, o.node.size ?? 0);
          this.fileDone(e.path, o.node.size ?? 0);
        } else if (/ENOENT/.test(o.message)) this.result.vanished++;
        else {
          throw new IotvaultError("UNAVAILABLE", `cannot read ${e.path} in the data directory: ${o.message}`, {
            hint: "the backup needs every file of the data directory; check the permissions of this service's OS user",
          });
        }
      }),
    );
  }

  private fileDone(path: string, size: number): void {
    this.result.files++;
    this.result.bytes += size;
    const now = Date.now();
    if (now - this.lastProgress < PROGRESS_MS) return;
    this.lastProgress = now;
    try {
      this.options.onProgress?.({ filesDone: this.result.files, bytesDone: this.result.bytes, currentPath: path });
    } catch {
      // a failing progress callback never fails the backup
    }
  }
}

/**
 * Copies the data directory `options.root` into the writer (the caller commits it).
 * FAILED_PRECONDITION when it contains tablespace links (not supported yet).
 */
export async function copyDataDirectory(
  repo: Repository,
  writer: BackupWriter,
  options: CopyOptions,
): Promise<CopyResult> {
  const unlogged = unloggedRelations(options.root);
  const copy = new DataDirCopy(repo, writer, options);
  const hooks = {
    accept: (path: string) => !isExcluded(path, unlogged),
    warn: (path: string, message: string) => {
      if (message.includes("ENOENT")) return; // removed meanwhile (a dropped relation or database)
      throw new IotvaultError("UNAVAILABLE", `cannot read ${path} in the data directory: ${message}`, {
        hint: "the backup needs every file of the data directory; check the permissions of this service's OS user",
      });
    },
    signal: options.signal,
  };
  try {
    for await (const e of walk(options.root, hooks)) {
      options.signal?.throwIfAborted();
      if (e.path.startsWith("pg_tblspc/") && e.kind === "symlink") {
        throw new IotvaultError(
          "FAILED_PRECONDITION",
          `the cluster has a tablespace outside its data directory (${e.path})`,
          {
            hint: "physical backups of clusters with tablespaces are not supported yet; use a logical backup (mode=logical)",
          },
        );
      }
      if (e.kind === "other") continue; // sockets and FIFOs are not data
      await copy.entry(e);
    }
    await copy.inFlight.settle(0, 0);
  } catch (err) {
    await copy.inFlight.discard();
    if ((err as { name?: unknown }).name === "AbortError") {
      throw new IotvaultError("CANCELLED", "the physical backup was cancelled", { cause: err });
    }
    throw err;
  } finally {
    await copy.parent.close();
  }
  return copy.result;
}

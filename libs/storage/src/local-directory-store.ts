import { randomBytes } from "node:crypto";
import type { Stats } from "node:fs";
import { dirname, join, relative, resolve, sep } from "node:path";
import { IotvaultError, toIotvaultError } from "@iotvault/errors";
import { checkKey, checkPrefix, resolveRange } from "./keys.js";
import { nodeFs, type LocalFileHandle, type LocalFs } from "./local-fs.js";
import {
  KEY_PATTERN,
  type ByteRange,
  type GetStreamOptions,
  type ObjectInfo,
  type PutOptions,
  type PutStreamOptions,
  type PutStreamResult,
  type StreamingObjectStore,
} from "./object-store.js";
import { abortable, cancelledError, ContentCheck, DEFAULT_CHUNK_BYTES } from "./streams.js";

/**
 * Prefix of the temporary files of writes in progress. `~` never occurs in a key, so a
 * temporary file can never be taken for an object (list() skips it, get() cannot name it).
 */
export const LOCAL_TEMP_PREFIX = ".tmp~";
/** Temporary files older than this belong to a writer that died; cleanupTemp() removes them. */
export const DEFAULT_TEMP_MAX_AGE_MS = 3600_000;

/** Keys have at most 8 segments, so objects sit at most 7 directories below the root. */
const MAX_DIR_DEPTH = 7;
const FILE_MODE = 0o600;
const DIR_MODE = 0o700;

type Action = "writing" | "reading" | "listing" | "deleting";

export interface LocalDirectoryStoreOptions {
  /** The file-system layer (default node:fs/promises); tests inject failures through it. */
  fs?: LocalFs | undefined;
}

/**
 * An ObjectStore on a local or NFS directory: each object is a file at its key path under the
 * root (`data/ab/<id>` -> `<root>/data/ab/<id>`).
 *
 * Writes are atomic and durable: the bytes go to a temporary file in the target directory
 * (`.tmp~<random>`), which is fsynced and renamed over the final name (or hard-linked to it
 * with `ifAbsent`, so that an existing object is kept without a race), then the directory is
 * fsynced. New parent directories are created and fsynced too. A failed or cancelled write
 * removes its temporary file; one left by a killed process is invisible and is removed by
 * cleanupTemp() once it is older than an hour.
 *
 * ```ts
 * const store = new LocalDirectoryStore("/srv/iotvault/main"); // location "file:///srv/iotvault/main"
 * await store.put("config", bytes, { ifAbsent: true });
 * for await (const info of store.list("snapshots/")) console.log(info.key, info.size);
 * ```
 */
export class LocalDirectoryStore implements StreamingObjectStore {
  readonly root: string;
  readonly location: string;
  private readonly fs: LocalFs;

  constructor(rootDir: string, options: LocalDirectoryStoreOptions = {}) {
    this.root = resolve(rootDir);
    this.location = `file://${this.root}`;
    this.fs = options.fs ?? nodeFs;
  }

  async put(key: string, data: Uint8Array, options: PutOptions = {}): Promise<{ existed: boolean }> {
    const { existed } = await this.putStream(key, once(data), options);
    return { existed };
  }

  async putStream(
    key: string,
    chunks: AsyncIterable<Uint8Array>,
    options: PutStreamOptions = {},
  ): Promise<PutStreamResult> {
    checkKey(key);
    const what = `put of ${key} to ${this.location}`;
    if (options.signal?.aborted) throw cancelledError(what, options.signal);
    const check = new ContentCheck(key, options);
    const target = this.pathOf(key);
    if (options.ifAbsent) {
      const existing = await this.fileStats(target, key, "writing");
      if (existing) return { existed: true, size: existing.size };
    }
    const temp = await this.createTemp(key, dirname(target));
    try {
      for await (const chunk of abortable(chunks, options.signal, what)) {
        check.update(chunk);
        await writeAll(temp.handle, chunk);
      }
      const { size, sha256 } = check.finish();
      await temp.handle.sync();
      await temp.close();
      if (await this.publish(temp.path, target, options.ifAbsent === true)) {
        return { existed: true, size: (await this.fileStats(target, key, "writing"))?.size ?? 0 };
      }
      return { existed: false, size, sha256 };
    } catch (err) {
      throw await this.failure(err, "writing", key);
    } finally {
      await temp.discard();
    }
  }

  async get(key: string, range?: ByteRange, signal?: AbortSignal): Promise<Buffer> {
    checkKey(key);
    if (signal?.aborted) throw cancelledError(`read of ${key} from ${this.location}`, signal);
    const { handle, stats } = await this.openObject(key);
    try {
      const { start, end } = resolveRange(stats.size, range);
      const buffer = Buffer.allocUnsafe(end - start);
      const read = await readFully(handle, buffer, start);
      return read === buffer.length ? buffer : buffer.subarray(0, read);
    } catch (err) {
      throw await this.failure(err, "reading", key);
    } finally {
      await handle.close().catch(() => undefined);
    }
  }

  async *getStream(key: string, range?: ByteRange, options: GetStreamOptions = {}): AsyncGenerator<Buffer> {
    checkKey(key);
    const { signal } = options;
    const chunkBytes = Math.max(1, options.chunkBytes ?? DEFAULT_CHUNK_BYTES);
    const what = `read of ${key} from ${this.location}`;
    if (signal?.aborted) throw cancelledError(what, signal);
    const { handle, stats } = await this.openObject(key);
    try {
      const { start, end } = resolveRange(stats.size, range);
      for (let position = start; position < end;) {
        if (signal?.aborted) throw cancelledError(what, signal);
        const chunk = Buffer.allocUnsafe(Math.min(chunkBytes, end - position));
        const read = await this.readAt(handle, chunk, position, key);
        if (read === 0) return; // the file shrank under us (not done by this store): do not pad
        position += read;
        yield read === chunk.length ? chunk : chunk.subarray(0, read);
      }
    } finally {
      await handle.close().catch(() => undefined);
    }
  }

  async stat(key: string): Promise<ObjectInfo | undefined> {
    checkKey(key);
    const stats = await this.fileStats(this.pathOf(key), key, "reading");
    return stats ? { key, size: stats.size, modifiedAt: stats.mtime } : undefined;
  }

  async *list(prefix: string): AsyncIterable<ObjectInfo> {
    checkPrefix(prefix);
    await this.requireRoot();
    const slash = prefix.lastIndexOf("/");
    const dirKey = prefix.slice(0, Math.max(0, slash));
    yield* this.walk(dirKey, prefix.slice(slash + 1));
  }

  async delete(key: string): Promise<boolean> {
    checkKey(key);
    const path = this.pathOf(key);
    try {
      await this.fs.unlink(path);
    } catch (err) {
      const code = errnoOf(err);
      if (code === "ENOENT" || code === "ENOTDIR" || code === "EISDIR") {
        await this.requireRoot();
        return false;
      }
      throw await this.failure(err, "deleting", key);
    }
    await this.syncDir(dirname(path));
    return true;
  }

  /**
   * Removes temporary files left by writers that died (older than `olderThanMs`, default one
   * hour: younger ones may belong to writes still running). Returns how many were removed.
   */
  async cleanupTemp(options: { olderThanMs?: number; signal?: AbortSignal } = {}): Promise<{ removed: number }> {
    await this.requireRoot();
    const cutoff = Date.now() - (options.olderThanMs ?? DEFAULT_TEMP_MAX_AGE_MS);
    let removed = 0;
    for await (const path of this.tempFiles(this.root, 0)) {
      if (options.signal?.aborted) throw cancelledError(`temp cleanup of ${this.location}`, options.signal);
      const stats = await this.fs.lstat(path).catch(() => undefined);
      if (!stats || stats.mtimeMs > cutoff) continue;
      await this.fs.unlink(path).then(
        () => removed++,
        () => undefined, // gone meanwhile, or not ours to remove: leave it
      );
    }
    return { removed };
  }

  private pathOf(key: string): string {
    return join(this.root, ...key.split("/"));
  }

  /** Throws FAILED_PRECONDITION when the root is missing or not a directory. */
  private async requireRoot(): Promise<void> {
    let stats: Stats;
    try {
      stats = await this.fs.stat(this.root);
    } catch (err) {
      if (errnoOf(err) !== "ENOENT" && errnoOf(err) !== "ENOTDIR") throw this.mapErrno(err, "reading", "");
      throw new IotvaultError("FAILED_PRECONDITION", `repository directory ${this.root} does not exist`, {
        hint: "create the repository (`iotvault repo init`) or mount the volume that holds it",
        details: { location: this.location },
      });
    }
    if (!stats.isDirectory()) {
      throw new IotvaultError("FAILED_PRECONDITION", `repository path ${this.root} is not a directory`, {
        hint: "point the repository URL at a directory",
        details: { location: this.location },
      });
    }
  }

  /** Stats of the regular file at `path`, or undefined when there is none. */
  private async fileStats(path: string, key: string, action: Action): Promise<Stats | undefined> {
    try {
      const stats = await this.fs.lstat(path);
      return stats.isFile() ? stats : undefined;
    } catch (err) {
      const code = errnoOf(err);
      if (code !== "ENOENT" && code !== "ENOTDIR") throw await this.failure(err, action, key);
      await this.requireRoot();
      return undefined;
    }
  }

  private async openObject(key: string): Promise<{ handle: LocalFileHandle; stats: Stats }> {
    let handle: LocalFileHandle;
    try {
      handle = await this.fs.open(this.pathOf(key), "r");
    } catch (err) {
      const code = errnoOf(err);
      if (code !== "ENOENT" && code !== "ENOTDIR") throw await this.failure(err, "reading", key);
      await this.requireRoot();
      throw this.notFound(key);
    }
    try {
      const stats = await handle.stat();
      if (stats.isFile()) return { handle, stats };
    } catch (err) {
      await handle.close().catch(() => undefined);
      throw await this.failure(err, "reading", key);
    }
    await handle.close().catch(() => undefined);
    throw this.notFound(key);
  }

  private notFound(key: string): IotvaultError {
    return new IotvaultError("NOT_FOUND", `object ${key} not found in ${this.location}`, {
      details: { key, location: this.location },
    });
  }

  private async readAt(handle: LocalFileHandle, chunk: Buffer, position: number, key: string): Promise<number> {
    try {
      return await readFully(handle, chunk, position);
    } catch (err) {
      throw await this.failure(err, "reading", key);
    }
  }

  /** Opens a new temporary file in `dir`, creating the missing directories. */
  private async createTemp(key: string, dir: string): Promise<TempFile> {
    const path = join(dir, LOCAL_TEMP_PREFIX + randomBytes(12).toString("hex"));
    const open = () => this.fs.open(path, "wx", FILE_MODE);
    try {
      let handle: LocalFileHandle;
      try {
        handle = await open();
      } catch (err) {
        if (errnoOf(err) !== "ENOENT") throw err;
        await this.ensureDir(dir);
        handle = await open();
      }
      return new TempFile(this.fs, path, handle);
    } catch (err) {
      throw await this.failure(err, "writing", key);
    }
  }

  /** Creates `dir` and its missing parents below the root (never the root), fsyncing each parent. */
  private async ensureDir(dir: string): Promise<void> {
    await this.requireRoot();
    let current = this.root;
    for (const segment of relative(this.root, dir).split(sep).filter(Boolean)) {
      const parent = current;
      current = join(current, segment);
      try {
        await this.fs.mkdir(current, DIR_MODE);
      } catch (err) {
        if (errnoOf(err) === "EEXIST") continue;
        throw err;
      }
      await this.syncDir(parent);
    }
  }

  /** Makes the temp file the object. Returns true when `ifAbsent` found an existing object. */
  private async publish(temp: string, target: string, ifAbsent: boolean): Promise<boolean> {
    let existed = false;
    if (!ifAbsent) {
      await this.fs.rename(temp, target);
    } else {
      try {
        await this.fs.link(temp, target); // atomic "create if absent": EEXIST when there is one
      } catch (err) {
        const code = errnoOf(err);
        if (code === "EEXIST") existed = true;
        else if (code === "EPERM" || code === "ENOTSUP" || code === "EOPNOTSUPP") {
          // No hard links on this file system: check, then rename (a small race, documented).
          existed = (await this.fs.lstat(target).catch(() => undefined)) !== undefined;
          if (!existed) await this.fs.rename(temp, target);
        } else throw err;
      }
      await this.fs.unlink(temp).catch(() => undefined);
    }
    await this.syncDir(dirname(target));
    return existed;
  }

  private async syncDir(dir: string): Promise<void> {
    let handle: LocalFileHandle | undefined;
    try {
      handle = await this.fs.open(dir, "r");
      await handle.sync();
    } catch (err) {
      // Some file systems cannot fsync a directory; the data itself was fsynced already.
      const code = errnoOf(err);
      if (code !== "EINVAL" && code !== "ENOTSUP" && code !== "EOPNOTSUPP" && code !== "EISDIR") {
        throw this.mapErrno(err, "writing", relative(this.root, dir));
      }
    } finally {
      await handle?.close().catch(() => undefined);
    }
  }

  private async *walk(dirKey: string, namePrefix: string): AsyncGenerator<ObjectInfo> {
    const depth = dirKey === "" ? 0 : dirKey.split("/").length;
    if (depth > MAX_DIR_DEPTH) return;
    const dirPath = dirKey === "" ? this.root : this.pathOf(dirKey);
    const entries = await this.readDir(dirPath, dirKey);
    for (const entry of entries) {
      if (!entry.name.startsWith(namePrefix) || entry.name.startsWith(LOCAL_TEMP_PREFIX)) continue;
      const key = dirKey === "" ? entry.name : `${dirKey}/${entry.name}`;
      if (entry.isDirectory()) {
        yield* this.walk(key, "");
      } else if (entry.isFile() && KEY_PATTERN.test(key)) {
        const stats = await this.fs.lstat(join(dirPath, entry.name)).catch(() => undefined); // deleted meanwhile
        if (stats?.isFile()) yield { key, size: stats.size, modifiedAt: stats.mtime };
      }
    }
  }

  private async readDir(dirPath: string, dirKey: string) {
    try {
      const entries = await this.fs.readdir(dirPath);
      return entries.sort((a, b) => (a.name < b.name ? -1 : a.name > b.name ? 1 : 0));
    } catch (err) {
      const code = errnoOf(err);
      if (code === "ENOENT" || code === "ENOTDIR") return [];
      throw await this.failure(err, "listing", dirKey || "/");
    }
  }

  private async *tempFiles(dirPath: string, depth: number): AsyncGenerator<string> {
    const entries = await this.fs.readdir(dirPath).catch(() => []);
    for (const entry of entries) {
      const path = join(dirPath, entry.name);
      if (entry.isDirectory() && depth < MAX_DIR_DEPTH) yield* this.tempFiles(path, depth + 1);
      else if (entry.isFile() && entry.name.startsWith(LOCAL_TEMP_PREFIX)) yield path;
    }
  }

  /** Classifies a failure; a file missing under a vanished root becomes FAILED_PRECONDITION. */
  private async failure(err: unknown, action: Action, key: string): Promise<IotvaultError> {
    if (err instanceof IotvaultError) return err;
    const code = errnoOf(err);
    if (code === "ENOENT" || code === "ENOTDIR") await this.requireRoot();
    return this.mapErrno(err, action, key);
  }

  private mapErrno(err: unknown, action: Action, key: string): IotvaultError {
    const code = errnoOf(err);
    const at = action === "writing" ? `${key} to ${this.location}` : `${key} in ${this.location}`;
    const options = { cause: err, details: { key, location: this.location, errno: code ?? "" } };
    switch (code) {
      case "ENOSPC":
        return new IotvaultError("RESOURCE_EXHAUSTED", `disk full ${action} ${at}`, {
          ...options,
          hint: "free space on the volume or move the repository to a larger one",
        });
      case "EDQUOT":
        return new IotvaultError("RESOURCE_EXHAUSTED", `disk quota exceeded ${action} ${at}`, {
          ...options,
          hint: "raise the quota of the gateway's user or free space",
        });
      case "EROFS":
        return new IotvaultError("PERMISSION_DENIED", `read-only file system: cannot ${verb(action)} ${at}`, {
          ...options,
          hint: "the repository volume is mounted read-only; remount it read-write",
        });
      case "EACCES":
      case "EPERM":
        return new IotvaultError("PERMISSION_DENIED", `permission denied ${action} ${at}`, {
          ...options,
          hint: `give the gateway's user read and write access to ${this.root} and everything under it`,
        });
      case "ENOTDIR":
      case "EISDIR":
        return new IotvaultError(
          "FAILED_PRECONDITION",
          `${key} collides with another object's path in ${this.location} (a directory cannot hold both "a/b" and "a/b/c")`,
          { ...options, hint: "use keys where no key is a prefix directory of another" },
        );
      case "EMFILE":
      case "ENFILE":
        return new IotvaultError("RESOURCE_EXHAUSTED", `too many open files ${action} ${at}`, {
          ...options,
          hint: "raise the open-file limit (ulimit -n) of the gateway",
        });
      case "EIO":
      case "ESTALE":
      case "ETIMEDOUT":
        return new IotvaultError("UNAVAILABLE", `I/O error (${code}) ${action} ${at}`, {
          ...options,
          hint: "check the disk or the NFS server; the operation can be retried",
        });
      default:
        return toIotvaultError(err, `${action} ${at}`);
    }
  }
}

/** A temporary file being written: closed and removed unless it was published. */
class TempFile {
  private open = true;

  constructor(
    private readonly fs: LocalFs,
    readonly path: string,
    readonly handle: LocalFileHandle,
  ) {}

  async close(): Promise<void> {
    this.open = false;
    await this.handle.close();
  }

  /** Closes and unlinks it (a no-op for a temp file already renamed away). */
  async discard(): Promise<void> {
    if (this.open) {
      this.open = false;
      await this.handle.close().catch(() => undefined);
    }
    await this.fs.unlink(this.path).catch(() => undefined);
  }
}

function verb(action: Action): string {
  return { writing: "write", reading: "read", listing: "list", deleting: "delete" }[action];
}

function errnoOf(err: unknown): string | undefined {
  const code = (err as { code?: unknown } | null)?.code;
  return typeof code === "string" ? code : undefined;
}

async function* once(data: Uint8Array): AsyncGenerator<Uint8Array> {
  yield data;
}

async function writeAll(handle: LocalFileHandle, chunk: Uint8Array): Promise<void> {
  for (let offset = 0; offset < chunk.length;) {
    const { bytesWritten } = await handle.write(chunk, offset, chunk.length - offset);
    offset += bytesWritten;
  }
}

/** Reads into `buffer` from `position` until it is full or the file ends; returns the bytes read. */
async function readFully(handle: LocalFileHandle, buffer: Uint8Array, position: number): Promise<number> {
  let filled = 0;
  while (filled < buffer.length) {
    const { bytesRead } = await handle.read(buffer, filled, buffer.length - filled, position + filled);
    if (bytesRead === 0) break;
    filled += bytesRead;
  }
  return filled;
}

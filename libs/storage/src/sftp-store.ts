import { randomBytes } from "node:crypto";
import { posix } from "node:path";
import { IotvaultError } from "@iotvault/errors";
import type { HostKeyPolicy } from "./host-keys.js";
import { checkKey, checkPrefix, resolveRange } from "./keys.js";
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
import { DEFAULT_RETRY_POLICY, withRetry, type RetryPolicy } from "./retry.js";
import {
  isDirectory,
  isRegularFile,
  PipelinedWriter,
  readRange,
  SFTP_STATUS,
  sftpOps,
  statusOf,
  UnsupportedExtensionError,
  type SftpAttrs,
} from "./sftp-ops.js";
import { SftpPool, type SftpSession } from "./sftp-session.js";
import { abortable, cancelledError, ContentCheck, DEFAULT_CHUNK_BYTES } from "./streams.js";

/** Prefix of the temporary files of uploads in progress (`~` never occurs in a key). */
export const SFTP_TEMP_PREFIX = ".tmp~";

const FILE_MODE = 0o600;
const DIR_MODE = 0o700;
const MAX_DIR_DEPTH = 7;
/** A write that fails (SSH_FX_FAILURE) with less free space than this is reported as "disk full". */
const DISK_FULL_BYTES = 1024 * 1024;

export interface SftpStoreOptions {
  host: string;
  /** Default 22. */
  port?: number | undefined;
  username: string;
  /** Absolute directory of the repository on the server. */
  root: string;
  /** The private key (OpenSSH or PEM text). */
  privateKey: Buffer | string;
  passphrase?: string | undefined;
  /** How the server's host key is checked: pinned fingerprints and/or known_hosts text. Required. */
  hostKey: HostKeyPolicy;
  /** SSH connections kept open (default 2). */
  connections?: number | undefined;
  /** Operations (requests, uploads, reads) running at once over all connections (default 16). */
  maxConcurrentOps?: number | undefined;
  /** Close a connection unused for this long (default 60 s); it reopens on the next operation. */
  idleTimeoutMs?: number | undefined;
  /** Handshake timeout (default 10 s). */
  connectTimeoutMs?: number | undefined;
  /** SSH keepalive interval; a connection that misses 3 is dropped (default 15 s). */
  keepaliveIntervalMs?: number | undefined;
  /** A request without an answer for this long fails and drops its connection (default 30 s). */
  requestTimeoutMs?: number | undefined;
  /** Retries of operations that failed because the connection dropped or could not be made. */
  retry?: Partial<RetryPolicy> | undefined;
}

type Action = "writing" | "reading" | "listing" | "deleting";

/**
 * An ObjectStore in a directory of an SFTP server (OpenSSH's sftp-server or internal-sftp),
 * through `ssh2-sftp-client`: object `a/b/c` is the file `<root>/a/b/c`.
 *
 * - **Host keys are always checked**: a pinned SHA256 fingerprint or a known_hosts file; an
 *   unknown or changed key is refused with PERMISSION_DENIED naming the fingerprint.
 * - **Atomic writes**: bytes go to `<dir>/.tmp~<random>` (never listed), fsynced with
 *   fsync@openssh.com, then renamed over the object with posix-rename@openssh.com (an atomic
 *   replace). With `ifAbsent` the temp file is hard-linked to the name (hardlink@openssh.com
 *   fails when it exists), so concurrent writers cannot both create it.
 * - **Connections** are reused (a pool of `connections`), reopened after a drop, closed when
 *   idle; at most `maxConcurrentOps` operations run at once. Transfers keep 32 requests of
 *   32 KiB in flight. put() of a buffer is retried after a dropped connection; a stream
 *   cannot be replayed, so putStream() fails with UNAVAILABLE and leaves only a temp file,
 *   which cleanupTemp() removes later.
 *
 * ```ts
 * const store = new SftpStore({ host: "nas", username: "backup", root: "/srv/iotvault/main",
 *   privateKey: await readFile(keyFile), hostKey: { knownHosts: await readFile(knownHostsFile, "utf8") } });
 * await store.put("config", bytes, { ifAbsent: true });
 * await store.close();
 * ```
 */
export class SftpStore implements StreamingObjectStore {
  readonly location: string;
  readonly root: string;
  /** JS-private (#): it holds the private key, which must never show in JSON or util.inspect. */
  readonly #pool: SftpPool;
  private readonly retry: RetryPolicy;

  constructor(options: SftpStoreOptions) {
    const port = options.port ?? 22;
    this.root = checkRoot(options.root);
    if (!options.hostKey.fingerprints?.length && options.hostKey.knownHosts === undefined) {
      throw new IotvaultError("INVALID_ARGUMENT", `no host key check configured for SFTP host ${options.host}`, {
        hint: "pin the server's key fingerprint or give a known_hosts file; host keys are always checked",
      });
    }
    this.location = `sftp://${options.host}:${port}${this.root}`;
    this.retry = { ...DEFAULT_RETRY_POLICY, ...options.retry };
    this.#pool = new SftpPool({
      host: options.host,
      port,
      username: options.username,
      privateKey: options.privateKey,
      passphrase: options.passphrase,
      hostKey: options.hostKey,
      connectTimeoutMs: options.connectTimeoutMs ?? 10_000,
      keepaliveIntervalMs: options.keepaliveIntervalMs ?? 15_000,
      requestTimeoutMs: options.requestTimeoutMs ?? 30_000,
      connections: options.connections ?? 2,
      maxConcurrentOps: options.maxConcurrentOps ?? 16,
      idleTimeoutMs: options.idleTimeoutMs ?? 60_000,
    });
  }

  async put(key: string, data: Uint8Array, options: PutOptions = {}): Promise<{ existed: boolean }> {
    checkKey(key);
    const what = `put of ${key} to ${this.location}`;
    return withRetry(
      async () => {
        const { existed } = await this.putStream(key, once(data), { ...options, expectedSize: data.length });
        return { existed };
      },
      { ...this.retry, signal: options.signal, what },
    );
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
    return this.#pool.run(async (session) => {
      const target = this.pathOf(key);
      if (options.ifAbsent) {
        const existing = await this.fileAttrs(session, target, key, "writing");
        if (existing) return { existed: true, size: existing.size };
      }
      const temp = posix.join(posix.dirname(target), SFTP_TEMP_PREFIX + randomBytes(12).toString("hex"));
      const handle = await this.createTemp(session, temp, key);
      let open = true;
      let renamed = false;
      const writer = new PipelinedWriter(session, handle);
      try {
        for await (const chunk of abortable(chunks, options.signal, what)) {
          check.update(chunk);
          await writer.write(chunk);
        }
        await writer.flush();
        const { size, sha256 } = check.finish();
        await fsyncIfSupported(session, handle);
        open = false;
        await sftpOps.close(session, handle);
        renamed = !options.ifAbsent; // a hard link (ifAbsent) leaves the temp name to remove
        if (await this.publish(session, temp, target, options.ifAbsent === true)) {
          return { existed: true, size: (await this.fileAttrs(session, target, key, "writing"))?.size ?? 0 };
        }
        return { existed: false, size, sha256 };
      } catch (err) {
        renamed = false;
        await writer.settle();
        throw await this.failure(session, err, "writing", key, temp);
      } finally {
        if (open) await sftpOps.close(session, handle).catch(() => undefined);
        if (!renamed && !session.lost) await sftpOps.unlink(session, temp).catch(() => undefined);
      }
    }, options.signal);
  }

  async get(key: string, range?: ByteRange, signal?: AbortSignal): Promise<Buffer> {
    checkKey(key);
    resolveRange(Number.MAX_SAFE_INTEGER, range);
    const what = `read of ${key} from ${this.location}`;
    return this.retrying(what, signal, () =>
      this.#pool.run(async (session) => {
        const { handle, attrs } = await this.openObject(session, key);
        try {
          const { start, end } = resolveRange(attrs.size, range);
          return await readRange(session, handle, start, end);
        } catch (err) {
          throw await this.failure(session, err, "reading", key);
        } finally {
          await sftpOps.close(session, handle).catch(() => undefined);
        }
      }, signal),
    );
  }

  async *getStream(key: string, range?: ByteRange, options: GetStreamOptions = {}): AsyncGenerator<Buffer> {
    checkKey(key);
    resolveRange(Number.MAX_SAFE_INTEGER, range);
    const { signal } = options;
    const what = `read of ${key} from ${this.location}`;
    const chunkBytes = Math.max(1, options.chunkBytes ?? DEFAULT_CHUNK_BYTES);
    // The open handle pins one connection; each chunk is read in a slot of its own, so an
    // idle consumer does not hold a slot.
    const opened = await this.retrying(what, signal, () =>
      this.#pool.run(async (session) => {
        const object = await this.openObject(session, key);
        return { session, release: session.hold(), ...object };
      }, signal),
    );
    const { session, handle, attrs, release } = opened;
    try {
      const { start, end } = resolveRange(attrs.size, range);
      for (let position = start; position < end;) {
        if (signal?.aborted) throw cancelledError(what, signal);
        const stop = Math.min(end, position + chunkBytes);
        const chunk = await this.#pool
          .step(session, (s) => readRange(s, handle, position, stop), signal)
          .catch(async (err: unknown) => {
            throw await this.failure(session, err, "reading", key);
          });
        if (chunk.length === 0) return; // the file shrank under us: do not pad
        position += chunk.length;
        yield chunk;
      }
    } finally {
      if (!session.lost) await sftpOps.close(session, handle).catch(() => undefined);
      release();
    }
  }

  async stat(key: string): Promise<ObjectInfo | undefined> {
    checkKey(key);
    return this.retrying(`stat of ${key} in ${this.location}`, undefined, () =>
      this.#pool.run(async (session) => {
        const attrs = await this.fileAttrs(session, this.pathOf(key), key, "reading");
        return attrs ? { key, size: attrs.size, modifiedAt: new Date(attrs.mtime * 1000) } : undefined;
      }),
    );
  }

  async *list(prefix: string): AsyncIterable<ObjectInfo> {
    checkPrefix(prefix);
    await this.retrying(`listing of ${this.location}`, undefined, () =>
      this.#pool.run((session) => this.requireRoot(session)),
    );
    const slash = prefix.lastIndexOf("/");
    yield* this.walk(prefix.slice(0, Math.max(0, slash)), prefix.slice(slash + 1));
  }

  async delete(key: string): Promise<boolean> {
    checkKey(key);
    return this.retrying(`delete of ${key} from ${this.location}`, undefined, () =>
      this.#pool.run(async (session) => {
        try {
          await sftpOps.unlink(session, this.pathOf(key));
          return true;
        } catch (err) {
          if (statusOf(err) !== SFTP_STATUS.NO_SUCH_FILE) throw await this.failure(session, err, "deleting", key);
          await this.requireRoot(session);
          return false;
        }
      }),
    );
  }

  /** Creates the repository directory (and its missing parents, mode 0700) when it is missing. */
  async ensureRoot(): Promise<void> {
    await this.retrying(`creation of ${this.location}`, undefined, () =>
      this.#pool.run(async (session) => {
        let current = "";
        for (const segment of this.root.split("/").filter(Boolean)) {
          current = `${current}/${segment}`;
          await this.makeDir(session, current, "");
        }
      }),
    );
  }

  /**
   * Removes temporary files left by uploads that died (older than `olderThanMs`, default one
   * hour: younger ones may belong to uploads still running). Returns how many were removed.
   */
  async cleanupTemp(options: { olderThanMs?: number; signal?: AbortSignal } = {}): Promise<{ removed: number }> {
    const cutoff = Date.now() - (options.olderThanMs ?? 3600_000);
    let removed = 0;
    const visit = async (session: SftpSession, dir: string, depth: number): Promise<void> => {
      const entries = await sftpOps.readdir(session, dir).catch(() => []);
      for (const entry of entries) {
        if (options.signal?.aborted) throw cancelledError(`temp clean-up of ${this.location}`, options.signal);
        const path = `${dir}/${entry.filename}`;
        if (isDirectory(entry.attrs) && depth < MAX_DIR_DEPTH) await visit(session, path, depth + 1);
        else if (entry.filename.startsWith(SFTP_TEMP_PREFIX) && entry.attrs.mtime * 1000 <= cutoff) {
          await sftpOps.unlink(session, path).then(
            () => removed++,
            () => undefined,
          );
        }
      }
    };
    await this.#pool.run(async (session) => {
      await this.requireRoot(session);
      await visit(session, this.root, 0);
    }, options.signal);
    return { removed };
  }

  /** Closes the SSH connections (the store reconnects if used again). */
  async close(): Promise<void> {
    await this.#pool.close();
  }

  private pathOf(key: string): string {
    return `${this.root}/${key}`;
  }

  private retrying<T>(what: string, signal: AbortSignal | undefined, operation: () => Promise<T>): Promise<T> {
    return withRetry(operation, { ...this.retry, signal, what });
  }

  private async *walk(dirKey: string, namePrefix: string): AsyncGenerator<ObjectInfo> {
    if ((dirKey === "" ? 0 : dirKey.split("/").length) > MAX_DIR_DEPTH) return;
    const dirPath = dirKey === "" ? this.root : this.pathOf(dirKey);
    const entries = await this.retrying(`listing of ${dirKey || "/"} in ${this.location}`, undefined, () =>
      this.#pool.run((session) => this.readDir(session, dirPath, dirKey)),
    );
    for (const entry of entries) {
      const name = entry.filename;
      if (!name.startsWith(namePrefix) || name.startsWith(SFTP_TEMP_PREFIX)) continue;
      const key = dirKey === "" ? name : `${dirKey}/${name}`;
      if (isDirectory(entry.attrs)) yield* this.walk(key, "");
      else if (isRegularFile(entry.attrs) && KEY_PATTERN.test(key)) {
        yield { key, size: entry.attrs.size, modifiedAt: new Date(entry.attrs.mtime * 1000) };
      }
    }
  }

  private async readDir(session: SftpSession, dirPath: string, dirKey: string) {
    try {
      const entries = await sftpOps.readdir(session, dirPath);
      return entries.sort((a, b) => (a.filename < b.filename ? -1 : a.filename > b.filename ? 1 : 0));
    } catch (err) {
      if (statusOf(err) === SFTP_STATUS.NO_SUCH_FILE) return [];
      throw await this.failure(session, err, "listing", dirKey || "/");
    }
  }

  /** FAILED_PRECONDITION unless the repository directory exists. */
  private async requireRoot(session: SftpSession): Promise<void> {
    let attrs: SftpAttrs;
    try {
      attrs = await sftpOps.lstat(session, this.root);
    } catch (err) {
      if (statusOf(err) !== SFTP_STATUS.NO_SUCH_FILE) throw this.mapError(err, "reading", "", session);
      throw new IotvaultError(
        "FAILED_PRECONDITION",
        `repository directory ${this.root} does not exist on ${this.location}`,
        {
          hint: "create the repository (`iotvault repo init`) or fix the path in the repository URL",
          details: { location: this.location },
        },
      );
    }
    if (!isDirectory(attrs)) {
      throw new IotvaultError(
        "FAILED_PRECONDITION",
        `repository path ${this.root} on ${this.location} is not a directory`,
        {
          hint: "point the repository URL at a directory",
          details: { location: this.location },
        },
      );
    }
  }

  /** Attributes of the regular file at `path`, or undefined when there is none. */
  private async fileAttrs(
    session: SftpSession,
    path: string,
    key: string,
    action: Action,
  ): Promise<SftpAttrs | undefined> {
    try {
      const attrs = await sftpOps.lstat(session, path);
      return isRegularFile(attrs) ? attrs : undefined;
    } catch (err) {
      if (statusOf(err) !== SFTP_STATUS.NO_SUCH_FILE) throw await this.failure(session, err, action, key);
      await this.requireRoot(session);
      return undefined;
    }
  }

  private async openObject(session: SftpSession, key: string): Promise<{ handle: Buffer; attrs: SftpAttrs }> {
    let handle: Buffer;
    try {
      handle = await sftpOps.open(session, this.pathOf(key), "r");
    } catch (err) {
      if (statusOf(err) !== SFTP_STATUS.NO_SUCH_FILE) throw await this.failure(session, err, "reading", key);
      await this.requireRoot(session);
      throw this.notFound(key);
    }
    try {
      const attrs = await sftpOps.fstat(session, handle);
      if (isRegularFile(attrs)) return { handle, attrs };
    } catch (err) {
      await sftpOps.close(session, handle).catch(() => undefined);
      throw await this.failure(session, err, "reading", key);
    }
    await sftpOps.close(session, handle).catch(() => undefined);
    throw this.notFound(key);
  }

  private notFound(key: string): IotvaultError {
    return new IotvaultError("NOT_FOUND", `object ${key} not found in ${this.location}`, {
      details: { key, location: this.location },
    });
  }

  /** Opens a new temporary file, creating the missing directories below the root. */
  private async createTemp(session: SftpSession, temp: string, key: string): Promise<Buffer> {
    try {
      return await sftpOps.open(session, temp, "wx", FILE_MODE);
    } catch (err) {
      if (statusOf(err) !== SFTP_STATUS.NO_SUCH_FILE) throw await this.failure(session, err, "writing", key);
    }
    await this.requireRoot(session);
    let current = this.root;
    for (const segment of posix.dirname(temp).slice(this.root.length).split("/").filter(Boolean)) {
      current = `${current}/${segment}`;
      await this.makeDir(session, current, key);
    }
    try {
      return await sftpOps.open(session, temp, "wx", FILE_MODE);
    } catch (err) {
      throw await this.failure(session, err, "writing", key);
    }
  }

  /** mkdir that accepts an existing directory (another writer may have created it). */
  private async makeDir(session: SftpSession, path: string, key: string): Promise<void> {
    try {
      await sftpOps.mkdir(session, path, DIR_MODE);
    } catch (err) {
      const attrs = await sftpOps.lstat(session, path).catch(() => undefined);
      if (attrs && isDirectory(attrs)) return;
      if (attrs) {
        throw new IotvaultError(
          "FAILED_PRECONDITION",
          `${key} collides with another object's path in ${this.location} (a directory cannot hold both "a/b" and "a/b/c")`,
          { hint: "use keys where no key is a prefix directory of another" },
        );
      }
      throw await this.failure(session, err, "writing", key);
    }
  }

  /** Makes the temp file the object. Returns true when `ifAbsent` found an existing object. */
  private async publish(session: SftpSession, temp: string, target: string, ifAbsent: boolean): Promise<boolean> {
    if (!ifAbsent) {
      try {
        await sftpOps.posixRename(session, temp, target);
      } catch (err) {
        if (!(err instanceof UnsupportedExtensionError)) throw err;
        // Plain SFTP rename does not replace: remove, then rename (not atomic; documented).
        await sftpOps.unlink(session, target).catch(() => undefined);
        await sftpOps.rename(session, temp, target);
      }
      return false;
    }
    try {
      await sftpOps.hardlink(session, temp, target); // link(2): fails when the target exists
      return false;
    } catch (err) {
      if (err instanceof UnsupportedExtensionError) {
        // OpenSSH's plain rename is link + unlink too; other servers may replace (documented).
        if ((await sftpOps.lstat(session, target).catch(() => undefined)) !== undefined) return true;
        await sftpOps.rename(session, temp, target);
        return false;
      }
      if ((await sftpOps.lstat(session, target).catch(() => undefined)) !== undefined) return true;
      throw err;
    }
  }

  /** Classifies a failure; a full disk is recognised with statvfs@openssh.com when possible. */
  private async failure(
    session: SftpSession,
    err: unknown,
    action: Action,
    key: string,
    temp?: string,
  ): Promise<IotvaultError> {
    if (err instanceof IotvaultError || session.lost) return this.mapError(err, action, key, session);
    if (statusOf(err) === SFTP_STATUS.FAILURE && action === "writing" && temp) {
      const space = await sftpOps.statvfs(session, posix.dirname(temp)).catch(() => undefined);
      if (space && (space.f_bavail * space.f_frsize < DISK_FULL_BYTES || space.f_favail === 0)) {
        return new IotvaultError("RESOURCE_EXHAUSTED", `disk full writing ${key} to ${this.location}`, {
          cause: err,
          hint: "free space on the SFTP server's volume or move the repository to a larger one",
          details: { key, location: this.location },
        });
      }
    }
    return this.mapError(err, action, key, session);
  }

  private mapError(err: unknown, action: Action, key: string, session?: SftpSession): IotvaultError {
    if (err instanceof IotvaultError) return err;
    const at = action === "writing" ? `${key} to ${this.location}` : `${key} in ${this.location}`;
    const message = err instanceof Error ? err.message : String(err);
    const details = { key, location: this.location };
    if (session?.lost) {
      return new IotvaultError("UNAVAILABLE", `the connection to ${this.location} was lost ${action} ${at}`, {
        cause: err,
        retryable: true,
        hint: "the network or the server dropped the connection; the operation can be retried (it reconnects)",
        details,
      });
    }
    switch (statusOf(err)) {
      case SFTP_STATUS.NO_SUCH_FILE:
        return new IotvaultError("NOT_FOUND", `no such file ${action} ${at}`, { cause: err, details });
      case SFTP_STATUS.PERMISSION_DENIED:
        return new IotvaultError("PERMISSION_DENIED", `permission denied ${action} ${at}`, {
          cause: err,
          hint: `give the SFTP user read and write access to ${this.root} and everything under it`,
          details,
        });
      case SFTP_STATUS.OP_UNSUPPORTED:
        return new IotvaultError("UNIMPLEMENTED", `the SFTP server does not support a request ${action} ${at}`, {
          cause: err,
          hint: "use an OpenSSH SFTP server",
          details,
        });
      default:
        return new IotvaultError("INTERNAL", `the SFTP server failed ${action} ${at}: ${message}`, {
          cause: err,
          retryable: false,
          hint: "check the server's logs (disk, quota, file system errors)",
          details,
        });
    }
  }
}

function checkRoot(root: string): string {
  const normalized = posix.normalize(root).replace(/\/+$/, "");
  if (!posix.isAbsolute(root) || normalized === "" || normalized !== root.replace(/\/+$/, "") || /[\0\n]/.test(root)) {
    throw new IotvaultError("INVALID_ARGUMENT", `invalid SFTP repository path ${JSON.stringify(root)}`, {
      hint: "use an absolute, normalized directory path other than /",
    });
  }
  return normalized;
}

async function fsyncIfSupported(session: SftpSession, handle: Buffer): Promise<void> {
  try {
    await sftpOps.fsync(session, handle);
  } catch (err) {
    if (!(err instanceof UnsupportedExtensionError)) throw err;
  }
}

async function* once(data: Uint8Array): AsyncGenerator<Uint8Array> {
  yield data;
}

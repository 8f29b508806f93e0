/**
 * Promise forms of the raw ssh2 SFTP requests the SFTP store uses, plus pipelined positioned
 * reads and writes (many requests in flight, as `fastPut` / `fastGet` do, but from and into
 * memory at any offset).
 */
import type { SftpChannel, SftpSession } from "./sftp-session.js";

/** SSH_FX_* status codes (draft-ietf-secsh-filexfer-02). */
export const SFTP_STATUS = {
  EOF: 1,
  NO_SUCH_FILE: 2,
  PERMISSION_DENIED: 3,
  FAILURE: 4,
  BAD_MESSAGE: 5,
  NO_CONNECTION: 6,
  CONNECTION_LOST: 7,
  OP_UNSUPPORTED: 8,
} as const;

/** Bytes per read or write request (fits OpenSSH's default packet limits). */
export const SFTP_PIECE_BYTES = 32 * 1024;
/** Read or write requests in flight per transfer. */
export const SFTP_WINDOW = 32;

const S_IFMT = 0o170000;
const S_IFDIR = 0o040000;
const S_IFREG = 0o100000;

export interface SftpAttrs {
  mode: number;
  size: number;
  mtime: number;
}

export const isDirectory = (attrs: SftpAttrs): boolean => (attrs.mode & S_IFMT) === S_IFDIR;
export const isRegularFile = (attrs: SftpAttrs): boolean => (attrs.mode & S_IFMT) === S_IFREG;

/** The SSH_FX status of an SFTP error, if it has one. */
export function statusOf(err: unknown): number | undefined {
  const code = (err as { code?: unknown } | null)?.code;
  return typeof code === "number" ? code : undefined;
}

/** Thrown when the server lacks an OpenSSH extension (ssh2 throws this synchronously). */
export class UnsupportedExtensionError extends Error {
  override readonly name = "UnsupportedExtensionError";
}

/** A request made on a connection that is already gone (ssh2 would never answer it). */
export class ConnectionLostError extends Error {
  override readonly name = "ConnectionLostError";
}

/** A request the server did not answer in time. */
export class RequestTimeoutError extends Error {
  override readonly name = "RequestTimeoutError";
}

type Callback<T> = (err: Error | null | undefined, value: T) => void;

/**
 * Calls an ssh2 request on a session. A session that is lost fails at once (ssh2 neither
 * answers nor fails requests made after the channel closed); a request without an answer
 * within the session's request timeout fails too; a synchronous throw (missing extension) rejects.
 */
function request<T>(session: SftpSession, call: (sftp: SftpChannel, done: Callback<T>) => void): Promise<T> {
  return new Promise<T>((resolve, reject) => {
    if (session.lost) {
      reject(new ConnectionLostError("the SFTP connection is closed"));
      return;
    }
    const timer = setTimeout(() => {
      session.markLost();
      reject(new RequestTimeoutError(`no answer from the SFTP server within ${session.requestTimeoutMs} ms`));
    }, session.requestTimeoutMs);
    try {
      call(session.sftp, (err, value) => {
        clearTimeout(timer);
        if (err) reject(err);
        else resolve(value);
      });
    } catch (err) {
      clearTimeout(timer);
      const error = err instanceof Error ? err : new Error(String(err));
      reject(
        /does not support this extended request/.test(error.message)
          ? new UnsupportedExtensionError(error.message)
          : error,
      );
    }
  });
}

export const sftpOps = {
  open: (session: SftpSession, path: string, flags: "r" | "wx", mode?: number) =>
    request<Buffer>(session, (sftp, done) =>
      mode === undefined ? sftp.open(path, flags, done) : sftp.open(path, flags, { mode }, done),
    ),
  close: (session: SftpSession, handle: Buffer) =>
    request<void>(session, (sftp, done) => sftp.close(handle, (err) => done(err, undefined))),
  fstat: (session: SftpSession, handle: Buffer) =>
    request<SftpAttrs>(session, (sftp, done) => sftp.fstat(handle, done)),
  lstat: (session: SftpSession, path: string) => request<SftpAttrs>(session, (sftp, done) => sftp.lstat(path, done)),
  readdir: (session: SftpSession, path: string) =>
    request<{ filename: string; attrs: SftpAttrs }[]>(session, (sftp, done) => sftp.readdir(path, done)),
  unlink: (session: SftpSession, path: string) =>
    request<void>(session, (sftp, done) => sftp.unlink(path, (err) => done(err, undefined))),
  mkdir: (session: SftpSession, path: string, mode: number) =>
    request<void>(session, (sftp, done) => sftp.mkdir(path, { mode }, (err) => done(err, undefined))),
  rename: (session: SftpSession, from: string, to: string) =>
    request<void>(session, (sftp, done) => sftp.rename(from, to, (err) => done(err, undefined))),
  /** posix-rename@openssh.com: rename(2), atomically replacing the target. */
  posixRename: (session: SftpSession, from: string, to: string) =>
    request<void>(session, (sftp, done) => sftp.ext_openssh_rename(from, to, (err) => done(err, undefined))),
  /** hardlink@openssh.com: link(2), fails when the target exists. */
  hardlink: (session: SftpSession, target: string, link: string) =>
    request<void>(session, (sftp, done) => sftp.ext_openssh_hardlink(target, link, (err) => done(err, undefined))),
  /** fsync@openssh.com on an open handle. */
  fsync: (session: SftpSession, handle: Buffer) =>
    request<void>(session, (sftp, done) => sftp.ext_openssh_fsync(handle, (err) => done(err, undefined))),
  /** statvfs@openssh.com: free blocks of the file system holding `path`. */
  statvfs: (session: SftpSession, path: string) =>
    request<{ f_bavail: number; f_frsize: number; f_favail: number }>(session, (sftp, done) =>
      sftp.ext_openssh_statvfs(path, (err, info: { f_bavail: number; f_frsize: number; f_favail: number }) =>
        done(err, info),
      ),
    ),
};

/**
 * Writes a stream into an open handle with up to SFTP_WINDOW requests in flight. ssh2 copies
 * each request's bytes when it is sent, so the caller may reuse a chunk once write() returns.
 */
export class PipelinedWriter {
  private position = 0;
  private readonly inFlight = new Set<Promise<void>>();
  private failure: { error: unknown } | undefined;

  constructor(
    private readonly session: SftpSession,
    private readonly handle: Buffer,
  ) {}

  get written(): number {
    return this.position;
  }

  async write(chunk: Uint8Array): Promise<void> {
    const data = Buffer.isBuffer(chunk) ? chunk : Buffer.from(chunk.buffer, chunk.byteOffset, chunk.byteLength);
    for (let at = 0; at < data.length; at += SFTP_PIECE_BYTES) {
      while (this.inFlight.size >= SFTP_WINDOW) await Promise.race(this.inFlight);
      this.throwIfFailed();
      const length = Math.min(SFTP_PIECE_BYTES, data.length - at);
      const piece = request<void>(this.session, (sftp, done) =>
        sftp.write(this.handle, data, at, length, this.position, (err) => done(err, undefined)),
      ).catch((error: unknown) => void (this.failure ??= { error }));
      const tracked = piece.finally(() => this.inFlight.delete(tracked));
      this.inFlight.add(tracked);
      this.position += length;
    }
  }

  /** Waits for every request; throws the first failure. */
  async flush(): Promise<void> {
    await Promise.all(this.inFlight);
    this.throwIfFailed();
  }

  /** Waits for the requests in flight without throwing (before closing after a failure). */
  async settle(): Promise<void> {
    await Promise.all(this.inFlight);
  }

  private throwIfFailed(): void {
    if (this.failure) throw this.failure.error;
  }
}

/**
 * Reads [start, end) of an open handle into a new buffer with up to SFTP_WINDOW requests in
 * flight. A file that ends early gives a shorter buffer (never padding).
 */
export async function readRange(session: SftpSession, handle: Buffer, start: number, end: number): Promise<Buffer> {
  const buffer = Buffer.allocUnsafe(Math.max(0, end - start));
  let eof = buffer.length;
  const pieces: number[] = [];
  for (let at = 0; at < buffer.length; at += SFTP_PIECE_BYTES) pieces.push(at);
  const readPiece = async (at: number) => {
    const length = Math.min(SFTP_PIECE_BYTES, buffer.length - at);
    for (let done = 0; done < length;) {
      const n = await request<number>(session, (sftp, cb) =>
        sftp.read(handle, buffer, at + done, length - done, start + at + done, (err, bytesRead) => cb(err, bytesRead)),
      );
      if (n === 0) {
        eof = Math.min(eof, at + done);
        return;
      }
      done += n;
    }
  };
  const workers = Array.from({ length: Math.min(SFTP_WINDOW, pieces.length) }, async () => {
    for (let next = pieces.shift(); next !== undefined; next = pieces.shift()) await readPiece(next);
  });
  await Promise.all(workers);
  return eof === buffer.length ? buffer : buffer.subarray(0, eof);
}

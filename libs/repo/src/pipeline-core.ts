/**
 * The per-byte work of backups and restores, whatever thread it runs in (the calling thread
 * for `workers: 1`, worker threads otherwise, see seal-worker.ts):
 *  - a whole file: content-defined chunks, the SHA-256 of each chunk and of the file (one pass
 *    when the file is one chunk), chunk ids, zstd and encryption of every chunk;
 *  - a chunk whose id is known: zstd and encryption;
 *  - a blob read back: decryption, decompression, check against its chunk id.
 */
import { createHash } from "node:crypto";
import {
  closeSync,
  constants,
  fchmodSync,
  fchownSync,
  fstatSync,
  futimesSync,
  openSync,
  readSync,
  renameSync,
  unlinkSync,
  writeSync,
  type BigIntStats,
} from "node:fs";
import { type Arena, BlobSealer, chunkIdOfDigest, sha256, unsealBlob, type SealKey, type Unsealed } from "./blob.js";
import { cut, cutParams, type CutParams } from "./chunker.js";
import { knownIn } from "./known-chunks.js";
import type { ChunkerParams } from "./config.js";

export const EMPTY_SHA256 = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

/** What every pipeline thread needs to know once (none of it changes while a repository is open). */
export interface PipelineParams {
  compressionLevel: number;
  macKey: Uint8Array;
  gear: Uint32Array;
  chunker: Pick<ChunkerParams, "minSize" | "avgSize" | "maxSize" | "normalization">;
}

export interface SealedChunk {
  id: string;
  rawLength: number;
  flags: number;
  sealed: Buffer;
}

/** A chunk of a streamed file, sealed, or not sealed because it was known (see KnownChunks). */
export type StreamedChunk = SealedChunk | KnownChunk;

/** A whole file, chunked, hashed and sealed; chunks in file order. */
export interface SealedFile {
  sha256: string;
  size: number;
  chunks: SealedChunk[];
  /** Call once the chunks were copied (into packs) or dropped: their buffer may then be reused. */
  release?: (() => void) | undefined;
}

/** A blob to open: where it is in a fetched buffer, and what the index says about it. */
export interface BlobRef {
  at: number;
  length: number;
  id: string;
  rawLength: number;
  flags: number;
  /**
   * Write the checked plaintext here instead of returning it: into a descriptor open for
   * writing at a position, or into a file created for it (see NewFile).
   */
  sink?: { fd: number; position: number } | { create: NewFile } | undefined;
}

/**
 * A restored file whose only chunk a worker writes itself: created at `tmp` (O_CREAT, O_EXCL,
 * O_NOFOLLOW, `mode`), written, owned, moded and timed, closed and renamed to `final`, so that
 * the restore's thread makes no call for it. Checked first: a plaintext whose SHA-256 is not
 * `sha256` is never written. On any failure nothing is left at `tmp` or `final`.
 */
/** How a restored file is created under its temporary name: new, never through a symlink. */
export const NEW_FILE_FLAGS = constants.O_RDWR | constants.O_CREAT | constants.O_EXCL | constants.O_NOFOLLOW;

export interface NewFile {
  tmp: string;
  final: string;
  mode: number;
  sha256: string;
  /** fchown to these after the write (errors ignored, as for a restore not run as root). */
  chown?: [uid: number, gid: number] | undefined;
  /** fchmod to this after the write (set-id bits, or a mode the umask would cut). */
  chmod?: number | undefined;
  /** Access and modification time, in seconds since the epoch. */
  mtime: number;
}

/** The stat of a local file, as read (fstat) just before its content was read. */
export interface LocalFileStat {
  size: number;
  mode: number;
  uid: number;
  gid: number;
  ino: bigint;
  dev: bigint;
  mtimeNs: bigint;
  ctimeNs: bigint;
}

/** How a local file was read: its content with the stat it was read under, or why not. */
export type LocalRead =
  { kind: "read"; stat: LocalFileStat; content: Uint8Array } | { kind: "changed" | "gone"; message: string };

export interface LocalReadOptions {
  /** Reads to try while the file keeps changing under the read. */
  attempts: number;
  /** A file larger than this (it grew since it was listed) is given up as changing. */
  maxBytes: number;
}

/** How a large local file is streamed (see LocalFileStream). */
export interface LargeReadOptions {
  /**
   * Chunks whose id is in this table (a KnownChunks' buffer) are not sealed: they come back as
   * KnownChunk, and the caller checks them against its index.
   */
  known?: SharedArrayBuffer | undefined;
  /**
   * Keep what was read when the file changes under the read (a database's data files, whose
   * torn pages are repaired by WAL replay): read to the end, no stat check. Otherwise a file
   * whose fstat before and after the read disagree comes out as "changed".
   */
  tolerateChanges?: boolean | undefined;
  /** Cut chunks at fixed offsets (see LocalFileOptions.fixedChunks) instead of content-defined boundaries. */
  fixedChunks?: boolean | undefined;
}

/** What one step of a LocalFileStream gave: complete chunks so far, and at the end the file's summary. */
export type StreamStep<C> =
  | { kind: "chunks"; chunks: C[]; read: ReadSpan }
  | { kind: "end"; chunks: C[]; read: ReadSpan; stat: LocalFileStat; sha256: string; size: number }
  | StreamRefusal;

/** Where a step's new bytes were read: a byte offset in the memory (ArrayBuffer) of the step's buffer, and a length. */
export interface ReadSpan {
  at: number;
  length: number;
}

/** A chunk of a streamed file that was not sealed: the caller said it is known already. */
export interface KnownChunk {
  id: string;
  rawLength: number;
  known: true;
}

/** Why a local file was not read (it vanished or kept changing). */
export type StreamRefusal = { kind: "changed" | "gone"; message: string };

/** Bytes a LocalFileStream reads per step. */
export const STREAM_SEGMENT_BYTES = 8 * 1024 * 1024;

/**
 * A local file of any size, read, chunked, hashed and sealed a segment at a time in the thread
 * that owns it (a worker): the file's SHA-256 and the chunker's carry stay here between steps,
 * so the calling thread only receives sealed chunks. Memory: one segment plus one carry (less
 * than the largest chunk). A cut is made only with at least maxSize bytes ahead (or at the
 * end), so chunks are exactly those of a whole-file pass.
 */
export class LocalFileStream {
  private readonly hash = createHash("sha256");
  /** Where the last segment was read (the stream's own buffer, or the caller's `into`). */
  private buffer: Buffer | undefined;
  private own: Buffer | undefined;
  /** Bytes of `buffer` read and not yet cut into chunks, from `carryAt`. */
  private carry = 0;
  private carryAt = 0;
  private position = 0;
  private closed = false;

  private constructor(
    private readonly core: PipelineCore,
    private readonly fd: number,
    private readonly before: BigIntStats,
    private readonly options: LargeReadOptions,
  ) {}

  /** Bytes a buffer given to next() must hold: a segment and the largest carry. */
  static bufferBytes(core: PipelineCore): number {
    return STREAM_SEGMENT_BYTES + core.params.chunker.maxSize;
  }

  /** The table of known chunks it was opened with (see LargeReadOptions.known). */
  get known(): SharedArrayBuffer | undefined {
    return this.options.known;
  }

  /** Opens `path` (O_NOFOLLOW); "gone" when it vanished or is no longer a regular file. */
  static open(core: PipelineCore, path: string, options: LargeReadOptions): LocalFileStream | StreamRefusal {
    const opened = openRegularFile(path);
    return "kind" in opened ? opened : new LocalFileStream(core, opened.fd, opened.stat, options);
  }

  /**
   * Reads the next segment and hands every chunk that is complete to `take` (see
   * PipelineCore.sealing), in file order; at the end of the file, the rest, the file's hash and
   * its stat. The stream closes itself after an "end", "changed" or "gone" step.
   *
   * Without `into`, the segment is read into the stream's own buffer and the plaintext `take`
   * gets is valid during the call only. With `into` (bufferBytes() long, e.g. a slot of memory
   * shared with other threads), the carry of the last step is copied to its start and the
   * segment read after it: the chunks stay there, untouched by the stream, until the caller
   * reuses `into` (the previous step's buffer is only read, for its carry).
   *
   * With `hashElsewhere`, the file's SHA-256 is left to the caller (over each step's `read`
   * span, in order): the "end" step's sha256 is then empty.
   */
  next<C>(take: (plain: Uint8Array) => C, into?: Buffer, hashElsewhere = false): StreamStep<C> {
    if (this.closed) return { kind: "gone", message: "the file stream is closed" };
    try {
      const target = into ?? (this.own ??= Buffer.allocUnsafeSlow(LocalFileStream.bufferBytes(this.core)));
      if (this.buffer && this.carry > 0 && (target !== this.buffer || this.carryAt !== 0))
        this.buffer.copy(target, 0, this.carryAt, this.carryAt + this.carry);
      this.buffer = target;
      this.carryAt = 0;
      const size = Number(this.before.size);
      // Without tolerateChanges, never read past the size the file had when it was opened.
      const want = this.options.tolerateChanges
        ? STREAM_SEGMENT_BYTES
        : Math.min(STREAM_SEGMENT_BYTES, size - this.position);
      let got = 0;
      while (got < want) {
        const n = readSync(this.fd, target, this.carry + got, want - got, this.position + got);
        if (n === 0) break;
        got += n;
      }
      if (!hashElsewhere) this.hash.update(target.subarray(this.carry, this.carry + got));
      const read = { at: target.byteOffset + this.carry, length: got };
      this.position += got;
      const available = this.carry + got;
      const atEnd = got < want || (!this.options.tolerateChanges && this.position >= size);
      const chunks: C[] = [];
      // Fixed chunks are the chunker's average size; content-defined cuts need a largest chunk ahead.
      const fixed = this.options.fixedChunks ? this.core.params.chunker.avgSize : 0;
      const ahead = fixed || this.core.params.chunker.maxSize;
      let start = 0;
      while (start < available && (atEnd || available - start >= ahead)) {
        const length = fixed ? Math.min(fixed, available - start) : this.core.cutAt(target, start, available);
        chunks.push(take(target.subarray(start, start + length)));
        start += length;
      }
      if (!atEnd) {
        this.carryAt = start;
        this.carry = available - start;
        return { kind: "chunks", chunks, read };
      }
      const after = fstatSync(this.fd, { bigint: true });
      this.close();
      if (!this.options.tolerateChanges && (this.position !== size || !sameContentStat(this.before, after))) {
        return { kind: "changed", message: "it changed while being read" };
      }
      // The stat it was opened under: a file written meanwhile then looks changed to the next backup.
      const stat = statOf(this.before);
      return {
        kind: "end",
        chunks,
        read,
        stat: { ...stat, size: this.position },
        sha256: hashElsewhere ? "" : this.hash.digest("hex"),
        size: this.position,
      };
    } catch (err) {
      this.close();
      return { kind: "gone", message: `skipped, reading failed: ${(err as Error).message}` };
    }
  }

  close(): void {
    if (this.closed) return;
    this.closed = true;
    closeQuietly(this.fd);
  }
}

export class PipelineCore {
  private readonly sealer: BlobSealer;
  private readonly cut: CutParams;
  /** The buffer local files are read into (reused: fresh memory costs more than reading). */
  private readBuffer = Buffer.alloc(0);
  /** The buffer blobs written to a sink are decompressed into (reused). */
  private plainBuffer = Buffer.alloc(0);

  constructor(readonly params: PipelineParams) {
    this.sealer = new BlobSealer(params.compressionLevel);
    this.cut = cutParams({ algorithm: "fastcdc-gear", ...params.chunker }, params.gear);
  }

  /** Compresses and encrypts a chunk whose id is known. */
  sealChunk(plain: Uint8Array, id: string, key: SealKey): { flags: number; sealed: Buffer } {
    return this.sealer.seal(plain, id, key);
  }

  /** Chunks, hashes and seals a whole file held in one buffer. */
  sealFile(content: Uint8Array, key: SealKey): SealedFile {
    return this.chunkFile(content, (plain, id) => this.sealer.seal(plain, id, key));
  }

  /** Like sealFile, with the blobs written into `arena`: each chunk says where its blob is. */
  sealFileInto(content: Uint8Array, key: SealKey, arena: Arena) {
    return this.chunkFile(content, (plain, id) => this.sealer.sealInto(plain, id, key, arena));
  }

  /** Compresses and encrypts a chunk whose id is known into `arena`. */
  sealChunkInto(plain: Uint8Array, id: string, key: SealKey, arena: Arena) {
    return this.sealer.sealInto(plain, id, key, arena);
  }

  /** The length of the next chunk of buf[start, end) (see chunker.cut). */
  cutAt(buf: Uint8Array, start: number, end: number): number {
    return cut(this.cut, buf, start, end);
  }

  /** The chunk id of a plaintext. */
  idOf(plain: Uint8Array): string {
    return chunkIdOfDigest(this.params.macKey, sha256(plain));
  }

  /** Streams a local file of any size (see LocalFileStream). */
  openStream(path: string, options: LargeReadOptions): LocalFileStream | StreamRefusal {
    return LocalFileStream.open(this, path, options);
  }

  /**
   * A chunk handler for LocalFileStream.next: the chunk's id, then a KnownChunk when the id is
   * in `known` (a KnownChunks' buffer), else what `seal` makes of it.
   */
  sealing<S>(
    known: SharedArrayBuffer | undefined,
    seal: (plain: Uint8Array, id: string) => S,
  ): (plain: Uint8Array) => (S & { id: string; rawLength: number }) | KnownChunk {
    const table = known ? new BigUint64Array(known) : undefined;
    return (plain) => {
      const id = this.idOf(plain);
      return table && knownIn(table, id)
        ? { id, rawLength: plain.length, known: true }
        : { id, rawLength: plain.length, ...seal(plain, id) };
    };
  }

  /** Seals into `arena` (for sealing()). */
  sealerInto(key: SealKey, arena: Arena) {
    return (plain: Uint8Array, id: string) => this.sealer.sealInto(plain, id, key, arena);
  }

  /** Seals into buffers of their own (for sealing() in the calling thread). */
  sealerOwn(key: SealKey) {
    return (plain: Uint8Array, id: string) => this.sealer.seal(plain, id, key);
  }

  /**
   * Hashes, checks against `known` and seals one chunk handed over by another thread's stream
   * (see LocalFileStream and WorkerSealer): the stream's thread only cuts, so that one large
   * file keeps every worker busy.
   */
  sealPlainInto(plain: Uint8Array, known: SharedArrayBuffer | undefined, key: SealKey, arena: Arena) {
    return this.sealing(known, this.sealerInto(key, arena))(plain);
  }

  /**
   * Cuts a whole file into content-defined chunks and hands each, with its id, to `seal`. The
   * file's sha256 is the chunk's SHA-256 when the file is one chunk (one pass over the bytes).
   */
  private chunkFile<T>(content: Uint8Array, seal: (plain: Uint8Array, id: string) => T) {
    const size = content.length;
    const chunks: (T & { id: string; rawLength: number })[] = [];
    if (size === 0) return { sha256: EMPTY_SHA256, size, chunks };
    const bounds: number[] = [];
    for (let start = 0; start < size;) {
      start += cut(this.cut, content, start, size);
      bounds.push(start);
    }
    const whole = bounds.length === 1 ? undefined : createHash("sha256").update(content).digest("hex");
    let start = 0;
    let fileSha256 = whole ?? "";
    for (const end of bounds) {
      const plain = content.subarray(start, end);
      const digest = sha256(plain);
      if (whole === undefined) fileSha256 = digest.toString("hex");
      const id = chunkIdOfDigest(this.params.macKey, digest);
      chunks.push({ id, rawLength: plain.length, ...seal(plain, id) });
      start = end;
    }
    return { sha256: fileSha256, size, chunks };
  }

  /**
   * Reads a local regular file whole (opened with O_NOFOLLOW), checking that its fstat before
   * and after the read agree (size, mtime, ctime, inode); a file that changes meanwhile is read
   * again, up to `attempts` times. The content is a view of a reused buffer: valid until the
   * next call.
   */
  readLocalFile(path: string, options: LocalReadOptions): LocalRead {
    for (let attempt = 1; attempt <= options.attempts; attempt++) {
      const r = this.readOnce(path, options.maxBytes);
      if (r.kind !== "changed") return r;
    }
    return { kind: "changed", message: `skipped: it changed while being read, ${options.attempts} times in a row` };
  }

  private readOnce(path: string, maxBytes: number): LocalRead {
    const opened = openRegularFile(path);
    if ("kind" in opened) return opened;
    const { fd, stat: before } = opened;
    try {
      const size = Number(before.size);
      if (size > maxBytes) return { kind: "changed", message: "it grew while being read" };
      if (this.readBuffer.length < size) this.readBuffer = Buffer.allocUnsafeSlow(roundUp(size, 1 << 20));
      let position = 0;
      while (position < size) {
        const n = readSync(fd, this.readBuffer, position, size - position, position);
        if (n === 0) break;
        position += n;
      }
      const after = fstatSync(fd, { bigint: true });
      if (position !== size || !sameContentStat(before, after))
        return { kind: "changed", message: "it changed while being read" };
      return { kind: "read", stat: statOf(before), content: this.readBuffer.subarray(0, size) };
    } catch (err) {
      return { kind: "gone", message: `skipped, reading failed: ${(err as Error).message}` };
    } finally {
      closeQuietly(fd);
    }
  }

  /**
   * Decrypts, decompresses and checks a blob; with `ref.sink`, writes the plaintext there (the
   * plaintext then lives in a reused buffer: `plain` is valid until the next call).
   */
  openBlob(sealed: Uint8Array, ref: BlobRef, keyFor: (keyId: number) => Uint8Array | undefined): Unsealed {
    if (!ref.sink) return unsealBlob(sealed, ref, keyFor, this.params.macKey);
    if (this.plainBuffer.length < ref.rawLength)
      this.plainBuffer = Buffer.allocUnsafeSlow(Math.max(ref.rawLength, 1 << 20));
    const r = unsealBlob(sealed, ref, keyFor, this.params.macKey, this.plainBuffer);
    if (!r.ok) return r;
    if ("create" in ref.sink) return writeNewFile(ref.sink.create, r.plain, r.digest.toString("hex")) ?? r;
    try {
      writeAll(ref.sink.fd, r.plain, ref.sink.position);
    } catch (err) {
      return targetFailure("writing it to the restored file failed", err);
    }
    return r;
  }
}

/**
 * Opens a local file for reading (O_NOFOLLOW) and fstats it: "gone" when it vanished, cannot be
 * opened or is not a regular file (the descriptor is then closed).
 */
function openRegularFile(path: string): { fd: number; stat: BigIntStats } | StreamRefusal {
  let fd: number;
  try {
    fd = openSync(path, constants.O_RDONLY | constants.O_NOFOLLOW);
  } catch (err) {
    return { kind: "gone", message: `skipped, it vanished or cannot be opened: ${(err as Error).message}` };
  }
  try {
    const stat = fstatSync(fd, { bigint: true });
    if (stat.isFile()) return { fd, stat };
    closeQuietly(fd);
    return { kind: "gone", message: "skipped: it is no longer a regular file" };
  } catch (err) {
    closeQuietly(fd);
    return { kind: "gone", message: `skipped, reading failed: ${(err as Error).message}` };
  }
}

function writeAll(fd: number, data: Uint8Array, position: number): void {
  for (let done = 0; done < data.length;) done += writeSync(fd, data, done, data.length - done, position + done);
}

/** A failure of the restored file (not of the blob): its errno code goes along. */
function targetFailure(what: string, err: unknown): Unsealed {
  const code = (err as { code?: unknown }).code;
  return {
    ok: false,
    problem: `${what}: ${(err as Error).message}`,
    ...(typeof code === "string" ? { targetError: code } : {}),
  };
}

/** Creates, writes and finishes a NewFile; what went wrong, or undefined. */
function writeNewFile(f: NewFile, plain: Uint8Array, sha256: string): Unsealed | undefined {
  if (sha256 !== f.sha256)
    return { ok: false, problem: "its content does not match the sha256 recorded in the snapshot" };
  let fd: number | undefined;
  try {
    fd = openSync(f.tmp, NEW_FILE_FLAGS, f.mode);
  } catch (err) {
    return targetFailure("creating the restored file failed", err);
  }
  try {
    writeAll(fd, plain, 0);
    if (f.chown) {
      try {
        fchownSync(fd, f.chown[0], f.chown[1]);
      } catch {
        // as a restore not run as root: the file keeps this process's owner
      }
    }
    if (f.chmod !== undefined) fchmodSync(fd, f.chmod);
    futimesSync(fd, f.mtime, f.mtime);
    const closing = fd;
    fd = undefined;
    closeSync(closing);
    renameSync(f.tmp, f.final);
    return undefined;
  } catch (err) {
    if (fd !== undefined) closeQuietly(fd);
    try {
      unlinkSync(f.tmp);
    } catch {
      // gone already
    }
    return targetFailure("writing it to the restored file failed", err);
  }
}

function closeQuietly(fd: number): void {
  try {
    closeSync(fd);
  } catch {
    // nothing to do about a failed close of a read-only descriptor
  }
}

function sameContentStat(a: BigIntStats, b: BigIntStats): boolean {
  return a.size === b.size && a.mtimeNs === b.mtimeNs && a.ctimeNs === b.ctimeNs && a.ino === b.ino;
}

function statOf(s: BigIntStats): LocalFileStat {
  return {
    size: Number(s.size),
    mode: Number(s.mode),
    uid: Number(s.uid),
    gid: Number(s.gid),
    ino: s.ino,
    dev: s.dev,
    mtimeNs: s.mtimeNs,
    ctimeNs: s.ctimeNs,
  };
}

const roundUp = (n: number, unit: number): number => Math.ceil(n / unit) * unit;

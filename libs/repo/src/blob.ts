/**
 * One chunk's way into and out of a pack: id = HMAC-SHA256(MAC key, SHA-256(plaintext)); zstd
 * when it shrinks the chunk (flag bit 0); AES-256-GCM envelope bound to the chunk id.
 * This is the hot path of a backup and a restore: it runs in the calling thread or in a worker
 * (pipeline-worker.ts). The inner SHA-256 is the plain checksum of the chunk: for a file that
 * is one chunk it is also the file's sha256, so one pass over the bytes gives both.
 */
import { createHash, createHmac, timingSafeEqual } from "node:crypto";
import zstd from "zstd-napi/binding.js";
import { ENVELOPE_OVERHEAD, context, describeOpenFailure, open, seal, sealInto } from "./envelope.js";
import { BLOB_FLAG_ZSTD } from "./format.js";

/** SHA-256 of the plaintext of a chunk (or of a whole file). */
export function sha256(plain: Uint8Array): Buffer {
  return createHash("sha256").update(plain).digest();
}

/** The chunk id of a plaintext whose SHA-256 is `digest`: hex HMAC-SHA256(MAC key, digest). */
export function chunkIdOfDigest(macKey: Uint8Array, digest: Uint8Array): string {
  return createHmac("sha256", macKey).update(digest).digest("hex");
}

export function chunkId(macKey: Uint8Array, plain: Uint8Array): string {
  return chunkIdOfDigest(macKey, sha256(plain));
}

export interface SealKey {
  key: Uint8Array;
  keyId: number;
}

export interface Sealed {
  flags: number;
  sealed: Buffer;
  /** Call once the blob was copied (into a pack) or dropped: its buffer may then be reused. */
  release?: (() => void) | undefined;
}

/** Compresses (when it pays) and encrypts chunks; keeps one compression context and scratch buffer. */
export class BlobSealer {
  private readonly cctx = new zstd.CCtx();
  private scratch = Buffer.alloc(0);

  constructor(compressionLevel: number) {
    this.cctx.setParameter(zstd.CParameter.compressionLevel, compressionLevel);
  }

  seal(plain: Uint8Array, id: string, key: SealKey): Sealed {
    const body = plain.length > 0 ? this.compress(plain) : undefined;
    const useZstd = body !== undefined && body.length < plain.length;
    return {
      flags: useZstd ? BLOB_FLAG_ZSTD : 0,
      sealed: seal(key.key, key.keyId, context.blob(id), useZstd ? body : plain),
    };
  }

  /**
   * Like seal, but writes the blob into `out` (grown when needed): returns where it is. The
   * pipeline seals into reused arenas, so sealing allocates no buffer of its own.
   */
  sealInto(plain: Uint8Array, id: string, key: SealKey, out: Arena): { flags: number; at: number; length: number } {
    const body = plain.length > 0 ? this.compress(plain) : undefined;
    const useZstd = body !== undefined && body.length < plain.length;
    const payload = useZstd ? body : plain;
    const at = out.reserve(ENVELOPE_OVERHEAD + payload.length);
    const length = sealInto(out.buf, at, key.key, key.keyId, context.blob(id), payload);
    out.used = at + length;
    return { flags: useZstd ? BLOB_FLAG_ZSTD : 0, at, length };
  }

  /** zstd into the scratch buffer (valid until the next call). */
  private compress(plain: Uint8Array): Buffer {
    const bound = zstd.compressBound(plain.length);
    if (this.scratch.length < bound) this.scratch = Buffer.allocUnsafeSlow(Math.max(bound, 64 * 1024));
    const n = this.cctx.compress2(this.scratch, plain);
    return this.scratch.subarray(0, n);
  }
}

/** A growable output buffer that blobs are sealed into, back to back. */
export class Arena {
  used = 0;

  constructor(public buf: Buffer) {}

  /** Makes room for `bytes` more (growing into a new buffer when needed); returns where they go. */
  reserve(bytes: number): number {
    if (this.used + bytes > this.buf.length) {
      const bigger = Buffer.from(new ArrayBuffer(Math.max(2 * this.buf.length, this.used + bytes, 1 << 20)));
      this.buf.copy(bigger, 0, 0, this.used);
      this.buf = bigger;
    }
    return this.used;
  }
}

export type Unsealed =
  | { ok: true; plain: Buffer; digest: Buffer }
  | { ok: false; problem: string; unknownKeyId?: number; targetError?: string };

let dctx: InstanceType<typeof zstd.DCtx> | undefined;

/**
 * Decompresses into a new buffer of at most `rawLength` bytes (its own ArrayBuffer, so that a
 * worker can transfer it); a frame that holds more fails, one that holds less comes back short.
 */
function decompress(body: Uint8Array, rawLength: number, into?: Buffer): Buffer | undefined {
  const out = into && into.length >= rawLength ? into.subarray(0, rawLength) : Buffer.from(new ArrayBuffer(rawLength));
  try {
    dctx ??= new zstd.DCtx();
    const n = dctx.decompress(out, body);
    return n === rawLength ? out : out.subarray(0, n);
  } catch {
    return undefined;
  }
}

/**
 * Decrypts, decompresses and checks one blob against its chunk id. Never throws for bad
 * bytes: says what is wrong instead (the caller names the pack and the file). `digest` is the
 * SHA-256 of the plaintext. With `into` (at least rawLength bytes), a compressed blob is
 * decompressed into it (a reused buffer) instead of a new one.
 */
export function unsealBlob(
  sealed: Uint8Array,
  expected: { id: string; rawLength: number; flags: number },
  keyFor: (keyId: number) => Uint8Array | undefined,
  macKey: Uint8Array,
  into?: Buffer,
): Unsealed {
  if ((expected.flags & ~BLOB_FLAG_ZSTD) !== 0)
    return { ok: false, problem: `the blob has unknown flags ${expected.flags}` };
  const opened = open(sealed, context.blob(expected.id), keyFor);
  if (!opened.ok) {
    return {
      ok: false,
      problem: `the encrypted blob ${describeOpenFailure(opened.reason, opened.keyId)}`,
      ...(opened.reason === "unknown-key" && opened.keyId !== undefined ? { unknownKeyId: opened.keyId } : {}),
    };
  }
  let plain = opened.plain;
  if ((expected.flags & BLOB_FLAG_ZSTD) !== 0) {
    const out = decompress(opened.plain, expected.rawLength, into);
    if (!out) return { ok: false, problem: "the blob does not decompress" };
    plain = out;
  }
  if (plain.length !== expected.rawLength) {
    return { ok: false, problem: `the blob has ${plain.length} plain bytes, the index says ${expected.rawLength}` };
  }
  const digest = sha256(plain);
  const actual = createHmac("sha256", macKey).update(digest).digest();
  const wanted = Buffer.from(expected.id, "hex");
  if (wanted.length !== actual.length || !timingSafeEqual(actual, wanted)) {
    return { ok: false, problem: "the blob's content does not match its chunk id" };
  }
  return { ok: true, plain, digest };
}

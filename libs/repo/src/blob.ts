/**
 * One chunk's way into and out of a pack: id = HMAC-SHA256(MAC key, plaintext); zstd when it
 * shrinks the chunk (flag bit 0); AES-256-GCM envelope bound to the chunk id.
 * This is the hot path of a backup: it runs in the calling thread or in a worker (workers.ts).
 */
import { createHmac, timingSafeEqual } from "node:crypto";
import { Compressor, Decompressor } from "zstd-napi";
import { context, describeOpenFailure, open, seal } from "./envelope.js";
import { BLOB_FLAG_ZSTD } from "./format.js";

export function chunkId(macKey: Uint8Array, plain: Uint8Array): string {
  return createHmac("sha256", macKey).update(plain).digest("hex");
}

export interface SealKey {
  key: Uint8Array;
  keyId: number;
}

export interface Sealed {
  flags: number;
  sealed: Buffer;
}

/** Compresses (when it pays) and encrypts one chunk. */
export class BlobSealer {
  private readonly compressor = new Compressor();

  constructor(compressionLevel: number) {
    this.compressor.setParameters({ compressionLevel });
  }

  seal(plain: Uint8Array, id: string, key: SealKey): Sealed {
    const compressed = plain.length > 0 ? this.compressor.compress(plain) : undefined;
    const useZstd = compressed !== undefined && compressed.length < plain.length;
    const body = useZstd ? compressed : plain;
    return { flags: useZstd ? BLOB_FLAG_ZSTD : 0, sealed: seal(key.key, key.keyId, context.blob(id), body) };
  }
}

export type Unsealed = { ok: true; plain: Buffer } | { ok: false; problem: string; unknownKeyId?: number };

const decompressor = new Decompressor();

/**
 * Decrypts, decompresses and checks one blob against its chunk id. Never throws for bad
 * bytes: says what is wrong instead (the caller names the pack and the file).
 */
export function unsealBlob(
  sealed: Uint8Array,
  expected: { id: string; rawLength: number; flags: number },
  keyFor: (keyId: number) => Uint8Array | undefined,
  macKey: Uint8Array,
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
    try {
      plain = decompressor.decompress(opened.plain);
    } catch {
      return { ok: false, problem: "the blob does not decompress" };
    }
  }
  if (plain.length !== expected.rawLength) {
    return { ok: false, problem: `the blob has ${plain.length} plain bytes, the index says ${expected.rawLength}` };
  }
  const actual = createHmac("sha256", macKey).update(plain).digest();
  const wanted = Buffer.from(expected.id, "hex");
  if (wanted.length !== actual.length || !timingSafeEqual(actual, wanted)) {
    return { ok: false, problem: "the blob's content does not match its chunk id" };
  }
  return { ok: true, plain };
}

/**
 * The encryption envelope of format v1: AES-256-GCM with a fresh random 96-bit nonce.
 *
 * ```
 * offset  size  field
 * 0       1     envelope version (0x01)
 * 1       4     key id, uint32 big-endian (0 = the key is implied by the object: slot key, master key)
 * 5       12    nonce
 * 17      n     ciphertext
 * 17+n    16    GCM tag
 * ```
 * Associated data = bytes 0..4 of the envelope || UTF-8 of a context string that binds the
 * ciphertext to where it belongs (`blob:<chunk id>`, `object:<key>`, `pack-header`).
 */
import { createCipheriv, createDecipheriv, randomBytes, randomFillSync } from "node:crypto";

export const ENVELOPE_VERSION = 1;
export const ENVELOPE_HEADER = 5;
export const NONCE_BYTES = 12;
export const TAG_BYTES = 16;
/** Bytes an envelope adds to its plaintext. */
export const ENVELOPE_OVERHEAD = ENVELOPE_HEADER + NONCE_BYTES + TAG_BYTES;

const CONTEXT_PREFIX = "iotvault.v1.";

export const context = {
  blob: (chunkId: string): string => `${CONTEXT_PREFIX}blob:${chunkId}`,
  object: (key: string): string => `${CONTEXT_PREFIX}object:${key}`,
  packHeader: (): string => `${CONTEXT_PREFIX}pack-header`,
} as const;

function aad(header: Uint8Array, ctx: string): Buffer {
  return Buffer.concat([header, Buffer.from(ctx, "utf8")]);
}

/** Encrypts `plain` (one or more parts, concatenated) into a new envelope. */
export function seal(key: Uint8Array, keyId: number, ctx: string, plain: Uint8Array | readonly Uint8Array[]): Buffer {
  const parts = plain instanceof Uint8Array ? [plain] : plain;
  const plainLength = parts.reduce((n, p) => n + p.length, 0);
  const out = Buffer.allocUnsafe(ENVELOPE_OVERHEAD + plainLength);
  out[0] = ENVELOPE_VERSION;
  out.writeUInt32BE(keyId >>> 0, 1);
  randomBytes(NONCE_BYTES).copy(out, ENVELOPE_HEADER);
  const cipher = createCipheriv("aes-256-gcm", key, out.subarray(ENVELOPE_HEADER, ENVELOPE_HEADER + NONCE_BYTES));
  cipher.setAAD(aad(out.subarray(0, ENVELOPE_HEADER), ctx));
  let pos = ENVELOPE_HEADER + NONCE_BYTES;
  for (const part of parts) pos += cipher.update(part).copy(out, pos);
  pos += cipher.final().copy(out, pos);
  cipher.getAuthTag().copy(out, pos);
  return out;
}

/**
 * Encrypts `plain` into an envelope written at `out[at..]` (the caller makes room for
 * ENVELOPE_OVERHEAD + plain.length bytes); returns the envelope's length. No buffer is allocated
 * for the envelope itself (the pipeline writes blobs straight into reused arenas).
 */
export function sealInto(
  out: Buffer,
  at: number,
  key: Uint8Array,
  keyId: number,
  ctx: string,
  plain: Uint8Array,
): number {
  out[at] = ENVELOPE_VERSION;
  out.writeUInt32BE(keyId >>> 0, at + 1);
  const nonce = out.subarray(at + ENVELOPE_HEADER, at + ENVELOPE_HEADER + NONCE_BYTES);
  randomFillSync(nonce);
  const cipher = createCipheriv("aes-256-gcm", key, nonce);
  cipher.setAAD(aad(out.subarray(at, at + ENVELOPE_HEADER), ctx));
  let pos = at + ENVELOPE_HEADER + NONCE_BYTES;
  pos += cipher.update(plain).copy(out, pos);
  pos += cipher.final().copy(out, pos);
  pos += cipher.getAuthTag().copy(out, pos);
  return pos - at;
}

/** Why an envelope could not be opened. */
export type OpenFailure = "short" | "version" | "unknown-key" | "auth";

export type OpenResult =
  { ok: true; plain: Buffer; keyId: number } | { ok: false; reason: OpenFailure; keyId?: number };

/** Reads the key id of an envelope (undefined when too short or of another version). */
export function envelopeKeyId(envelope: Uint8Array): number | undefined {
  if (envelope.length < ENVELOPE_OVERHEAD || envelope[0] !== ENVELOPE_VERSION) return undefined;
  return Buffer.from(envelope.buffer, envelope.byteOffset, envelope.length).readUInt32BE(1);
}

/** Decrypts and authenticates an envelope; never throws for bad input, returns why instead. */
export function open(envelope: Uint8Array, ctx: string, keyFor: (keyId: number) => Uint8Array | undefined): OpenResult {
  if (envelope.length < ENVELOPE_OVERHEAD) return { ok: false, reason: "short" };
  if (envelope[0] !== ENVELOPE_VERSION) return { ok: false, reason: "version" };
  const buf = Buffer.from(envelope.buffer, envelope.byteOffset, envelope.length);
  const keyId = buf.readUInt32BE(1);
  const key = keyFor(keyId);
  if (!key) return { ok: false, reason: "unknown-key", keyId };
  const nonce = buf.subarray(ENVELOPE_HEADER, ENVELOPE_HEADER + NONCE_BYTES);
  const tagAt = buf.length - TAG_BYTES;
  try {
    const decipher = createDecipheriv("aes-256-gcm", key, nonce);
    decipher.setAAD(aad(buf.subarray(0, ENVELOPE_HEADER), ctx));
    decipher.setAuthTag(buf.subarray(tagAt));
    const first = decipher.update(buf.subarray(ENVELOPE_HEADER + NONCE_BYTES, tagAt));
    const last = decipher.final();
    return { ok: true, plain: last.length === 0 ? first : Buffer.concat([first, last]), keyId };
  } catch {
    return { ok: false, reason: "auth", keyId };
  }
}

/** A human sentence for an OpenFailure (never contains key material). */
export function describeOpenFailure(reason: OpenFailure, keyId?: number): string {
  switch (reason) {
    case "short":
      return "is too short to be an encrypted object";
    case "version":
      return "uses an envelope version this iotvault does not know";
    case "unknown-key":
      return `is encrypted with key id ${keyId ?? "?"}, which is not in the repository keyring`;
    case "auth":
      return "failed authentication (wrong key, or the bytes were changed)";
  }
}

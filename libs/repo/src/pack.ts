/**
 * Pack layout (all integers big-endian):
 *
 * ```
 * blob 0 | blob 1 | ... | blob n-1 | header envelope | trailer
 * trailer (12 bytes) = header envelope length (uint32) | magic "IOTVPK01"
 * header plaintext   = version (uint8, 1) | entry count (uint32) | n x entry (42 bytes)
 * entry              = type (uint8) | flags (uint8) | length (uint32) | raw length (uint32) | chunk id (32)
 * ```
 * Blobs are laid out back to back from offset 0, so an entry's offset is the sum of the
 * lengths before it. The pack id is the sha256 of the whole pack.
 */
import { createHash } from "node:crypto";
import { context, describeOpenFailure, open, seal } from "./envelope.js";
import type { SealKey } from "./blob.js";
import { ID_BYTES, blobTypeName, type BlobTypeName, BlobType } from "./format.js";

export const PACK_MAGIC = Buffer.from("IOTVPK01", "ascii");
export const TRAILER_BYTES = 4 + PACK_MAGIC.length;
export const HEADER_VERSION = 1;
export const ENTRY_BYTES = 1 + 1 + 4 + 4 + ID_BYTES;

/** Where a blob lives; the index maps chunk ids to these. */
export interface BlobLocation {
  packId: string;
  type: BlobTypeName;
  flags: number;
  offset: number;
  length: number;
  rawLength: number;
}

export interface PackEntry {
  id: string;
  type: BlobTypeName;
  flags: number;
  offset: number;
  length: number;
  rawLength: number;
}

export interface FinishedPack {
  id: string;
  bytes: Buffer;
  entries: PackEntry[];
}

/**
 * Builds a pack in one buffer: sealed blobs are copied in as they arrive, the header and the
 * trailer at the end. The buffer is the caller's (a packer reuses a few); it grows only when a
 * pack overshoots it (a header of very many entries).
 */
export class PackBuilder {
  readonly entries: PackEntry[] = [];
  private size = 0;
  /** The pack id is hashed as the pack grows: finishing it costs no long pause of the thread. */
  private readonly hash = createHash("sha256");

  constructor(private buf: Buffer = Buffer.alloc(0)) {}

  get bytes(): number {
    return this.size;
  }

  get count(): number {
    return this.entries.length;
  }

  add(blob: { id: string; type: BlobTypeName; flags: number; rawLength: number; sealed: Uint8Array }): void {
    this.entries.push({
      id: blob.id,
      type: blob.type,
      flags: blob.flags,
      offset: this.size,
      length: blob.sealed.length,
      rawLength: blob.rawLength,
    });
    this.write(blob.sealed);
  }

  /** The finished pack; `bytes` is a view of the builder's buffer (`buffer`). */
  finish(key: SealKey): FinishedPack & { buffer: Buffer } {
    const sealedHeader = seal(key.key, key.keyId, context.packHeader(), encodeHeader(this.entries));
    const trailer = Buffer.alloc(TRAILER_BYTES);
    trailer.writeUInt32BE(sealedHeader.length, 0);
    PACK_MAGIC.copy(trailer, 4);
    this.write(sealedHeader);
    this.write(trailer);
    const bytes = this.buf.subarray(0, this.size);
    return { id: this.hash.digest("hex"), bytes, entries: this.entries, buffer: this.buf };
  }

  private write(data: Uint8Array): void {
    if (this.size + data.length > this.buf.length) {
      const bigger = Buffer.allocUnsafeSlow(Math.max(2 * this.buf.length, this.size + data.length));
      this.buf.copy(bigger, 0, 0, this.size);
      this.buf = bigger;
    }
    this.buf.set(data, this.size);
    this.hash.update(data);
    this.size += data.length;
  }
}

function encodeHeader(entries: readonly PackEntry[]): Buffer {
  const out = Buffer.alloc(5 + entries.length * ENTRY_BYTES);
  out.writeUInt8(HEADER_VERSION, 0);
  out.writeUInt32BE(entries.length, 1);
  let pos = 5;
  for (const e of entries) {
    out.writeUInt8(BlobType[e.type], pos);
    out.writeUInt8(e.flags, pos + 1);
    out.writeUInt32BE(e.length, pos + 2);
    out.writeUInt32BE(e.rawLength, pos + 6);
    out.write(e.id, pos + 10, "hex");
    pos += ENTRY_BYTES;
  }
  return out;
}

export type ParsedPack = { ok: true; entries: PackEntry[] } | { ok: false; problem: string };

/** Reads the trailer and header of a whole pack. Never throws for bad bytes. */
export function parsePack(bytes: Buffer, keyFor: (keyId: number) => Uint8Array | undefined): ParsedPack {
  if (bytes.length < TRAILER_BYTES) return { ok: false, problem: "is shorter than a pack trailer (truncated)" };
  const trailerAt = bytes.length - TRAILER_BYTES;
  if (!bytes.subarray(trailerAt + 4).equals(PACK_MAGIC)) {
    return { ok: false, problem: "has no pack trailer magic at its end (truncated or not a pack)" };
  }
  const headerLength = bytes.readUInt32BE(trailerAt);
  if (headerLength > trailerAt) return { ok: false, problem: "names a header longer than the pack" };
  const headerAt = trailerAt - headerLength;
  const opened = open(bytes.subarray(headerAt, trailerAt), context.packHeader(), keyFor);
  if (!opened.ok)
    return { ok: false, problem: `has a header that ${describeOpenFailure(opened.reason, opened.keyId)}` };
  const decoded = decodeHeader(opened.plain);
  if (typeof decoded === "string") return { ok: false, problem: decoded };
  const end = decoded.reduce((n, e) => n + e.length, 0);
  if (end !== headerAt) return { ok: false, problem: "has a header whose blob lengths do not add up to the pack size" };
  return { ok: true, entries: decoded };
}

export function decodeHeader(header: Buffer): PackEntry[] | string {
  if (header.length < 5 || header.readUInt8(0) !== HEADER_VERSION) return "has a header of an unknown version";
  const count = header.readUInt32BE(1);
  if (header.length !== 5 + count * ENTRY_BYTES) return "has a header whose length does not match its entry count";
  const entries: PackEntry[] = [];
  let offset = 0;
  for (let i = 0, pos = 5; i < count; i++, pos += ENTRY_BYTES) {
    const type = blobTypeName(header.readUInt8(pos));
    if (!type) return `has a header entry ${i} of an unknown blob type`;
    const length = header.readUInt32BE(pos + 2);
    entries.push({
      id: header.toString("hex", pos + 10, pos + 10 + ID_BYTES),
      type,
      flags: header.readUInt8(pos + 1),
      offset,
      length,
      rawLength: header.readUInt32BE(pos + 6),
    });
    offset += length;
  }
  return entries;
}

/**
 * Reads a pack's entries from its end only (two range reads: trailer, then header), without
 * downloading the blobs. Used to recover packs that a killed backup stored but did not index.
 */
export async function readPackEntries(
  read: (offset: number, length: number) => Promise<Buffer>,
  packLength: number,
  keyFor: (keyId: number) => Uint8Array | undefined,
): Promise<ParsedPack> {
  if (packLength < TRAILER_BYTES) return { ok: false, problem: "is shorter than a pack trailer (truncated)" };
  const trailer = await read(packLength - TRAILER_BYTES, TRAILER_BYTES);
  if (trailer.length !== TRAILER_BYTES || !trailer.subarray(4).equals(PACK_MAGIC)) {
    return { ok: false, problem: "has no pack trailer magic at its end (truncated or not a pack)" };
  }
  const headerLength = trailer.readUInt32BE(0);
  const headerAt = packLength - TRAILER_BYTES - headerLength;
  if (headerAt < 0) return { ok: false, problem: "names a header longer than the pack" };
  const opened = open(await read(headerAt, headerLength), context.packHeader(), keyFor);
  if (!opened.ok)
    return { ok: false, problem: `has a header that ${describeOpenFailure(opened.reason, opened.keyId)}` };
  const decoded = decodeHeader(opened.plain);
  if (typeof decoded === "string") return { ok: false, problem: decoded };
  const end = decoded.reduce((n, e) => n + e.length, 0);
  if (end !== headerAt) return { ok: false, problem: "has a header whose blob lengths do not add up to the pack size" };
  return { ok: true, entries: decoded };
}

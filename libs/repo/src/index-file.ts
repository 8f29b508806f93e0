/**
 * Index files (`index/<id>`) and the in-memory master index.
 *
 * Plaintext of an index file (inside an envelope bound to `object:index/<id>`), big-endian:
 * ```
 * version (uint8, 1) | pack count (uint32)
 * per pack:  pack id (32) | pack length (uint32) | blob count (uint32)
 * per blob:  chunk id (32) | type (uint8) | flags (uint8) | offset (uint32) | length (uint32) | raw length (uint32)
 * ```
 */
import { ID_BYTES, BlobType, blobTypeName } from "./format.js";
import type { BlobLocation, PackEntry } from "./pack.js";

export const INDEX_VERSION = 1;
const BLOB_BYTES = ID_BYTES + 1 + 1 + 4 + 4 + 4;

export interface IndexedPack {
  packId: string;
  packLength: number;
  entries: PackEntry[];
}

export function encodeIndex(packs: readonly IndexedPack[]): Buffer {
  const size = 5 + packs.reduce((n, p) => n + ID_BYTES + 8 + p.entries.length * BLOB_BYTES, 0);
  const out = Buffer.alloc(size);
  out.writeUInt8(INDEX_VERSION, 0);
  out.writeUInt32BE(packs.length, 1);
  let pos = 5;
  for (const pack of packs) {
    out.write(pack.packId, pos, "hex");
    out.writeUInt32BE(pack.packLength, pos + ID_BYTES);
    out.writeUInt32BE(pack.entries.length, pos + ID_BYTES + 4);
    pos += ID_BYTES + 8;
    for (const e of pack.entries) {
      out.write(e.id, pos, "hex");
      out.writeUInt8(BlobType[e.type], pos + ID_BYTES);
      out.writeUInt8(e.flags, pos + ID_BYTES + 1);
      out.writeUInt32BE(e.offset, pos + ID_BYTES + 2);
      out.writeUInt32BE(e.length, pos + ID_BYTES + 6);
      out.writeUInt32BE(e.rawLength, pos + ID_BYTES + 10);
      pos += BLOB_BYTES;
    }
  }
  return out;
}

/** Decodes an index plaintext; a string says what is malformed. */
export function decodeIndex(plain: Buffer): IndexedPack[] | string {
  if (plain.length < 5) return "is too short";
  if (plain.readUInt8(0) !== INDEX_VERSION) return `has unknown index version ${plain.readUInt8(0)}`;
  const count = plain.readUInt32BE(1);
  const packs: IndexedPack[] = [];
  let pos = 5;
  for (let i = 0; i < count; i++) {
    if (pos + ID_BYTES + 8 > plain.length) return "is truncated";
    const packId = plain.toString("hex", pos, pos + ID_BYTES);
    const packLength = plain.readUInt32BE(pos + ID_BYTES);
    const blobs = plain.readUInt32BE(pos + ID_BYTES + 4);
    pos += ID_BYTES + 8;
    if (pos + blobs * BLOB_BYTES > plain.length) return "is truncated";
    const entries: PackEntry[] = [];
    for (let j = 0; j < blobs; j++, pos += BLOB_BYTES) {
      const type = blobTypeName(plain.readUInt8(pos + ID_BYTES));
      if (!type) return `names an unknown blob type in pack ${packId}`;
      const entry: PackEntry = {
        id: plain.toString("hex", pos, pos + ID_BYTES),
        type,
        flags: plain.readUInt8(pos + ID_BYTES + 1),
        offset: plain.readUInt32BE(pos + ID_BYTES + 2),
        length: plain.readUInt32BE(pos + ID_BYTES + 6),
        rawLength: plain.readUInt32BE(pos + ID_BYTES + 10),
      };
      if (entry.offset + entry.length > packLength) return `places a blob outside pack ${packId}`;
      entries.push(entry);
    }
    packs.push({ packId, packLength, entries });
  }
  if (pos !== plain.length) return "has trailing bytes";
  return packs;
}

/** chunk id -> location, plus the packs the index files name (id -> length). */
export class MasterIndex {
  private readonly blobs = new Map<string, BlobLocation>();
  private readonly packLengths = new Map<string, number>();

  add(pack: IndexedPack): void {
    this.packLengths.set(pack.packId, pack.packLength);
    for (const e of pack.entries) {
      if (this.blobs.has(e.id)) continue; // the same chunk in two packs: keep the first
      this.blobs.set(e.id, {
        packId: pack.packId,
        type: e.type,
        flags: e.flags,
        offset: e.offset,
        length: e.length,
        rawLength: e.rawLength,
      });
    }
  }

  has(id: string): boolean {
    return this.blobs.has(id);
  }

  get(id: string): BlobLocation | undefined {
    return this.blobs.get(id);
  }

  /** Every chunk id in the index. */
  ids(): IterableIterator<string> {
    return this.blobs.keys();
  }

  get chunkCount(): number {
    return this.blobs.size;
  }

  packs(): ReadonlyMap<string, number> {
    return this.packLengths;
  }
}

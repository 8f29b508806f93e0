/**
 * FastCDC content-defined chunking (normalized, level 2) with a gear table derived from the
 * repository's chunker secret, so that chunk boundaries say nothing across repositories.
 *
 * ```ts
 * const chunker = new Chunker(config.chunker, gearTable(keyring.chunkerSecret));
 * for (const chunk of chunker.push(bytes)) store(chunk);
 * for (const chunk of chunker.finish()) store(chunk);
 * ```
 * Memory: one buffer of at most maxSize per Chunker, reused across files.
 */
import { createHmac } from "node:crypto";
import type { ChunkerParams } from "./config.js";

/**
 * gear[i] = uint32 big-endian at offset 4*i of
 * HMAC-SHA256(secret, "iotvault.v1.gear-table" || uint32be(0)) || ... || (..., uint32be(31)).
 */
export function gearTable(secret: Uint8Array): Uint32Array {
  const table = new Uint32Array(256);
  const label = Buffer.from("iotvault.v1.gear-table", "utf8");
  for (let block = 0; block < 32; block++) {
    const counter = Buffer.alloc(4);
    counter.writeUInt32BE(block, 0);
    const digest = createHmac("sha256", secret).update(label).update(counter).digest();
    for (let j = 0; j < 8; j++) table[block * 8 + j] = digest.readUInt32BE(j * 4);
  }
  return table;
}

/** A mask of the `bits` highest bits of a 32-bit word, as a signed int32. */
const topMask = (bits: number): number => ((~0 << (32 - bits)) >>> 0) | 0;

export interface CutParams {
  minSize: number;
  avgSize: number;
  maxSize: number;
  maskS: number;
  maskL: number;
  gear: Uint32Array;
}

export function cutParams(params: ChunkerParams, gear: Uint32Array): CutParams {
  const bits = Math.round(Math.log2(params.avgSize));
  return {
    minSize: params.minSize,
    avgSize: params.avgSize,
    maxSize: params.maxSize,
    maskS: topMask(bits + params.normalization),
    maskL: topMask(bits - params.normalization),
    gear,
  };
}

/**
 * Length of the next chunk of buf[start, end). When end - start < maxSize and no boundary is
 * found, the whole rest is returned: call it with less than maxSize only at the end of input.
 */
export function cut(p: CutParams, buf: Uint8Array, start: number, end: number): number {
  const rem = end - start;
  if (rem <= p.minSize) return rem;
  const n = Math.min(rem, p.maxSize);
  const normal = Math.min(n, p.avgSize);
  const gear = p.gear;
  const maskS = p.maskS;
  const maskL = p.maskL;
  let h = 0;
  let i = start + p.minSize;
  const stopS = start + normal;
  const stopL = start + n;
  for (; i < stopS; i++) {
    h = ((h << 1) + gear[buf[i]!]!) | 0;
    if ((h & maskS) === 0) return i - start + 1;
  }
  for (; i < stopL; i++) {
    h = ((h << 1) + gear[buf[i]!]!) | 0;
    if ((h & maskL) === 0) return i - start + 1;
  }
  return n;
}

const INITIAL_CAPACITY = 1024 * 1024;

/** A push-style streaming chunker; each yielded chunk is a fresh Buffer the caller owns. */
export class Chunker {
  private readonly p: CutParams;
  private buf: Buffer;
  private start = 0;
  private end = 0;

  constructor(params: ChunkerParams, gear: Uint32Array) {
    this.p = cutParams(params, gear);
    this.buf = Buffer.allocUnsafe(Math.min(INITIAL_CAPACITY, 2 * params.maxSize));
  }

  /** Bytes waiting for a boundary. */
  get buffered(): number {
    return this.end - this.start;
  }

  *push(data: Uint8Array): Generator<Buffer> {
    let offset = 0;
    while (offset < data.length) {
      const room = this.makeRoom();
      const n = Math.min(room, data.length - offset);
      this.buf.set(data.subarray(offset, offset + n), this.end);
      this.end += n;
      offset += n;
      while (this.end - this.start >= this.p.maxSize) yield this.take();
    }
  }

  /** Emits what is left (the last chunk may be shorter than minSize) and resets for reuse. */
  *finish(): Generator<Buffer> {
    while (this.end > this.start) yield this.take();
    this.start = 0;
    this.end = 0;
  }

  /** Drops buffered bytes (after a failed file) so the chunker can be reused. */
  reset(): void {
    this.start = 0;
    this.end = 0;
  }

  private take(): Buffer {
    const len = cut(this.p, this.buf, this.start, this.end);
    const out = Buffer.allocUnsafe(len);
    this.buf.copy(out, 0, this.start, this.start + len);
    this.start += len;
    if (this.start === this.end) {
      this.start = 0;
      this.end = 0;
    }
    return out;
  }

  /**
   * Free bytes at the end of the buffer, compacting or growing it. It grows only while it is
   * smaller than maxSize: a full buffer of maxSize or more has chunks to take first.
   */
  private makeRoom(): number {
    if (this.end < this.buf.length) return this.buf.length - this.end;
    if (this.start > 0) {
      this.buf.copy(this.buf, 0, this.start, this.end);
      this.end -= this.start;
      this.start = 0;
      return this.buf.length - this.end;
    }
    const bigger = Buffer.allocUnsafe(Math.max(this.buf.length + 1, Math.min(this.buf.length * 2, this.p.maxSize)));
    this.buf.copy(bigger, 0, 0, this.end);
    this.buf = bigger;
    return this.buf.length - this.end;
  }
}

import { createCipheriv, createHash } from "node:crypto";

/** A small deterministic PRNG (mulberry32) seeded from a string. */
export class Rng {
  private state: number;

  constructor(seed: string) {
    this.state = createHash("sha256").update(seed).digest().readUInt32LE(0);
  }

  /** Uniform in [0, 1). */
  next(): number {
    let t = (this.state = (this.state + 0x6d2b79f5) | 0);
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  }

  int(min: number, max: number): number {
    return min + Math.floor(this.next() * (max - min + 1));
  }

  uniform(min: number, max: number): number {
    return min + this.next() * (max - min);
  }

  gauss(mean: number, sd: number): number {
    const u = 1 - this.next();
    const v = this.next();
    return mean + sd * Math.sqrt(-2 * Math.log(u)) * Math.cos(2 * Math.PI * v);
  }

  pick<T>(items: readonly T[]): T {
    return items[Math.floor(this.next() * items.length)]!;
  }
}

/**
 * Incompressible, deterministic bytes: an AES-128-CTR keystream keyed by the seed. Yields
 * blocks of at most `blockSize` bytes, so that a large blob never sits in memory whole.
 */
export function* randomBlocks(seed: string, size: number, blockSize = 1 << 20): Generator<Buffer> {
  const key = createHash("sha256").update(`blob:${seed}`).digest();
  const cipher = createCipheriv("aes-128-ctr", key.subarray(0, 16), key.subarray(16, 32));
  const zeros = Buffer.alloc(Math.min(blockSize, Math.max(size, 1)));
  for (let left = size; left > 0; left -= zeros.length) {
    const n = Math.min(left, zeros.length);
    yield cipher.update(zeros.subarray(0, n));
  }
}

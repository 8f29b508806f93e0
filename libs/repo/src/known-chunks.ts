/**
 * The chunk ids a backup need not seal again (in the repository's index, or already queued by
 * this run), readable by worker threads while the calling thread adds to it: a worker that
 * streams a large file skips compressing and encrypting the chunks found here.
 *
 * It holds the first 64 bits of each id in an open-addressing table (linear probing) in a
 * SharedArrayBuffer; only the thread that made it adds. A hit means "probably known": the
 * calling thread checks the whole id and reads the file again without the table when a chunk
 * was not known after all (two ids sharing 64 bits). A miss costs one needless seal at worst
 * (the calling thread dedups sealed chunks anyway). When the table fills past half, it moves
 * to a new buffer twice the size; readers holding the old one miss what came after.
 */
const EMPTY = 0n;

/** The table key of a chunk id (64-bit hex prefix; never 0, the empty slot). */
function keyOf(id: string): bigint {
  const key = BigInt.asUintN(64, BigInt(`0x${id.slice(0, 16)}`));
  return key === EMPTY ? 1n : key;
}

export class KnownChunks {
  private table: BigUint64Array;
  private count = 0;

  constructor(expected: number) {
    let slots = 1024;
    while (slots < expected * 2) slots *= 2;
    this.table = new BigUint64Array(new SharedArrayBuffer(slots * 8));
  }

  /** The buffer to hand to readers (postMessage shares it, no copy). */
  get shared(): SharedArrayBuffer {
    return this.table.buffer as SharedArrayBuffer;
  }

  add(id: string): void {
    if (insert(this.table, keyOf(id))) this.count++;
    if (this.count * 2 > this.table.length) this.grow();
  }

  has(id: string): boolean {
    return knownIn(this.table, id);
  }

  private grow(): void {
    const old = this.table;
    this.table = new BigUint64Array(new SharedArrayBuffer(old.length * 16));
    for (let i = 0; i < old.length; i++) {
      const key = Atomics.load(old, i);
      if (key !== EMPTY) insert(this.table, key);
    }
  }
}

/** Inserts `key`; false when it was there. */
function insert(table: BigUint64Array, key: bigint): boolean {
  const mask = table.length - 1;
  for (let i = Number(key & BigInt(mask)); ; i = (i + 1) & mask) {
    const at = Atomics.load(table, i);
    if (at === key) return false;
    if (at === EMPTY) {
      Atomics.store(table, i, key);
      return true;
    }
  }
}

/** Whether `id` is (probably) in the table a KnownChunks shared. */
export function knownIn(table: BigUint64Array, id: string): boolean {
  const key = keyOf(id);
  const mask = table.length - 1;
  for (let i = Number(key & BigInt(mask)); ; i = (i + 1) & mask) {
    const at = Atomics.load(table, i);
    if (at === key) return true;
    if (at === EMPTY) return false;
  }
}

/**
 * Reading many files fast: the contents of the files queued on a reader are fetched ahead of
 * their consumer, in as few store requests as possible (blobs of one pack that lie close
 * together are read with one ranged get of up to a few MiB), and decrypted, decompressed and
 * checked in the worker threads. A file queued with `read(node)` comes back as its chunks, in
 * order; one queued with `write(node, fd)` is written into the descriptor by the worker
 * threads themselves (positioned writes), so its bytes never cross to the calling thread.
 *
 * Every chunk is checked against its id (a keyed hash of its SHA-256), and each file's size;
 * a file of one chunk is checked against its sha256 too (the chunk's SHA-256 is the file's),
 * and `read` hashes a file of several chunks as it yields them.
 *
 * Memory: at most `aheadBytes` of plaintext fetched and not yet consumed, or of stored bytes
 * fetched and not yet written (plus one request), and per worker one job's plaintext (at most
 * 8 MiB), whatever the number and size of the files queued.
 */
import { createHash } from "node:crypto";
import { IotvaultError, isNotFound, toIotvaultError } from "@iotvault/errors";
import { cancelled, storeError, type RepoCore } from "./core.js";
import { envelopeKeyId } from "./envelope.js";
import { corrupt, packKey } from "./format.js";
import type { BlobLocation } from "./pack.js";
import type { BlobRef, NewFile } from "./pipeline-core.js";
import type { ReadBack } from "./read-back.js";
import type { ChunkSealer } from "./sealer.js";
import type { TreeNode } from "./tree.js";
import { YoungGc } from "./young-gc.js";

export interface ReadAheadOptions {
  signal?: AbortSignal | undefined;
  /** Plain bytes fetched ahead of the consumer (default 64 MiB). */
  aheadBytes?: number | undefined;
}

/** Reads many files' contents ahead of their consumer (`Repository.readFiles`). */
export interface FileReader {
  /**
   * Queues a file and returns its content. Contents MUST be consumed in the order the files
   * were queued: a content left unread holds back the ones after it; leaving a loop early
   * releases the rest of that file.
   */
  read(node: TreeNode): AsyncIterable<Buffer>;
  /**
   * Queues a file to be written into `fd` (an open, writable descriptor of a regular file, at
   * positions 0..size); resolves with its size once every chunk is written and checked.
   * Files queued with `write` need not be waited for in order.
   */
  write(node: TreeNode, fd: number): Promise<number>;
  /**
   * Queues a file of one chunk that a worker creates, writes, finishes and renames into place
   * itself (see NewFile; its sha256 is the node's); resolves with its size once it is there.
   * Nothing is left at `tmp` or `final` when it fails.
   */
  create(node: TreeNode, file: Omit<NewFile, "sha256">): Promise<number>;
  /**
   * Reads a written file back from `fd` and returns its SHA-256 and length, hashed in a worker
   * thread when the repository has any (a restore's check that the target kept what it wrote).
   */
  readBack(fd: number, expectedBytes: number): Promise<ReadBack>;
  /** Stops fetching; contents still being read or written fail with CANCELLED. */
  close(): void;
}

/** Blobs further apart than this in a pack are fetched with separate requests. */
const MAX_GAP = 256 * 1024;
/** The largest ranged get (a blob larger than this is fetched alone). */
const MAX_REQUEST = 8 * 1024 * 1024;
const REQUESTS_IN_FLIGHT = 4;
/** The plaintext one worker job opens at most (a range holding more is split, see open()). */
const OPEN_JOB_PLAIN_BYTES = 8 * 1024 * 1024;
const DEFAULT_AHEAD = 64 * 1024 * 1024;

interface Slot {
  id: string;
  owner: string;
  loc: BlobLocation | undefined;
  /** Set for a file being written: where this chunk goes. */
  sink?: BlobRef["sink"];
  planned: boolean;
  /** Its fetch is running: only that fetch settles it (a worker may be writing into `sink`). */
  dispatched: boolean;
  released: boolean;
  settled: boolean;
  plain?: Buffer | undefined;
  digest?: string | undefined;
  error?: Error | undefined;
  waiters: (() => void)[];
}

interface Range {
  packId: string;
  start: number;
  end: number;
  slots: Slot[];
}

export class ReadAhead implements FileReader {
  private readonly queue: Slot[] = [];
  private head = 0;
  private planned = 0;
  /** Raw bytes of planned slots not consumed (read) or written yet. */
  private ahead = 0;
  private inFlight = 0;
  private readonly ranges: Range[] = [];
  private closed = false;
  private readonly aheadBytes: number;
  private readonly youngGc = new YoungGc(16 * 1024 * 1024);

  constructor(
    private readonly core: RepoCore,
    private readonly sealer: ChunkSealer,
    private readonly options: ReadAheadOptions = {},
  ) {
    this.aheadBytes = Math.max(MAX_REQUEST, options.aheadBytes ?? DEFAULT_AHEAD);
  }

  read(node: TreeNode): AsyncIterable<Buffer> {
    const { owner, slots } = this.enqueue(node, undefined);
    return this.content(node, owner, slots);
  }

  readBack(fd: number, expectedBytes: number): Promise<ReadBack> {
    if (this.closed) return Promise.reject(cancelled("reading back a restored file"));
    return this.sealer.readBack(fd, expectedBytes);
  }

  async write(node: TreeNode, fd: number): Promise<number> {
    const { owner, slots } = this.enqueue(node, (position) => ({ fd, position }));
    return this.written(node, owner, slots);
  }

  async create(node: TreeNode, file: Omit<NewFile, "sha256">): Promise<number> {
    const id = node.chunks?.length === 1 ? node.chunks[0]! : undefined;
    if (id === undefined || node.sha256 === undefined) {
      throw new IotvaultError(
        "INVALID_ARGUMENT",
        `${node.path}: only a file of one chunk, with its sha256, is created`,
      );
    }
    // Checked before anything is written: a file of the wrong size never reaches its name.
    const loc = this.core.index.get(id);
    if (loc && node.size !== undefined && loc.rawLength !== node.size) {
      throw wrongSize(`file ${node.path}`, loc.rawLength, node.size);
    }
    const sha256 = node.sha256;
    const { owner, slots } = this.enqueue(node, () => ({ create: { ...file, sha256 } }));
    return this.written(node, owner, slots);
  }

  /** Waits for every chunk of a file being written (write, create) and checks what was written. */
  private async written(node: TreeNode, owner: string, slots: Slot[]): Promise<number> {
    this.pump();
    const size = slots.reduce((n, s) => n + (s.loc?.rawLength ?? 0), 0);
    // Every slot settles before this returns, failed or not: the caller may close `fd` then.
    for (const slot of slots) {
      if (!slot.settled) await new Promise<void>((resolve) => slot.waiters.push(resolve));
    }
    const failure = slots.find((s) => s.error !== undefined)?.error;
    if (failure) throw failure;
    if (node.size !== undefined && size !== node.size) throw wrongSize(owner, size, node.size);
    if (slots.length === 1 && node.sha256 !== undefined && slots[0]!.digest !== node.sha256) {
      throw corrupt(`${owner}: the content does not match the sha256 recorded in the snapshot`);
    }
    return size;
  }

  close(): void {
    if (this.closed) return;
    this.closed = true;
    for (let i = this.head; i < this.queue.length; i++) {
      const slot = this.queue[i]!;
      if (!slot.dispatched) this.settle(slot, { error: cancelled("reading") });
    }
    this.queue.length = 0;
    this.head = 0;
    this.ranges.length = 0;
  }

  private enqueue(
    node: TreeNode,
    sinkAt: ((position: number) => BlobRef["sink"]) | undefined,
  ): { owner: string; slots: Slot[] } {
    if (node.type !== "file") {
      throw new IotvaultError("INVALID_ARGUMENT", `${node.path} is a ${node.type}, not a file`);
    }
    const owner = `file ${node.path}`;
    if (this.closed) throw cancelled(`reading ${owner}`);
    let position = 0;
    const slots = (node.chunks ?? []).map((id): Slot => {
      const loc = this.core.index.get(id);
      const sink = sinkAt?.(position);
      position += loc?.rawLength ?? 0;
      return { id, owner, loc, sink, planned: false, dispatched: false, released: false, settled: false, waiters: [] };
    });
    this.queue.push(...slots);
    return { owner, slots };
  }

  private async *content(node: TreeNode, owner: string, slots: Slot[]): AsyncGenerator<Buffer> {
    const single = slots.length === 1;
    const hash = single ? undefined : createHash("sha256");
    let size = 0;
    let next = 0;
    try {
      for (; next < slots.length; next++) {
        const slot = slots[next]!;
        const { plain, digest } = await this.take(slot);
        hash?.update(plain);
        size += plain.length;
        if (single && node.sha256 !== undefined && digest !== node.sha256) {
          throw corrupt(`${owner}: the content does not match the sha256 recorded in the snapshot`);
        }
        yield plain;
      }
    } finally {
      for (; next < slots.length; next++) this.release(slots[next]!);
      this.pump();
    }
    if (node.size !== undefined && size !== node.size) {
      throw corrupt(`${owner}: its chunks hold ${size} bytes, the snapshot says ${node.size}`);
    }
    if (hash && node.sha256 !== undefined && hash.digest("hex") !== node.sha256) {
      throw corrupt(`${owner}: the content does not match the sha256 recorded in the snapshot`);
    }
  }

  /** Waits for a slot (it is the consumer's next one), releases it, returns its plaintext. */
  private async take(slot: Slot): Promise<{ plain: Buffer; digest: string | undefined }> {
    if (this.options.signal?.aborted) throw cancelled(`reading ${slot.owner}`);
    this.pump();
    if (!slot.settled) await new Promise<void>((resolve) => slot.waiters.push(resolve));
    const { plain, digest, error } = slot;
    this.release(slot);
    this.pump();
    if (error !== undefined) throw error;
    return { plain: plain!, digest };
  }

  /** The slot is consumed, written or skipped: its budget is freed and it leaves the queue. */
  private release(slot: Slot): void {
    if (slot.released) return;
    slot.released = true;
    slot.plain = undefined;
    if (slot.planned) this.ahead -= aheadCost(slot);
    while (this.head < this.queue.length && this.queue[this.head]!.released) this.head++;
    if (this.planned < this.head) this.planned = this.head;
    if (this.head > 4096 && this.head * 2 > this.queue.length) {
      this.queue.splice(0, this.head);
      this.planned -= this.head;
      this.head = 0;
    }
  }

  private pump(): void {
    while (!this.closed && this.inFlight < REQUESTS_IN_FLIGHT) {
      if (this.ranges.length === 0) this.plan();
      const range = this.ranges.shift();
      if (!range) return;
      this.inFlight++;
      void this.fetch(range).finally(() => {
        this.inFlight--;
        this.pump();
      });
    }
  }

  /**
   * Plans the next window of slots (up to the budget): groups them by pack, sorts them by
   * offset, and merges neighbours into ranges; the range holding the earliest slot goes first.
   * A new window starts only when a quarter of the budget is free (or nothing is being
   * fetched), so that requests stay large.
   */
  private plan(): void {
    const free = this.aheadBytes - this.ahead;
    if (free < this.aheadBytes / 4 && this.inFlight > 0) return;
    const byPack = new Map<string, { slot: Slot; order: number }[]>();
    for (; this.planned < this.queue.length && this.ahead < this.aheadBytes; this.planned++) {
      const slot = this.queue[this.planned]!;
      if (slot.settled || slot.planned || slot.released) continue;
      slot.planned = true;
      if (!slot.loc) {
        this.settle(slot, { error: missingChunk(slot) });
        continue;
      }
      this.ahead += aheadCost(slot);
      const list = byPack.get(slot.loc.packId);
      if (list) list.push({ slot, order: this.planned });
      else byPack.set(slot.loc.packId, [{ slot, order: this.planned }]);
    }
    const ranges: { range: Range; order: number }[] = [];
    for (const [packId, slots] of byPack) {
      slots.sort((a, b) => a.slot.loc!.offset - b.slot.loc!.offset);
      let current: { range: Range; order: number } | undefined;
      for (const { slot, order } of slots) {
        const { offset, length } = slot.loc!;
        const r = current?.range;
        if (r && offset >= r.start && offset + length <= r.end) {
          // The same chunk again (files with equal content): it reads the bytes already asked for.
          r.slots.push(slot);
          current!.order = Math.min(current!.order, order);
        } else if (r && offset >= r.end && offset - r.end <= MAX_GAP && offset + length - r.start <= MAX_REQUEST) {
          r.end = offset + length;
          r.slots.push(slot);
          current!.order = Math.min(current!.order, order);
        } else {
          current = { range: { packId, start: offset, end: offset + length, slots: [slot] }, order };
          ranges.push(current);
        }
      }
    }
    this.ranges.push(...ranges.sort((a, b) => a.order - b.order).map((r) => r.range));
  }

  private async fetch(range: Range): Promise<void> {
    for (const slot of range.slots) slot.dispatched = true;
    try {
      const data = await this.get(range);
      const keys = await this.keysOf(range, data);
      const results = await this.open(range, data, keys);
      // The transport's message buffers of this range are dead now (see young-gc.ts).
      this.youngGc.note(2 * (range.end - range.start));
      results.forEach((r, i) => {
        const slot = range.slots[i]!;
        if (r.ok) this.settle(slot, { plain: r.plain, digest: r.digest });
        else if (r.targetError !== undefined) {
          // The blob was fine; the restored file could not be written (ENOSPC, EACCES, ...).
          const err = Object.assign(new Error(r.problem), { code: r.targetError });
          this.settle(slot, { error: toIotvaultError(err, slot.owner) });
        } else {
          const details = { pack: range.packId, chunk: slot.id };
          this.settle(slot, {
            error: corrupt(
              `pack ${range.packId} is corrupt: chunk ${slot.id} of ${slot.owner}: ${r.problem}`,
              undefined,
              details,
            ),
          });
        }
      });
    } catch (err) {
      for (const slot of range.slots)
        if (!slot.settled) this.settle(slot, { error: this.fetchError(err, range, slot) });
    }
  }

  /**
   * Decrypts, decompresses, checks (and writes) the blobs of a fetched range in the workers. A
   * range is split into jobs of at most OPEN_JOB_PLAIN_BYTES of plaintext, so that a range of
   * well-compressed chunks (a PostgreSQL relation file: 8 MiB stored can be 200 MiB plain) is
   * shared by the workers instead of keeping one busy while the others wait; each job gets a
   * copy of its part of the stored bytes (small next to the plaintext). A range of one job is
   * handed over whole (transferred, no copy).
   */
  private async open(range: Range, data: Buffer, keys: Map<number, Uint8Array>) {
    const jobs: { from: number; to: number }[] = [];
    let plain = 0;
    range.slots.forEach((slot, i) => {
      const last = jobs[jobs.length - 1];
      if (!last || plain + slot.loc!.rawLength > OPEN_JOB_PLAIN_BYTES) {
        jobs.push({ from: i, to: i + 1 });
        plain = 0;
      } else last.to = i + 1;
      plain += slot.loc!.rawLength;
    });
    const single = jobs.length === 1;
    // Every job settles before the range does: a worker may still be writing into a sink.
    const parts = await Promise.allSettled(
      jobs.map(({ from, to }) => {
        const slots = range.slots.slice(from, to);
        const start = single ? 0 : slots[0]!.loc!.offset - range.start;
        const end = single
          ? data.length
          : slots[slots.length - 1]!.loc!.offset + slots[slots.length - 1]!.loc!.length - range.start;
        const refs = slots.map((s): BlobRef => ({
          at: s.loc!.offset - range.start - start,
          length: s.loc!.length,
          id: s.id,
          rawLength: s.loc!.rawLength,
          flags: s.loc!.flags,
          ...(s.sink ? { sink: s.sink } : {}),
        }));
        return this.sealer.open(single ? data : data.subarray(start, end), single, refs, keys);
      }),
    );
    const failed = parts.find((p) => p.status === "rejected");
    if (failed) throw failed.reason;
    return parts.flatMap((p) => (p.status === "fulfilled" ? p.value : []));
  }

  /** The keys the blobs of a fetched range were sealed with (the keyring is reloaded for a new one). */
  private async keysOf(range: Range, data: Buffer): Promise<Map<number, Uint8Array>> {
    const keys = new Map<number, Uint8Array>();
    for (const slot of range.slots) {
      const at = slot.loc!.offset - range.start;
      const envelope = data.subarray(at, at + slot.loc!.length);
      const keyId = envelopeKeyId(envelope);
      if (keyId === undefined || keys.has(keyId)) continue;
      if (!this.core.keyFor(keyId)) await this.core.ensureKey(envelope);
      const key = this.core.keyFor(keyId);
      if (key) keys.set(keyId, key);
    }
    return keys;
  }

  private async get(range: Range): Promise<Buffer> {
    if (this.closed) throw cancelled("reading");
    const length = range.end - range.start;
    const data = await this.core.store.get(packKey(range.packId), { offset: range.start, length }, this.options.signal);
    if (data.length < length) {
      const cut = range.slots.find((s) => s.loc!.offset + s.loc!.length - range.start > data.length)!;
      throw corrupt(`pack ${range.packId} is truncated: chunk ${cut.id} of ${cut.owner} is cut off`, undefined, {
        pack: range.packId,
        chunk: cut.id,
      });
    }
    return data;
  }

  private fetchError(err: unknown, range: Range, slot: Slot): IotvaultError {
    if (err instanceof IotvaultError && (err.code === "DATA_CORRUPT" || err.code === "CANCELLED")) return err;
    if (isNotFound(err)) {
      return new IotvaultError(
        "NOT_FOUND",
        `pack ${range.packId} is missing (needed for chunk ${slot.id} of ${slot.owner})`,
        {
          hint: "run `iotvault verify` to list what is affected; restore the pack from another replica",
          details: { pack: range.packId, chunk: slot.id },
        },
      );
    }
    return storeError(err, `reading pack ${range.packId}`);
  }

  private settle(slot: Slot, outcome: { plain?: Buffer; digest?: string; error?: Error }): void {
    if (slot.settled) return;
    slot.settled = true;
    slot.plain = outcome.plain;
    slot.digest = outcome.digest;
    slot.error = outcome.error;
    // A written chunk needs nothing more from the reader: its budget is free at once.
    if (slot.sink) this.release(slot);
    for (const wake of slot.waiters.splice(0)) wake();
  }
}

/**
 * What a planned slot counts against the look-ahead until it is released: its plaintext when the
 * consumer takes it (read), its stored bytes when a worker writes it (write): that plaintext
 * never reaches this thread and lives in a worker for one job (at most OPEN_JOB_PLAIN_BYTES), so
 * what waits here is the fetched, still sealed range. Counting plaintext there capped a window of
 * well-compressed chunks (a PostgreSQL relation file stores at 25:1) at a few MiB of requests,
 * and the small files around it were fetched a few at a time.
 */
function aheadCost(slot: Slot): number {
  if (!slot.loc) return 0;
  return slot.sink ? slot.loc.length : slot.loc.rawLength;
}

function wrongSize(owner: string, size: number, recorded: number): IotvaultError {
  return corrupt(`${owner}: its chunks hold ${size} bytes, the snapshot says ${recorded}`);
}

function missingChunk(slot: Slot): IotvaultError {
  return new IotvaultError("NOT_FOUND", `chunk ${slot.id} of ${slot.owner} is not in the repository index`, {
    hint: "run `iotvault verify`; an index file or pack may have been deleted",
    details: { chunk: slot.id },
  });
}

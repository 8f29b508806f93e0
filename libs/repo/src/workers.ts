/**
 * WorkerSealer: a small pool of worker threads that chunk, hash, compress and encrypt (backup)
 * and decrypt, decompress and check (restore), so that both use every core.
 *
 * Posting a message costs more than sealing a small file, so jobs are batched: a batch leaves
 * when it holds enough bytes or jobs, or when the event loop turns. Buffers the caller hands
 * over (`owned`) move to the worker by transfer; others are copied once. A worker answers a
 * batch with one message: the sealed blobs in one arena, opened plaintexts as their own
 * buffers, all transferred. Workers start on first use (or come from the threads a service keeps
 * ready, keepWorkerThreadsReady), end when the repository closes, and keep the process alive
 * only while they have work.
 */
import { Worker } from "node:worker_threads";
import { IotvaultError } from "@iotvault/errors";
import type { SealKey, Sealed } from "./blob.js";
import type { ReadBack } from "./read-back.js";
import { collectAll } from "./young-gc.js";
import {
  STREAM_SEGMENT_BYTES,
  type BlobRef,
  type LargeReadOptions,
  type LocalFileStat,
  type LocalReadOptions,
  type PipelineParams,
  type ReadSpan,
  type SealedFile,
  type StreamedChunk,
} from "./pipeline-core.js";
import {
  READ_ONLY_SHAPE,
  notConfigured,
  type ChunkSealer,
  type OpenedBlob,
  type PipelineShape,
  type SealedLocalFile,
  type StreamedLocalFile,
  type StreamOptions,
} from "./sealer.js";

export interface WorkerInit {
  init: PipelineParams;
}

export type Job =
  | { kind: "chunk"; data: Uint8Array; id: string }
  | { kind: "file"; data: Uint8Array }
  | { kind: "path"; data: Uint8Array; path: string; options: LocalReadOptions }
  | { kind: "open"; data: Uint8Array; blobs: BlobRef[] }
  /**
   * The next segment of a large file streamed by this worker (opened by the first job of a
   * token). With `slot`, the segment is read there and the worker only cuts: its chunks come
   * back as places in the ring, for "plain" jobs.
   */
  | {
      kind: "stream";
      data: Uint8Array;
      token: number;
      path?: string;
      options?: LargeReadOptions;
      close?: boolean;
      slot?: { ring: SharedArrayBuffer; at: number; length: number };
    }
  /**
   * The file hash of a split stream (token): the bytes at [at, at + length) of the ring, in
   * order; `final` answers the SHA-256, `drop` forgets it. Always to the same worker.
   */
  | {
      kind: "hash";
      data: Uint8Array;
      token: number;
      ring: SharedArrayBuffer;
      at: number;
      length: number;
      final?: boolean;
      drop?: boolean;
    }
  /** A written file read back from its descriptor (shared by the threads) and hashed. */
  | { kind: "readback"; data: Uint8Array; fd: number }
  /** One chunk of a split stream, in the shared ring: its id, then sealed unless `known` holds it. */
  | {
      kind: "plain";
      data: Uint8Array;
      ring: SharedArrayBuffer;
      at: number;
      length: number;
      known?: SharedArrayBuffer | undefined;
    };

type SealedChunkRef = { id: string; rawLength: number; flags: number; at: number; length: number; known?: true };
/** A chunk of a streamed segment: sealed (or known) by the streaming worker, or where it is in a split stream's ring. */
export type StreamChunkRef = SealedChunkRef | { rawLength: number; ringAt: number };

export interface JobBatch {
  seq: number;
  /** Where the worker seals the batch's blobs (reused from batch to batch; it grows it when needed). */
  arena?: ArrayBuffer | undefined;
  /** Key of the seal jobs (one batch never mixes two current keys). */
  keyId: number;
  keys: [number, Uint8Array][];
  jobs: Job[];
}

export type OpenedResult =
  | { ok: true; plain?: Uint8Array | undefined; digest: string }
  | { ok: false; problem: string; unknownKeyId?: number; targetError?: string };

export type JobResult =
  | { ok: true; kind: "chunk"; flags: number; at: number; length: number }
  | { ok: true; kind: "file"; sha256: string; size: number; chunks: SealedChunkRef[] }
  | { ok: true; kind: "path"; stat: LocalFileStat; sha256: string; size: number; chunks: SealedChunkRef[] }
  | { ok: true; kind: "path"; outcome: "changed" | "gone"; message: string }
  | { ok: true; kind: "open"; blobs: OpenedResult[] }
  | { ok: true; kind: "plain"; chunk: SealedChunkRef }
  | { ok: true; kind: "hash"; sha256?: string }
  | { ok: true; kind: "readback"; sha256: string; size: number }
  | { ok: true; kind: "stream"; chunks: StreamChunkRef[]; read: ReadSpan }
  | {
      ok: true;
      kind: "stream";
      chunks: StreamChunkRef[];
      read: ReadSpan;
      stat: LocalFileStat;
      sha256: string;
      size: number;
    }
  | { ok: true; kind: "stream"; outcome: "changed" | "gone" | "closed"; message: string }
  | { ok: false; message: string };

export interface BatchReply {
  seq: number;
  arena: ArrayBuffer;
  results: JobResult[];
}

const BATCH_BYTES = 1024 * 1024;
/** The smallest arena; arenas come in powers of two, sized to their batch. */
const ARENA_MIN_BYTES = 256 * 1024;
const ARENA_MAX_KEPT_BYTES = 16 * 1024 * 1024;
/**
 * Arena room for one streamed segment sealed by its own worker: what its new chunks take once
 * compressed, mostly (none when they are known, as in an incremental). A whole segment's room
 * (16 MiB arenas) was allocated afresh for most segments: the pool keeps 48 MiB of free arenas
 * and small ones fill it.
 */
const STREAM_ARENA_BYTES = 2 * 1024 * 1024;
/** Free arenas kept, in all (a split stream has a segment's chunks in flight, each in an arena). */
const ARENA_KEPT_BYTES = 48 * 1024 * 1024;
const BATCH_JOBS = 32;

interface Waiting {
  resolve: (r: JobResult & { ok: true }, arena: ArrayBuffer, release: () => void) => void;
  reject: (err: unknown) => void;
}

/**
 * The arenas sealed blobs come back in. A returned arena is shared by the results of its
 * batch; once each has been released (its blobs copied into a pack, or dropped), it goes back
 * to the pool for a later batch: a backup reuses a handful of arenas instead of allocating one
 * per batch.
 */
class ArenaPool {
  private readonly free: ArrayBuffer[] = [];
  private freeBytes = 0;

  /** `keep`: bytes of free arenas kept for reuse (fresh memory costs more than sealing into it). */
  constructor(private readonly keep: number) {}

  take(bytes: number): ArrayBuffer {
    const size = Math.max(ARENA_MIN_BYTES, 2 ** Math.ceil(Math.log2(Math.max(1, bytes))));
    const i = this.free.findIndex((a) => a.byteLength === size);
    if (i >= 0) {
      this.freeBytes -= size;
      return this.free.splice(i, 1)[0]!;
    }
    return new ArrayBuffer(size);
  }

  /** One release function per result holding blobs; the last one gives the arena back. */
  lease(arena: ArrayBuffer, holders: number): () => void {
    let left = holders;
    if (left === 0) this.give(arena);
    return () => {
      if (--left === 0) this.give(arena);
    };
  }

  private give(arena: ArrayBuffer): void {
    if (this.freeBytes + arena.byteLength > this.keep || arena.byteLength > ARENA_MAX_KEPT_BYTES) return;
    this.free.push(arena);
    this.freeBytes += arena.byteLength;
  }
}

/** True when `buf` is the whole of a plain ArrayBuffer (so it can be transferred). */
export function isStandalone(buf: Uint8Array): boolean {
  return buf.byteOffset === 0 && buf.byteLength === buf.buffer.byteLength && buf.buffer instanceof ArrayBuffer;
}

function copyOf(buf: Uint8Array): Uint8Array {
  const copy = new Uint8Array(new ArrayBuffer(buf.length));
  copy.set(buf);
  return copy;
}

class Batch {
  readonly jobs: Job[] = [];
  readonly waiting: Waiting[] = [];
  readonly transfer = new Set<ArrayBuffer>();
  readonly keys = new Map<number, Uint8Array>();
  bytes = 0;
  /** Bytes the batch's sealing jobs may write into its arena. */
  arenaBytes = 0;

  constructor(readonly keyId: number) {}

  /** Adds a job; its data is transferred when owned and standalone, copied otherwise. */
  add(job: Job, owned: boolean, weight: number, waiting: Waiting): void {
    const data = job.data;
    if (owned && isStandalone(data) && !this.transfer.has(data.buffer as ArrayBuffer)) {
      this.transfer.add(data.buffer as ArrayBuffer);
    } else if (data.length > 0) {
      job.data = copyOf(data);
      this.transfer.add(job.data.buffer as ArrayBuffer);
    }
    this.jobs.push(job);
    this.waiting.push(waiting);
    this.bytes += weight;
    // Jobs that seal nothing (a file hash, a read-back, a split stream's cutting, opening) need no arena room;
    // a streamed segment's new chunks start in STREAM_ARENA_BYTES (the worker grows the arena for more).
    if (job.kind === "stream" && !job.slot) this.arenaBytes += Math.min(weight, STREAM_ARENA_BYTES);
    else if (!(job.kind === "hash" || job.kind === "readback" || job.kind === "open" || job.kind === "stream"))
      this.arenaBytes += weight;
  }

  addKey(id: number, key: Uint8Array): void {
    // A copy in its own small buffer (a pooled Buffer would clone its whole slab).
    if (!this.keys.has(id)) this.keys.set(id, new Uint8Array(key));
  }
}

class PoolWorker {
  /** Bytes of the jobs queued or sent and not answered yet (for balancing). */
  load = 0;
  private batch: Batch | undefined;
  private readonly sent = new Map<number, { waiting: Waiting[]; bytes: number }>();
  private flushScheduled = false;
  private failure: IotvaultError | undefined;
  private seq = 0;

  constructor(
    readonly worker: Worker,
    private readonly arenas: ArenaPool,
  ) {
    worker.unref();
    worker.on("message", (reply: BatchReply) => this.settle(reply));
    worker.on("error", (err) => this.failAll(err));
    worker.on("exit", (code) => this.failAll(new Error(`the pipeline worker exited with code ${code}`)));
  }

  init(params: PipelineParams): void {
    const message: WorkerInit = {
      init: { ...params, macKey: new Uint8Array(params.macKey), gear: new Uint32Array(params.gear) },
    };
    this.worker.postMessage(message);
  }

  enqueue(job: Job, owned: boolean, keys: Iterable<[number, Uint8Array]>, keyId: number, weight: number) {
    if (this.failure) return Promise.reject(this.failure);
    return new Promise<{ result: JobResult & { ok: true }; arena: ArrayBuffer; release: () => void }>(
      (resolve, reject) => {
        if (this.batch && this.batch.keyId !== keyId) this.flush();
        const batch = (this.batch ??= new Batch(keyId));
        for (const [id, key] of keys) batch.addKey(id, key);
        const bytes = weight;
        batch.add(job, owned, weight, {
          resolve: (result, arena, release) => resolve({ result, arena, release }),
          reject,
        });
        this.load += bytes;
        if (batch.bytes >= BATCH_BYTES || batch.jobs.length >= BATCH_JOBS) this.flush();
        else if (!this.flushScheduled) {
          this.flushScheduled = true;
          setImmediate(() => this.flush());
        }
      },
    );
  }

  private flush(): void {
    this.flushScheduled = false;
    const batch = this.batch;
    if (!batch || batch.jobs.length === 0) return;
    this.batch = undefined;
    const sealing = batch.jobs.some((j) => j.kind !== "open");
    const arena = sealing ? this.arenas.take(batch.arenaBytes + batch.jobs.length * 64) : undefined;
    const message: JobBatch = { seq: ++this.seq, arena, keyId: batch.keyId, keys: [...batch.keys], jobs: batch.jobs };
    this.sent.set(message.seq, { waiting: batch.waiting, bytes: batch.bytes });
    if (this.sent.size === 1) this.worker.ref();
    this.worker.postMessage(message, arena ? [arena, ...batch.transfer] : [...batch.transfer]);
  }

  private settle(reply: BatchReply): void {
    const entry = this.sent.get(reply.seq);
    if (!entry) return;
    this.sent.delete(reply.seq);
    if (this.sent.size === 0) this.worker.unref();
    this.load -= entry.bytes;
    const holders = reply.results.filter(holdsBlobs).length;
    const release = this.arenas.lease(reply.arena, holders);
    reply.results.forEach((result, i) => {
      const w = entry.waiting[i]!;
      if (result.ok) w.resolve(result, reply.arena, holdsBlobs(result) ? release : noop);
      else w.reject(new IotvaultError("INTERNAL", `a pipeline job failed in a worker thread: ${result.message}`));
    });
  }

  private failAll(err: unknown): void {
    this.failure ??= new IotvaultError(
      "INTERNAL",
      `a pipeline worker thread failed: ${err instanceof Error ? err.message : String(err)}`,
      { cause: err },
    );
    for (const { waiting } of [...this.sent.values(), { waiting: this.batch?.waiting ?? [] }])
      for (const w of waiting) w.reject(this.failure);
    this.sent.clear();
    this.batch = undefined;
    this.load = 0;
    this.worker.unref();
  }
}

const SEAL_WORKER_URL = new URL("./seal-worker.js", import.meta.url);

/** Started threads waiting for an operation, and how many to keep (keepWorkerThreadsReady). */
const ready: { worker: Worker; drop: () => void }[] = [];
let readyWanted = 0;

/**
 * Keeps `count` freshly started worker threads ready for the next repository operation of this
 * process (services: a restore or backup then starts without waiting ~40-60 ms for its threads
 * to start and load the pipeline). A thread that has worked is never handed out again (it ends
 * with its repository: what an operation made it allocate leaves with it); the ready ones are
 * topped up when a repository closes. 0 ends the ready threads. They never keep the process
 * alive. Costs ~8-12 MiB of memory per ready thread.
 */
export function keepWorkerThreadsReady(count: number): void {
  if (!Number.isInteger(count) || count < 0 || count > 64) {
    throw new IotvaultError("INVALID_ARGUMENT", `worker threads kept ready must be from 0 to 64, got ${count}`);
  }
  readyWanted = count;
  for (const r of ready.splice(count)) {
    r.drop();
    void r.worker.terminate();
  }
  topUpReady();
}

function topUpReady(): void {
  while (ready.length < readyWanted) {
    const worker = new Worker(SEAL_WORKER_URL);
    worker.unref();
    // A ready thread that fails or exits (it never should) is forgotten; the next operation starts its own.
    const forget = (): void => {
      const i = ready.findIndex((r) => r.worker === worker);
      if (i >= 0) ready.splice(i, 1)[0]!.drop();
    };
    const drop = (): void => {
      worker.off("error", forget);
      worker.off("exit", forget);
    };
    worker.on("error", forget);
    worker.on("exit", forget);
    ready.push({ worker, drop });
  }
}

/** A ready thread when there is one, a new one otherwise. */
function takeWorker(): Worker {
  const r = ready.shift();
  if (!r) return new Worker(SEAL_WORKER_URL);
  r.drop();
  return r.worker;
}

/** The thread ids of the threads kept ready now (for tests). */
export function readyWorkerThreads(): number[] {
  return ready.map((r) => r.worker.threadId);
}

export class WorkerSealer implements ChunkSealer {
  private pool: PoolWorker[] | undefined;
  private readonly arenas: ArenaPool;
  private closed = false;
  private shape: PipelineShape = READ_ONLY_SHAPE;
  /** A copy of the MAC key (workers compute chunk ids). */
  private readonly macKey: Uint8Array;
  private streamTokens = 0;
  /** Streams running, and callers waiting for one to end. */
  private streams = 0;
  private readonly streamWaiters: (() => void)[] = [];
  /** Streams split across the workers so far (see streamOnce). */
  splitStreams = 0;
  /** Rings of split streams, free for the next one. */
  private readonly rings: SharedArrayBuffer[] = [];

  constructor(
    readonly parallelism: number,
    private readonly compressionLevel: number,
    macKey: Uint8Array,
  ) {
    this.macKey = new Uint8Array(macKey);
    this.arenas = new ArenaPool(ARENA_KEPT_BYTES);
  }

  warm(): void {
    if (!this.closed) this.pool ??= this.start();
  }

  configure(shape: PipelineShape): void {
    if (this.shape.gear === shape.gear) return;
    this.shape = shape;
    for (const w of this.pool ?? []) w.init(this.params());
  }

  async seal(plain: Uint8Array, owned: boolean, id: string, key: SealKey): Promise<Sealed> {
    const { result, arena, release } = await this.send(
      { kind: "chunk", data: plain, id },
      owned,
      [[key.keyId, key.key]],
      key.keyId,
    );
    if (result.kind !== "chunk") throw unexpected();
    return { flags: result.flags, sealed: Buffer.from(arena, result.at, result.length), release };
  }

  async sealFile(content: Uint8Array, owned: boolean, key: SealKey): Promise<SealedFile> {
    if (this.shape === READ_ONLY_SHAPE) throw notConfigured();
    const { result, arena, release } = await this.send(
      { kind: "file", data: content },
      owned,
      [[key.keyId, key.key]],
      key.keyId,
    );
    if (result.kind !== "file") throw unexpected();
    return { sha256: result.sha256, size: result.size, chunks: views(result.chunks, arena), release };
  }

  async sealLocalFile(
    path: string,
    expectedBytes: number,
    options: LocalReadOptions,
    key: SealKey,
  ): Promise<SealedLocalFile> {
    if (this.shape === READ_ONLY_SHAPE) throw notConfigured();
    const job: Job = { kind: "path", data: EMPTY, path, options };
    const { result, arena, release } = await this.send(job, false, [[key.keyId, key.key]], key.keyId, expectedBytes);
    if (result.kind !== "path") throw unexpected();
    if ("outcome" in result) return { kind: result.outcome, message: result.message };
    const file = { sha256: result.sha256, size: result.size, chunks: views(result.chunks, arena), release };
    return { kind: "read", stat: result.stat, file };
  }

  async sealStreamedLocalFile(
    path: string,
    options: StreamOptions,
    key: () => SealKey,
    onChunks: (chunks: StreamedChunk[]) => Promise<void> | void,
  ): Promise<StreamedLocalFile> {
    if (this.shape === READ_ONLY_SHAPE) throw notConfigured();
    // One stream per worker at a time: each holds a segment buffer and a descriptor in its worker.
    while (this.streams >= this.parallelism) await new Promise<void>((resolve) => this.streamWaiters.push(resolve));
    this.streams++;
    try {
      for (let attempt = 1; attempt <= Math.max(1, options.attempts); attempt++) {
        const r = await this.streamOnce(path, options, key, onChunks);
        if (r.kind !== "changed") return r;
      }
      return { kind: "changed", message: `skipped: it changed while being read, ${options.attempts} times in a row` };
    } finally {
      this.streams--;
      this.streamWaiters.shift()?.();
    }
  }

  /**
   * One read of a streamed file: every segment goes to the same worker (it holds the file's
   * hash and the chunker's carry), STREAM_WINDOW segments asked for ahead.
   *
   * When it is the only stream and there is more than one worker, the stream is split: its
   * worker reads each segment into a slot of a ring of memory shared by all threads, and only
   * cuts it and hashes the file; each chunk is hashed, looked up in the known table and sealed
   * by the least loaded worker ("plain" jobs reading it from the ring), so that one large file
   * (a database's biggest relation) uses every core. A slot is reused only once every chunk of
   * its segment was taken over (STREAM_WINDOW + 1 slots). Never with `oneWorker`.
   */
  private async streamOnce(
    path: string,
    options: LargeReadOptions & { oneWorker?: boolean | undefined },
    key: () => SealKey,
    onChunks: (chunks: StreamedChunk[]) => Promise<void> | void,
  ): Promise<StreamedLocalFile> {
    if (this.closed) throw new IotvaultError("FAILED_PRECONDITION", "the repository is closed");
    const pool = (this.pool ??= this.start());
    const worker = pool.reduce((best, w) => (w.load < best.load ? w : best));
    const token = ++this.streamTokens;
    const ring = pool.length > 1 && this.streams === 1 && !options.oneWorker ? this.takeRing() : undefined;
    // A split stream's file hash is kept by one worker, fed each segment in order: another one
    // when the stream's worker cuts content-defined chunks, the stream's own when it only reads.
    const hasher =
      ring &&
      (options.fixedChunks ? worker : pool.filter((w) => w !== worker).reduce((a, w) => (w.load < a.load ? w : a)));
    // What a segment costs the stream's worker, for balancing: all of it, or the cutting, or the read.
    const stepWeight = !ring
      ? STREAM_SEGMENT_BYTES
      : options.fixedChunks
        ? STREAM_SEGMENT_BYTES / 8
        : STREAM_SEGMENT_BYTES / 2;
    let hashing = false;
    let steps = 0;
    const slot = (): { slot?: { ring: SharedArrayBuffer; at: number; length: number } } => {
      if (!ring) return {};
      const length = ring.byteLength / STREAM_SLOTS;
      return { slot: { ring, at: (steps++ % STREAM_SLOTS) * length, length } };
    };
    const enqueue = (to: PoolWorker, job: Job, weight: number) => {
      const k = key();
      const answer = to.enqueue(job, false, [[k.keyId, k.key]], k.keyId, weight);
      answer.catch(noop); // awaited in turn, or released below
      return answer;
    };
    const ask = (job: Job) => enqueue(worker, job, stepWeight);
    const next = () => ask({ kind: "stream", data: EMPTY, token, ...slot() });
    const window = [
      ask({
        kind: "stream",
        data: EMPTY,
        token,
        ...slot(),
        path,
        options: { tolerateChanges: options.tolerateChanges, fixedChunks: options.fixedChunks, known: options.known },
      }),
    ];
    for (let i = 1; i < STREAM_WINDOW; i++) window.push(next());
    const ids: string[] = [];
    let open = true;
    try {
      for (;;) {
        const { result, arena, release } = await window.shift()!;
        if (result.kind !== "stream") {
          release();
          throw unexpected();
        }
        if ("outcome" in result) {
          open = false; // the worker let the stream go
          return { kind: result.outcome === "changed" ? "changed" : "gone", message: result.message };
        }
        const end = "sha256" in result;
        let chunks: StreamedChunk[];
        let releases = [release];
        let sha256 = end ? result.sha256 : "";
        if (ring && hasher) {
          release(); // nothing was sealed into the arena: the chunks are in the ring
          hashing = !end;
          const hashed = enqueue(
            hasher,
            { kind: "hash", data: EMPTY, token, ring, ...result.read, final: end },
            result.read.length,
          );
          const [sealed, digest] = await Promise.all([
            this.sealPlains(ring, result.chunks, options.known, key),
            hashed.then(({ result: h, release: r }) => {
              r();
              return h.kind === "hash" ? h.sha256 : undefined;
            }),
          ]);
          chunks = sealed.map((s) => s.chunk);
          releases = sealed.map((s) => s.release);
          if (end) sha256 = digest ?? "";
          if (end && !sha256) throw unexpected();
        } else {
          chunks = result.chunks.map((c): StreamedChunk => {
            if ("ringAt" in c) throw unexpected();
            return c.known
              ? { id: c.id, rawLength: c.rawLength, known: true }
              : { id: c.id, rawLength: c.rawLength, flags: c.flags, sealed: Buffer.from(arena, c.at, c.length) };
          });
        }
        for (const c of chunks) ids.push(c.id);
        let room: Promise<void> | void;
        try {
          room = onChunks(chunks);
        } finally {
          for (const r of releases) r();
        }
        if (end) open = false;
        await room;
        if (end) return { kind: "read", stat: result.stat, sha256, size: result.size, chunks: ids };
        window.push(next());
      }
    } finally {
      // Segments asked for past the end are answered "closed"; a stream given up is closed in the worker.
      if (open) window.push(ask({ kind: "stream", data: EMPTY, token, close: true }));
      if (hashing && hasher && ring)
        void enqueue(hasher, { kind: "hash", data: EMPTY, token, ring, at: 0, length: 0, drop: true }, 0);
      for (const answer of window) answer.then((a) => a.release(), noop);
      // The ring is reused once no segment asked for can still be read into it.
      if (ring) void Promise.allSettled(window).then(() => this.rings.push(ring));
    }
  }

  /** A ring for a split stream (reused: fresh memory costs more than the work it saves). */
  private takeRing(): SharedArrayBuffer {
    const slotBytes = STREAM_SEGMENT_BYTES + this.shape.chunker.maxSize;
    const i = this.rings.findIndex((r) => r.byteLength === STREAM_SLOTS * slotBytes);
    this.splitStreams++;
    if (i >= 0) return this.rings.splice(i, 1)[0]!;
    return new SharedArrayBuffer(STREAM_SLOTS * slotBytes);
  }

  /**
   * Seals the plaintext chunks of a split stream segment, each on the least loaded worker; in
   * file order. When one fails, the others' blobs are released before the error is thrown.
   */
  private async sealPlains(
    ring: SharedArrayBuffer,
    refs: StreamChunkRef[],
    known: SharedArrayBuffer | undefined,
    key: () => SealKey,
  ): Promise<{ chunk: StreamedChunk; release: () => void }[]> {
    const settled = await Promise.allSettled(
      refs.map(async (ref) => {
        if (!("ringAt" in ref)) throw unexpected();
        const k = key();
        const { result, arena, release } = await this.send(
          { kind: "plain", data: EMPTY, ring, at: ref.ringAt, length: ref.rawLength, known },
          false,
          [[k.keyId, k.key]],
          k.keyId,
          ref.rawLength,
        );
        if (result.kind !== "plain") {
          release();
          throw unexpected();
        }
        const c = result.chunk;
        const chunk: StreamedChunk = c.known
          ? { id: c.id, rawLength: c.rawLength, known: true }
          : { id: c.id, rawLength: c.rawLength, flags: c.flags, sealed: Buffer.from(arena, c.at, c.length) };
        return { chunk, release };
      }),
    );
    const failed = settled.find((s) => s.status === "rejected");
    if (failed) {
      for (const s of settled) if (s.status === "fulfilled") s.value.release();
      throw failed.reason;
    }
    return settled.map((s) => (s as PromiseFulfilledResult<{ chunk: StreamedChunk; release: () => void }>).value);
  }

  async open(
    data: Uint8Array,
    owned: boolean,
    blobs: BlobRef[],
    keys: ReadonlyMap<number, Uint8Array>,
  ): Promise<OpenedBlob[]> {
    const { result } = await this.send({ kind: "open", data, blobs }, owned, keys, 0);
    if (result.kind !== "open") throw unexpected();
    return result.blobs.map((b): OpenedBlob => {
      if (!b.ok) return b;
      const plain = b.plain ? Buffer.from(b.plain.buffer, b.plain.byteOffset, b.plain.byteLength) : NO_BYTES;
      return { ok: true, plain, digest: b.digest };
    });
  }

  async readBack(fd: number, expectedBytes: number): Promise<ReadBack> {
    const { result, release } = await this.send({ kind: "readback", data: EMPTY, fd }, false, [], 0, expectedBytes);
    release();
    if (result.kind !== "readback") throw unexpected();
    return { sha256: result.sha256, size: result.size };
  }

  async close(): Promise<void> {
    this.closed = true;
    const pool = this.pool ?? [];
    this.pool = undefined;
    this.macKey.fill(0);
    // Idle workers are unref'd: without a handle of its own, the process may go idle (and a
    // test runner give up) before the terminate promises settle.
    const alive = setInterval(noop, 1000);
    try {
      await Promise.all(pool.map((w) => w.worker.terminate()));
    } finally {
      clearInterval(alive);
    }
    collectAll();
    // Fresh threads for the next operation start now, once this one's are gone.
    if (pool.length > 0) topUpReady();
  }

  private send(
    job: Job,
    owned: boolean,
    keys: Iterable<[number, Uint8Array]>,
    keyId: number,
    weight = job.data.length,
  ) {
    if (this.closed) return Promise.reject(new IotvaultError("FAILED_PRECONDITION", "the repository is closed"));
    const pool = (this.pool ??= this.start());
    const worker = pool.reduce((best, w) => (w.load < best.load ? w : best));
    return worker.enqueue(job, owned, keys, keyId, weight);
  }

  private params(): PipelineParams {
    return { compressionLevel: this.compressionLevel, macKey: this.macKey, ...this.shape };
  }

  private start(): PoolWorker[] {
    return Array.from({ length: this.parallelism }, () => {
      const w = new PoolWorker(takeWorker(), this.arenas);
      w.init(this.params());
      return w;
    });
  }
}

const EMPTY = new Uint8Array(0);
/** Segments of a streamed file asked for ahead of the one being taken over. */
const STREAM_WINDOW = 2;
/** Slots of a split stream's ring: the segments asked for, and the one being sealed. */
const STREAM_SLOTS = STREAM_WINDOW + 1;
/** The plaintext of a blob written to a sink (it stays in the worker). */
const NO_BYTES = Buffer.alloc(0);
const noop = (): void => undefined;

/** Whether a result points into its batch's arena (sealed blobs). */
function holdsBlobs(r: JobResult): boolean {
  return (
    r.ok &&
    (r.kind === "chunk" ||
      (r.kind === "plain" && r.chunk.known !== true) ||
      ((r.kind === "file" || r.kind === "path" || r.kind === "stream") && "chunks" in r && r.chunks.length > 0))
  );
}

function views(chunks: SealedChunkRef[], arena: ArrayBuffer) {
  return chunks.map((c) => ({
    id: c.id,
    rawLength: c.rawLength,
    flags: c.flags,
    sealed: Buffer.from(arena, c.at, c.length),
  }));
}

const unexpected = () =>
  new IotvaultError("INTERNAL", "a pipeline worker answered a job with the wrong kind of result");

/**
 * WorkerSealer: a small pool of worker threads that hash, compress and encrypt chunks, so that
 * a backup uses more than one core (zstd dominates the per-chunk cost).
 *
 * Posting a message costs more than sealing a small file, so requests are batched: the
 * plaintexts of a batch are copied into one buffer (an "arena") that is transferred to the
 * worker, and the worker answers with one arena of sealed blobs. A batch leaves as soon as it
 * is full, or when the event loop turns. Workers start on first use and keep the process alive
 * only while they have work.
 */
import { Worker } from "node:worker_threads";
import { IotvaultError } from "@iotvault/errors";
import type { SealKey, Sealed } from "./blob.js";
import type { ChunkSealer, SealedWhole } from "./sealer.js";

export interface SealRequest {
  /** "chunk": id given; "whole": the worker computes the chunk id and the sha256. */
  kind: "chunk" | "whole";
  /** Where the plaintext is in the batch arena. */
  offset: number;
  length: number;
  id: string;
  keyId: number;
}

export interface SealBatch {
  seq: number;
  compressionLevel: number;
  macKey: Uint8Array;
  keys: [number, Uint8Array][];
  arena: ArrayBuffer;
  requests: SealRequest[];
}

export type SealResult =
  | { ok: true; flags: number; offset: number; length: number; id: string; sha256: string }
  | { ok: false; message: string };

export interface SealBatchReply {
  seq: number;
  arena: ArrayBuffer;
  results: SealResult[];
}

const BATCH_BYTES = 256 * 1024;
const BATCH_REQUESTS = 16;

interface Waiting {
  resolve: (s: SealedWhole) => void;
  reject: (err: unknown) => void;
}

class Batch {
  readonly requests: SealRequest[] = [];
  readonly waiting: Waiting[] = [];
  readonly keys = new Map<number, Uint8Array>();
  readonly arena: Buffer;
  used = 0;

  constructor(capacity: number) {
    this.arena = Buffer.from(new ArrayBuffer(capacity));
  }

  fits(length: number): boolean {
    return this.used + length <= this.arena.length;
  }

  add(kind: SealRequest["kind"], plain: Uint8Array, id: string, key: SealKey, waiting: Waiting): void {
    this.arena.set(plain, this.used);
    this.requests.push({ kind, offset: this.used, length: plain.length, id, keyId: key.keyId });
    this.used += plain.length;
    this.waiting.push(waiting);
    // A copy of the key in its own small buffer (a pooled Buffer would clone its whole slab).
    if (!this.keys.has(key.keyId)) this.keys.set(key.keyId, new Uint8Array(key.key));
  }
}

class PoolWorker {
  /** Requests queued or sent and not answered yet. */
  inFlight = 0;
  private batch: Batch | undefined;
  private readonly sent = new Map<number, Waiting[]>();
  private flushScheduled = false;
  private failure: IotvaultError | undefined;
  private seq = 0;

  constructor(
    readonly worker: Worker,
    private readonly compressionLevel: number,
    private readonly macKey: Uint8Array,
  ) {
    worker.unref();
    worker.on("message", (reply: SealBatchReply) => this.settle(reply));
    worker.on("error", (err) => this.failAll(err));
    worker.on("exit", (code) => this.failAll(new Error(`seal worker exited with code ${code}`)));
  }

  enqueue(kind: SealRequest["kind"], plain: Uint8Array, id: string, key: SealKey): Promise<SealedWhole> {
    if (this.failure) return Promise.reject(this.failure);
    return new Promise<SealedWhole>((resolve, reject) => {
      if (this.batch && !this.batch.fits(plain.length)) this.flush();
      const batch = (this.batch ??= new Batch(Math.max(BATCH_BYTES, plain.length)));
      batch.add(kind, plain, id, key, { resolve, reject });
      this.inFlight++;
      if (batch.used >= BATCH_BYTES || batch.requests.length >= BATCH_REQUESTS) this.flush();
      else if (!this.flushScheduled) {
        this.flushScheduled = true;
        setImmediate(() => this.flush());
      }
    });
  }

  private flush(): void {
    this.flushScheduled = false;
    const batch = this.batch;
    if (!batch || batch.requests.length === 0) return;
    this.batch = undefined;
    const message: SealBatch = {
      seq: ++this.seq,
      compressionLevel: this.compressionLevel,
      macKey: new Uint8Array(this.macKey),
      keys: [...batch.keys],
      arena: batch.arena.buffer as ArrayBuffer,
      requests: batch.requests,
    };
    this.sent.set(message.seq, batch.waiting);
    if (this.sent.size === 1) this.worker.ref();
    this.worker.postMessage(message, [message.arena]);
  }

  private settle(reply: SealBatchReply): void {
    const waiting = this.sent.get(reply.seq);
    if (!waiting) return;
    this.sent.delete(reply.seq);
    if (this.sent.size === 0) this.worker.unref();
    this.inFlight -= waiting.length;
    reply.results.forEach((result, i) => {
      const w = waiting[i]!;
      if (!result.ok) {
        w.reject(new IotvaultError("INTERNAL", `sealing a chunk failed in a worker thread: ${result.message}`));
        return;
      }
      const sealed = Buffer.from(reply.arena, result.offset, result.length);
      w.resolve({ flags: result.flags, sealed, id: result.id, sha256: result.sha256 });
    });
  }

  private failAll(err: unknown): void {
    this.failure ??= new IotvaultError(
      "INTERNAL",
      `a seal worker thread failed: ${err instanceof Error ? err.message : String(err)}`,
      { cause: err },
    );
    for (const waiting of [...this.sent.values(), this.batch?.waiting ?? []])
      for (const w of waiting) w.reject(this.failure);
    this.sent.clear();
    this.batch = undefined;
    this.inFlight = 0;
    this.worker.unref();
  }
}

export class WorkerSealer implements ChunkSealer {
  private pool: PoolWorker[] | undefined;
  private closed = false;
  /** A copy of the MAC key ("whole" requests compute chunk ids in the worker). */
  private readonly macKey: Uint8Array;

  constructor(
    readonly parallelism: number,
    private readonly compressionLevel: number,
    macKey: Uint8Array,
  ) {
    this.macKey = new Uint8Array(macKey);
  }

  seal(plain: Buffer, id: string, key: SealKey): Promise<Sealed> {
    return this.send("chunk", plain, id, key);
  }

  sealWhole(plain: Buffer, key: SealKey): Promise<SealedWhole> {
    return this.send("whole", plain, "", key);
  }

  async close(): Promise<void> {
    this.closed = true;
    const pool = this.pool ?? [];
    this.pool = undefined;
    this.macKey.fill(0);
    await Promise.all(pool.map((w) => w.worker.terminate()));
  }

  private send(kind: SealRequest["kind"], plain: Uint8Array, id: string, key: SealKey): Promise<SealedWhole> {
    if (this.closed) return Promise.reject(new IotvaultError("FAILED_PRECONDITION", "the repository is closed"));
    const pool = (this.pool ??= this.start());
    const worker = pool.reduce((best, w) => (w.inFlight < best.inFlight ? w : best));
    return worker.enqueue(kind, plain, id, key);
  }

  private start(): PoolWorker[] {
    const url = new URL("./seal-worker.js", import.meta.url);
    return Array.from(
      { length: this.parallelism },
      () => new PoolWorker(new Worker(url), this.compressionLevel, this.macKey),
    );
  }
}

/**
 * A small pool of worker threads that analyse files (parse + RDFC-1.0 canonical hash + checks)
 * while the main thread walks, reads and stores the next ones, so that a backup of a large
 * model uses every core. Workers start on first use; at most one file per worker is in flight.
 */
import { availableParallelism } from "node:os";
import { Worker } from "node:worker_threads";
import { IotvaultError } from "@iotvault/errors";
import type { Analysis } from "./file-tree.js";

export type AnalyseKind = "rdf" | "rules";

export interface AnalyseRequest {
  id: number;
  kind: AnalyseKind;
  path: string;
  bytes: Uint8Array;
}

export type AnalyseResponse = { id: number; analysis: Analysis } | { id: number; error: string };

interface Job {
  request: AnalyseRequest;
  resolve(a: Analysis): void;
  reject(e: Error): void;
}

interface Slot {
  worker: Worker;
  job: Job | undefined;
}

/** Workers of a pool: one per core, at least one. */
export function defaultPoolSize(): number {
  return Math.max(1, Math.min(8, availableParallelism()));
}

export class AnalysePool {
  private readonly slots: Slot[] = [];
  private readonly queue: Job[] = [];
  private nextId = 1;
  private closed = false;

  constructor(private readonly size = defaultPoolSize()) {}

  /** Files in flight or queued. */
  get pending(): number {
    return this.queue.length + this.slots.filter((s) => s.job).length;
  }

  get capacity(): number {
    return this.size;
  }

  analyse(kind: AnalyseKind, path: string, bytes: Buffer, signal: AbortSignal): Promise<Analysis> {
    if (this.closed) return Promise.reject(new IotvaultError("CANCELLED", "the analysis pool is closed"));
    signal.throwIfAborted();
    return new Promise<Analysis>((resolve, reject) => {
      // The worker gets its own copy; the caller keeps its buffer for the repository.
      const request: AnalyseRequest = { id: this.nextId++, kind, path, bytes: new Uint8Array(bytes) };
      this.queue.push({ request, resolve, reject });
      this.dispatch();
    });
  }

  private dispatch(): void {
    while (this.queue.length > 0) {
      let slot = this.slots.find((s) => !s.job);
      if (!slot && this.slots.length < this.size) slot = this.spawn();
      if (!slot) return;
      const job = this.queue.shift()!;
      slot.job = job;
      slot.worker.postMessage(job.request, [job.request.bytes.buffer as ArrayBuffer]);
    }
  }

  private spawn(): Slot {
    const worker = new Worker(new URL("./analyse-worker.js", import.meta.url));
    worker.unref();
    const slot: Slot = { worker, job: undefined };
    worker.on("message", (res: AnalyseResponse) => {
      const job = slot.job;
      slot.job = undefined;
      if (job && job.request.id === res.id) {
        if ("analysis" in res) job.resolve(res.analysis);
        else job.reject(new IotvaultError("INTERNAL", `analysing ${job.request.path} failed: ${res.error}`));
      }
      this.dispatch();
    });
    worker.on("error", (err) => this.fail(slot, err));
    worker.on("exit", (code) => {
      if (code !== 0) this.fail(slot, new Error(`exit code ${code}`));
    });
    this.slots.push(slot);
    return slot;
  }

  /** A dead worker fails its file (the caller analyses it inline) and leaves the pool. */
  private fail(slot: Slot, err: Error): void {
    const i = this.slots.indexOf(slot);
    if (i >= 0) this.slots.splice(i, 1);
    const job = slot.job;
    slot.job = undefined;
    job?.reject(new IotvaultError("INTERNAL", `an analysis worker failed: ${err.message}`, { cause: err }));
    if (!this.closed) this.dispatch();
  }

  async close(): Promise<void> {
    this.closed = true;
    for (const job of this.queue.splice(0)) job.reject(new IotvaultError("CANCELLED", "the analysis pool was closed"));
    await Promise.all(this.slots.splice(0).map((s) => s.worker.terminate()));
  }
}

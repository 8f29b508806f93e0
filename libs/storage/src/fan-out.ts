/**
 * One stream read once, consumed by several readers at their own pace with bounded memory:
 * how ReplicatedStore writes one upload to every target in parallel.
 *
 * ```ts
 * const fan = fanOut(chunks, 2, { what: "put of data/ab/x" });
 * const results = await Promise.allSettled(
 *   fan.branches.map((branch, i) => store[i].putStream(key, branch).finally(() => fan.detach(i))),
 * );
 * await fan.done;
 * ```
 *
 * The source is read one chunk ahead of the slowest branch that is still attached, at most
 * `maxQueued` chunks per branch. A branch whose consumer stops (its write failed) is detached:
 * the others go on without it. When every branch is detached, the source is closed. An error of
 * the source (or the signal) reaches every attached branch.
 */
import { abortable } from "./streams.js";

export interface FanOutOptions {
  /** Chunks a branch may have waiting before the source pauses (default 4). */
  maxQueued?: number | undefined;
  /** Stops reading the source (every branch then fails with CANCELLED). */
  signal?: AbortSignal | undefined;
  /** What is being streamed, for the CANCELLED message. */
  what: string;
}

export interface FanOut {
  /** One readable per consumer; each yields every chunk of the source, in order. */
  readonly branches: readonly AsyncIterable<Uint8Array>[];
  /** Stops feeding branch `index` (its consumer is done or gave up). */
  detach(index: number): void;
  /** Settles (never rejects) once the source is no longer read. */
  readonly done: Promise<void>;
}

/** A branch's queue: the pump offers chunks, the consumer takes them. */
class Branch {
  private readonly chunks: Uint8Array[] = [];
  private ended = false;
  private failure: { error: unknown } | undefined;
  private wakeReader: (() => void) | undefined;
  private wakeWriter: (() => void) | undefined;
  detached = false;

  constructor(private readonly onDetach: () => void) {}

  /** Waits for room (or for the branch to be detached), then queues `chunk`. */
  async offer(chunk: Uint8Array, maxQueued: number): Promise<void> {
    while (!this.detached && this.chunks.length >= maxQueued) {
      await new Promise<void>((resolve) => (this.wakeWriter = resolve));
    }
    if (this.detached) return;
    this.chunks.push(chunk);
    this.notifyReader();
  }

  end(): void {
    this.ended = true;
    this.notifyReader();
  }

  fail(error: unknown): void {
    this.failure = { error };
    this.notifyReader();
  }

  detach(): void {
    if (this.detached) return;
    this.detached = true;
    this.chunks.length = 0;
    this.notifyWriter();
    this.notifyReader();
    this.onDetach();
  }

  async *read(): AsyncGenerator<Uint8Array> {
    try {
      for (;;) {
        const chunk = this.chunks.shift();
        if (chunk) {
          this.notifyWriter();
          yield chunk;
          continue;
        }
        if (this.failure) throw this.failure.error;
        if (this.ended || this.detached) return;
        await new Promise<void>((resolve) => (this.wakeReader = resolve));
      }
    } finally {
      this.detach(); // a consumer that stops reading needs nothing more
    }
  }

  private notifyReader(): void {
    const wake = this.wakeReader;
    this.wakeReader = undefined;
    wake?.();
  }

  private notifyWriter(): void {
    const wake = this.wakeWriter;
    this.wakeWriter = undefined;
    wake?.();
  }
}

/** Splits `source` into `count` branches (see the module comment). */
export function fanOut(source: AsyncIterable<Uint8Array>, count: number, options: FanOutOptions): FanOut {
  const maxQueued = Math.max(1, options.maxQueued ?? 4);
  const stop = new AbortController();
  const signal = options.signal ? AbortSignal.any([options.signal, stop.signal]) : stop.signal;
  const attached = () => branches.some((branch) => !branch.detached);
  const onDetach = () => {
    if (!attached()) stop.abort();
  };
  const branches: Branch[] = Array.from({ length: count }, () => new Branch(onDetach));

  const pump = async (): Promise<void> => {
    try {
      for await (const chunk of abortable(source, signal, options.what)) {
        for (const branch of branches) await branch.offer(chunk, maxQueued);
        if (!attached()) return;
      }
      for (const branch of branches) branch.end();
    } catch (err) {
      for (const branch of branches) branch.fail(err);
    }
  };

  return {
    branches: branches.map((branch) => branch.read()),
    detach: (index) => branches[index]?.detach(),
    done: pump(),
  };
}

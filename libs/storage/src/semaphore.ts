import { cancelledError } from "./streams.js";

/**
 * Bounds how many operations run at once. `acquire()` resolves with a release function once a
 * slot is free (first come, first served); `run()` wraps a function in acquire/release.
 *
 * ```ts
 * const slots = new Semaphore(8);
 * await slots.run(() => upload(part));
 * ```
 */
export class Semaphore {
  private running = 0;
  private readonly waiting: (() => void)[] = [];

  constructor(readonly limit: number) {
    if (!Number.isSafeInteger(limit) || limit < 1) throw new RangeError(`semaphore limit must be >= 1, got ${limit}`);
  }

  /** Operations holding a slot now. */
  get active(): number {
    return this.running;
  }

  async acquire(signal?: AbortSignal, what = "waiting for a free connection slot"): Promise<() => void> {
    if (signal?.aborted) throw cancelledError(what, signal);
    if (this.running < this.limit) {
      this.running++;
      return this.releaser();
    }
    await new Promise<void>((resolve, reject) => {
      const onAbort = () => {
        const index = this.waiting.indexOf(grant);
        if (index >= 0) this.waiting.splice(index, 1);
        reject(cancelledError(what, signal!));
      };
      const grant = () => {
        signal?.removeEventListener("abort", onAbort);
        resolve();
      };
      this.waiting.push(grant);
      signal?.addEventListener("abort", onAbort, { once: true });
    });
    return this.releaser();
  }

  async run<T>(operation: () => Promise<T>, signal?: AbortSignal): Promise<T> {
    const release = await this.acquire(signal);
    try {
      return await operation();
    } finally {
      release();
    }
  }

  private releaser(): () => void {
    let released = false;
    return () => {
      if (released) return;
      released = true;
      const next = this.waiting.shift();
      if (next)
        next(); // the slot passes straight to the next waiter
      else this.running--;
    };
  }
}

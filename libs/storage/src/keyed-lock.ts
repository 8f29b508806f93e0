/**
 * One operation at a time per key: `run(key, fn)` waits for the operations of the same key
 * that started before it, in order; different keys never wait for each other.
 *
 * ```ts
 * const locks = new KeyedLock();
 * await locks.run("data/ab/x", () => copy("data/ab/x"));
 * ```
 */
export class KeyedLock {
  private readonly tails = new Map<string, Promise<void>>();

  /** Keys with an operation running or waiting. */
  get size(): number {
    return this.tails.size;
  }

  async run<T>(key: string, operation: () => Promise<T>): Promise<T> {
    const previous = this.tails.get(key) ?? Promise.resolve();
    let release: () => void = () => undefined;
    const mine = new Promise<void>((resolve) => (release = resolve));
    const tail = previous.then(() => mine);
    this.tails.set(key, tail);
    try {
      await previous;
      return await operation();
    } finally {
      release();
      if (this.tails.get(key) === tail) this.tails.delete(key);
    }
  }
}

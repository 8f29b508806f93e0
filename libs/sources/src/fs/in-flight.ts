/**
 * Writer calls not yet settled, in call order; the first failure is kept and rethrown. Bounds
 * the pipelining of BackupWriter calls in the file-system and physical PostgreSQL walks.
 */
export class InFlight {
  private readonly queue: { done: Promise<void>; bytes: number }[] = [];
  private bytes = 0;
  private failure: { error: unknown } | undefined;

  add(call: Promise<unknown>, bytes = 0): void {
    const done = call.then(
      () => undefined,
      (error: unknown) => {
        this.failure ??= { error };
      },
    );
    this.queue.push({ done, bytes });
    this.bytes += bytes;
  }

  /** Waits for the oldest calls until at most `calls` and `bytes` are pending. */
  async settle(calls: number, bytes: number): Promise<void> {
    while (this.queue.length > calls || this.bytes > bytes) {
      const oldest = this.queue.shift()!;
      this.bytes -= oldest.bytes;
      await oldest.done;
    }
    if (this.failure) throw this.failure.error;
  }

  drain(): Promise<void> {
    return this.settle(0, 0);
  }

  /** After a failure: lets pending calls finish (their results are dropped). */
  async discard(): Promise<void> {
    await Promise.all(this.queue.splice(0).map((c) => c.done));
    this.bytes = 0;
  }
}

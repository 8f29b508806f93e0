/**
 * Moving dump bytes between PostgreSQL programs and the repository without a copy on disk:
 * a bounded read-ahead of a program's standard output (so that several pg_dump processes run
 * while the repository consumes their output one after the other), and feeding a program's
 * standard input from the repository.
 */
import type { Readable, Writable } from "node:stream";
import { once } from "node:events";

/**
 * The output of a program as an async iterable, read ahead into memory up to `limitBytes`
 * (the program then waits on its pipe). The iteration ends with the program: it throws the
 * program's failure (`done`) instead of ending normally, so that a truncated dump is never
 * taken for a whole one.
 */
export class ReadAhead implements AsyncIterable<Buffer> {
  private readonly queue: Buffer[] = [];
  private bytes = 0;
  private ended = false;
  private error: Error | undefined;
  private wake: (() => void) | undefined;
  private paused = false;
  /** Bytes that went through. */
  total = 0;

  constructor(
    private readonly stream: Readable,
    private readonly done: Promise<void>,
    private readonly limitBytes = 32 * 1024 * 1024,
  ) {
    stream.on("data", (chunk: Buffer) => {
      this.queue.push(chunk);
      this.bytes += chunk.length;
      this.total += chunk.length;
      if (this.bytes > this.limitBytes && !this.paused) {
        this.paused = true;
        stream.pause();
      }
      this.signal();
    });
    stream.once("end", () => {
      this.ended = true;
      this.signal();
    });
    stream.once("error", (err: Error) => {
      this.error = err;
      this.ended = true;
      this.signal();
    });
  }

  private signal(): void {
    const w = this.wake;
    this.wake = undefined;
    w?.();
  }

  async *[Symbol.asyncIterator](): AsyncIterator<Buffer> {
    for (;;) {
      const chunk = this.queue.shift();
      if (chunk) {
        this.bytes -= chunk.length;
        if (this.paused && this.bytes < this.limitBytes / 2) {
          this.paused = false;
          this.stream.resume();
        }
        yield chunk;
        continue;
      }
      if (this.ended) break;
      await new Promise<void>((r) => (this.wake = r));
    }
    if (this.error) throw this.error;
    await this.done;
  }

  /** Drops what is buffered and lets the program run to its end (after a failure elsewhere). */
  discard(): void {
    this.queue.length = 0;
    this.bytes = 0;
    this.stream.resume();
  }
}

/**
 * Writes `source` into a program's standard input with backpressure, then closes it. A
 * program that exits early (EPIPE) ends the feeding quietly: its own exit status tells.
 */
export async function feed(source: AsyncIterable<Uint8Array>, stdin: Writable): Promise<void> {
  let broken = false;
  stdin.on("error", () => {
    broken = true;
  });
  try {
    for await (const chunk of source) {
      if (broken || stdin.destroyed) return;
      if (!stdin.write(chunk)) {
        await Promise.race([once(stdin, "drain"), once(stdin, "close")]).catch(() => undefined);
      }
    }
  } finally {
    if (!stdin.destroyed) stdin.end();
  }
}

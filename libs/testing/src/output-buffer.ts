import type { Readable } from "node:stream";

/** Keeps the last `limit` characters a child process wrote, for error messages. */
export class OutputTail {
  private text = "";

  constructor(private readonly limit = 8192) {}

  follow(stream: Readable | null): void {
    if (!stream) return;
    stream.setEncoding("utf8");
    stream.on("data", (chunk: string) => {
      this.text = (this.text + chunk).slice(-this.limit);
    });
    // Do not keep the test process alive just because a child's pipe is open.
    (stream as Readable & { unref?: () => void }).unref?.();
  }

  get value(): string {
    return this.text.trim();
  }

  clear(): void {
    this.text = "";
  }
}

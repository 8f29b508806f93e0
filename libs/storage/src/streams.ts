import { createHash, type Hash } from "node:crypto";
import { IotvaultError } from "@iotvault/errors";
import {
  isStreamingStore,
  type ByteRange,
  type GetStreamOptions,
  type ObjectStore,
  type PutStreamOptions,
  type PutStreamResult,
} from "./object-store.js";

/** Objects larger than this are refused by putFromStream on stores that must buffer them. */
export const DEFAULT_BUFFERED_PUT_LIMIT_BYTES = 64 * 1024 * 1024;
export const DEFAULT_CHUNK_BYTES = 1024 * 1024;

const SHA256_HEX = /^[0-9a-f]{64}$/;

/**
 * Counts and hashes a stream of chunks against what its sender announced (size, sha256, a
 * limit). `update()` fails as soon as the stream is too long; `finish()` checks the rest.
 */
export class ContentCheck {
  private readonly hash: Hash = createHash("sha256");
  private bytes = 0;

  constructor(
    private readonly key: string,
    private readonly options: Pick<PutStreamOptions, "expectedSize" | "expectedSha256" | "maxBytes">,
  ) {
    const { expectedSize, expectedSha256, maxBytes } = options;
    if (expectedSize !== undefined && (!Number.isSafeInteger(expectedSize) || expectedSize < 0)) {
      throw new IotvaultError("INVALID_ARGUMENT", `invalid announced size ${expectedSize} for object ${key}`);
    }
    if (expectedSha256 !== undefined && !SHA256_HEX.test(expectedSha256)) {
      throw new IotvaultError(
        "INVALID_ARGUMENT",
        `invalid sha256 ${JSON.stringify(expectedSha256)} for object ${key}`,
        {
          hint: "send the SHA-256 as 64 lower-case hex digits, or leave it empty",
        },
      );
    }
    if (expectedSize !== undefined && maxBytes !== undefined && expectedSize > maxBytes) this.tooLarge(expectedSize);
  }

  get size(): number {
    return this.bytes;
  }

  update(chunk: Uint8Array): void {
    this.bytes += chunk.length;
    const { expectedSize, maxBytes } = this.options;
    if (maxBytes !== undefined && this.bytes > maxBytes) this.tooLarge(this.bytes);
    if (expectedSize !== undefined && this.bytes > expectedSize) {
      throw new IotvaultError(
        "INVALID_ARGUMENT",
        `object ${this.key} is longer than the announced ${expectedSize} bytes; nothing was written`,
        { hint: "send exactly as many bytes as announced in the header" },
      );
    }
    this.hash.update(chunk);
  }

  /** Checks the final size and hash; returns them. */
  finish(): { size: number; sha256: string } {
    const { expectedSize, expectedSha256 } = this.options;
    if (expectedSize !== undefined && this.bytes !== expectedSize) {
      throw new IotvaultError(
        "INVALID_ARGUMENT",
        `object ${this.key} has ${this.bytes} bytes but ${expectedSize} were announced; nothing was written`,
        { hint: "send exactly as many bytes as announced in the header (was the upload cut short?)" },
      );
    }
    const sha256 = this.hash.digest("hex");
    if (expectedSha256 !== undefined && sha256 !== expectedSha256) {
      throw new IotvaultError(
        "DATA_CORRUPT",
        `object ${this.key}: the sha256 of the received bytes (${sha256}) differs from the announced ${expectedSha256}; nothing was written`,
        { retryable: true, hint: "the bytes changed in transit or the sender hashed other bytes; retry the upload" },
      );
    }
    return { size: this.bytes, sha256 };
  }

  private tooLarge(size: number): never {
    throw new IotvaultError(
      "RESOURCE_EXHAUSTED",
      `object ${this.key} (${size} bytes) exceeds the limit of ${this.options.maxBytes} bytes; nothing was written`,
      { retryable: false, hint: "split the data into smaller objects (packs are a few MiB) or raise the limit" },
    );
  }
}

/** The IotvaultError thrown when an operation's signal fires. */
export function cancelledError(what: string, signal: AbortSignal): IotvaultError {
  return new IotvaultError("CANCELLED", `${what} was cancelled`, { cause: signal.reason });
}

/**
 * Iterates `source`, but rejects the pending step as soon as `signal` fires (a hanging source,
 * e.g. a stalled network stream, cannot keep the consumer waiting), and ends the source.
 */
export async function* abortable<T>(
  source: AsyncIterable<T>,
  signal: AbortSignal | undefined,
  what: string,
): AsyncGenerator<T> {
  if (!signal) {
    yield* source;
    return;
  }
  const iterator = source[Symbol.asyncIterator]();
  let onAbort: (() => void) | undefined;
  const aborted = new Promise<never>((_resolve, reject) => {
    onAbort = () => reject(cancelledError(what, signal));
    if (signal.aborted) onAbort();
    else signal.addEventListener("abort", onAbort, { once: true });
  });
  aborted.catch(() => undefined); // observed below; avoid an unhandled rejection when never raced
  let finished = false;
  try {
    for (;;) {
      const step = await Promise.race([iterator.next(), aborted]);
      if (step.done) {
        finished = true;
        return;
      }
      yield step.value;
    }
  } finally {
    if (onAbort) signal.removeEventListener("abort", onAbort);
    if (!finished) await closeQuietly(iterator);
  }
}

async function closeQuietly<T>(iterator: AsyncIterator<T>): Promise<void> {
  // A source stuck in an await cannot close until that await settles: wait a little for its
  // clean-up (finally blocks), then leave it; it is released when it finally settles.
  let timer: NodeJS.Timeout | undefined;
  const patience = new Promise<void>((resolve) => (timer = setTimeout(resolve, 100)));
  try {
    await Promise.race([iterator.return?.(), patience]);
  } catch {
    // the source's own error on close is not the caller's error
  } finally {
    clearTimeout(timer);
  }
}

/**
 * Writes a stream to any ObjectStore. Streaming stores write it through with bounded memory;
 * the others get it buffered, up to `maxBytes` (default DEFAULT_BUFFERED_PUT_LIMIT_BYTES).
 * The size / sha256 checks of PutStreamOptions happen before the object becomes visible.
 */
export async function putFromStream(
  store: ObjectStore,
  key: string,
  chunks: AsyncIterable<Uint8Array>,
  options: PutStreamOptions = {},
): Promise<PutStreamResult> {
  if (isStreamingStore(store)) return store.putStream(key, chunks, options);
  const check = new ContentCheck(key, { ...options, maxBytes: options.maxBytes ?? DEFAULT_BUFFERED_PUT_LIMIT_BYTES });
  const parts: Uint8Array[] = [];
  for await (const chunk of abortable(chunks, options.signal, `put of ${key} to ${store.location}`)) {
    check.update(chunk);
    parts.push(chunk);
  }
  const { size, sha256 } = check.finish();
  const { existed } = await store.put(key, Buffer.concat(parts), {
    ifAbsent: options.ifAbsent,
    signal: options.signal,
  });
  if (!existed) return { existed, size, sha256 };
  return { existed, size: (await store.stat(key))?.size ?? 0 };
}

/**
 * Reads an object (or a range of it) as chunks of at most `chunkBytes`. Streaming stores read
 * it piece by piece; the others read the whole range once and slice it.
 */
export async function* readObjectStream(
  store: ObjectStore,
  key: string,
  range?: ByteRange,
  options: GetStreamOptions = {},
): AsyncGenerator<Buffer> {
  if (isStreamingStore(store)) {
    yield* store.getStream(key, range, options);
    return;
  }
  const chunkBytes = options.chunkBytes ?? DEFAULT_CHUNK_BYTES;
  const data = await store.get(key, range, options.signal);
  for (let at = 0; at < data.length; at += chunkBytes) {
    if (options.signal?.aborted) throw cancelledError(`read of ${key} from ${store.location}`, options.signal);
    yield data.subarray(at, at + chunkBytes);
  }
}

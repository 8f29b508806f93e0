import { setTimeout as sleep } from "node:timers/promises";
import { IotvaultError } from "@iotvault/errors";

export interface WaitForOptions {
  /** Give up after this long (default 5000 ms). */
  timeoutMs?: number;
  /** Pause between two calls (default 50 ms). */
  intervalMs?: number;
  /** What is awaited, for the timeout message ("the consumer to see 3 messages"). */
  what?: string;
}

/**
 * Calls `fn` until it returns something other than `undefined` or `false`, and returns that.
 * A call that throws counts as "not yet"; its error is quoted if the wait times out. On timeout
 * throws a DEADLINE_EXCEEDED IotvaultError naming `what`.
 *
 * ```ts
 * const info = await waitFor(async () => (await jsm.streams.info("S")).state.messages === 0 || undefined,
 *   { what: "the work queue to drain" });
 * ```
 */
export async function waitFor<T>(
  fn: () => Promise<T | undefined | false> | T | undefined | false,
  options: WaitForOptions = {},
): Promise<T> {
  const timeoutMs = options.timeoutMs ?? 5000;
  const intervalMs = options.intervalMs ?? 50;
  const deadline = Date.now() + timeoutMs;
  let lastError: unknown;
  for (;;) {
    try {
      const value = await fn();
      if (value !== undefined && value !== false) return value;
      lastError = undefined;
    } catch (err) {
      lastError = err;
    }
    if (Date.now() >= deadline) break;
    await sleep(Math.min(intervalMs, Math.max(0, deadline - Date.now())));
  }
  const last = lastError === undefined ? "" : ` (last error: ${errorMessage(lastError)})`;
  throw new IotvaultError(
    "DEADLINE_EXCEEDED",
    `timed out after ${timeoutMs} ms waiting for ${options.what ?? "a condition"}${last}`,
    {
      hint: "the awaited condition never became true; check the component under test or raise timeoutMs",
      cause: lastError,
    },
  );
}

function errorMessage(err: unknown): string {
  return err instanceof Error ? err.message : String(err);
}

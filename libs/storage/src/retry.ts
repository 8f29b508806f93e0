import { setTimeout as sleep } from "node:timers/promises";
import { isRetryable } from "@iotvault/errors";
import { cancelledError } from "./streams.js";

/** How often and how patiently a failed operation is tried again. */
export interface RetryPolicy {
  /** Attempts in total, the first one included (1 = no retry). */
  attempts: number;
  /** Delay before the first retry; doubled for each further one. */
  baseDelayMs: number;
  /** Upper bound of one delay. */
  maxDelayMs: number;
}

/** 4 attempts, 100 ms / 200 ms / 400 ms (each with jitter), at most 2 s between two attempts. */
export const DEFAULT_RETRY_POLICY: Readonly<RetryPolicy> = { attempts: 4, baseDelayMs: 100, maxDelayMs: 2000 };

export interface RetryOptions extends Partial<RetryPolicy> {
  /** Stops waiting and retrying (CANCELLED) when it fires. */
  signal?: AbortSignal | undefined;
  /** Whether an error is worth another attempt (default: `isRetryable` of @iotvault/errors). */
  retryable?: ((err: unknown) => boolean) | undefined;
  /** Called before each new attempt, e.g. to log it. */
  onRetry?: ((info: { attempt: number; delayMs: number; error: unknown }) => void) | undefined;
  /** What is being done, for the CANCELLED message ("put of config to s3://..."). */
  what?: string | undefined;
  /** Source of randomness for the jitter (tests pass a constant). */
  random?: (() => number) | undefined;
}

/**
 * The delay before attempt `attempt` (2 = the first retry): exponential backoff with "equal
 * jitter", a random value between half and all of min(maxDelayMs, baseDelayMs * 2^(attempt-2)).
 */
export function backoffDelay(attempt: number, policy: RetryPolicy, random: () => number = Math.random): number {
  const exponential = policy.baseDelayMs * 2 ** Math.max(0, attempt - 2);
  const ceiling = Math.min(policy.maxDelayMs, exponential);
  return Math.round(ceiling / 2 + (random() * ceiling) / 2);
}

/**
 * Runs `operation` until it succeeds, fails with an error that is not retryable, or has used
 * up its attempts; then throws the last error unchanged. Waits with exponential backoff
 * between attempts; the signal ends the wait at once (CANCELLED).
 *
 * ```ts
 * const data = await withRetry(() => fetchPart(n), { attempts: 3, signal, what: `part ${n}` });
 * ```
 */
export async function withRetry<T>(operation: (attempt: number) => Promise<T>, options: RetryOptions = {}): Promise<T> {
  const policy: RetryPolicy = {
    attempts: Math.max(1, options.attempts ?? DEFAULT_RETRY_POLICY.attempts),
    baseDelayMs: options.baseDelayMs ?? DEFAULT_RETRY_POLICY.baseDelayMs,
    maxDelayMs: options.maxDelayMs ?? DEFAULT_RETRY_POLICY.maxDelayMs,
  };
  const retryable = options.retryable ?? isRetryable;
  const what = options.what ?? "the operation";
  for (let attempt = 1; ; attempt++) {
    if (options.signal?.aborted) throw cancelledError(what, options.signal);
    try {
      return await operation(attempt);
    } catch (err) {
      if (attempt >= policy.attempts || options.signal?.aborted || !retryable(err)) throw err;
      const delayMs = backoffDelay(attempt + 1, policy, options.random);
      options.onRetry?.({ attempt: attempt + 1, delayMs, error: err });
      await pause(delayMs, options.signal, what);
    }
  }
}

async function pause(ms: number, signal: AbortSignal | undefined, what: string): Promise<void> {
  try {
    await sleep(ms, undefined, signal ? { signal } : undefined);
  } catch (err) {
    if (signal?.aborted) throw cancelledError(what, signal);
    throw err;
  }
}

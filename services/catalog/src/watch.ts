/**
 * Run watches: a WatchRun call follows one run's row. The catalog's event handler calls
 * `changed(runId)` after it applied an event about a run, which wakes that run's watches at
 * once; each watch also looks again every `recheckMs`, for rows changed by another catalog
 * instance (several instances share the durable consumer, so an event about a run may be
 * applied by another one than the instance serving the watch).
 */
import { isCode } from "@iotvault/errors";
import { Run, RunStatus } from "@iotvault/proto";

/** The run statuses after which a run does not change any more. */
export const TERMINAL_RUN_STATUSES: readonly RunStatus[] = [
  RunStatus.RUN_STATUS_SUCCEEDED,
  RunStatus.RUN_STATUS_FAILED,
  RunStatus.RUN_STATUS_CANCELLED,
];

export interface RunWatchOptions {
  /** How often a watch reads its run again without being woken (default 1 s). */
  recheckMs?: number;
}

export class RunWatches {
  private readonly waiting = new Map<string, Set<() => void>>();
  private readonly recheckMs: number;
  private closed = false;

  constructor(
    private readonly getRun: (runId: string) => Promise<Run>,
    options: RunWatchOptions = {},
  ) {
    this.recheckMs = options.recheckMs ?? 1000;
  }

  /** Wakes the watches of `runId` (an event about it was applied). */
  changed(runId: string): void {
    for (const wake of this.waiting.get(runId) ?? []) wake();
  }

  /**
   * Ends every watch (their streams end without a terminal run; the CLI then polls): a catalog
   * shutting down does not wait for the watches' clients. No watch starts after it.
   */
  close(): void {
    this.closed = true;
    for (const set of this.waiting.values()) for (const wake of set) wake();
  }

  /** Watches of a run being followed now (for tests and metrics). */
  count(runId?: string): number {
    if (runId !== undefined) return this.waiting.get(runId)?.size ?? 0;
    let n = 0;
    for (const set of this.waiting.values()) n += set.size;
    return n;
  }

  /**
   * The run now (once it is in the catalog), then each time it changes; returns after a
   * terminal status or when `signal` fires.
   */
  async *watch(runId: string, signal: AbortSignal): AsyncGenerator<Run> {
    let dirty = true;
    let wake: (() => void) | undefined;
    const listener = (): void => {
      dirty = true;
      wake?.();
    };
    let set = this.waiting.get(runId);
    if (!set) this.waiting.set(runId, (set = new Set()));
    set.add(listener);
    const onAbort = (): void => wake?.();
    signal.addEventListener("abort", onAbort);
    try {
      let last: string | undefined;
      while (!signal.aborted && !this.closed) {
        if (dirty) {
          dirty = false;
          const run = await this.getRun(runId).catch((err: unknown) => {
            if (isCode(err, "NOT_FOUND")) return undefined; // queued: no executor has started it yet
            throw err;
          });
          if (run) {
            const seen = JSON.stringify(Run.toJSON(run));
            if (seen !== last) {
              last = seen;
              yield run;
            }
            if (TERMINAL_RUN_STATUSES.includes(run.status)) return;
          }
        }
        if (dirty || signal.aborted || this.closed) continue;
        await new Promise<void>((resolve) => {
          const timer = setTimeout(() => {
            dirty = true;
            resolve();
          }, this.recheckMs);
          wake = () => {
            clearTimeout(timer);
            resolve();
          };
        });
        wake = undefined;
      }
    } finally {
      signal.removeEventListener("abort", onAbort);
      set.delete(listener);
      if (set.size === 0 && this.waiting.get(runId) === set) this.waiting.delete(runId);
    }
  }
}

/** The run id an event is about, if any (every run event carries `runId`). */
export function runIdOf(payload: unknown): string | undefined {
  const id = (payload as { runId?: unknown } | null | undefined)?.runId;
  return typeof id === "string" && id !== "" ? id : undefined;
}

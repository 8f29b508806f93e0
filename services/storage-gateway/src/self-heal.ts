/**
 * The gateway's self-heal task: in the background, for every repository with replicas, it
 * compares the targets' listings once when the journal asks for it (a new repository or
 * replica), then replays the copy journal (ReplicatedStore.heal) whenever entries are pending:
 * at start, then every `intervalMs`, backing off (doubling up to `maxIntervalMs`) while a pass
 * leaves work behind (a target still down).
 *
 * ```ts
 * const healer = new SelfHealer(registry, { intervalMs: 2000, maxIntervalMs: 60_000, logger });
 * healer.start();
 * await healer.close(); // stops the loop; a copy in flight is cancelled and stays journaled
 * ```
 */
import { setTimeout as sleep } from "node:timers/promises";
import { toIotvaultError } from "@iotvault/errors";
import type { ReplicatedStore } from "@iotvault/storage";
import type { Logger } from "@iotvault/telemetry";
import type { RepositoryRegistry } from "./repositories.js";

export interface SelfHealOptions {
  /** Pause between two rounds, and the first backoff delay. */
  intervalMs: number;
  /** Longest delay between two passes of a repository whose targets stay down. */
  maxIntervalMs: number;
  logger?: Logger | undefined;
}

interface Backoff {
  delayMs: number;
  /** Epoch ms before which the repository is not tried again. */
  nextAt: number;
}

export class SelfHealer {
  private readonly stopping = new AbortController();
  private readonly backoff = new Map<string, Backoff>();
  private loop: Promise<void> | undefined;

  constructor(
    private readonly registry: RepositoryRegistry,
    private readonly options: SelfHealOptions,
  ) {}

  /** Starts the background loop (the first round runs at once). */
  start(): void {
    this.loop ??= this.run();
  }

  /** Stops the loop and waits for it; a pass in flight is cancelled. */
  async close(): Promise<void> {
    this.stopping.abort();
    await this.loop;
  }

  /**
   * One round: each replicated repository with work whose backoff has passed gets one pass
   * (reconcile if needed, then heal). Returns how many repositories still have work.
   */
  async round(): Promise<number> {
    let unfinished = 0;
    for (const repository of this.registry.list()) {
      const store = repository.replication;
      if (!store || this.stopping.signal.aborted) continue;
      if (!hasWork(store)) {
        this.backoff.delete(repository.name);
        continue;
      }
      const backoff = this.backoff.get(repository.name) ?? { delayMs: this.options.intervalMs, nextAt: 0 };
      if (Date.now() >= backoff.nextAt) {
        const finished = await this.pass(repository.name, store);
        backoff.nextAt = finished ? 0 : Date.now() + backoff.delayMs;
        backoff.delayMs = finished
          ? this.options.intervalMs
          : Math.min(backoff.delayMs * 2, this.options.maxIntervalMs);
        this.backoff.set(repository.name, backoff);
      }
      if (hasWork(store)) unfinished++;
    }
    return unfinished;
  }

  private async run(): Promise<void> {
    const { signal } = this.stopping;
    while (!signal.aborted) {
      await this.round();
      await sleep(this.options.intervalMs, undefined, { signal }).catch(() => undefined);
    }
  }

  /** One pass over a repository; true when it left nothing to do. */
  private async pass(name: string, store: ReplicatedStore): Promise<boolean> {
    const { signal } = this.stopping;
    try {
      if (store.reconcileNeeded) await store.reconcile({ signal });
      if (store.pendingCopies > 0) await store.heal({ signal });
    } catch (err) {
      if (!signal.aborted) {
        this.options.logger?.warn("self-heal pass failed; the next pass tries again", {
          repository: name,
          error: toIotvaultError(err).message,
        });
      }
    }
    return !hasWork(store);
  }
}

function hasWork(store: ReplicatedStore): boolean {
  return store.reconcileNeeded || store.pendingCopies > 0;
}

/**
 * Deriving repositories' keys before an operation needs them. A service opens a repository for
 * every operation, and the first open in a process pays one scrypt derivation per passphrase
 * slot (N = 2^17: ~0.4 s of CPU and 128 MiB); later opens find the key in the process's cache
 * (keys.ts). A service that hears of a repository it will work on (at its start, a job created
 * for its site, a backup completed into it) asks a KeyPreparer to derive that key now.
 */
import type { ObjectStore } from "@iotvault/storage";
import type { RepositorySecret } from "./keys.js";
import { Repository } from "./repository.js";

/** Names remembered as prepared (as many as the process's cache holds keys). */
const REMEMBERED = 64;
/** Repositories prepared by one call at most (a service's start need not derive a hundred keys). */
const PREPARE_MAX = 16;

export interface KeyPreparerOptions {
  /** Called once for each repository whose key was derived ahead (e.g. to log it). */
  onPrepared?: (info: { repository: string; reason: string; ms: number }) => void;
}

/**
 * Derives the keys of named repositories ahead, one open at a time in the background, each
 * repository once: a name already prepared by this preparer costs nothing. Best effort: a
 * repository that does not open (missing, unreachable, another passphrase) is not remembered, so
 * a later hint tries again, and the operation that needs it reports why.
 *
 * ```ts
 * const keys = new KeyPreparer((name) => storeFor(name), () => readSecret());
 * bus.watch(SUBJECTS.backupCompleted, BackupCompleted, (e) => void keys.prepare([e.repository], "backup completed"));
 * ```
 */
export class KeyPreparer {
  private readonly prepared = new Set<string>();
  private readonly pending = new Map<string, Promise<boolean>>();
  private tail: Promise<unknown> = Promise.resolve();

  constructor(
    private readonly storeFor: (repository: string) => ObjectStore,
    private readonly secret: () => RepositorySecret,
    private readonly options: KeyPreparerOptions = {},
  ) {}

  /** Whether this preparer derived the repository's key already. */
  has(repository: string): boolean {
    return this.prepared.has(repository);
  }

  /**
   * Prepares each named repository not prepared yet, at most PREPARE_MAX of them (one after
   * another, after those asked for earlier); resolves with the names whose key was derived by
   * this call. `reason` is what onPrepared is told. Never rejects.
   */
  async prepare(repositories: readonly string[], reason: string): Promise<string[]> {
    const asked = [...new Set(repositories)]
      .filter((name) => name !== "" && !this.prepared.has(name))
      .slice(0, PREPARE_MAX);
    const outcomes = await Promise.all(asked.map((name) => this.prepareOne(name, reason)));
    return asked.filter((_, i) => outcomes[i] === "derived");
  }

  private async prepareOne(name: string, reason: string): Promise<"derived" | "joined" | "failed"> {
    const running = this.pending.get(name);
    if (running) return (await running) ? "joined" : "failed";
    const job = this.tail.then(async () => {
      const started = Date.now();
      let opened = false;
      try {
        opened = (await Repository.prepareKeys([this.storeFor(name)], this.secret())) === 1;
      } catch {
        // the secret could not be read: reported by the operation that needs it
      }
      if (opened) {
        this.remember(name);
        try {
          this.options.onPrepared?.({ repository: name, reason, ms: Date.now() - started });
        } catch {
          // a failing callback (a log line) changes nothing about the key
        }
      }
      return opened;
    });
    this.tail = job.catch(() => false);
    this.pending.set(name, job);
    try {
      return (await job) ? "derived" : "failed";
    } finally {
      this.pending.delete(name);
    }
  }

  private remember(name: string): void {
    if (this.prepared.size >= REMEMBERED) this.prepared.delete(this.prepared.values().next().value as string);
    this.prepared.add(name);
  }
}

/**
 * The Repository: init, open (trying every key slot), snapshots, reading, backup, verify.
 */
import { createHmac, randomBytes } from "node:crypto";
import { availableParallelism } from "node:os";
import { IotvaultError, isNotFound } from "@iotvault/errors";
import type { ObjectStore } from "@iotvault/storage";
import { indexOrphanPacks } from "./recover.js";
import { BackupSession, type BackupOptions, type BackupWriter } from "./backup.js";
import { decodeConfig, encodeConfig, newConfig, verifyConfigMac, type RepositoryConfig } from "./config.js";
import { RepoCore, storeError, type ResolvedOptions } from "./core.js";
import {
  DEFAULT_COMPRESSION_LEVEL,
  DEFAULT_PACK_SIZE,
  DEFAULT_SCRYPT_LOG_N,
  KEYS,
  corrupt,
  isId,
  keySlotKey,
  snapshotKey,
} from "./format.js";
import {
  checkScryptLogN,
  configMacKey,
  createSlot,
  isKeyFileSecret,
  type RepositorySecret,
  decodeSlot,
  encodeSlot,
  generateKeyring,
  openKeyring,
  sealKeyring,
  unlockSlot,
  type Keyring,
} from "./keys.js";
import {
  addKey,
  listKeys,
  removeKey,
  rotateKeys,
  type KeyListing,
  type RotateOptions,
  type RotateResult,
} from "./key-admin.js";
import { checkReason, deleteHold, readHolds, resolveHoldId, writeHold, type Hold } from "./holds.js";
import { loadIndexes, refreshIndexState } from "./index-state.js";
import {
  RepoLocks,
  resolveLockTiming,
  type HeldLock,
  type LockInfo,
  type LockKind,
  type RepositoryLock,
} from "./locks.js";
import { listIdSizes, listIds, loadListedManifest, loadManifest } from "./manifests.js";
import { pruneRepository, type PruneOptions, type PruneResult } from "./prune.js";
import { forgetSnapshots, type ForgetOptions, type ForgetResult } from "./retention.js";
import { ReadAhead, type FileReader, type ReadAheadOptions } from "./read-ahead.js";
import { readFile, readTree } from "./reader.js";
import {
  deleteSealedObject,
  getSealedObject,
  listSealedObjects,
  putSealedObject,
  type SealedPutResult,
} from "./sealed-objects.js";
import { InlineSealer, type ChunkSealer } from "./sealer.js";
import type { SnapshotManifest } from "./snapshot.js";
import type { TreeNode } from "./tree.js";
import { verifyRepository, type VerifyOptions, type VerifyReport } from "./verify.js";
import { WorkerSealer } from "./workers.js";

export interface RepositoryOptions {
  /** Target pack size (default 16 MiB). */
  packSizeBytes?: number;
  /** zstd level for chunks (default 3). */
  compressionLevel?: number;
  /** scrypt cost of a new passphrase slot, as log2(N) (default 17). Opening uses each slot's own N. */
  scryptLogN?: number;
  /** Threads that compress and encrypt chunks: 1 = the calling thread, n > 1 = n worker threads, 0 = auto. */
  workers?: number;
  /** init only: chunk sizes in bytes (default 512 KiB / 1 MiB / 8 MiB). */
  chunker?: { minSize?: number; avgSize?: number; maxSize?: number };
  /** Write an index file after this many stored packs (default 4) ... */
  indexEveryPacks?: number;
  /** ... or this many milliseconds after an unindexed pack was stored (default 5000). */
  indexEveryMs?: number;
  /** A held lock is rewritten this often (default 5 minutes). */
  lockRefreshMs?: number;
  /** A lock not refreshed for this long is stale (default 30 minutes; at least 2 x lockRefreshMs). */
  lockStaleMs?: number;
  /**
   * open only: load the index files (default true). A process that only reads and writes sealed
   * objects (e.g. a PostgreSQL archive_command storing WAL) skips it and opens in milliseconds;
   * such a Repository refuses restores and prunes until its index is loaded: `startBackup` and
   * `lockIndexed` load it while they take their lock, `refreshIndex` loads it alone.
   */
  loadIndex?: boolean;
}

/** Repositories whose keys a service derives ahead (Repository.prepareKeys; the cache holds 64). */
const PREPARED_KEYS_MAX = 16;
/** A backup's lock purpose: this, then its run id (repository-format.md 14.1). */
const BACKUP_LOCK_PURPOSE = "backup ";

const PACK_SIZE_LIMITS = { min: 64 * 1024, max: 1024 * 1024 * 1024 } as const;

/**
 * The worker threads an operation of a repository opened with this `workers` option uses
 * (0 = one per core): 0 when it works in the calling thread (one worker). For services that
 * keep threads ready (keepWorkerThreadsReady).
 */
export function workerThreadsOf(workers: number | undefined): number {
  const n = !workers ? availableParallelism() : workers;
  return n > 1 ? n : 0;
}

function resolveOptions(o: RepositoryOptions): ResolvedOptions {
  const packSizeBytes = o.packSizeBytes ?? DEFAULT_PACK_SIZE;
  if (
    !Number.isInteger(packSizeBytes) ||
    packSizeBytes < PACK_SIZE_LIMITS.min ||
    packSizeBytes > PACK_SIZE_LIMITS.max
  ) {
    throw new IotvaultError("INVALID_ARGUMENT", `packSizeBytes must be from 64 KiB to 1 GiB, got ${packSizeBytes}`);
  }
  const compressionLevel = o.compressionLevel ?? DEFAULT_COMPRESSION_LEVEL;
  if (!Number.isInteger(compressionLevel) || compressionLevel < 1 || compressionLevel > 22) {
    throw new IotvaultError("INVALID_ARGUMENT", `compressionLevel must be from 1 to 22, got ${compressionLevel}`);
  }
  const scryptLogN = o.scryptLogN ?? DEFAULT_SCRYPT_LOG_N;
  checkScryptLogN(scryptLogN);
  const workers = o.workers ?? 0;
  if (!Number.isInteger(workers) || workers < 0 || workers > 64) {
    throw new IotvaultError("INVALID_ARGUMENT", `workers must be from 0 (auto) to 64, got ${workers}`);
  }
  return {
    packSizeBytes,
    compressionLevel,
    scryptLogN,
    workers: workers === 0 ? availableParallelism() : workers,
    indexEveryPacks: Math.max(1, o.indexEveryPacks ?? 4),
    indexEveryMs: Math.max(10, o.indexEveryMs ?? 5000),
    // One pack stored at a time, one being filled: the gRPC hop and local disks gain nothing from a
    // second upload, and each costs a pack of memory (docs/performance.md).
    uploadsInFlight: 1,
  };
}

const noRepository = (store: ObjectStore): IotvaultError =>
  new IotvaultError("FAILED_PRECONDITION", `no iotvault repository at ${store.location}; run \`iotvault repo init\``, {
    hint: "check the repository URL, or initialise it with `iotvault repo init`",
  });

const wrongKey = (store: ObjectStore, slots: number, secret: RepositorySecret): IotvaultError =>
  isKeyFileSecret(secret)
    ? new IotvaultError(
        "WRONG_KEY",
        `the key file does not open any of the ${slots} key slot(s) of the repository at ${store.location}`,
        { hint: "check IOTVAULT_KEY_FILE (or repository.keyFile), or use the passphrase" },
      )
    : new IotvaultError(
        "WRONG_KEY",
        `the passphrase does not open any of the ${slots} key slot(s) of the repository at ${store.location}`,
        { hint: "check IOTVAULT_PASSWORD / IOTVAULT_PASSWORD_FILE" },
      );

/**
 * A repository in format v1 on any ObjectStore.
 *
 * ```ts
 * const repo = await Repository.open(store, password);
 * const writer = await repo.startBackup({ runId });
 * await writer.addFile(node, content);
 * const { snapshot } = await writer.commit({ jobId, jobName, source, backupType: "full" });
 * for await (const node of repo.readTree(snapshot)) ...
 * await repo.close();
 * ```
 */
export class Repository {
  /** Opened with `loadIndex: false`: only sealed objects and metadata may be used. */
  private indexless = false;

  private closed = false;
  /** The index files whose entries are in core.index (to notice a prune by another process). */
  private indexIds = new Set<string>();

  private constructor(
    private core: RepoCore,
    private readonly sealer: ChunkSealer,
    private readonly locks: RepoLocks,
  ) {}

  /** Creates a repository with one passphrase slot; ALREADY_EXISTS when the store has one. */
  static async init(
    store: ObjectStore,
    password: RepositorySecret,
    options: RepositoryOptions = {},
  ): Promise<Repository> {
    const resolved = resolveOptions(options);
    const lockTiming = resolveLockTiming(options);
    if (await Repository.exists(store)) {
      throw new IotvaultError("ALREADY_EXISTS", `an iotvault repository already exists at ${store.location}`, {
        hint: "open it instead, or choose another location",
      });
    }
    const config = newConfig(options.chunker);
    const keyring = generateKeyring(config.id);
    const masterKey = randomBytes(32);
    const slot = await createSlot(password, masterKey, resolved.scryptLogN);
    try {
      // Order: key slot and keyring before config; the config's presence means "a repository is here".
      // The keyring is written only when absent: of two `init`s racing on one store exactly one
      // keyring lands, and the loser withdraws its slot instead of leaving a repository whose
      // config, keyring and slot come from different initialisations.
      await store.put(keySlotKey(slot.id), encodeSlot(slot));
      const keyringPut = await store.put(KEYS.keyring, sealKeyring(masterKey, keyring), { ifAbsent: true });
      if (keyringPut.existed) {
        await store.delete(keySlotKey(slot.id)).catch(() => undefined);
        throw new IotvaultError(
          "ALREADY_EXISTS",
          `another initialisation holds ${store.location}: its keyring is there (a repository is being or was created)`,
          {
            hint: "open the repository; if an earlier `repo init` was interrupted before writing `config`, remove the location's `keyring` and `keys/` objects and initialise again",
          },
        );
      }
      const { existed } = await store.put(KEYS.config, encodeConfig(config, configMacKey(keyring.macKey)), {
        ifAbsent: true,
      });
      if (existed)
        throw new IotvaultError("ALREADY_EXISTS", `an iotvault repository already exists at ${store.location}`);
    } catch (err) {
      throw storeError(err, `initialising the repository at ${store.location}`);
    }
    return Repository.fromKeys(store, config, keyring, masterKey, resolved, slot.id, new RepoLocks(lockTiming));
  }

  /**
   * Opens a repository, trying the secret (a passphrase, or `{ keyFile }`) on every key slot of
   * its kind; loads all index files.
   */
  static async open(
    store: ObjectStore,
    password: RepositorySecret,
    options: RepositoryOptions = {},
  ): Promise<Repository> {
    const resolved = resolveOptions(options);
    const locks = new RepoLocks(resolveLockTiming(options));
    // The config, the slot list and the keyring are asked for at once (one round trip instead of
    // three on a remote store); the config's error wins (no repository there).
    const slotIds = settled(listIds(store, KEYS.keySlotPrefix));
    const keyringBytes = settled(store.get(KEYS.keyring));
    const { config, mac } = decodeConfig(await getConfig(store));
    const { keyring, masterKey, slotId } = await unlock(store, password, config, await slotIds, keyringBytes);
    verifyConfigMac(config, mac, configMacKey(keyring.macKey));
    const repo = Repository.fromKeys(store, config, keyring, masterKey, resolved, slotId, locks);
    if (options.loadIndex === false) {
      repo.indexless = true;
      return repo;
    }
    try {
      repo.indexIds = await loadIndexes(repo.core);
    } catch (err) {
      await repo.close();
      throw err;
    }
    return repo;
  }

  /**
   * Opens each repository once and closes it again, so that its key is derived before the first
   * operation needs it: a passphrase slot costs one scrypt derivation (N = 2^17: ~0.4 s of CPU)
   * per process, which a service's first restore or backup would otherwise wait for. One
   * repository at a time, at most `max`; a repository that does not open is skipped (the
   * operation that needs it reports why). Returns the stores that opened.
   */
  static async prepareKeys(
    stores: readonly ObjectStore[],
    secret: RepositorySecret,
    options: { max?: number; signal?: AbortSignal } = {},
  ): Promise<number> {
    let opened = 0;
    for (const store of stores.slice(0, options.max ?? PREPARED_KEYS_MAX)) {
      if (options.signal?.aborted) break;
      try {
        await (await Repository.open(store, secret, { loadIndex: false, workers: 1 })).close();
        opened++;
      } catch {
        // reported by the operation that needs this repository
      }
    }
    return opened;
  }

  static async exists(store: ObjectStore): Promise<boolean> {
    try {
      return (await store.stat(KEYS.config)) !== undefined;
    } catch (err) {
      throw storeError(err, `checking for a repository at ${store.location}`);
    }
  }

  private static fromKeys(
    store: ObjectStore,
    config: RepositoryConfig,
    keyring: Keyring,
    masterKey: Buffer,
    options: ResolvedOptions,
    openedSlot: string,
    locks: RepoLocks,
  ): Repository {
    const core = new RepoCore(store, config, keyring, masterKey, options, openedSlot);
    const threads = workerThreadsOf(options.workers);
    const sealer =
      threads > 0
        ? new WorkerSealer(threads, options.compressionLevel, keyring.macKey)
        : new InlineSealer(options.compressionLevel, keyring.macKey);
    return new Repository(core, sealer, locks);
  }

  get id(): string {
    return this.core.config.id;
  }

  get store(): ObjectStore {
    return this.core.store;
  }

  /** Chunker parameters of this repository (from its config). */
  get chunkerParams(): Readonly<RepositoryConfig["chunker"]> {
    return this.core.config.chunker;
  }

  /** Whether a chunk id is in the loaded index (e.g. the chunks of a parent snapshot's file). */
  hasChunk(chunkId: string): boolean {
    this.checkOpen();
    return this.core.index.has(chunkId);
  }

  /** The snapshot id a run gets: hex HMAC-SHA256(MAC key, "snapshot:" + runId). */
  snapshotIdFor(runId: string): string {
    this.checkOpen();
    if (runId === "") throw new IotvaultError("INVALID_ARGUMENT", "runId must not be empty");
    return createHmac("sha256", this.core.macKey).update(`snapshot:${runId}`, "utf8").digest("hex");
  }

  async hasSnapshot(snapshotId: string): Promise<boolean> {
    this.checkOpen();
    if (!isId(snapshotId)) return false;
    try {
      return (await this.core.store.stat(snapshotKey(snapshotId))) !== undefined;
    } catch (err) {
      throw storeError(err, `checking snapshot ${snapshotId}`);
    }
  }

  /** Every snapshot, newest first (manifests this process read before come from memory). */
  async listSnapshots(signal?: AbortSignal): Promise<SnapshotManifest[]> {
    this.checkOpen();
    const ids = await listIdSizes(this.core.store, KEYS.snapshotPrefix, signal);
    const manifests: SnapshotManifest[] = [];
    const queue = [...ids];
    const worker = async (): Promise<void> => {
      for (let listed = queue.pop(); listed !== undefined; listed = queue.pop()) {
        manifests.push(await loadListedManifest(this.core, listed, signal));
      }
    };
    await Promise.all(Array.from({ length: Math.min(8, ids.length) }, worker));
    return manifests.sort((a, b) => (a.time < b.time ? 1 : a.time > b.time ? -1 : a.id < b.id ? 1 : -1));
  }

  /** A snapshot by id or unique prefix (>= 6 hex characters). */
  async loadSnapshot(idOrPrefix: string, signal?: AbortSignal): Promise<SnapshotManifest> {
    this.checkOpen();
    return loadManifest(this.core, await this.resolveSnapshotId(idOrPrefix), signal);
  }

  /** The full id of a snapshot given by id or unique prefix. */
  async resolveSnapshotId(idOrPrefix: string): Promise<string> {
    const prefix = idOrPrefix.toLowerCase();
    if (!/^[0-9a-f]{6,64}$/.test(prefix)) {
      throw new IotvaultError("INVALID_ARGUMENT", `${JSON.stringify(idOrPrefix)} is not a snapshot id or prefix`, {
        hint: "give at least 6 hex characters of the snapshot id",
      });
    }
    if (prefix.length === 64) return prefix;
    const matches = (await listIds(this.core.store, KEYS.snapshotPrefix)).filter((id) => id.startsWith(prefix));
    if (matches.length === 0) {
      throw new IotvaultError("NOT_FOUND", `no snapshot id starts with ${prefix} in ${this.core.store.location}`, {
        hint: "list the snapshots with `iotvault snapshots`",
      });
    }
    if (matches.length > 1) {
      throw new IotvaultError("INVALID_ARGUMENT", `snapshot prefix ${prefix} is ambiguous (${matches.length} match)`, {
        hint: "give more characters of the snapshot id",
      });
    }
    return matches[0]!;
  }

  /**
   * The snapshot's nodes in the order they were added (depth-first, sorted, for the fs source).
   * `frozen`: the nodes are frozen and a backup given one back unchanged (addUnchangedFile)
   * copies the line it was stored as, instead of encoding it again; `filesOfAtLeast`: only the
   * file nodes of at least that many bytes (see ReadTreeOptions).
   */
  readTree(
    snapshot: SnapshotManifest,
    signal?: AbortSignal,
    options: { frozen?: boolean; filesOfAtLeast?: number } = {},
  ): AsyncIterable<TreeNode> {
    this.checkIndexed();
    return readTree(this.core, snapshot, signal, { frozen: options.frozen, filesOfAtLeast: options.filesOfAtLeast });
  }

  /** A file's content; every chunk is checked (HMAC) and the whole file's sha256 at the end. */
  readFile(node: TreeNode, signal?: AbortSignal): AsyncIterable<Buffer> {
    this.checkIndexed();
    return readFile(this.core, this.sealer, node, signal);
  }

  /**
   * A reader for many files (a restore): contents of the files queued with `read(node)` are
   * fetched ahead in a few large requests and checked in worker threads; consume them in the
   * order they were queued, then `close()` the reader.
   */
  readFiles(options: ReadAheadOptions = {}): FileReader {
    this.checkOpen();
    this.sealer.warm();
    return new ReadAhead(this.core, this.sealer, options);
  }

  /** Opened with `loadIndex: false`, the index is loaded here, while the lock is taken. */
  async startBackup(options: BackupOptions): Promise<BackupWriter> {
    this.checkOpen();
    this.sealer.warm();
    const id = this.snapshotIdFor(options.runId);
    // Whether the run was committed before is asked while the lock is taken (one round trip less
    // before the backup starts); under the lock the index is brought up to date: a prune that ran
    // since it was loaded must not be deduplicated against.
    const [committed, locked] = await Promise.allSettled([
      this.hasSnapshot(id),
      this.acquireIndexed("shared", {
        purpose: `${BACKUP_LOCK_PURPOSE}${options.runId}`,
        waitMs: options.lockWaitMs,
        signal: options.signal,
      }),
    ]);
    if (locked.status === "rejected") {
      if (committed.status === "fulfilled" && committed.value) throw alreadyCommitted(options.runId, id);
      throw locked.reason;
    }
    const lock = locked.value;
    try {
      if (committed.status === "rejected") throw committed.reason;
      if (committed.value) throw alreadyCommitted(options.runId, id);
      // Packs a killed backup stored without indexing them are indexed now and reused. A killed
      // backup leaves its lock behind (a cancelled or failed one indexes what it stored, then
      // lets its lock go), so the store's packs are listed only when another backup's lock is
      // there: a listing of data/ is ~65 requests per TiB on S3, every run.
      const backups = lock.others.filter((l) => l.purpose.startsWith(BACKUP_LOCK_PURPOSE));
      if (backups.length > 0) {
        await indexOrphanPacks(this.core, options.signal);
        // Their packs are indexed now: a dead backup's lock need not send the next one looking.
        await this.locks.removeStale(this.core, backups);
      }
      return new BackupSession(this.core, this.sealer, id, options, lock);
    } catch (err) {
      await lock.release().catch(() => undefined);
      throw err;
    }
  }

  /**
   * Brings the index in memory up to date: reloads it when a prune (here or in another process)
   * replaced the index files it was loaded from, else adds index files written since. True when
   * anything changed. startBackup does this itself; a long-lived reader calls it before reading
   * snapshots newer than its open, or after a prune.
   */
  async refreshIndex(signal?: AbortSignal): Promise<boolean> {
    this.checkOpen();
    const { core, indexIds, changed } = await refreshIndexState(this.core, this.indexIds, signal);
    this.core = core;
    this.indexIds = indexIds;
    this.indexless = false; // opened with loadIndex: false, it has its index now
    return changed;
  }

  /**
   * Takes a lock (as `lock`) and returns with the index current under it: the index is loaded
   * (or refreshed) while the lock is being taken, then refreshed once more under the lock, which
   * costs one listing when nothing changed meanwhile. A repository opened with
   * `loadIndex: false` gets its index here, so an operation that locks pays for one load, at the
   * same time as the lock's round trips.
   */
  async lockIndexed(
    kind: LockKind,
    options: { waitMs?: number | undefined; purpose?: string | undefined; signal?: AbortSignal | undefined } = {},
  ): Promise<RepositoryLock> {
    return this.acquireIndexed(kind, options);
  }

  private async acquireIndexed(
    kind: LockKind,
    options: { waitMs?: number | undefined; purpose?: string | undefined; signal?: AbortSignal | undefined },
  ): Promise<HeldLock> {
    this.checkOpen();
    const [loaded, locked] = await Promise.allSettled([
      this.refreshIndex(options.signal),
      this.locks.acquire(this.core, kind, options),
    ]);
    if (locked.status === "rejected") throw locked.reason;
    const lock = locked.value;
    try {
      if (loaded.status === "rejected") throw loaded.reason;
      await this.refreshIndex(options.signal);
      return lock;
    } catch (err) {
      await lock.release().catch(() => undefined);
      throw err;
    }
  }

  /**
   * Takes a repository lock (see locks.ts): a shared lock fails while a non-stale exclusive
   * lock exists, an exclusive lock while any other non-stale lock exists; with `waitMs`, retries
   * every second until then. FAILED_PRECONDITION (retryable) names the lock in the way.
   */
  async lock(
    kind: LockKind,
    options: { waitMs?: number | undefined; purpose?: string | undefined; signal?: AbortSignal | undefined } = {},
  ): Promise<RepositoryLock> {
    this.checkOpen();
    return this.locks.acquire(this.core, kind, options);
  }

  /** Every lock in the repository, oldest first, with whether it is stale. */
  async listLocks(signal?: AbortSignal): Promise<LockInfo[]> {
    this.checkOpen();
    return this.locks.list(this.core, signal);
  }

  /** Holds a snapshot (id or unique prefix): forget never removes it. NOT_FOUND for no such snapshot. */
  async hold(snapshotIdOrPrefix: string, reason: string, createdBy?: string): Promise<Hold> {
    this.checkOpen();
    const why = checkReason(reason);
    const snapshotId = await this.resolveSnapshotId(snapshotIdOrPrefix);
    const missing = (): IotvaultError =>
      new IotvaultError("NOT_FOUND", `snapshot ${snapshotId} not found in ${this.core.store.location}`, {
        hint: "list the snapshots with `iotvault snapshots`",
      });
    if (!(await this.hasSnapshot(snapshotId))) throw missing();
    const hold: Hold = {
      snapshotId,
      reason: why,
      createdAt: new Date().toISOString(),
      ...(createdBy !== undefined && createdBy !== "" ? { createdBy } : {}),
    };
    await writeHold(this.core, hold);
    if (!(await this.hasSnapshot(snapshotId))) {
      await deleteHold(this.core, snapshotId); // forgotten meanwhile: no hold on nothing
      throw missing();
    }
    return hold;
  }

  /** Releases the hold of a snapshot (id or unique prefix of a held one); false when there was none. */
  async releaseHold(snapshotIdOrPrefix: string): Promise<boolean> {
    this.checkOpen();
    const id = await resolveHoldId(this.core, snapshotIdOrPrefix);
    return id === undefined ? false : deleteHold(this.core, id);
  }

  /** Every hold, oldest first. */
  async listHolds(signal?: AbortSignal): Promise<Hold[]> {
    this.checkOpen();
    return readHolds(this.core, signal);
  }

  /**
   * Applies a retention policy (see retention.ts): deletes the manifests of the snapshots no rule
   * keeps, under a shared lock. Data stays until `prune`.
   */
  async forget(options: ForgetOptions): Promise<ForgetResult> {
    this.checkOpen();
    return forgetSnapshots(this.core, this.locks, options, (signal) => this.listSnapshots(signal));
  }

  /** Deletes and repacks what no snapshot uses, under the exclusive lock (see prune.ts). */
  async prune(options: PruneOptions = {}): Promise<PruneResult> {
    this.checkIndexed();
    const result = await pruneRepository(this.core, this.locks, options);
    if (!result.dryRun) await this.refreshIndex(options.signal);
    return result;
  }

  /**
   * Stores `data` whole as an encrypted, compressed object outside packs (keys under `wal/` or
   * `sidecar/`). The same content again is a no-op (`existed: true`); different content under
   * the same key is ALREADY_EXISTS and the stored object is kept.
   */
  async putSealedObject(
    key: string,
    data: Uint8Array,
    options: { signal?: AbortSignal } = {},
  ): Promise<SealedPutResult> {
    this.checkOpen();
    return putSealedObject(this.core, key, data, {
      signal: options.signal,
      compressionLevel: this.core.options.compressionLevel,
    });
  }

  /** A sealed object's original bytes (checked); NOT_FOUND when there is none. */
  async getSealedObject(key: string): Promise<Buffer> {
    this.checkOpen();
    return getSealedObject(this.core, key);
  }

  listSealedObjects(prefix: string): AsyncIterable<{ key: string; size: number }> {
    this.checkOpen();
    return listSealedObjects(this.core, prefix);
  }

  async deleteSealedObject(key: string): Promise<boolean> {
    this.checkOpen();
    return deleteSealedObject(this.core, key);
  }

  /** The key slots and data-encryption keys (ids and dates only, never key material). */
  async listKeys(): Promise<KeyListing> {
    this.checkOpen();
    return listKeys(this.core);
  }

  /** Adds a key slot (passphrase or key file) that opens this repository; returns its id. */
  async addKey(secret: RepositorySecret): Promise<string> {
    this.checkOpen();
    return addKey(this.core, secret);
  }

  /** Removes a key slot; refuses the last one and the one this process opened with. */
  async removeKey(slotId: string): Promise<void> {
    this.checkOpen();
    return removeKey(this.core, slotId);
  }

  /**
   * A new data-encryption key for new data and a new master key; see key-admin.ts. Existing
   * packs are not rewritten: old snapshots stay readable with the old data keys.
   */
  async rotateKeys(options: RotateOptions): Promise<RotateResult> {
    this.checkOpen();
    const lock = await this.locks.acquire(this.core, "exclusive", { purpose: "key rotation" });
    try {
      return await rotateKeys(this.core, options);
    } finally {
      await lock.release().catch(() => undefined);
    }
  }

  async verify(options: VerifyOptions = {}): Promise<VerifyReport> {
    this.checkIndexed();
    return verifyRepository(this.core, options, (prefix) => this.resolveSnapshotId(prefix));
  }

  /** Stops worker threads and wipes keys from memory; the Repository cannot be used afterwards. */
  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    await this.locks.releaseAll();
    await this.sealer.close();
    this.core.close();
  }

  private checkOpen(): void {
    if (this.closed) throw new IotvaultError("FAILED_PRECONDITION", "the repository is closed");
  }

  /** For operations that need the index (backup, read, verify, prune). */
  private checkIndexed(): void {
    this.checkOpen();
    if (this.indexless) {
      throw new IotvaultError("FAILED_PRECONDITION", "this repository was opened without its index (loadIndex: false)");
    }
  }
}

type Settled<T> = { ok: true; value: T } | { ok: false; error: unknown };

/** A request started ahead of its use: its outcome is kept, never an unhandled rejection. */
function settled<T>(p: Promise<T>): Promise<Settled<T>> {
  return p.then(
    (value) => ({ ok: true as const, value }),
    (error: unknown) => ({ ok: false as const, error }),
  );
}

async function getConfig(store: ObjectStore): Promise<Buffer> {
  try {
    return await store.get(KEYS.config);
  } catch (err) {
    if (isNotFound(err)) throw noRepository(store);
    throw storeError(err, `reading the repository config at ${store.location}`);
  }
}

/**
 * Tries every passphrase slot; the first that opens the keyring wins. A slot that cannot be
 * parsed (damaged, or of a newer version) is skipped; when no slot opens, the error is
 * WRONG_KEY if some slot could be tried, else the first slot's own error.
 */
async function unlock(
  store: ObjectStore,
  password: RepositorySecret,
  config: RepositoryConfig,
  listed: Settled<string[]>,
  keyringRead: Promise<Settled<Buffer>>,
): Promise<{ keyring: Keyring; masterKey: Buffer; slotId: string }> {
  if (!listed.ok) throw listed.error;
  const slotIds = listed.value;
  if (slotIds.length === 0) {
    throw new IotvaultError("FAILED_PRECONDITION", `the repository at ${store.location} has no key slots`, {
      hint: "restore the keys/ objects from a copy of the repository",
    });
  }
  // Every slot is fetched at once (a repository has a handful); they are tried in order.
  const slots = slotIds.map((id) => settled(store.get(keySlotKey(id))));
  let tried = 0;
  let firstError: unknown;
  for (const [i, slotId] of slotIds.entries()) {
    let slot: ReturnType<typeof decodeSlot>;
    try {
      const read = await slots[i]!;
      if (!read.ok) throw read.error;
      slot = decodeSlot(read.value, slotId);
    } catch (err) {
      firstError ??= err;
      continue;
    }
    if (!slot) continue;
    tried++;
    const masterKey = await unlockSlot(slot, password);
    if (!masterKey) continue;
    const keyringBytes = await keyringRead;
    if (!keyringBytes.ok) throw storeError(keyringBytes.error, "reading the keyring");
    const keyring = openKeyring(masterKey, keyringBytes.value);
    if (!keyring) continue; // a slot left over from another keyring (e.g. an interrupted init)
    if (keyring.repositoryId !== config.id) throw corrupt("the keyring belongs to another repository");
    return { keyring, masterKey, slotId };
  }
  if (tried === 0 && firstError !== undefined) throw storeError(firstError, "reading the key slots");
  throw wrongKey(store, slotIds.length, password);
}

function alreadyCommitted(runId: string, snapshotId: string): IotvaultError {
  return new IotvaultError("ALREADY_EXISTS", `run ${runId} already has snapshot ${snapshotId}`, {
    hint: "the run was committed before; load that snapshot instead of backing up again",
  });
}

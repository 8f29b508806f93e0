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
import { listIds, loadAllIndexes, loadManifest } from "./manifests.js";
import { readFile, readTree } from "./reader.js";
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
}

const PACK_SIZE_LIMITS = { min: 64 * 1024, max: 1024 * 1024 * 1024 } as const;

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
    uploadsInFlight: 2,
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
  private closed = false;

  private constructor(
    private readonly core: RepoCore,
    private readonly sealer: ChunkSealer,
  ) {}

  /** Creates a repository with one passphrase slot; ALREADY_EXISTS when the store has one. */
  static async init(
    store: ObjectStore,
    password: RepositorySecret,
    options: RepositoryOptions = {},
  ): Promise<Repository> {
    const resolved = resolveOptions(options);
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
      await store.put(keySlotKey(slot.id), encodeSlot(slot));
      await store.put(KEYS.keyring, sealKeyring(masterKey, keyring));
      const { existed } = await store.put(KEYS.config, encodeConfig(config, configMacKey(keyring.macKey)), {
        ifAbsent: true,
      });
      if (existed)
        throw new IotvaultError("ALREADY_EXISTS", `an iotvault repository already exists at ${store.location}`);
    } catch (err) {
      throw storeError(err, `initialising the repository at ${store.location}`);
    }
    return Repository.fromKeys(store, config, keyring, masterKey, resolved, slot.id);
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
    const { config, mac } = decodeConfig(await getConfig(store));
    const { keyring, masterKey, slotId } = await unlock(store, password, config);
    verifyConfigMac(config, mac, configMacKey(keyring.macKey));
    const repo = Repository.fromKeys(store, config, keyring, masterKey, resolved, slotId);
    try {
      await loadAllIndexes(repo.core);
    } catch (err) {
      await repo.close();
      throw err;
    }
    return repo;
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
  ): Repository {
    const core = new RepoCore(store, config, keyring, masterKey, options, openedSlot);
    const sealer =
      options.workers > 1
        ? new WorkerSealer(options.workers, options.compressionLevel, keyring.macKey)
        : new InlineSealer(options.compressionLevel, keyring.macKey);
    return new Repository(core, sealer);
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

  /** Every snapshot, newest first. */
  async listSnapshots(signal?: AbortSignal): Promise<SnapshotManifest[]> {
    this.checkOpen();
    const ids = await listIds(this.core.store, KEYS.snapshotPrefix, signal);
    const manifests: SnapshotManifest[] = [];
    const queue = [...ids];
    const worker = async (): Promise<void> => {
      for (let id = queue.pop(); id !== undefined; id = queue.pop()) {
        manifests.push(await loadManifest(this.core, id, signal));
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

  /** The snapshot's nodes in the order they were added (depth-first, sorted, for the fs source). */
  readTree(snapshot: SnapshotManifest, signal?: AbortSignal): AsyncIterable<TreeNode> {
    this.checkOpen();
    return readTree(this.core, snapshot, signal);
  }

  /** A file's content; every chunk is checked (HMAC) and the whole file's sha256 at the end. */
  readFile(node: TreeNode, signal?: AbortSignal): AsyncIterable<Buffer> {
    this.checkOpen();
    return readFile(this.core, node, signal);
  }

  async startBackup(options: BackupOptions): Promise<BackupWriter> {
    this.checkOpen();
    const id = this.snapshotIdFor(options.runId);
    if (await this.hasSnapshot(id)) {
      throw new IotvaultError("ALREADY_EXISTS", `run ${options.runId} already has snapshot ${id}`, {
        hint: "the run was committed before; load that snapshot instead of backing up again",
      });
    }
    // Packs a killed backup stored without indexing them are indexed now and reused.
    await indexOrphanPacks(this.core, options.signal);
    return new BackupSession(this.core, this.sealer, id, options);
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
    return rotateKeys(this.core, options);
  }

  async verify(options: VerifyOptions = {}): Promise<VerifyReport> {
    this.checkOpen();
    return verifyRepository(this.core, options, (prefix) => this.resolveSnapshotId(prefix));
  }

  /** Stops worker threads and wipes keys from memory; the Repository cannot be used afterwards. */
  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    await this.sealer.close();
    this.core.close();
  }

  private checkOpen(): void {
    if (this.closed) throw new IotvaultError("FAILED_PRECONDITION", "the repository is closed");
  }
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
): Promise<{ keyring: Keyring; masterKey: Buffer; slotId: string }> {
  const slotIds = await listIds(store, KEYS.keySlotPrefix);
  if (slotIds.length === 0) {
    throw new IotvaultError("FAILED_PRECONDITION", `the repository at ${store.location} has no key slots`, {
      hint: "restore the keys/ objects from a copy of the repository",
    });
  }
  let keyringBytes: Buffer | undefined;
  let tried = 0;
  let firstError: unknown;
  for (const slotId of slotIds) {
    let slot: ReturnType<typeof decodeSlot>;
    try {
      slot = decodeSlot(await store.get(keySlotKey(slotId)), slotId);
    } catch (err) {
      firstError ??= err;
      continue;
    }
    if (!slot) continue;
    tried++;
    const masterKey = await unlockSlot(slot, password);
    if (!masterKey) continue;
    keyringBytes ??= await store.get(KEYS.keyring).catch((err: unknown) => {
      throw storeError(err, "reading the keyring");
    });
    const keyring = openKeyring(masterKey, keyringBytes);
    if (!keyring) continue; // a slot left over from another keyring (e.g. an interrupted init)
    if (keyring.repositoryId !== config.id) throw corrupt("the keyring belongs to another repository");
    return { keyring, masterKey, slotId };
  }
  if (tried === 0 && firstError !== undefined) throw storeError(firstError, "reading the key slots");
  throw wrongKey(store, slotIds.length, password);
}

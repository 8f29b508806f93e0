/**
 * The opened state of a repository (config, keyring, master index) and the helpers every part
 * (backup, reader, verify) uses to seal and open objects. Internal to this package.
 */
import { IotvaultError, toIotvaultError } from "@iotvault/errors";
import type { ObjectStore } from "@iotvault/storage";
import type { SealKey } from "./blob.js";
import { gearTable } from "./chunker.js";
import { decodeConfig, verifyConfigMac, type RepositoryConfig } from "./config.js";
import { context, describeOpenFailure, envelopeKeyId, open, seal } from "./envelope.js";
import { KEYS, corrupt } from "./format.js";
import { MasterIndex } from "./index-file.js";
import { configMacKey, openKeyring, type Keyring } from "./keys.js";

export interface ResolvedOptions {
  packSizeBytes: number;
  compressionLevel: number;
  scryptLogN: number;
  /** Worker threads for sealing chunks; 0 = in the calling thread. */
  workers: number;
  /** Write an index file after this many stored packs ... */
  indexEveryPacks: number;
  /** ... or this long after the first unindexed pack was stored. */
  indexEveryMs: number;
  /** Packs being uploaded at once. */
  uploadsInFlight: number;
}

export class RepoCore {
  readonly gear: Uint32Array;
  readonly index = new MasterIndex();
  private keys: Map<number, Buffer>;
  /** Key ids named by envelopes but absent from the keyring even after a reload. */
  private readonly unknownKeyIds = new Set<number>();
  private readonly reloadsFor = new Map<number, Promise<void>>();

  constructor(
    readonly store: ObjectStore,
    readonly config: RepositoryConfig,
    private keyring: Keyring,
    private masterKey: Buffer,
    readonly options: ResolvedOptions,
    /** The key slot this process opened the repository with. */
    public openedSlot: string,
  ) {
    this.gear = gearTable(keyring.chunkerSecret);
    this.keys = keyMap(keyring);
  }

  get macKey(): Buffer {
    return this.keyring.macKey;
  }

  readonly keyFor = (keyId: number): Uint8Array | undefined => this.keys.get(keyId);

  currentKey(): SealKey {
    const key = this.keys.get(this.keyring.current);
    if (!key) throw new IotvaultError("INTERNAL", "the current encryption key is missing from the keyring");
    return { key, keyId: this.keyring.current };
  }

  /** Encrypts an object stored under `key` (index files, snapshots), bound to that key. */
  sealObject(key: string, plain: Uint8Array): Buffer {
    const k = this.currentKey();
    return seal(k.key, k.keyId, context.object(key), plain);
  }

  /** Decrypts an object stored under `key`; DATA_CORRUPT naming `what` when it does not open. */
  async openObject(key: string, bytes: Uint8Array, what: string): Promise<Buffer> {
    await this.ensureKey(bytes);
    const result = open(bytes, context.object(key), this.keyFor);
    if (!result.ok) throw corrupt(`${what} ${describeOpenFailure(result.reason, result.keyId)}`);
    return result.plain;
  }

  /**
   * Reloads the keyring when an envelope names a key id this process has not seen (rotation).
   * An id still unknown after a reload is remembered and not reloaded for again: damaged data
   * naming a bogus key id costs one keyring read, not one per blob (it then fails to open).
   */
  async ensureKey(envelope: Uint8Array): Promise<void> {
    const id = envelopeKeyId(envelope);
    if (id === undefined || id === 0 || this.keys.has(id) || this.unknownKeyIds.has(id)) return;
    // Blobs read in parallel that name the same new id share one reload.
    let reload = this.reloadsFor.get(id);
    if (!reload) {
      reload = this.reloadKeyring()
        .then(() => {
          if (!this.keys.has(id) && this.unknownKeyIds.size < 1024) this.unknownKeyIds.add(id);
        })
        .finally(() => this.reloadsFor.delete(id));
      this.reloadsFor.set(id, reload);
    }
    await reload;
  }

  async reloadKeyring(): Promise<void> {
    let bytes: Buffer;
    try {
      bytes = await this.store.get(KEYS.keyring);
    } catch (err) {
      throw toIotvaultError(err, "reading the keyring");
    }
    const fresh = openKeyring(this.masterKey, bytes);
    if (!fresh) {
      throw new IotvaultError("FAILED_PRECONDITION", "the repository's keys were rotated after it was opened here", {
        hint: "open the repository again (the operation can be retried)",
        retryable: true,
      });
    }
    if (fresh.repositoryId !== this.config.id) {
      throw corrupt("the keyring names another repository id than the config", undefined, {
        keyring: fresh.repositoryId,
        config: this.config.id,
      });
    }
    this.keyring = fresh;
    this.keys = keyMap(fresh);
    this.unknownKeyIds.clear();
  }

  /** Re-checks a stored config object: same repository, MAC intact. Throws DATA_CORRUPT. */
  checkConfigObject(bytes: Uint8Array): void {
    const { config, mac } = decodeConfig(bytes);
    if (config.id !== this.config.id) throw corrupt("the config names another repository id");
    verifyConfigMac(config, mac, configMacKey(this.keyring.macKey));
  }

  /** The keys, for key management (key-admin.ts) only. */
  secretKeys(): { masterKey: Buffer; keyring: Keyring } {
    return { masterKey: this.masterKey, keyring: this.keyring };
  }

  /** After a rotation: the new master key and keyring (the old ones are wiped). */
  replaceKeys(masterKey: Buffer, keyring: Keyring, openedSlot: string): void {
    if (masterKey !== this.masterKey) this.masterKey.fill(0);
    this.masterKey = masterKey;
    this.keyring = keyring;
    this.keys = keyMap(keyring);
    this.openedSlot = openedSlot;
  }

  close(): void {
    for (const k of this.keys.values()) k.fill(0);
    this.keyring.macKey.fill(0);
    this.keyring.chunkerSecret.fill(0);
    this.masterKey.fill(0);
  }
}

function keyMap(keyring: Keyring): Map<number, Buffer> {
  return new Map(keyring.encryptionKeys.map((k) => [k.id, k.key]));
}

/** Turns an AbortSignal's reason into a CANCELLED IotvaultError. */
export function throwIfAborted(signal: AbortSignal | undefined, what: string): void {
  if (signal?.aborted) throw cancelled(what);
}

export function cancelled(what: string): IotvaultError {
  return new IotvaultError("CANCELLED", `${what} was cancelled`);
}

/** Classifies an error from a store or an abort. */
export function storeError(err: unknown, what: string): IotvaultError {
  if ((err as { name?: unknown } | null)?.name === "AbortError") return cancelled(what);
  return toIotvaultError(err, what);
}

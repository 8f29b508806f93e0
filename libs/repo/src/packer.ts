/**
 * Turns new chunks into stored packs and index files, in the order format v1 requires:
 * a pack is stored before any index file that names it; index files are written every few
 * packs or seconds during a backup, so that a killed backup leaves its packs indexed.
 * Memory: one pack being filled, a bounded number being sealed and being uploaded.
 */
import { randomBytes } from "node:crypto";
import type { ChunkSealer } from "./sealer.js";
import { storeError, type RepoCore } from "./core.js";
import { indexKey, packKey, type BlobTypeName } from "./format.js";
import { encodeIndex, type IndexedPack } from "./index-file.js";
import type { PutOptions } from "@iotvault/storage";
import { PackBuilder, type FinishedPack } from "./pack.js";
import { YoungGc } from "./young-gc.js";

/** Room in a pack buffer beyond the pack size, for the blob that reaches it and the header (42 bytes per blob). */
const PACK_SLACK_BYTES = 2 * 1024 * 1024;

type Blob = { id: string; type: BlobTypeName; flags: number; rawLength: number; sealed: Buffer };

export interface PackerEvents {
  onPackStored(bytes: number): void;
  onIndexStored(bytes: number): void;
}

export class Packer {
  /** Pack buffers free for reuse (fresh memory costs more than copying into known pages). */
  private readonly freeBuffers: Buffer[] = [];
  private builder: PackBuilder;
  /** Set while a full pack waits for an upload slot; blobs arriving meanwhile are held. */
  private cutting: Promise<void> | undefined;
  private held: Blob[] = [];
  private readonly youngGc = new YoungGc(8 * 1024 * 1024);
  private readonly sealing = new Set<Promise<void>>();
  private readonly uploads = new Set<Promise<void>>();
  private unindexed: IndexedPack[] = [];
  private indexChain: Promise<void> = Promise.resolve();
  private indexTimer: NodeJS.Timeout | undefined;
  private failure: Error | undefined;
  /**
   * Set by flush: the last pack is stored beside the one still being stored instead of after it
   * (its buffer is filled already, so this costs no memory; at the end of a run the upload of
   * the pack before it is otherwise all the backup waits for).
   */
  private finishing = false;

  constructor(
    private readonly core: RepoCore,
    private readonly sealer: ChunkSealer,
    private readonly events: PackerEvents,
    private readonly signal: AbortSignal | undefined,
  ) {
    this.builder = new PackBuilder(this.takeBuffer());
  }

  /** A pack's size plus room for a typical last blob and the header (a pack that needs more grows once). */
  private get bufferBytes(): number {
    return this.core.options.packSizeBytes + PACK_SLACK_BYTES;
  }

  private takeBuffer(): Buffer {
    return this.freeBuffers.pop() ?? Buffer.allocUnsafeSlow(this.bufferBytes);
  }

  /** After a pack was stored (the store has copied or written its bytes), its buffer is reused. */
  private giveBack(buffer: Buffer): void {
    if (buffer.length === this.bufferBytes && this.freeBuffers.length < this.core.options.uploadsInFlight) {
      this.freeBuffers.push(buffer);
    }
  }

  /** Throws the first failure of a background seal, upload or index write. */
  check(): void {
    if (this.failure !== undefined) throw this.failure;
  }

  /** Queues one new chunk (the packer owns `plain` from now on); resolves once it is accepted (backpressure), not once stored. */
  async add(id: string, type: BlobTypeName, plain: Buffer): Promise<void> {
    this.check();
    const limit = Math.max(2, this.sealer.parallelism * 2);
    while (this.sealing.size >= limit) await Promise.race(this.sealing);
    this.check();
    const rawLength = plain.length; // a worker sealer takes the buffer over (transfer)
    const task = this.sealer
      .seal(plain, true, id, this.core.currentKey())
      .then((s) => {
        const appended = this.append({ id, type, rawLength, flags: s.flags, sealed: s.sealed });
        s.release?.(); // append copied the blob into the pack before its first await
        return appended;
      })
      .catch((err: unknown) => this.fail(err));
    this.sealing.add(task);
    void task.finally(() => this.sealing.delete(task));
  }

  /** Queues a blob sealed elsewhere (a whole small file sealed with its hashes); copies it at once. */
  addSealed(blob: Blob): void {
    const task = this.append(blob).catch((err: unknown) => this.fail(err));
    this.sealing.add(task);
    void task.finally(() => this.sealing.delete(task));
  }

  /** Resolves once blobs are taken into a pack again (no full pack waits for an upload slot): backpressure. */
  async room(): Promise<void> {
    while (this.cutting) await this.cutting;
    this.check();
  }

  /** Stores everything queued, then writes an index file for every stored pack. */
  async flush(): Promise<void> {
    await Promise.all([...this.sealing]);
    this.check();
    this.finishing = true;
    while (this.cutting || this.builder.count > 0) await this.cutPack();
    await Promise.all([...this.uploads]);
    this.check();
    await this.writeIndex();
    this.check();
    this.dropBuffers();
  }

  /** The backup is over: its pack buffers are let go (they are large). */
  private dropBuffers(): void {
    this.freeBuffers.length = 0;
    this.builder = new PackBuilder();
  }

  /** Stops: waits for running work (its failures ignored), then indexes what was stored. */
  async abort(): Promise<void> {
    await Promise.allSettled([...this.sealing]);
    await Promise.allSettled([...this.uploads]);
    this.clearTimer();
    await this.indexChain;
    if (this.unindexed.length > 0) await this.writeIndexNow(undefined).catch(() => undefined);
    this.dropBuffers();
  }

  private fail(err: unknown): void {
    this.failure ??= storeError(err, "storing backup data");
  }

  private async append(blob: Blob): Promise<void> {
    if (this.cutting) {
      // The full pack waits for an upload slot: keep a copy (the blob's arena goes back to its pool).
      this.held.push({ ...blob, sealed: Buffer.from(blob.sealed) });
      return this.cutting;
    }
    this.builder.add(blob);
    if (this.builder.bytes >= this.core.options.packSizeBytes) await this.cutPack();
  }

  /** Finishes the pack being filled and uploads it (after any cut already running). */
  private cutPack(): Promise<void> {
    if (this.cutting) return this.cutting;
    if (this.builder.count === 0) return Promise.resolve();
    const cutting = this.cutNow().finally(() => {
      this.cutting = undefined;
    });
    this.cutting = cutting;
    return cutting;
  }

  /**
   * A full pack waits for an upload slot before the next pack takes a buffer, so that at most
   * `uploadsInFlight` packs are being stored plus one finished or being filled (memory); the
   * last pack of a flush takes one more slot.
   */
  private async cutNow(): Promise<void> {
    const packSize = this.core.options.packSizeBytes;
    for (;;) {
      const pack = this.builder.finish(this.core.currentKey());
      const slots = this.core.options.uploadsInFlight + (this.finishing ? 1 : 0);
      while (this.uploads.size >= slots) await Promise.race(this.uploads);
      const upload = this.upload(pack).catch((err: unknown) => this.fail(err));
      this.uploads.add(upload);
      void upload.finally(() => this.uploads.delete(upload));
      // After the last pack nothing more is added: no buffer for a next one.
      this.builder = this.finishing && this.held.length === 0 ? new PackBuilder() : new PackBuilder(this.takeBuffer());
      // The held blobs, with the same cut rule: a pack ends at the first blob that reaches the size.
      while (this.held.length > 0 && this.builder.bytes < packSize) this.builder.add(this.held.shift()!);
      if (this.builder.bytes < packSize) return;
    }
  }

  private async upload(pack: FinishedPack & { buffer: Buffer }): Promise<void> {
    // The pack id is the sha256 of the pack: a store that checks content need not hash it again.
    const options: PutOptions & { sha256: string } = { signal: this.signal, sha256: pack.id };
    await this.core.store.put(packKey(pack.id), pack.bytes, options);
    this.giveBack(pack.buffer);
    // The sealed blobs copied into the pack, and the store's copies of it, are dead now.
    this.youngGc.note(2 * pack.bytes.length);
    this.events.onPackStored(pack.bytes.length);
    this.unindexed.push({ packId: pack.id, packLength: pack.bytes.length, entries: pack.entries });
    if (this.unindexed.length >= this.core.options.indexEveryPacks) {
      void this.writeIndex().catch((err: unknown) => this.fail(err));
    } else if (!this.indexTimer) {
      this.indexTimer = setTimeout(() => {
        this.indexTimer = undefined;
        void this.writeIndex().catch((err: unknown) => this.fail(err));
      }, this.core.options.indexEveryMs);
      this.indexTimer.unref();
    }
  }

  /** Writes one index file for all stored, unindexed packs (index writes run one at a time). */
  private writeIndex(): Promise<void> {
    this.clearTimer();
    const run = this.indexChain.then(() => this.writeIndexNow(this.signal));
    this.indexChain = run.catch(() => undefined);
    return run;
  }

  private async writeIndexNow(signal: AbortSignal | undefined): Promise<void> {
    if (this.unindexed.length === 0) return;
    const packs = this.unindexed;
    this.unindexed = [];
    const key = indexKey(randomBytes(32).toString("hex"));
    const sealed = this.core.sealObject(key, encodeIndex(packs));
    try {
      await this.core.store.put(key, sealed, { signal });
    } catch (err) {
      this.unindexed.unshift(...packs);
      throw err;
    }
    for (const pack of packs) this.core.index.add(pack);
    this.events.onIndexStored(sealed.length);
  }

  private clearTimer(): void {
    if (this.indexTimer) clearTimeout(this.indexTimer);
    this.indexTimer = undefined;
  }
}

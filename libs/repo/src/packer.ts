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
import { PackBuilder, type FinishedPack } from "./pack.js";

export interface PackerEvents {
  onPackStored(bytes: number): void;
  onIndexStored(bytes: number): void;
}

export class Packer {
  private builder = new PackBuilder();
  private readonly sealing = new Set<Promise<void>>();
  private readonly uploads = new Set<Promise<void>>();
  private unindexed: IndexedPack[] = [];
  private indexChain: Promise<void> = Promise.resolve();
  private indexTimer: NodeJS.Timeout | undefined;
  private failure: Error | undefined;

  constructor(
    private readonly core: RepoCore,
    private readonly sealer: ChunkSealer,
    private readonly events: PackerEvents,
    private readonly signal: AbortSignal | undefined,
  ) {}

  /** Throws the first failure of a background seal, upload or index write. */
  check(): void {
    if (this.failure !== undefined) throw this.failure;
  }

  /** Queues one new chunk; resolves once it is accepted (backpressure), not once stored. */
  async add(id: string, type: BlobTypeName, plain: Buffer): Promise<void> {
    this.check();
    const limit = Math.max(2, this.sealer.parallelism * 2);
    while (this.sealing.size >= limit) await Promise.race(this.sealing);
    this.check();
    const rawLength = plain.length; // a worker sealer takes the buffer over (transfer)
    const task = this.sealer
      .seal(plain, id, this.core.currentKey())
      .then((s) => this.append({ id, type, rawLength, flags: s.flags, sealed: s.sealed }))
      .catch((err: unknown) => this.fail(err));
    this.sealing.add(task);
    void task.finally(() => this.sealing.delete(task));
  }

  /** Queues a blob sealed elsewhere (a whole small file sealed with its hashes). */
  addSealed(blob: { id: string; type: BlobTypeName; flags: number; rawLength: number; sealed: Buffer }): void {
    const task = this.append(blob).catch((err: unknown) => this.fail(err));
    this.sealing.add(task);
    void task.finally(() => this.sealing.delete(task));
  }

  /** Stores everything queued, then writes an index file for every stored pack. */
  async flush(): Promise<void> {
    await Promise.all([...this.sealing]);
    this.check();
    await this.cutPack();
    await Promise.all([...this.uploads]);
    this.check();
    await this.writeIndex();
    this.check();
  }

  /** Stops: waits for running work (its failures ignored), then indexes what was stored. */
  async abort(): Promise<void> {
    await Promise.allSettled([...this.sealing]);
    await Promise.allSettled([...this.uploads]);
    this.clearTimer();
    await this.indexChain;
    if (this.unindexed.length > 0) await this.writeIndexNow(undefined).catch(() => undefined);
  }

  private fail(err: unknown): void {
    this.failure ??= storeError(err, "storing backup data");
  }

  private async append(blob: { id: string; type: BlobTypeName; flags: number; rawLength: number; sealed: Buffer }) {
    this.builder.add(blob);
    if (this.builder.bytes >= this.core.options.packSizeBytes) await this.cutPack();
  }

  private async cutPack(): Promise<void> {
    if (this.builder.count === 0) return;
    const full = this.builder;
    this.builder = new PackBuilder();
    const pack = full.finish(this.core.currentKey());
    while (this.uploads.size >= this.core.options.uploadsInFlight) await Promise.race(this.uploads);
    const upload = this.upload(pack).catch((err: unknown) => this.fail(err));
    this.uploads.add(upload);
    void upload.finally(() => this.uploads.delete(upload));
  }

  private async upload(pack: FinishedPack): Promise<void> {
    await this.core.store.put(packKey(pack.id), pack.bytes, { signal: this.signal });
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

/**
 * Prune: frees the data no snapshot uses any more, under the exclusive lock.
 *
 * 1. Load every index file, then walk every snapshot's tree into the set of referenced chunk
 *    ids (memory: about 100 bytes per referenced chunk, on top of the index). A chunk that no
 *    index names, or a used pack that is missing or truncated, refuses the prune (DATA_CORRUPT):
 *    nothing is deleted from an inconsistent repository.
 * 2. Classify the packs: every blob used -> keep; none -> delete; some -> repack when the unused
 *    share of its blob bytes is above `repackThreshold`, else keep. Packs under `data/` that no
 *    index names (left by crashed backups) are deleted.
 * 3. Write, in this order (a crash anywhere leaves every snapshot readable):
 *    a. new packs with the still-used blobs of the packs to repack, copied as they are (blob
 *       envelopes are bound to chunk ids, not to packs), each source pack checked first
 *       (sha256, or every blob when that fails: a corrupt blob is never copied);
 *    b. new index files covering every pack that stays (new packs included);
 *    c. deletion of every index file that existed before;
 *    d. deletion of the packs that go (unused, repacked, orphans).
 *
 * ```ts
 * const result = await repo.prune({ repackThreshold: 0.25, lockWaitMs: 60_000, onProgress });
 * console.log(`${result.bytesFreed} bytes freed`);
 * ```
 */
import { createHash, randomBytes } from "node:crypto";
import { IotvaultError, isIotvaultError } from "@iotvault/errors";
import { unsealBlob } from "./blob.js";
import { storeError, throwIfAborted, type RepoCore } from "./core.js";
import { ENVELOPE_OVERHEAD } from "./envelope.js";
import { ID_BYTES, KEYS, corrupt, indexKey, isId, packKey } from "./format.js";
import { MasterIndex, encodeIndex, type IndexedPack } from "./index-file.js";
import type { HeldLock, RepoLocks } from "./locks.js";
import { listIds, loadIndexFile, loadManifest } from "./manifests.js";
import { ENTRY_BYTES, PackBuilder, TRAILER_BYTES, parsePack, type PackEntry } from "./pack.js";
import { readTree } from "./reader.js";

export interface PruneProgress {
  /** "index", "snapshots", "repack", "write-index", "delete-index", "delete-packs". */
  phase: string;
  done: number;
  total: number;
}

export interface PruneOptions {
  /** Compute and report only; nothing is written or deleted (takes a shared lock). */
  dryRun?: boolean | undefined;
  /** Repack packs whose unused share of blob bytes is above this (0..1, default 0.25). */
  repackThreshold?: number | undefined;
  /** Wait this long for other locks to go away before giving up (default 0). */
  lockWaitMs?: number | undefined;
  signal?: AbortSignal | undefined;
  onProgress?: ((p: PruneProgress) => void) | undefined;
}

export interface PruneResult {
  snapshots: number;
  /** Pack objects under data/ before the prune (orphans included). */
  packsBefore: number;
  /** Indexed packs deleted because no snapshot uses any of their blobs. */
  packsDeleted: number;
  /** Partly used packs whose used blobs were copied into new packs, then deleted. */
  packsRepacked: number;
  /** New packs written by repacking. */
  packsWritten: number;
  /** Packs under data/ that no index named (crashed backups), deleted. */
  orphanPacksDeleted: number;
  /** Net shrink of data/ and index/: bytes deleted minus bytes of new packs and index files. */
  bytesFreed: number;
  /** Bytes of used blobs copied into new packs. */
  bytesRepacked: number;
  indexFilesBefore: number;
  indexFilesAfter: number;
  dryRun: boolean;
}

export const DEFAULT_REPACK_THRESHOLD = 0.25;
/** Blobs per index file written by prune (about 3 MiB per file). */
export const MAX_BLOBS_PER_INDEX = 65_536;
const PACK_KEY = /^data\/[0-9a-f]{2}\/([0-9a-f]{64})$/;
const CHECK_LOCK_EVERY = 100;
const noop = (): void => undefined;

const refused = (message: string): IotvaultError =>
  corrupt(
    `${message}; run \`iotvault verify\`; prune refused so that nothing more is lost`,
    "repair the repository first (verify names what is damaged; restore it from another replica), then prune",
    { prune: "refused" },
  );
const isRefusal = (err: IotvaultError): boolean => err.details["prune"] === "refused";

/** What the store holds before the prune. */
interface RepoState {
  indexFiles: Map<string, number>;
  index: MasterIndex;
  /** Indexed packs (the first index entry of each). */
  packs: Map<string, IndexedPack>;
  /** Pack objects under data/: id -> size. */
  stored: Map<string, number>;
}

interface Repack {
  pack: IndexedPack;
  /** The used blobs to copy, in pack order. */
  blobs: PackEntry[];
}

interface Plan {
  keep: IndexedPack[];
  remove: IndexedPack[];
  repack: Repack[];
  orphans: { packId: string; size: number }[];
}

export async function pruneRepository(core: RepoCore, locks: RepoLocks, options: PruneOptions): Promise<PruneResult> {
  const threshold = options.repackThreshold ?? DEFAULT_REPACK_THRESHOLD;
  if (typeof threshold !== "number" || !(threshold >= 0 && threshold <= 1)) {
    throw new IotvaultError("INVALID_ARGUMENT", `repackThreshold must be from 0 to 1, got ${String(threshold)}`);
  }
  const dryRun = options.dryRun === true;
  const lock = await locks.acquire(core, dryRun ? "shared" : "exclusive", {
    purpose: dryRun ? "prune (dry run)" : "prune",
    waitMs: options.lockWaitMs,
    signal: options.signal,
  });
  try {
    const run = new PruneRun(core, lock, options);
    return await run.run(threshold, dryRun);
  } finally {
    await lock.release().catch(noop);
  }
}

class PruneRun {
  private readonly signal: AbortSignal | undefined;

  constructor(
    private readonly core: RepoCore,
    private readonly lock: HeldLock,
    private readonly options: PruneOptions,
  ) {
    this.signal = options.signal;
  }

  async run(threshold: number, dryRun: boolean): Promise<PruneResult> {
    const state = await this.loadState();
    const { used, snapshots } = await this.referencedChunks(state);
    const plan = classify(state, used, threshold);
    const base = summary(state, plan, snapshots, dryRun);
    const deleted = deletedBytes(state, plan);
    if (dryRun) {
      const predicted = predictWrites(plan, this.core.options.packSizeBytes);
      return {
        ...base,
        packsWritten: predicted.packs,
        indexFilesAfter: predicted.indexFiles,
        bytesFreed: deleted - predicted.bytes,
      };
    }
    const newPacks = await this.repack(plan.repack);
    const written = newPacks.reduce((n, p) => n + p.packLength, 0);
    const indexBytes = await this.writeIndex([...plan.keep, ...newPacks]);
    await this.deleteIndexFiles(state);
    await this.deletePacks(plan);
    return {
      ...base,
      packsWritten: newPacks.length,
      indexFilesAfter: indexBytes.files,
      bytesFreed: deleted - written - indexBytes.bytes,
    };
  }

  private progress(phase: string, done: number, total: number): void {
    try {
      this.options.onProgress?.({ phase, done, total });
    } catch {
      // a failing progress callback never fails a prune
    }
  }

  private async loadState(): Promise<RepoState> {
    const indexFiles = await listSizes(this.core, KEYS.indexPrefix, (key) => {
      const id = key.slice(KEYS.indexPrefix.length);
      return isId(id) ? id : undefined;
    });
    const stored = await listSizes(this.core, KEYS.dataPrefix, (key) => PACK_KEY.exec(key)?.[1]);
    const index = new MasterIndex();
    const packs = new Map<string, IndexedPack>();
    let done = 0;
    for (const id of indexFiles.keys()) {
      throwIfAborted(this.signal, "prune");
      let loaded: IndexedPack[];
      try {
        loaded = await loadIndexFile(this.core, id, this.signal);
      } catch (err) {
        if (isIotvaultError(err) && err.code === "DATA_CORRUPT") throw refused(`index file ${id} cannot be read`);
        throw err;
      }
      for (const pack of loaded) {
        index.add(pack);
        if (!packs.has(pack.packId)) packs.set(pack.packId, pack);
      }
      this.progress("index", ++done, indexFiles.size);
    }
    return { indexFiles, index, packs, stored };
  }

  /** Every chunk a snapshot uses (tree and file chunks); refuses when one is in no index. */
  private async referencedChunks(state: RepoState): Promise<{ used: Set<string>; snapshots: number }> {
    const ids = await listIds(this.core.store, KEYS.snapshotPrefix, this.signal);
    const used = new Set<string>();
    let done = 0;
    for (const id of ids) {
      throwIfAborted(this.signal, "prune");
      const use = (chunk: string): void => {
        if (!state.index.has(chunk)) throw refused(`snapshot ${id} references missing chunk ${chunk}`);
        used.add(chunk);
      };
      try {
        const manifest = await loadManifest(this.core, id, this.signal);
        manifest.tree.chunks.forEach(use);
        for await (const node of readTree(this.core, manifest, this.signal, { index: state.index }))
          node.chunks?.forEach(use);
      } catch (err) {
        const damage = isIotvaultError(err) && (err.code === "DATA_CORRUPT" || err.code === "NOT_FOUND");
        if (!damage || isRefusal(err)) throw err; // store outages and cancels stay what they are
        throw refused(`snapshot ${id} cannot be read completely (${err.message})`);
      }
      this.progress("snapshots", ++done, ids.length);
    }
    return { used, snapshots: ids.length };
  }

  /** Copies the used blobs of the packs to repack into new packs; returns the new packs. */
  private async repack(repacks: readonly Repack[]): Promise<IndexedPack[]> {
    if (repacks.length === 0) return [];
    await this.lock.check("prune");
    const writer = new PackWriter(this.core, this.signal);
    try {
      const copied = new Set<string>();
      let done = 0;
      for (const r of repacks) {
        throwIfAborted(this.signal, "prune");
        for (const blob of await this.checkedBlobs(r)) {
          if (copied.has(blob.entry.id)) continue;
          copied.add(blob.entry.id);
          await writer.add(blob.entry, blob.sealed);
        }
        this.progress("repack", ++done, repacks.length);
      }
      await writer.flush();
    } catch (err) {
      await writer.discard(); // not indexed yet: removing them keeps the store as it was
      throw err;
    }
    return writer.written;
  }

  /** The used blobs of a pack, checked: the whole pack by its sha256, else blob by blob. */
  private async checkedBlobs(r: Repack): Promise<{ entry: PackEntry; sealed: Buffer }[]> {
    const packId = r.pack.packId;
    let bytes: Buffer;
    try {
      bytes = await this.core.store.get(packKey(packId), undefined, this.signal);
    } catch (err) {
      throw storeError(err, `reading pack ${packId} to repack it`);
    }
    const intact =
      createHash("sha256").update(bytes).digest("hex") === packId && headerAgrees(bytes, r.blobs, this.core.keyFor);
    const out: { entry: PackEntry; sealed: Buffer }[] = [];
    for (const entry of r.blobs) {
      const sealed = bytes.subarray(entry.offset, entry.offset + entry.length);
      if (!intact) {
        if (sealed.length > 0) await this.core.ensureKey(sealed);
        const checked =
          sealed.length < entry.length
            ? { ok: false as const, problem: "the blob is cut off (truncated pack)" }
            : unsealBlob(sealed, entry, this.core.keyFor, this.core.macKey);
        if (!checked.ok) throw refused(`chunk ${entry.id} in pack ${packId} is used but corrupt (${checked.problem})`);
      }
      out.push({ entry, sealed: Buffer.from(sealed) });
    }
    return out;
  }

  /** Writes index files for every pack that stays; returns their count and bytes. */
  private async writeIndex(packs: readonly IndexedPack[]): Promise<{ files: number; bytes: number }> {
    await this.lock.check("prune");
    const files = splitIndex(packs);
    let bytes = 0;
    for (const [i, file] of files.entries()) {
      throwIfAborted(this.signal, "prune");
      const key = indexKey(randomBytes(ID_BYTES).toString("hex"));
      const sealed = this.core.sealObject(key, encodeIndex(file));
      try {
        await this.core.store.put(key, sealed, { signal: this.signal });
      } catch (err) {
        throw storeError(err, "writing the new index");
      }
      bytes += sealed.length;
      this.progress("write-index", i + 1, files.length);
    }
    return { files: files.length, bytes };
  }

  private async deleteIndexFiles(state: RepoState): Promise<void> {
    await this.deleteAll("delete-index", [...state.indexFiles.keys()].map(indexKey));
  }

  private async deletePacks(plan: Plan): Promise<void> {
    const ids = [
      ...plan.remove.map((p) => p.packId),
      ...plan.repack.map((r) => r.pack.packId),
      ...plan.orphans.map((o) => o.packId),
    ];
    await this.deleteAll("delete-packs", ids.map(packKey));
  }

  /** Deletes objects, checking every so often that the exclusive lock is still ours. */
  private async deleteAll(phase: string, keys: readonly string[]): Promise<void> {
    for (const [i, key] of keys.entries()) {
      if (i % CHECK_LOCK_EVERY === 0) await this.lock.check("prune");
      throwIfAborted(this.signal, "prune");
      try {
        await this.core.store.delete(key);
      } catch (err) {
        throw storeError(err, `deleting ${key}`);
      }
      this.progress(phase, i + 1, keys.length);
    }
  }
}

async function listSizes(
  core: RepoCore,
  prefix: string,
  idOf: (key: string) => string | undefined,
): Promise<Map<string, number>> {
  const sizes = new Map<string, number>();
  try {
    for await (const info of core.store.list(prefix)) {
      const id = idOf(info.key);
      if (id !== undefined) sizes.set(id, info.size);
    }
  } catch (err) {
    throw storeError(err, `listing ${prefix} in ${core.store.location}`);
  }
  return sizes;
}

/**
 * Decides the fate of every pack. A chunk stored in several packs (two backups that raced) is
 * owned by one of them: a pack present in the store before a missing one, then the pack with
 * the larger used share, then the smaller id; the copies in other packs count as unused.
 */
function classify(state: RepoState, used: ReadonlySet<string>, threshold: number): Plan {
  const present = (p: IndexedPack): boolean => state.stored.get(p.packId) === p.packLength;
  const share = new Map<string, number>();
  for (const pack of state.packs.values()) {
    const total = blobBytes(pack.entries);
    const usedBytes = blobBytes(pack.entries.filter((e) => used.has(e.id)));
    share.set(pack.packId, total === 0 ? 0 : usedBytes / total);
  }
  const rank = (id: string): [number, number] => {
    const pack = state.packs.get(id);
    return [pack && present(pack) ? 1 : 0, share.get(id) ?? 0];
  };
  const better = (a: string, b: string): boolean => {
    const [pa, sa] = rank(a);
    const [pb, sb] = rank(b);
    return pa !== pb ? pa > pb : sa !== sb ? sa > sb : a < b;
  };
  const owner = new Map<string, string>(); // only for chunks found in more than one pack
  for (const pack of state.packs.values()) {
    for (const e of pack.entries) {
      if (!used.has(e.id)) continue;
      const current = owner.get(e.id) ?? state.index.get(e.id)?.packId;
      if (current !== undefined && current !== pack.packId && better(pack.packId, current))
        owner.set(e.id, pack.packId);
    }
  }
  const ownerOf = (id: string): string | undefined => owner.get(id) ?? state.index.get(id)?.packId;
  const plan: Plan = { keep: [], remove: [], repack: [], orphans: [] };
  for (const pack of state.packs.values()) {
    const mine = pack.entries.filter((e) => used.has(e.id) && ownerOf(e.id) === pack.packId);
    if (mine.length > 0 && !present(pack)) {
      const size = state.stored.get(pack.packId);
      throw refused(
        size === undefined
          ? `pack ${pack.packId} holds chunks that snapshots use but is missing`
          : `pack ${pack.packId} holds chunks that snapshots use but has ${size} bytes, the index says ${pack.packLength}`,
      );
    }
    const total = blobBytes(pack.entries);
    const unused = total - blobBytes(mine);
    if (mine.length === 0) {
      if (state.stored.has(pack.packId)) plan.remove.push(pack);
    } else if (unused === 0) plan.keep.push(pack);
    else if (unused / total > threshold)
      plan.repack.push({ pack, blobs: [...mine].sort((a, b) => a.offset - b.offset) });
    else plan.keep.push(pack);
  }
  for (const [packId, size] of state.stored) if (!state.packs.has(packId)) plan.orphans.push({ packId, size });
  return plan;
}

const blobBytes = (entries: readonly PackEntry[]): number => entries.reduce((n, e) => n + e.length, 0);

/** The figures known from the plan alone (the same for a dry run and a real run). */
function summary(state: RepoState, plan: Plan, snapshots: number, dryRun: boolean) {
  const copied = simulatePacks(plan.repack, Number.POSITIVE_INFINITY);
  return {
    snapshots,
    packsBefore: state.stored.size,
    packsDeleted: plan.remove.length,
    packsRepacked: plan.repack.length,
    orphanPacksDeleted: plan.orphans.length,
    bytesRepacked: copied.reduce((n, p) => n + blobBytes(p.entries), 0),
    indexFilesBefore: state.indexFiles.size,
    dryRun,
  };
}

/** What a real run would write: new packs and index files, with their exact sizes. */
function predictWrites(plan: Plan, packSize: number): { packs: number; indexFiles: number; bytes: number } {
  const newPacks = simulatePacks(plan.repack, packSize);
  const files = splitIndex([
    ...plan.keep,
    ...newPacks.map((p) => ({ packId: "", packLength: p.bytes, entries: p.entries })),
  ]);
  const bytes = newPacks.reduce((n, p) => n + p.bytes, 0) + files.reduce((n, f) => n + indexFileBytes(f), 0);
  return { packs: newPacks.length, indexFiles: files.length, bytes };
}

/** Bytes the prune deletes: the packs that go and every old index file. */
function deletedBytes(state: RepoState, plan: Plan): number {
  const stored = (id: string): number => state.stored.get(id) ?? 0;
  return (
    plan.remove.reduce((n, p) => n + stored(p.packId), 0) +
    plan.repack.reduce((n, r) => n + stored(r.pack.packId), 0) +
    plan.orphans.reduce((n, o) => n + o.size, 0) +
    [...state.indexFiles.values()].reduce((n, s) => n + s, 0)
  );
}

const packOverhead = (blobs: number): number => ENVELOPE_OVERHEAD + 5 + blobs * ENTRY_BYTES + TRAILER_BYTES;

/** The new packs a repack writes (same cut rule as the writer), without reading any pack. */
function simulatePacks(repacks: readonly Repack[], packSize: number): { bytes: number; entries: PackEntry[] }[] {
  const packs: { bytes: number; entries: PackEntry[] }[] = [];
  const seen = new Set<string>();
  let entries: PackEntry[] = [];
  let size = 0;
  const cut = (): void => {
    if (entries.length > 0) packs.push({ bytes: size + packOverhead(entries.length), entries });
    entries = [];
    size = 0;
  };
  for (const r of repacks) {
    for (const e of r.blobs) {
      if (seen.has(e.id)) continue;
      seen.add(e.id);
      entries.push({ ...e, offset: size });
      size += e.length;
      if (size >= packSize) cut();
    }
  }
  cut();
  return packs;
}

/** Groups packs into index files of at most MAX_BLOBS_PER_INDEX blobs (a pack is never split). */
function splitIndex(packs: readonly IndexedPack[]): IndexedPack[][] {
  const files: IndexedPack[][] = [];
  let current: IndexedPack[] = [];
  let blobs = 0;
  for (const pack of packs) {
    if (current.length > 0 && blobs + pack.entries.length > MAX_BLOBS_PER_INDEX) {
      files.push(current);
      current = [];
      blobs = 0;
    }
    current.push(pack);
    blobs += pack.entries.length;
  }
  if (current.length > 0) files.push(current);
  return files;
}

/** Size of a stored index file (section 8 of the format), for dry-run estimates. */
const indexFileBytes = (packs: readonly IndexedPack[]): number =>
  ENVELOPE_OVERHEAD + 5 + packs.reduce((n, p) => n + ID_BYTES + 8 + p.entries.length * (ID_BYTES + 14), 0);

function headerAgrees(
  bytes: Buffer,
  wanted: readonly PackEntry[],
  keyFor: (keyId: number) => Uint8Array | undefined,
): boolean {
  const parsed = parsePack(bytes, keyFor);
  if (!parsed.ok) return false;
  const header = new Map(parsed.entries.map((e) => [e.id, e]));
  return wanted.every((w) => {
    const h = header.get(w.id);
    return h !== undefined && h.offset === w.offset && h.length === w.length && h.flags === w.flags;
  });
}

/** Builds new packs from sealed blobs with the writer's cut rule; stores each as it fills. */
class PackWriter {
  readonly written: IndexedPack[] = [];
  private builder = new PackBuilder();

  constructor(
    private readonly core: RepoCore,
    private readonly signal: AbortSignal | undefined,
  ) {}

  async add(entry: PackEntry, sealed: Buffer): Promise<void> {
    this.builder.add({ id: entry.id, type: entry.type, flags: entry.flags, rawLength: entry.rawLength, sealed });
    if (this.builder.bytes >= this.core.options.packSizeBytes) await this.flush();
  }

  async flush(): Promise<void> {
    if (this.builder.count === 0) return;
    const pack = this.builder.finish(this.core.currentKey());
    this.builder = new PackBuilder();
    try {
      await this.core.store.put(packKey(pack.id), pack.bytes, { signal: this.signal });
    } catch (err) {
      throw storeError(err, `storing repacked pack ${pack.id}`);
    }
    this.written.push({ packId: pack.id, packLength: pack.bytes.length, entries: pack.entries });
  }

  async discard(): Promise<void> {
    for (const pack of this.written) await this.core.store.delete(packKey(pack.packId)).catch(() => false);
  }
}

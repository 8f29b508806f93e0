/**
 * Verification: metadata always (config, keyring, index files, snapshots and their trees,
 * every referenced chunk indexed, every indexed pack present with the right size); with
 * `readData`, every pack's bytes (or a random share). Problems are collected, not thrown.
 */
import { createHash, randomInt } from "node:crypto";
import { isIotvaultError } from "@iotvault/errors";
import { unsealBlob } from "./blob.js";
import { storeError, throwIfAborted, type RepoCore } from "./core.js";
import { KEYS, packKey } from "./format.js";
import { MasterIndex, type IndexedPack } from "./index-file.js";
import { listIds, loadIndexFile, loadManifest } from "./manifests.js";
import { parsePack } from "./pack.js";
import { readTree } from "./reader.js";
import type { SnapshotManifest } from "./snapshot.js";

export type VerifyProblemKind =
  | "PACK_MISSING"
  | "PACK_CORRUPT"
  | "CHUNK_MISSING"
  | "CHUNK_CORRUPT"
  | "INDEX_CORRUPT"
  | "SNAPSHOT_CORRUPT"
  | "CONFIG_CORRUPT"
  | "KEY_CORRUPT";

export interface VerifyProblem {
  kind: VerifyProblemKind;
  /** Pack id, chunk id, index id, snapshot id, or the object key. */
  object: string;
  message: string;
  /** Snapshot-relative paths of the files affected, when known (at most 100 per problem). */
  paths: string[];
}

export interface VerifyProgressInfo {
  phase: "metadata" | "snapshots" | "packs" | "paths";
  done: number;
  total: number;
}

export interface VerifyOptions {
  /** Also read every pack's bytes (or a random share, see readDataPercent). */
  readData?: boolean | undefined;
  /** With readData: the share of packs to read, 0 < pct <= 100 (default 100). */
  readDataPercent?: number | undefined;
  /** Check only this snapshot (id or unique prefix) and the packs it uses. */
  snapshotId?: string | undefined;
  signal?: AbortSignal | undefined;
  onProgress?: ((p: VerifyProgressInfo) => void) | undefined;
}

export interface VerifyReport {
  ok: boolean;
  snapshotsChecked: number;
  packsChecked: number;
  /** Chunk references checked against the index, plus blobs decrypted and checked with readData. */
  chunksChecked: number;
  bytesRead: number;
  problems: VerifyProblem[];
}

const MAX_PATHS = 100;

class Problems {
  private readonly byKey = new Map<string, VerifyProblem>();

  add(kind: VerifyProblemKind, object: string, message: string, path?: string): void {
    const key = `${kind}:${object}`;
    let p = this.byKey.get(key);
    if (!p) {
      p = { kind, object, message, paths: [] };
      this.byKey.set(key, p);
    }
    if (path !== undefined && p.paths.length < MAX_PATHS && !p.paths.includes(path)) p.paths.push(path);
  }

  get(kind: VerifyProblemKind, object: string): VerifyProblem | undefined {
    return this.byKey.get(`${kind}:${object}`);
  }

  list(): VerifyProblem[] {
    return [...this.byKey.values()];
  }
}

const messageOf = (err: unknown): string => (err instanceof Error ? err.message : String(err));

export async function verifyRepository(
  core: RepoCore,
  options: VerifyOptions,
  resolveSnapshot: (idOrPrefix: string) => Promise<string>,
): Promise<VerifyReport> {
  const v = new Verifier(core, options);
  return v.run(resolveSnapshot);
}

class Verifier {
  private readonly problems = new Problems();
  private readonly index = new MasterIndex();
  private readonly packs = new Map<string, IndexedPack>();
  /** Packs known bad (missing or corrupt) -> the problem kind reported for them. */
  private readonly badPacks = new Map<string, "PACK_MISSING" | "PACK_CORRUPT">();
  private readonly badChunks = new Set<string>();
  private readonly report = { snapshotsChecked: 0, packsChecked: 0, chunksChecked: 0, bytesRead: 0 };
  private readonly signal: AbortSignal | undefined;

  constructor(
    private readonly core: RepoCore,
    private readonly options: VerifyOptions,
  ) {
    this.signal = options.signal;
  }

  async run(resolveSnapshot: (idOrPrefix: string) => Promise<string>): Promise<VerifyReport> {
    await this.checkConfigAndKeys();
    await this.loadIndexes();
    await this.checkPacksExist();
    const snapshotIds =
      this.options.snapshotId !== undefined
        ? [await resolveSnapshot(this.options.snapshotId)]
        : await listIds(this.core.store, KEYS.snapshotPrefix, this.signal);
    const { manifests, usedPacks } = await this.checkSnapshots(snapshotIds);
    if (this.options.readData) {
      const candidates = this.options.snapshotId !== undefined ? [...usedPacks] : [...this.packs.keys()];
      await this.readPacks(this.sample(candidates.filter((id) => !this.badPacks.has(id))));
      if (this.badChunks.size > 0 || [...this.badPacks.values()].includes("PACK_CORRUPT")) {
        await this.attributePaths(manifests);
      }
    }
    const problems = this.problems.list();
    return { ok: problems.length === 0, ...this.report, problems };
  }

  private progress(phase: VerifyProgressInfo["phase"], done: number, total: number): void {
    try {
      this.options.onProgress?.({ phase, done, total });
    } catch {
      // progress callbacks never fail a verification
    }
  }

  private async checkConfigAndKeys(): Promise<void> {
    try {
      this.core.checkConfigObject(await this.core.store.get(KEYS.config, undefined, this.signal));
    } catch (err) {
      this.rethrowCancel(err);
      this.problems.add("CONFIG_CORRUPT", KEYS.config, `the repository config: ${messageOf(err)}`);
    }
    try {
      await this.core.reloadKeyring();
    } catch (err) {
      this.rethrowCancel(err);
      this.problems.add("KEY_CORRUPT", KEYS.keyring, messageOf(err));
    }
  }

  private async loadIndexes(): Promise<void> {
    const ids = await listIds(this.core.store, KEYS.indexPrefix, this.signal);
    let done = 0;
    for (const id of ids) {
      throwIfAborted(this.signal, "verify");
      try {
        for (const pack of await loadIndexFile(this.core, id, this.signal)) {
          this.index.add(pack);
          if (!this.packs.has(pack.packId)) this.packs.set(pack.packId, pack);
        }
      } catch (err) {
        this.rethrowCancel(err);
        this.problems.add("INDEX_CORRUPT", id, messageOf(err));
      }
      this.progress("metadata", ++done, ids.length);
    }
  }

  private async checkPacksExist(): Promise<void> {
    const sizes = new Map<string, number>();
    try {
      for await (const info of this.core.store.list(KEYS.dataPrefix)) sizes.set(info.key, info.size);
    } catch (err) {
      throw storeError(err, `listing packs in ${this.core.store.location}`);
    }
    for (const [packId, pack] of this.packs) {
      const size = sizes.get(packKey(packId));
      if (size === undefined) {
        this.badPacks.set(packId, "PACK_MISSING");
        this.problems.add("PACK_MISSING", packId, `pack ${packId} named by the index is missing from the store`);
      } else if (size !== pack.packLength) {
        this.badPacks.set(packId, "PACK_CORRUPT");
        this.problems.add(
          "PACK_CORRUPT",
          packId,
          `pack ${packId} has ${size} bytes, the index says ${pack.packLength} (truncated or replaced)`,
        );
      }
    }
  }

  private async checkSnapshots(ids: string[]): Promise<{ manifests: SnapshotManifest[]; usedPacks: Set<string> }> {
    const manifests: SnapshotManifest[] = [];
    const usedPacks = new Set<string>();
    let done = 0;
    for (const id of ids) {
      throwIfAborted(this.signal, "verify");
      try {
        const manifest = await loadManifest(this.core, id, this.signal);
        manifests.push(manifest);
        await this.walkTree(manifest, usedPacks);
      } catch (err) {
        this.rethrowCancel(err);
        this.problems.add("SNAPSHOT_CORRUPT", id, `snapshot ${id}: ${messageOf(err)}`);
      }
      this.report.snapshotsChecked++;
      this.progress("snapshots", ++done, ids.length);
    }
    return { manifests, usedPacks };
  }

  /** Every chunk a tree references must be indexed (and its pack present). */
  private async walkTree(manifest: SnapshotManifest, usedPacks: Set<string>): Promise<void> {
    const use = (chunk: string, path: string | undefined): void => {
      this.report.chunksChecked++;
      const loc = this.index.get(chunk);
      if (!loc) {
        this.problems.add("CHUNK_MISSING", chunk, `chunk ${chunk} is referenced but not in any index`, path);
        return;
      }
      usedPacks.add(loc.packId);
      const bad = this.badPacks.get(loc.packId);
      if (bad) this.problems.add(bad, loc.packId, this.problems.get(bad, loc.packId)?.message ?? "", path);
    };
    for (const chunk of manifest.tree.chunks) use(chunk, undefined);
    for await (const node of readTree(this.core, manifest, this.signal, { index: this.index })) {
      for (const chunk of node.chunks ?? []) use(chunk, node.path);
    }
  }

  private sample(packIds: string[]): string[] {
    const pct = this.options.readDataPercent ?? 100;
    if (!(pct > 0)) return [];
    if (pct >= 100) return packIds;
    const want = Math.ceil((packIds.length * pct) / 100);
    for (let i = packIds.length - 1; i > 0; i--) {
      const j = randomInt(i + 1);
      [packIds[i], packIds[j]] = [packIds[j]!, packIds[i]!];
    }
    return packIds.slice(0, want);
  }

  private async readPacks(packIds: string[]): Promise<void> {
    let done = 0;
    for (const packId of packIds) {
      throwIfAborted(this.signal, "verify");
      await this.readPack(packId);
      this.report.packsChecked++;
      this.progress("packs", ++done, packIds.length);
    }
  }

  private async readPack(packId: string): Promise<void> {
    let bytes: Buffer;
    try {
      bytes = await this.core.store.get(packKey(packId), undefined, this.signal);
    } catch (err) {
      this.rethrowCancel(err);
      this.badPacks.set(packId, "PACK_MISSING");
      this.problems.add("PACK_MISSING", packId, `pack ${packId} cannot be read: ${messageOf(err)}`);
      return;
    }
    this.report.bytesRead += bytes.length;
    const packProblem = (message: string): void => {
      this.badPacks.set(packId, "PACK_CORRUPT");
      this.problems.add("PACK_CORRUPT", packId, `pack ${packId} ${message}`);
    };
    if (createHash("sha256").update(bytes).digest("hex") !== packId) packProblem("does not match its id (sha256)");
    const parsed = parsePack(bytes, this.core.keyFor);
    const indexed = this.packs.get(packId)?.entries ?? [];
    if (!parsed.ok) packProblem(parsed.problem);
    else if (!sameEntries(parsed.entries, indexed)) packProblem("has a header that disagrees with the index");
    for (const entry of indexed) {
      this.report.chunksChecked++;
      const sealed = bytes.subarray(entry.offset, entry.offset + entry.length);
      const result =
        sealed.length < entry.length
          ? { ok: false as const, problem: "the blob is cut off (truncated pack)" }
          : unsealBlob(sealed, entry, this.core.keyFor, this.core.macKey);
      if (!result.ok) {
        this.badChunks.add(entry.id);
        this.problems.add("CHUNK_CORRUPT", entry.id, `chunk ${entry.id} in pack ${packId}: ${result.problem}`);
      }
    }
  }

  /** Second walk, only after data problems: names the files that use bad chunks or packs. */
  private async attributePaths(manifests: SnapshotManifest[]): Promise<void> {
    let done = 0;
    for (const manifest of manifests) {
      try {
        for await (const node of readTree(this.core, manifest, this.signal, { index: this.index })) {
          for (const chunk of node.chunks ?? []) this.attribute(chunk, node.path);
        }
      } catch (err) {
        this.rethrowCancel(err);
      }
      this.progress("paths", ++done, manifests.length);
    }
  }

  private attribute(chunk: string, path: string): void {
    if (this.badChunks.has(chunk)) this.problems.add("CHUNK_CORRUPT", chunk, "", path);
    const loc = this.index.get(chunk);
    const bad = loc ? this.badPacks.get(loc.packId) : undefined;
    if (loc && bad) this.problems.add(bad, loc.packId, "", path);
  }

  private rethrowCancel(err: unknown): void {
    if (isIotvaultError(err) && err.code === "CANCELLED") throw err;
    if ((err as { name?: unknown } | null)?.name === "AbortError") throw storeError(err, "verify");
  }
}

function sameEntries(a: readonly { id: string; offset: number; length: number }[], b: typeof a): boolean {
  const header = new Map(a.map((e) => [e.id, e]));
  return b.every((e) => {
    const h = header.get(e.id);
    return h !== undefined && h.offset === e.offset && h.length === e.length;
  });
}

/**
 * Loading snapshot manifests and index files from the store.
 */
import { IotvaultError, isNotFound } from "@iotvault/errors";
import type { ObjectStore } from "@iotvault/storage";
import { storeError, type RepoCore } from "./core.js";
import { KEYS, corrupt, indexKey, isId, snapshotKey } from "./format.js";
import { decodeIndex, type IndexedPack } from "./index-file.js";
import { decodeManifest, type SnapshotManifest } from "./snapshot.js";

export async function listIds(store: ObjectStore, prefix: string, signal?: AbortSignal): Promise<string[]> {
  return (await listIdSizes(store, prefix, signal)).map((o) => o.id);
}

/** The ids under a prefix with their stored sizes. */
export async function listIdSizes(
  store: ObjectStore,
  prefix: string,
  signal?: AbortSignal,
): Promise<{ id: string; size: number }[]> {
  const ids: { id: string; size: number }[] = [];
  try {
    for await (const info of store.list(prefix)) {
      signal?.throwIfAborted();
      const id = info.key.slice(prefix.length);
      if (isId(id)) ids.push({ id, size: info.size });
    }
  } catch (err) {
    throw storeError(err, `listing ${prefix} in ${store.location}`);
  }
  return ids;
}

/**
 * The plaintext of manifests this process has read, by repository, snapshot id and stored size.
 * A manifest is written once and never changed, so listing the snapshots of a repository with
 * thousands of them (every incremental backup does, to find its parent) reads only the ones
 * that are new since; the size is part of the key so that an object rewritten under the same
 * name (a repository restored from an older copy, say) is read again. Bounded by entries; the
 * oldest go first.
 */
const manifestCache = new Map<string, Buffer>();
const MANIFEST_CACHE_MAX = 20_000;

/** Reads of manifests that were not in the cache (for tests). */
export let manifestReads = 0;

/** A listed manifest (`size` as listed): from the cache when this process read it before. */
export async function loadListedManifest(
  core: RepoCore,
  listed: { id: string; size: number },
  signal?: AbortSignal,
): Promise<SnapshotManifest> {
  const cacheKey = `${core.config.id}/${listed.id}/${listed.size}`;
  const cached = manifestCache.get(cacheKey);
  if (cached) return decodeManifest(cached, listed.id);
  const { plain, storedBytes } = await readManifest(core, listed.id, signal);
  const manifest = decodeManifest(plain, listed.id);
  if (storedBytes === listed.size) {
    if (manifestCache.size >= MANIFEST_CACHE_MAX) manifestCache.delete(manifestCache.keys().next().value as string);
    manifestCache.set(cacheKey, Buffer.from(plain));
  }
  return manifest;
}

export async function loadManifest(core: RepoCore, id: string, signal?: AbortSignal): Promise<SnapshotManifest> {
  return decodeManifest((await readManifest(core, id, signal)).plain, id);
}

async function readManifest(
  core: RepoCore,
  id: string,
  signal?: AbortSignal,
): Promise<{ plain: Uint8Array; storedBytes: number }> {
  manifestReads++;
  const key = snapshotKey(id);
  let bytes: Buffer;
  try {
    bytes = await core.store.get(key, undefined, signal);
  } catch (err) {
    if (isNotFound(err)) {
      throw new IotvaultError("NOT_FOUND", `snapshot ${id} not found in ${core.store.location}`, {
        hint: "list the snapshots with `iotvault snapshots`",
      });
    }
    throw storeError(err, `reading snapshot ${id}`);
  }
  const plain = await core.openObject(key, bytes, `snapshot ${id}`);
  return { plain, storedBytes: bytes.length };
}

export async function loadIndexFile(core: RepoCore, id: string, signal?: AbortSignal): Promise<IndexedPack[]> {
  const key = indexKey(id);
  let bytes: Buffer;
  try {
    bytes = await core.store.get(key, undefined, signal);
  } catch (err) {
    throw storeError(err, `reading index file ${id}`);
  }
  const plain = await core.openObject(key, bytes, `index file ${id}`);
  const packs = decodeIndex(plain);
  if (typeof packs === "string") throw corrupt(`index file ${id} ${packs}`);
  return packs;
}

/** Loads every index file into the master index; returns how many were read. */
export async function loadAllIndexes(core: RepoCore, signal?: AbortSignal): Promise<number> {
  const ids = await listIds(core.store, KEYS.indexPrefix, signal);
  const queue = [...ids];
  const worker = async (): Promise<void> => {
    for (let id = queue.pop(); id !== undefined; id = queue.pop()) {
      for (const pack of await loadIndexFile(core, id, signal)) core.index.add(pack);
    }
  };
  await Promise.all(Array.from({ length: Math.min(8, ids.length) }, worker));
  return ids.length;
}

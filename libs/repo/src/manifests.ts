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
  const ids: string[] = [];
  try {
    for await (const info of store.list(prefix)) {
      signal?.throwIfAborted();
      const id = info.key.slice(prefix.length);
      if (isId(id)) ids.push(id);
    }
  } catch (err) {
    throw storeError(err, `listing ${prefix} in ${store.location}`);
  }
  return ids;
}

export async function loadManifest(core: RepoCore, id: string, signal?: AbortSignal): Promise<SnapshotManifest> {
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
  return decodeManifest(plain, id);
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

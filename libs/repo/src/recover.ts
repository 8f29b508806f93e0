/**
 * Resume after a killed backup: packs are stored before the index file that names them, so a
 * backup killed between the two leaves stored but unindexed packs. Before a backup starts,
 * every pack under data/ that no index names is read from its end (trailer and encrypted
 * header only) and indexed, so the new backup reuses its chunks instead of uploading them
 * again. The whole pack is read once more and its SHA-256 checked against its id (a pack's
 * name) first: a pack damaged after it was written must not become the only copy of chunks the
 * new backup then skips. A pack whose hash or header does not check out is left alone (verify
 * reports unindexed data; prune will remove it).
 */
import { createHash, randomBytes } from "node:crypto";
import type { RepoCore } from "./core.js";
import { storeError, throwIfAborted } from "./core.js";
import { KEYS, indexKey } from "./format.js";
import { encodeIndex, type IndexedPack } from "./index-file.js";
import { readPackEntries } from "./pack.js";

const PACK_KEY = /^data\/[0-9a-f]{2}\/([0-9a-f]{64})$/;

export interface RecoveryResult {
  packs: number;
  chunks: number;
  skipped: number;
}

export async function indexOrphanPacks(core: RepoCore, signal?: AbortSignal): Promise<RecoveryResult> {
  const known = core.index.packs();
  const orphans: { packId: string; key: string; size: number }[] = [];
  try {
    for await (const info of core.store.list(KEYS.dataPrefix)) {
      const m = PACK_KEY.exec(info.key);
      if (m && !known.has(m[1]!)) orphans.push({ packId: m[1]!, key: info.key, size: info.size });
    }
  } catch (err) {
    throw storeError(err, "listing packs");
  }
  const recovered: IndexedPack[] = [];
  let skipped = 0;
  for (const orphan of orphans) {
    throwIfAborted(signal, "recovering unindexed packs");
    const intact = await packHashMatches(core, orphan, signal).catch(() => false);
    if (!intact) {
      skipped++;
      continue;
    }
    const parsed = await readPackEntries(
      (offset, length) => core.store.get(orphan.key, { offset, length }, signal),
      orphan.size,
      core.keyFor,
    ).catch(() => ({ ok: false as const, problem: "could not be read" }));
    if (!parsed.ok) {
      skipped++;
      continue;
    }
    recovered.push({ packId: orphan.packId, packLength: orphan.size, entries: parsed.entries });
  }
  if (recovered.length > 0) {
    const key = indexKey(randomBytes(32).toString("hex"));
    try {
      await core.store.put(key, core.sealObject(key, encodeIndex(recovered)), { signal });
    } catch (err) {
      throw storeError(err, "writing the index of recovered packs");
    }
    for (const pack of recovered) core.index.add(pack);
  }
  return { packs: recovered.length, chunks: recovered.reduce((n, p) => n + p.entries.length, 0), skipped };
}

/** Reads a pack in bounded ranges and checks that its SHA-256 is its id. */
async function packHashMatches(
  core: RepoCore,
  pack: { packId: string; key: string; size: number },
  signal: AbortSignal | undefined,
): Promise<boolean> {
  const hash = createHash("sha256");
  const step = 4 << 20;
  for (let offset = 0; offset < pack.size; offset += step) {
    throwIfAborted(signal, "recovering unindexed packs");
    hash.update(await core.store.get(pack.key, { offset, length: Math.min(step, pack.size - offset) }, signal));
  }
  return hash.digest("hex") === pack.packId;
}

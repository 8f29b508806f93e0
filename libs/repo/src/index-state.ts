/**
 * Keeping the in-memory index true after a prune. A prune (in any process) writes new index
 * files, deletes every index file that existed when it started, then deletes packs. A process
 * that loaded the index before would dedup against chunks of deleted packs, so after taking its
 * lock a backup compares the index files it knows with those in the store: when one it knows is
 * gone, it loads the whole index again into a fresh RepoCore (the old one is left to whoever
 * still uses it); index files that are only new are loaded into the current index.
 *
 * ```ts
 * let ids = await loadIndexes(core);                                  // at open
 * ({ core, indexIds: ids } = await refreshIndexState(core, ids));     // after taking a lock
 * ```
 */
import { isNotFound } from "@iotvault/errors";
import { RepoCore, throwIfAborted } from "./core.js";
import { KEYS } from "./format.js";
import { listIds, loadIndexFile } from "./manifests.js";

/** Attempts when an index file vanishes between listing and reading (a prune elsewhere). */
const LOAD_ATTEMPTS = 5;

/**
 * Loads every index file not in `skip` into `core.index` and returns the ids of those read (plus
 * `skip`). When a listed file is gone by the time it is read (a prune replaced it), the listing
 * is read again: a prune writes its new files before deleting the old, so a fresh listing covers
 * what the vanished file covered.
 */
export async function loadIndexes(
  core: RepoCore,
  signal?: AbortSignal,
  skip: ReadonlySet<string> = new Set(),
): Promise<Set<string>> {
  const loaded = new Set<string>(skip);
  for (let attempt = 1; ; attempt++) {
    const queue = (await listIds(core.store, KEYS.indexPrefix, signal)).filter((id) => !loaded.has(id));
    let vanished = false;
    const worker = async (): Promise<void> => {
      for (let id = queue.pop(); id !== undefined; id = queue.pop()) {
        throwIfAborted(signal, "loading the index");
        try {
          for (const pack of await loadIndexFile(core, id, signal)) core.index.add(pack);
          loaded.add(id);
        } catch (err) {
          if (!isNotFound(err) || attempt >= LOAD_ATTEMPTS) throw err;
          vanished = true;
        }
      }
    };
    await Promise.all(Array.from({ length: Math.min(8, queue.length) }, worker));
    if (!vanished) return loaded; // every file whose entries are in memory
  }
}

/**
 * Brings an index in memory up to date with the store. A prune happened when an index file it
 * was loaded from is gone (a prune deletes every file it saw), or when it was loaded from no file
 * at all yet has entries (this process's own backups wrote them): then everything is loaded
 * again into a new RepoCore. Otherwise files written since are added to the current index.
 */
export async function refreshIndexState(
  core: RepoCore,
  known: ReadonlySet<string>,
  signal?: AbortSignal,
): Promise<{ core: RepoCore; indexIds: Set<string>; changed: boolean }> {
  const present = new Set(await listIds(core.store, KEYS.indexPrefix, signal));
  const pruned = known.size === 0 ? core.index.packs().size > 0 : [...known].some((id) => !present.has(id));
  if (pruned) {
    const { masterKey, keyring } = core.secretKeys();
    const fresh = new RepoCore(core.store, core.config, keyring, masterKey, core.options, core.openedSlot);
    return { core: fresh, indexIds: await loadIndexes(fresh, signal), changed: true };
  }
  if ([...present].every((id) => known.has(id))) return { core, indexIds: new Set(known), changed: false };
  return { core, indexIds: await loadIndexes(core, signal, known), changed: true };
}

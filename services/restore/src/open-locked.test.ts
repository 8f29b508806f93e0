import assert from "node:assert/strict";
import { test } from "node:test";
import { isCode } from "@iotvault/errors";
import { Repository } from "@iotvault/repo";
import { MemoryStore } from "@iotvault/storage";
import { openLocked } from "./operations.js";

const PASSWORD = Buffer.from("open-locked test passphrase");
const OPTIONS = { scryptLogN: 10, workers: 1 };

async function repositoryWithSnapshot(): Promise<{ store: MemoryStore; snapshotId: string }> {
  const store = new MemoryStore();
  const repo = await Repository.init(store, PASSWORD, OPTIONS);
  try {
    const w = await repo.startBackup({ runId: "r1" });
    await w.addNode({ path: "etc", type: "dir", mode: 0o755, uid: 0, gid: 0, mtimeNs: "0" });
    const { snapshot } = await w.commit({ jobId: "j", jobName: "j", source: "fs:/x", backupType: "full" });
    return { store, snapshotId: snapshot.id };
  } finally {
    await repo.close();
  }
}

const lockKeys = async (store: MemoryStore): Promise<string[]> => {
  const keys: string[] = [];
  for await (const o of store.list("locks/")) keys.push(o.key);
  return keys;
};

test("openLocked: the snapshot and the index under a shared lock; a missing snapshot ends a wait for the lock", async () => {
  const { store, snapshotId } = await repositoryWithSnapshot();
  const deps = { storeFor: () => store, password: () => PASSWORD, repositoryOptions: OPTIONS };
  const signal = new AbortController().signal;

  const opened = await openLocked(deps, "r", { purpose: "restore t1", waitMs: 0, signal }, [snapshotId.slice(0, 8)]);
  try {
    assert.equal(opened.snapshots[0]!.id, snapshotId);
    assert.deepEqual(
      (await opened.repo.listLocks()).map((l) => [l.purpose, l.exclusive]),
      [["restore t1", false]],
    );
    assert.equal((await opened.repo.verify()).ok, true, "the index is loaded");
  } finally {
    await opened.lock.release();
    await opened.repo.close();
  }

  // A prune holds the repository: a restore of an existing snapshot waits (here: gives up at
  // its waitMs), one of a snapshot that does not exist fails at once with NOT_FOUND.
  const pruner = await Repository.open(store, PASSWORD, OPTIONS);
  const exclusive = await pruner.lock("exclusive", { purpose: "prune" });
  try {
    await assert.rejects(
      openLocked(deps, "r", { purpose: "restore t2", waitMs: 200, signal }, [snapshotId]),
      (e: unknown) => isCode(e, "FAILED_PRECONDITION") && /locked by prune/.test(e.message),
    );
    const started = performance.now();
    await assert.rejects(
      openLocked(deps, "r", { purpose: "restore t3", waitMs: 30_000, signal }, ["abcdef012345"]),
      (e: unknown) => isCode(e, "NOT_FOUND") && /abcdef012345/.test(e.message),
    );
    assert.ok(performance.now() - started < 15_000, "did not wait for the prune's lock");
    assert.deepEqual(await lockKeys(store), [`locks/${exclusive.id}`], "no lock of the restores is left");
  } finally {
    await exclusive.release();
    await pruner.close();
  }
});

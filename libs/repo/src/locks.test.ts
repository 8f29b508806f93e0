import assert from "node:assert/strict";
import { randomBytes } from "node:crypto";
import { hostname } from "node:os";
import { setTimeout as sleep } from "node:timers/promises";
import { test } from "node:test";
import { isCode } from "@iotvault/errors";
import { MemoryStore, type ObjectStore, type PutOptions } from "@iotvault/storage";
import { writeLock, type LockRecord } from "./locks.js";
import { Repository } from "./repository.js";
import type { SnapshotManifest } from "./snapshot.js";
import { CrashingStore, deadPid, keysUnder, unindexedPacks } from "./test-support.js";
import type { TreeNode } from "./tree.js";
import { FAST, META, PASSWORD, collect, coreOf, fileNode, newRepo, pieces, random, readAll } from "./test-util.js";

const isLocked = (pattern: RegExp) => (err: unknown) => {
  assert.ok(isCode(err, "FAILED_PRECONDITION"), `expected FAILED_PRECONDITION, got ${String(err)}`);
  assert.match(err.message, /^the repository is locked by .+ on .+ \(pid -?\d+\) since \S+$/);
  assert.match(err.message, pattern);
  assert.equal(err.retryable, true);
  assert.ok(err.hint && err.hint.length > 0);
  return true;
};

/** Plants a lock of another (possibly dead or remote) process. */
async function plant(repo: Repository, record: Partial<LockRecord>): Promise<string> {
  const id = randomBytes(32).toString("hex");
  const now = new Date().toISOString();
  await writeLock(coreOf(repo), id, {
    exclusive: false,
    hostname: "some-other-host",
    pid: 4242,
    purpose: "planted",
    createdAt: now,
    refreshedAt: now,
    ...record,
  });
  return id;
}

void test("shared locks coexist; exclusive excludes everything; the error names the holder", async () => {
  const { store, repo } = await newRepo();
  const other = await Repository.open(store, PASSWORD, FAST);
  try {
    const a = await repo.lock("shared", { purpose: "backup run-1" });
    const b = await other.lock("shared", { purpose: "backup run-2" });
    assert.equal(a.exclusive, false);
    await assert.rejects(other.lock("exclusive", { purpose: "prune" }), isLocked(/locked by backup run-1 on /));
    assert.equal((await keysUnder(store, "locks/")).length, 2, "the failed exclusive lock removed itself");
    await a.release();
    await b.release();
    await a.release(); // twice is harmless
    const x = await other.lock("exclusive", { purpose: "prune" });
    assert.equal(x.exclusive, true);
    await assert.rejects(repo.lock("shared", { purpose: "backup run-3" }), (err: unknown) =>
      isLocked(new RegExp(`locked by prune on ${hostname()} \\(pid ${process.pid}\\)`))(err),
    );
    await assert.rejects(repo.lock("exclusive"), isLocked(/locked by prune/));
    const listed = await repo.listLocks();
    assert.deepEqual(
      listed.map((l) => ({ id: l.id, exclusive: l.exclusive, purpose: l.purpose, pid: l.pid, stale: l.stale })),
      [{ id: x.id, exclusive: true, purpose: "prune", pid: process.pid, stale: false }],
    );
    await x.release();
    assert.deepEqual(await keysUnder(store, "locks/"), []);
  } finally {
    await other.close();
    await repo.close();
  }
});

void test("a waiting locker gets the lock once the holder releases it", async () => {
  const { store, repo } = await newRepo();
  const other = await Repository.open(store, PASSWORD, FAST);
  try {
    const shared = await repo.lock("shared", { purpose: "backup run-1" });
    const started = Date.now();
    setTimeout(() => void shared.release(), 300);
    const x = await other.lock("exclusive", { purpose: "prune", waitMs: 5000 });
    assert.ok(Date.now() - started >= 300, "it waited");
    await x.release();
    // A wait that is too short still fails with the lock error.
    const held = await repo.lock("exclusive", { purpose: "prune" });
    await assert.rejects(other.lock("shared", { waitMs: 200 }), isLocked(/locked by prune/));
    await held.release();
  } finally {
    await other.close();
    await repo.close();
  }
});

void test("stale locks (old refresh, or this host and a dead pid) are ignored and removed by exclusive lockers", async () => {
  const { store, repo } = await newRepo();
  try {
    const old = new Date(Date.now() - 31 * 60_000).toISOString();
    const oldId = await plant(repo, { exclusive: true, purpose: "old prune", createdAt: old, refreshedAt: old });
    const deadId = await plant(repo, { exclusive: true, hostname: hostname(), pid: await deadPid(), purpose: "dead" });
    const remoteId = await plant(repo, { hostname: "remote-host", pid: await deadPid(), purpose: "remote backup" });
    const listed = new Map((await repo.listLocks()).map((l) => [l.id, l]));
    assert.equal(listed.get(oldId)?.stale, true);
    assert.equal(listed.get(deadId)?.stale, true);
    assert.equal(listed.get(remoteId)?.stale, false, "a dead pid means nothing on another host");

    const shared = await repo.lock("shared"); // the two stale exclusive locks do not block
    await shared.release();
    await assert.rejects(repo.lock("exclusive"), isLocked(/locked by remote backup on remote-host/));
    assert.equal((await keysUnder(store, "locks/")).length, 3, "a failed locker removes nothing");
    await store.delete(`locks/${remoteId}`);
    const x = await repo.lock("exclusive");
    assert.deepEqual(await keysUnder(store, "locks/"), [`locks/${x.id}`], "stale locks were cleaned");
    await x.release();
  } finally {
    await repo.close();
  }
});

void test("an unreadable lock object blocks like an exclusive lock", async () => {
  const { store, repo } = await newRepo();
  try {
    await store.put(`locks/${"cd".repeat(32)}`, Buffer.from("not an envelope"));
    await assert.rejects(repo.lock("shared"), isLocked(/locked by an unreadable lock object on unknown/));
  } finally {
    await repo.close();
  }
});

void test("a held lock is refreshed by its timer", async () => {
  const { store } = await newRepo();
  const repo = await Repository.open(store, PASSWORD, { ...FAST, lockRefreshMs: 40, lockStaleMs: 2000 });
  try {
    const lock = await repo.lock("shared");
    const first = (await repo.listLocks())[0]!;
    await sleep(200);
    const later = (await repo.listLocks())[0]!;
    assert.equal(later.id, lock.id);
    assert.equal(later.createdAt, first.createdAt);
    assert.ok(later.refreshedAt > first.refreshedAt, `${later.refreshedAt} > ${first.refreshedAt}`);
    await lock.release();
  } finally {
    await repo.close();
  }
});

void test("a backup whose lock was removed (taken for stale) fails instead of committing", async () => {
  const { store, repo } = await newRepo();
  try {
    const writer = await repo.startBackup({ runId: "lost" });
    await writer.addFile(fileNode("a"), pieces(random(5000)));
    const [lockKey] = await keysUnder(store, "locks/");
    assert.ok(lockKey, "the backup holds a lock");
    await store.delete(lockKey); // what an exclusive locker does with a stale lock
    await assert.rejects(writer.commit(META), (err: unknown) => {
      assert.ok(isCode(err, "FAILED_PRECONDITION"), String(err));
      assert.match(err.message, /lock .* was lost/);
      assert.equal(err.retryable, true);
      return true;
    });
    assert.equal(await repo.hasSnapshot(writer.snapshotId), false, "no manifest was written");
    await writer.abort();
    assert.deepEqual(await keysUnder(store, "locks/"), []);
  } finally {
    await repo.close();
  }
});

void test("a backup whose lock cannot be refreshed in time fails instead of committing", async () => {
  const inner = new MemoryStore();
  await (await Repository.init(inner, PASSWORD, FAST)).close();
  let failLocks = false;
  const store = new CrashingStore(inner, () => false);
  store.revive((op, key) => failLocks && op === "put" && key.startsWith("locks/"));
  const repo = await Repository.open(store, PASSWORD, { ...FAST, lockRefreshMs: 20, lockStaleMs: 100 });
  try {
    const writer = await repo.startBackup({ runId: "late" });
    await writer.addFile(fileNode("a"), pieces(random(5000)));
    failLocks = true; // every refresh fails from now on
    await sleep(150);
    store.revive(); // the store works again, but the lock is too old to trust
    await assert.rejects(writer.commit(META), (err: unknown) => {
      assert.ok(isCode(err, "FAILED_PRECONDITION"), String(err));
      assert.match(err.message, /was lost: it was last refreshed/);
      return true;
    });
    assert.equal(await repo.hasSnapshot(writer.snapshotId), false);
    await writer.abort();
  } finally {
    await repo.close();
  }
});

void test("a backup waits for (or fails on) a prune's exclusive lock, and leaves no lock behind", async () => {
  const { store, repo } = await newRepo();
  const pruner = await Repository.open(store, PASSWORD, FAST);
  try {
    const x = await pruner.lock("exclusive", { purpose: "prune" });
    await assert.rejects(repo.startBackup({ runId: "b1" }), isLocked(/locked by prune/));
    assert.deepEqual(await keysUnder(store, "locks/"), [`locks/${x.id}`]);
    setTimeout(() => void x.release(), 300);
    const waited = await repo.startBackup({ runId: "b1", lockWaitMs: 5000 });
    await waited.addFile(fileNode("f"), pieces(random(1000)));
    const { snapshot } = await waited.commit(META);
    assert.ok(await repo.hasSnapshot(snapshot.id));
    const writer = await repo.startBackup({ runId: "b2", lockWaitMs: 0 });
    const listed = await repo.listLocks();
    assert.deepEqual(
      listed.map((l) => l.purpose),
      ["backup b2"],
    );
    await writer.abort();
  } finally {
    await pruner.close();
    await repo.close();
  }
});

void test("key rotation takes the exclusive lock", async () => {
  const { store, repo } = await newRepo();
  const other = await Repository.open(store, PASSWORD, FAST);
  try {
    const before = await keysUnder(store, "keys/");
    const shared = await other.lock("shared", { purpose: "backup run-9" });
    await assert.rejects(repo.rotateKeys({ current: PASSWORD }), isLocked(/locked by backup run-9/));
    assert.deepEqual(await keysUnder(store, "keys/"), before, "nothing rotated");
    await shared.release();
    await repo.rotateKeys({ current: PASSWORD });
    assert.notDeepEqual(await keysUnder(store, "keys/"), before);
    assert.deepEqual(await keysUnder(store, "locks/"), []);
  } finally {
    await other.close();
    await repo.close();
  }
});

void test("close releases the locks a repository still holds", async () => {
  const { store, repo } = await newRepo();
  await repo.lock("shared");
  await repo.startBackup({ runId: "never-committed" });
  assert.equal((await keysUnder(store, "locks/")).length, 2);
  await repo.close();
  assert.deepEqual(await keysUnder(store, "locks/"), []);
});

/** The store, with the first lock write held back until `release` is called. */
function holdFirstLockWrite(store: MemoryStore): {
  store: ObjectStore;
  indexListed: Promise<void>;
  release: () => void;
} {
  let release!: () => void;
  const gate = new Promise<void>((r) => (release = r));
  let listed!: () => void;
  const indexListed = new Promise<void>((r) => (listed = r));
  let held = false;
  const wrapped = new Proxy(store, {
    get(target, prop) {
      if (prop === "put") {
        return async (key: string, data: Uint8Array, options?: PutOptions) => {
          if (key.startsWith("locks/") && !held) {
            held = true;
            await gate;
          }
          return target.put(key, data, options);
        };
      }
      if (prop === "list") {
        return (prefix: string) => {
          if (prefix === "index/") listed();
          return target.list(prefix);
        };
      }
      const value: unknown = Reflect.get(target, prop, target);
      return typeof value === "function" ? (value as (...a: unknown[]) => unknown).bind(target) : value;
    },
  });
  return { store: wrapped, indexListed, release };
}

void test("lockIndexed loads an index-less repository's index while it locks, and refreshes it under the lock", async () => {
  const { store, repo } = await newRepo();
  const reader = await Repository.open(store, PASSWORD, { ...FAST, loadIndex: false });
  try {
    const gone = random(300_000);
    const kept = random(300_000);
    const backup = async (runId: string, data: Buffer) => {
      const w = await repo.startBackup({ runId });
      await w.addFile(fileNode("f"), pieces(data));
      return (await w.commit(META)).snapshot;
    };
    const first = await backup("r1", gone);
    const second = await backup("r2", kept);
    const goneChunk = (await collectTree(repo, first))[0]!.chunks![0]!;
    assert.ok(repo.hasChunk(goneChunk));

    // Without its index it refuses reads; a lock it cannot get leaves no lock and no index.
    await assert.rejects(reader.verify(), (e: unknown) => isCode(e, "FAILED_PRECONDITION"));
    const x = await repo.lock("exclusive", { purpose: "prune" });
    await assert.rejects(reader.lockIndexed("shared", { purpose: "restore t1" }), isLocked(/locked by prune/));
    assert.deepEqual(await keysUnder(store, "locks/"), [`locks/${x.id}`]);
    await x.release();

    const lock = await reader.lockIndexed("shared", { purpose: "restore t2" });
    assert.deepEqual(
      (await reader.listLocks()).map((l) => l.purpose),
      ["restore t2"],
    );
    assert.ok(reader.hasChunk(goneChunk));
    assert.equal((await reader.verify()).ok, true);
    await lock.release();

    // A prune that runs after the index was loaded but before the lock is written: the refresh
    // under the lock drops what it deleted (reading it would fail later).
    const late = await Repository.open(store, PASSWORD, { ...FAST, loadIndex: false });
    const held = holdFirstLockWrite(store);
    const lateReader = await Repository.open(held.store, PASSWORD, { ...FAST, loadIndex: false });
    try {
      const locking = lateReader.lockIndexed("shared", { purpose: "restore t3" });
      await held.indexListed;
      await sleep(50); // the index files are read from memory meanwhile
      await repo.forget({ policy: { keepLast: 1 } });
      await repo.prune();
      held.release();
      const lateLock = await locking;
      assert.equal(lateReader.hasChunk(goneChunk), false, "the pruned chunk is no longer in the index");
      const [node] = await collectTree(lateReader, second);
      assert.ok((await readAll(lateReader.readFile(node!))).equals(kept));
      await lateLock.release();
      // A backup into an index-less repository gets the index with its lock: known data is not stored again.
      const writer = await late.startBackup({ runId: "r3" });
      await writer.addFile(fileNode("f"), pieces(kept));
      const { snapshot } = await writer.commit(META);
      assert.equal(snapshot.stats.bytesNew, 0);
      assert.equal(snapshot.stats.chunksNew, 0);
    } finally {
      await lateReader.close();
      await late.close();
    }
  } finally {
    await reader.close();
    await repo.close();
  }
});

async function collectTree(repo: Repository, snapshot: SnapshotManifest): Promise<TreeNode[]> {
  return (await collect(repo.readTree(snapshot))).filter((n) => n.type === "file");
}

void test("a backup lists data/ for unindexed packs only when another backup's lock is there; a dead backup's lock goes", async () => {
  // Packs that no index names (the state a backup killed before its first index write leaves).
  const { store, options } = await unindexedPacks(6, "left-1");
  let dataListings = 0;
  const counted = new Proxy(store, {
    get(target, prop) {
      if (prop === "list") {
        return (prefix: string) => {
          if (prefix.startsWith("data/")) dataListings++;
          return target.list(prefix);
        };
      }
      const value: unknown = Reflect.get(target, prop, target);
      return typeof value === "function" ? (value as (...a: unknown[]) => unknown).bind(target) : value;
    },
  });
  const backupBesides = async (runId: string) => {
    const r = await Repository.open(counted, PASSWORD, { ...FAST, ...options });
    try {
      await (await r.startBackup({ runId })).abort();
      return coreOf(r).index.chunkCount;
    } finally {
      await r.close();
    }
  };
  const reader = await Repository.open(store, PASSWORD, FAST);
  try {
    // No other lock, or only a restore's: the packs are not looked for.
    assert.equal(await backupBesides("quiet-1"), 0);
    const restoreLock = await plant(reader, { purpose: "restore r-1" });
    assert.equal(await backupBesides("quiet-2"), 0);
    assert.equal(dataListings, 0, "no backup lock, no listing of data/");
    await store.delete(`locks/${restoreLock}`);

    // A backup on this host whose process is gone left its lock: its packs are indexed and
    // reused, and its lock is deleted so that the next backup does not look again.
    const dead = await plant(reader, { purpose: "backup left-1", hostname: hostname(), pid: await deadPid() });
    assert.ok((await backupBesides("after-kill")) >= 2, "the dead backup's packs are indexed");
    assert.equal(dataListings, 1);
    assert.equal(await store.stat(`locks/${dead}`), undefined, "the dead backup's lock is gone");
    await backupBesides("after-recovery");
    assert.equal(dataListings, 1, "nothing left to look for");

    // A backup running elsewhere (its lock fresh): its packs are looked for (it may have been
    // killed on a host this one cannot check), and its lock stays.
    const live = await plant(reader, { purpose: "backup on-another-node" });
    await backupBesides("beside-another");
    assert.equal(dataListings, 2);
    assert.ok(await store.stat(`locks/${live}`), "a live backup's lock is left alone");
  } finally {
    await reader.close();
  }
});

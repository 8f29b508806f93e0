import assert from "node:assert/strict";
import { createHash } from "node:crypto";
import { test } from "node:test";
import { isCode } from "@iotvault/errors";
import { LocalDirectoryStore, MemoryStore, type ObjectStore } from "@iotvault/storage";
import { parsePack } from "./pack.js";
import { Repository } from "./repository.js";
import {
  CrashingStore,
  SMALL,
  assertRestores,
  backupFiles,
  dataAndIndexBytes,
  fingerprint,
  keysUnder,
  withTempDir,
  type Files,
} from "./test-support.js";
import { META, PASSWORD, collect, coreOf, fileNode, pieces, random } from "./test-util.js";

interface World {
  repo: Repository;
  /** runId -> files of the snapshots that remain after forget. */
  expected: Map<string, Files>;
  /** The forgotten snapshot's unique content. */
  c: Buffer;
}

/**
 * r1: c (200 KB), a0 b0 a1 b1 ... (interleaved 6 KB files), d (200 KB); r2: the b files, d, e.
 * Forgetting r1 leaves packs of c unused, packs of interleaved a/b half used, packs of d used.
 */
async function buildWorld(store: ObjectStore): Promise<World> {
  const repo = await Repository.init(store, PASSWORD, SMALL);
  const c = random(200_000);
  const files1 = new Map<string, Buffer>([["c.bin", c]]);
  const files2 = new Map<string, Buffer>();
  for (let i = 0; i < 16; i++) {
    files1.set(`mix/a${i}`, random(6000));
    const b = random(6000);
    files1.set(`mix/b${i}`, b);
    files2.set(`mix/b${i}`, b);
  }
  const d = random(200_000);
  files1.set("d.bin", d);
  files2.set("d.bin", d);
  files2.set("e.bin", random(20_000));
  await backupFiles(repo, "r1", files1, { time: new Date("2026-11-01T02:00:00Z") });
  await backupFiles(repo, "r2", files2, { time: new Date("2026-11-02T02:00:00Z") });
  const forgot = await repo.forget({ policy: { keepLast: 1 } });
  assert.equal(forgot.removed.length, 1);
  return { repo, expected: new Map([["r2", files2]]), c };
}

/** Packs no index names: a junk object, and the packs of a backup whose index write failed. */
async function addOrphans(store: ObjectStore): Promise<string[]> {
  const junk = random(3000);
  const junkId = createHash("sha256").update(junk).digest("hex");
  await store.put(`data/${junkId.slice(0, 2)}/${junkId}`, junk);
  const before = new Set(await keysUnder(store, "data/"));
  const crashing = new CrashingStore(store, (op, key) => op === "put" && key.startsWith("index/"), false);
  const repo = await Repository.open(crashing, PASSWORD, SMALL);
  try {
    const writer = await repo.startBackup({ runId: "crashed" });
    await writer.addFile(fileNode("x"), pieces(random(100_000)));
    await assert.rejects(writer.commit(META), /simulated crash/);
    await writer.abort();
  } finally {
    await repo.close();
  }
  const orphans = (await keysUnder(store, "data/")).filter((k) => !before.has(k));
  assert.ok(orphans.length >= 1, "the crashed backup left packs");
  return [`data/${junkId.slice(0, 2)}/${junkId}`, ...orphans];
}

/** For each object under data/: bytes of blobs the remaining snapshots use, and of the others. */
async function packUsage(store: ObjectStore, repo: Repository): Promise<{ used: number; unused: number }[]> {
  const referenced = new Set<string>();
  for (const s of await repo.listSnapshots()) {
    s.tree.chunks.forEach((c) => referenced.add(c));
    for await (const node of repo.readTree(s)) node.chunks?.forEach((c) => referenced.add(c));
  }
  const usage: { used: number; unused: number }[] = [];
  for (const key of await keysUnder(store, "data/")) {
    const bytes = await store.get(key);
    const parsed = parsePack(bytes, coreOf(repo).keyFor);
    if (!parsed.ok) {
      usage.push({ used: 0, unused: bytes.length }); // junk under data/
      continue;
    }
    let used = 0;
    let unused = 0;
    for (const e of parsed.entries) {
      if (referenced.has(e.id)) used += e.length;
      else unused += e.length;
    }
    usage.push({ used, unused });
  }
  return usage;
}

async function removeLeftoverLocks(store: ObjectStore): Promise<void> {
  // The crashed process's lock: stale once that process is gone (here the test process lives on).
  for (const key of await keysUnder(store, "locks/")) await store.delete(key);
}

void test("prune deletes unused and orphan packs, repacks partly used ones, rewrites the index", async () => {
  await withTempDir(async (dir) => {
    const store = new LocalDirectoryStore(dir);
    const { repo, expected, c } = await buildWorld(store);
    try {
      const orphans = await addOrphans(store);
      const indexBefore = await keysUnder(store, "index/");
      const sizeBefore = await dataAndIndexBytes(store);
      const usageBefore = await packUsage(store, repo);
      assert.ok(
        usageBefore.some((u) => u.used === 0 && u.unused > 0),
        "some packs are wholly unused",
      );
      assert.ok(
        usageBefore.some((u) => u.used > 0 && u.unused > u.used / 2),
        "some packs are partly used",
      );

      const state = await fingerprint(store);
      const dry = await repo.prune({ dryRun: true });
      assert.deepEqual(await fingerprint(store), state, "a dry run changes nothing");

      const phases = new Set<string>();
      const result = await repo.prune({ onProgress: (p) => phases.add(p.phase) });
      assert.deepEqual({ ...result, dryRun: true }, dry, "the dry run predicted the prune exactly");
      assert.equal(result.dryRun, false);
      assert.equal(result.snapshots, 1);
      assert.equal(result.packsBefore, usageBefore.length);
      assert.equal(result.orphanPacksDeleted, orphans.length);
      assert.ok(result.packsDeleted >= 2, `packs deleted: ${result.packsDeleted}`);
      assert.ok(result.packsRepacked >= 2, `packs repacked: ${result.packsRepacked}`);
      assert.ok(result.packsWritten >= 1 && result.bytesRepacked > 16 * 6000 * 0.9);
      assert.equal(result.indexFilesBefore, indexBefore.length);
      assert.deepEqual([...phases].sort(), [
        "delete-index",
        "delete-packs",
        "index",
        "repack",
        "snapshots",
        "write-index",
      ]);
      for (const key of orphans) assert.equal(await store.stat(key), undefined, `orphan ${key} deleted`);

      const indexAfter = await keysUnder(store, "index/");
      assert.equal(indexAfter.length, result.indexFilesAfter);
      assert.ok(!indexAfter.some((k) => indexBefore.includes(k)), "every old index file was replaced");
      assert.equal(sizeBefore - (await dataAndIndexBytes(store)), result.bytesFreed, "bytes freed as reported");
      assert.ok(result.bytesFreed > c.length, `at least the forgotten 200 KB are freed (${result.bytesFreed})`);

      const usageAfter = await packUsage(store, repo);
      assert.equal(
        usageAfter.length,
        usageBefore.length -
          result.packsDeleted -
          result.packsRepacked -
          result.orphanPacksDeleted +
          result.packsWritten,
      );
      for (const u of usageAfter) {
        assert.ok(u.used > 0, "no pack without a used blob remains");
        assert.ok(u.unused / (u.used + u.unused) <= 0.25, "no pack above the repack threshold remains");
      }
      assert.equal(await assertRestores(repo, expected), 18);
      const fresh = await Repository.open(store, PASSWORD, SMALL);
      try {
        assert.equal(await assertRestores(fresh, expected), 18);
        const report = await fresh.verify({ readData: true });
        assert.deepEqual(report.problems, []);
        assert.ok(report.ok && report.packsChecked === usageAfter.length);
        const again = await fresh.prune({ dryRun: true });
        assert.deepEqual(
          [again.packsDeleted, again.packsRepacked, again.orphanPacksDeleted, again.bytesFreed],
          [0, 0, 0, 0],
          "nothing left to prune",
        );
      } finally {
        await fresh.close();
      }
    } finally {
      await repo.close();
    }
  });
});

void test("repackThreshold 0 repacks every partly used pack; 1 repacks none", async () => {
  const store = new MemoryStore();
  const { repo, expected } = await buildWorld(store);
  try {
    const none = await repo.prune({ dryRun: true, repackThreshold: 1 });
    assert.equal(none.packsRepacked, 0);
    const all = await repo.prune({ repackThreshold: 0 });
    assert.ok(all.packsRepacked >= none.packsRepacked);
    for (const u of await packUsage(store, repo)) assert.equal(u.unused, 0, "only used blobs remain");
    await assertRestores(repo, expected);
    await assert.rejects(repo.prune({ repackThreshold: 1.5 }), (err: unknown) => isCode(err, "INVALID_ARGUMENT"));
  } finally {
    await repo.close();
  }
});

void test("a snapshot that references a chunk in no index makes prune refuse and delete nothing", async () => {
  const store = new MemoryStore();
  const { repo } = await buildWorld(store);
  try {
    for (const key of await keysUnder(store, "index/")) await store.delete(key); // every pack now looks orphaned
    const state = await fingerprint(store);
    await assert.rejects(repo.prune(), (err: unknown) => {
      assert.ok(isCode(err, "DATA_CORRUPT"), String(err));
      assert.match(
        err.message,
        /^snapshot [0-9a-f]{64} references missing chunk [0-9a-f]{64}; run `iotvault verify`; prune refused so that nothing more is lost$/,
      );
      return true;
    });
    assert.deepEqual(await fingerprint(store), state, "nothing was deleted");
    assert.deepEqual(await keysUnder(store, "locks/"), []);
  } finally {
    await repo.close();
  }
});

void test("a corrupt blob is never copied: prune refuses and leaves the store as it was", async () => {
  const store = new MemoryStore();
  const { repo } = await buildWorld(store);
  try {
    const r2 = (await repo.listSnapshots())[0]!;
    let chunk: string | undefined;
    for await (const node of repo.readTree(r2)) if (node.path === "mix/b3") chunk = node.chunks![0];
    const loc = coreOf(repo).index.get(chunk!)!;
    const key = `data/${loc.packId.slice(0, 2)}/${loc.packId}`;
    const bytes = Buffer.from(store.raw(key)!);
    bytes[loc.offset + 25]! ^= 0x01;
    store.overwrite(key, bytes);
    const state = await fingerprint(store);
    await assert.rejects(repo.prune(), (err: unknown) => {
      assert.ok(isCode(err, "DATA_CORRUPT"), String(err));
      assert.match(err.message, new RegExp(`chunk ${chunk} in pack ${loc.packId} is used but corrupt`));
      return true;
    });
    assert.deepEqual(await fingerprint(store), state, "new packs were discarded, nothing deleted");
  } finally {
    await repo.close();
  }
});

void test("a backup running during prune: prune fails or waits, and deletes nothing the backup uses", async () => {
  const store = new MemoryStore();
  const repo = await Repository.init(store, PASSWORD, SMALL);
  const x = random(300_000);
  const y = random(50_000);
  await backupFiles(repo, "r1", new Map([["x", x]]), { time: new Date("2026-11-01") });
  await backupFiles(repo, "r2", new Map([["y", y]]), { time: new Date("2026-11-02") });
  await repo.forget({ policy: { keepLast: 1 } }); // x is used by no snapshot now
  const executor = await Repository.open(store, PASSWORD, SMALL);
  try {
    const writer = await executor.startBackup({ runId: "r3" });
    await writer.addFile(fileNode("x-again"), pieces(x)); // deduplicated against r1's data

    const state = await fingerprint(store);
    await assert.rejects(repo.prune(), (err: unknown) => {
      assert.ok(isCode(err, "FAILED_PRECONDITION"), String(err));
      assert.match(err.message, /locked by backup r3 on /);
      assert.equal(err.retryable, true);
      return true;
    });
    assert.deepEqual(await fingerprint(store), state, "a refused prune deletes nothing");

    let pruned = false;
    const waiting = repo.prune({ lockWaitMs: 10_000 }).then((r) => {
      pruned = true;
      return r;
    });
    await new Promise((resolve) => setTimeout(resolve, 300));
    assert.equal(pruned, false, "prune waits while the backup holds its lock");
    const { stats } = await writer.commit(META);
    assert.ok(stats.chunksNew <= 2, `x's chunks were reused, only the tree is new (${stats.chunksNew})`);
    const result = await waiting;
    assert.equal(result.snapshots, 2);
    const fresh = await Repository.open(store, PASSWORD, SMALL);
    try {
      await assertRestores(
        fresh,
        new Map([
          ["r2", new Map([["y", y]])],
          ["r3", new Map([["x-again", x]])],
        ]),
      );
      assert.ok((await fresh.verify({ readData: true })).ok);
    } finally {
      await fresh.close();
    }
  } finally {
    await executor.close();
    await repo.close();
  }
});

void test("a running prune makes a backup fail cleanly, or wait and then see the pruned index", async () => {
  const inner = new MemoryStore();
  const { repo, expected } = await buildWorld(inner);
  await repo.close();
  const c = random(200_000);
  const gated = new CrashingStore(inner, () => false);
  let opened!: () => void;
  const gate = new Promise<void>((resolve) => (opened = resolve));
  let paused!: () => void;
  const reached = new Promise<void>((resolve) => (paused = resolve));
  gated.pause = async (op, key) => {
    if (op !== "delete" || !key.startsWith("index/")) return;
    paused();
    await gate; // the prune holds here, after writing its new index
  };
  const pruner = await Repository.open(gated, PASSWORD, SMALL);
  const executor = await Repository.open(inner, PASSWORD, SMALL);
  try {
    const pruning = pruner.prune();
    await reached;
    await assert.rejects(executor.startBackup({ runId: "r3" }), (err: unknown) => {
      assert.ok(isCode(err, "FAILED_PRECONDITION") && err.retryable, String(err));
      assert.match(err.message, /locked by prune on /);
      return true;
    });
    assert.equal((await executor.listLocks()).length, 1, "the refused backup left no lock");
    const starting = executor.startBackup({ runId: "r3", lockWaitMs: 10_000 });
    setTimeout(opened, 200);
    const result = await pruning;
    assert.ok(result.packsDeleted > 0);
    const writer = await starting;
    await writer.addFile(fileNode("c-again"), pieces(c));
    await writer.addFile(fileNode("d-again"), pieces(expected.get("r2")!.get("d.bin")!));
    const { stats } = await writer.commit(META);
    assert.ok(stats.bytesNew >= c.length && stats.bytesNew < c.length + 50_000, "c is stored again, d is deduplicated");
    const fresh = await Repository.open(inner, PASSWORD, SMALL);
    try {
      await assertRestores(
        fresh,
        new Map([
          ...expected,
          [
            "r3",
            new Map([
              ["c-again", c],
              ["d-again", expected.get("r2")!.get("d.bin")!],
            ]),
          ],
        ]),
      );
      assert.ok((await fresh.verify({ readData: true })).ok);
    } finally {
      await fresh.close();
    }
  } finally {
    await executor.close();
    await pruner.close();
  }
});

void test("a process that loaded the index before a prune does not dedup against pruned data", async () => {
  const store = new MemoryStore();
  const repo = await Repository.init(store, PASSWORD, SMALL);
  const x = random(300_000);
  const s1 = await backupFiles(repo, "r1", new Map([["x", x]]), { time: new Date("2026-11-01") });
  const xChunks = (await collect(repo.readTree(s1)))[0]!.chunks!;
  const executor = await Repository.open(store, PASSWORD, SMALL);
  const reader = await Repository.open(store, PASSWORD, SMALL);
  try {
    const r2 = new Map([["y", random(10_000)]]);
    await backupFiles(repo, "r2", r2, { time: new Date("2026-11-02") });
    assert.equal(await reader.refreshIndex(), true, "it adds r2's index file");
    assert.equal(await reader.refreshIndex(), false, "nothing changed since");
    await repo.forget({ policy: { keepLast: 1 } });
    const pruned = await repo.prune();
    assert.ok(pruned.packsDeleted >= 1);
    assert.ok(
      xChunks.every((id) => executor.hasChunk(id)),
      "the executor's index still names x's deleted chunks",
    );
    // The executor's index in memory still names x's deleted packs; startBackup notices the prune.
    const writer = await executor.startBackup({ runId: "r3" });
    await writer.addFile(fileNode("x"), pieces(x));
    const { stats } = await writer.commit(META);
    assert.ok(stats.chunksNew > 10, `x was stored again (${stats.chunksNew} new chunks)`);
    const fresh = await Repository.open(store, PASSWORD, SMALL);
    try {
      await assertRestores(
        fresh,
        new Map([
          ["r2", r2],
          ["r3", new Map([["x", x]])],
        ]),
      );
      assert.ok((await fresh.verify()).ok);
    } finally {
      await fresh.close();
    }
    assert.equal(await reader.refreshIndex(), true, "the reader notices the prune");
    assert.ok((await reader.verify()).ok);
  } finally {
    await reader.close();
    await executor.close();
    await repo.close();
  }
});

void test("crash after the new index is written: every snapshot restores, a second prune finishes", async () => {
  const inner = new MemoryStore();
  const world = await buildWorld(inner);
  await world.repo.close();
  const orphans = await addOrphans(inner);
  const indexBefore = await keysUnder(inner, "index/");
  const dataBefore = await keysUnder(inner, "data/");
  const crashing = new CrashingStore(inner, (op, key) => op === "delete" && key.startsWith("index/"));
  const dying = await Repository.open(crashing, PASSWORD, SMALL);
  await assert.rejects(dying.prune(), /simulated crash at delete index\//);
  await dying.close();
  await removeLeftoverLocks(inner);
  const indexNow = await keysUnder(inner, "index/");
  assert.ok(indexNow.length > indexBefore.length, "the new index files were written next to the old");
  assert.ok(
    indexBefore.every((k) => indexNow.includes(k)),
    "no old index file was deleted",
  );
  const dataNow = await keysUnder(inner, "data/");
  assert.ok(
    dataBefore.every((k) => dataNow.includes(k)),
    "no pack was deleted",
  );
  await checkThenFinish(inner, world.expected, orphans.length);
});

void test("crash after some packs are deleted: every snapshot restores, a second prune finishes", async () => {
  const inner = new MemoryStore();
  const world = await buildWorld(inner);
  await world.repo.close();
  await addOrphans(inner);
  const indexBefore = await keysUnder(inner, "index/");
  const dataBefore = await keysUnder(inner, "data/");
  const crashing = new CrashingStore(inner, (op, key, nth) => op === "delete" && key.startsWith("data/") && nth === 3);
  const dying = await Repository.open(crashing, PASSWORD, SMALL);
  await assert.rejects(dying.prune(), /simulated crash at delete data\//);
  await dying.close();
  await removeLeftoverLocks(inner);
  const indexNow = await keysUnder(inner, "index/");
  assert.ok(!indexNow.some((k) => indexBefore.includes(k)), "the old index files were all deleted");
  const dataNow = await keysUnder(inner, "data/");
  assert.ok(
    dataNow.some((k) => !dataBefore.includes(k)),
    "the repacked packs were written",
  );
  assert.equal(dataBefore.filter((k) => !dataNow.includes(k)).length, 2, "two packs were deleted before the crash");
  await checkThenFinish(inner, world.expected, undefined);
});

/** After a crashed prune: reads and verify work; a second prune completes; then nothing is left. */
async function checkThenFinish(
  store: MemoryStore,
  expected: ReadonlyMap<string, Files>,
  orphans: number | undefined,
): Promise<void> {
  const repo = await Repository.open(store, PASSWORD, SMALL);
  try {
    await assertRestores(repo, expected);
    const report = await repo.verify({ readData: true });
    assert.deepEqual(report.problems, []);
    const second = await repo.prune();
    if (orphans !== undefined) assert.equal(second.orphanPacksDeleted, orphans);
    else assert.ok(second.orphanPacksDeleted >= 1, "the packs left to delete are now orphans");
    await assertRestores(repo, expected);
    assert.ok((await repo.verify({ readData: true })).ok);
    const third = await repo.prune({ dryRun: true });
    assert.deepEqual(
      [third.packsDeleted, third.packsRepacked, third.orphanPacksDeleted, third.bytesFreed],
      [0, 0, 0, 0],
    );
  } finally {
    await repo.close();
  }
}

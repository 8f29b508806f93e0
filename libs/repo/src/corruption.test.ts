import assert from "node:assert/strict";
import { test } from "node:test";
import { isCode } from "@iotvault/errors";
import type { MemoryStore } from "@iotvault/storage";
import { packKey } from "./format.js";
import type { Repository } from "./repository.js";
import type { SnapshotManifest } from "./snapshot.js";
import { META, collect, coreOf, fileNode, newRepo, pieces, random, readAll } from "./test-util.js";
import type { TreeNode } from "./tree.js";

/** Two files in separate packs (pack size 1 MiB), so damage to one pack hits one file. */
async function twoFiles(): Promise<{
  store: MemoryStore;
  repo: Repository;
  snapshot: SnapshotManifest;
  nodes: TreeNode[];
}> {
  const { store, repo } = await newRepo({ packSizeBytes: 1 << 20 });
  const w = await repo.startBackup({ runId: "c" });
  await w.addFile(fileNode("etc/a.bin"), pieces(random(3 << 20)));
  await w.addFile(fileNode("var/b.bin"), pieces(random(3 << 20)));
  const { snapshot } = await w.commit(META);
  return { store, repo, snapshot, nodes: await collect(repo.readTree(snapshot)) };
}

function packOf(repo: Repository, node: TreeNode, chunk = 0): { packId: string; offset: number; length: number } {
  const loc = coreOf(repo).index.get(node.chunks![chunk]!)!;
  return { packId: loc.packId, offset: loc.offset, length: loc.length };
}

void test("a flipped byte in a pack is named on read and by verify --read-data", async () => {
  const { store, repo, nodes } = await twoFiles();
  try {
    const [a, b] = nodes as [TreeNode, TreeNode];
    const { packId, offset, length } = packOf(repo, a);
    const bytes = store.raw(packKey(packId))!;
    bytes[offset + (length >> 1)]! ^= 0x40;

    await assert.rejects(readAll(repo.readFile(a)), (err: unknown) => {
      assert.ok(isCode(err, "DATA_CORRUPT"), String(err));
      assert.ok(err.message.includes(`pack ${packId}`), err.message);
      assert.ok(err.message.includes("etc/a.bin"), err.message);
      return true;
    });
    assert.equal((await readAll(repo.readFile(b))).length, 3 << 20, "the other file still reads");

    const metadataOnly = await repo.verify();
    assert.equal(metadataOnly.ok, true, "a flipped data byte is invisible without reading data");
    const report = await repo.verify({ readData: true });
    assert.equal(report.ok, false);
    const packProblem = report.problems.find((p) => p.kind === "PACK_CORRUPT" && p.object === packId);
    assert.ok(packProblem, JSON.stringify(report.problems));
    assert.deepEqual(packProblem.paths, ["etc/a.bin"]);
    const chunkProblem = report.problems.find((p) => p.kind === "CHUNK_CORRUPT");
    assert.equal(chunkProblem?.object, a.chunks![0]);
    assert.deepEqual(chunkProblem?.paths, ["etc/a.bin"]);
  } finally {
    await repo.close();
  }
});

void test("a truncated pack is detected on read and by verify", async () => {
  const { store, repo, nodes } = await twoFiles();
  try {
    const [a] = nodes as [TreeNode];
    const { packId, offset } = packOf(repo, a);
    const key = packKey(packId);
    store.overwrite(key, store.raw(key)!.subarray(0, offset + 1000));

    await assert.rejects(readAll(repo.readFile(a)), (err: unknown) => {
      assert.ok(isCode(err, "DATA_CORRUPT"), String(err));
      assert.match(err.message, new RegExp(`pack ${packId} is truncated`));
      return true;
    });
    const metadataOnly = await repo.verify();
    const sized = metadataOnly.problems.find((p) => p.kind === "PACK_CORRUPT" && p.object === packId);
    assert.ok(sized, "verify without data sees the wrong size");
    assert.deepEqual(sized.paths, ["etc/a.bin"]);
  } finally {
    await repo.close();
  }
});

void test("a pack cut after its blobs (header and trailer lost) fails verify --read-data", async () => {
  const { store, repo, nodes } = await twoFiles();
  try {
    const [a] = nodes as [TreeNode];
    const { packId } = packOf(repo, a);
    const key = packKey(packId);
    const bytes = store.raw(key)!;
    const damaged = Buffer.from(bytes);
    damaged.fill(0, bytes.length - 20); // the trailer and the end of the header
    store.overwrite(key, damaged);
    assert.equal((await readAll(repo.readFile(a))).length, 3 << 20, "the blobs themselves are intact");
    const report = await repo.verify({ readData: true });
    const problem = report.problems.find((p) => p.kind === "PACK_CORRUPT" && p.object === packId);
    assert.ok(problem, JSON.stringify(report.problems));
    assert.match(problem.message, /trailer|sha256/);
  } finally {
    await repo.close();
  }
});

void test("a missing pack is reported by verify with the files it affects, and NOT_FOUND on read", async () => {
  const { store, repo, nodes, snapshot } = await twoFiles();
  try {
    const [, b] = nodes as [TreeNode, TreeNode];
    const packOfChunk = (id: string): string => coreOf(repo).index.get(id)!.packId;
    // A pack of b.bin that does not also hold the tree (else no path could be named at all).
    const treePack = packOfChunk(snapshot.tree.chunks[0]!);
    const packId = b.chunks!.map(packOfChunk).find((p) => p !== treePack)!;
    assert.ok(packId, "b.bin has a pack without the tree");
    const affected = nodes.filter((n) => n.chunks!.some((c) => packOfChunk(c) === packId)).map((n) => n.path);
    await store.delete(packKey(packId));
    const report = await repo.verify();
    assert.equal(report.ok, false);
    const missing = report.problems.find((p) => p.kind === "PACK_MISSING");
    assert.equal(missing?.object, packId);
    assert.deepEqual(missing?.paths, affected);
    assert.ok(affected.includes("var/b.bin"));
    await assert.rejects(readAll(repo.readFile(b)), (err: unknown) => {
      assert.ok(isCode(err, "NOT_FOUND"), String(err));
      assert.ok(err.message.includes(`pack ${packId} is missing`), err.message);
      return true;
    });
  } finally {
    await repo.close();
  }
});

void test("a chunk missing from every index, a corrupt index and a corrupt snapshot are reported", async () => {
  const { store, repo, snapshot } = await twoFiles();
  try {
    const indexKeys: string[] = [];
    for await (const info of store.list("index/")) indexKeys.push(info.key);
    const victim = indexKeys[0]!;
    const bytes = Buffer.from(store.raw(victim)!);
    bytes[bytes.length - 5]! ^= 1;
    store.overwrite(victim, bytes);
    const snapKey = `snapshots/${snapshot.id}`;
    const report = await repo.verify();
    assert.ok(report.problems.some((p) => p.kind === "INDEX_CORRUPT" && victim.endsWith(p.object)));
    assert.ok(
      report.problems.some((p) => p.kind === "CHUNK_MISSING" || p.kind === "SNAPSHOT_CORRUPT"),
      "chunks named only by the damaged index are missing",
    );
    store.overwrite(snapKey, Buffer.from(store.raw(snapKey)!).fill(1, 40, 41));
    const again = await repo.verify();
    assert.ok(again.problems.some((p) => p.kind === "SNAPSHOT_CORRUPT" && p.object === snapshot.id));
  } finally {
    await repo.close();
  }
});

void test("verify of a healthy repository reads every pack, or a share of them", async () => {
  const { repo } = await twoFiles();
  try {
    const all = await repo.verify({ readData: true });
    assert.deepEqual(all.problems, []);
    assert.equal(all.ok, true);
    assert.equal(all.snapshotsChecked, 1);
    assert.ok(all.packsChecked >= 3, `checked ${all.packsChecked} packs`);
    assert.ok(all.bytesRead >= 6 << 20);
    const some = await repo.verify({ readData: true, readDataPercent: 50 });
    assert.equal(some.packsChecked, Math.ceil(all.packsChecked / 2));
  } finally {
    await repo.close();
  }
});

void test("blobs naming an unknown key id fail as corrupt after one keyring reload, not one per read", async () => {
  const { store, repo, nodes } = await twoFiles();
  try {
    const a = nodes[0]!;
    for (let i = 0; i < a.chunks!.length; i++) {
      const { packId, offset } = packOf(repo, a, i);
      store.raw(packKey(packId))!.writeUInt32BE(0xdeadbeef, offset + 1);
    }
    let keyringReads = 0;
    const get = store.get.bind(store);
    store.get = (key, range, signal) => {
      if (key === "keyring") keyringReads++;
      return get(key, range, signal);
    };
    for (let attempt = 0; attempt < 3; attempt++) {
      await assert.rejects(readAll(repo.readFile(a)), (err: unknown) => {
        assert.ok(isCode(err, "DATA_CORRUPT"), String(err));
        assert.ok(err.message.includes("etc/a.bin"), err.message);
        return true;
      });
    }
    assert.equal(keyringReads, 1, "the keyring is read again once for the unknown key id");
  } finally {
    await repo.close();
  }
});

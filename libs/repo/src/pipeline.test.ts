import assert from "node:assert/strict";
import { randomBytes } from "node:crypto";
import { hostname } from "node:os";
import { test } from "node:test";
import { isCode } from "@iotvault/errors";
import { BLOB_FLAG_ZSTD } from "./format.js";
import { writeLock } from "./locks.js";
import { Repository } from "./repository.js";
import {
  FAST,
  META,
  PASSWORD,
  collect,
  coreOf,
  fileNode,
  jsonLines,
  newRepo,
  pieces,
  random,
  readAll,
} from "./test-util.js";
import { deadPid, unindexedPacks } from "./test-support.js";
import type { TreeNode } from "./tree.js";

void test("backing up the same content twice stores almost nothing the second time", async () => {
  const { repo } = await newRepo();
  try {
    const data = random(12 << 20);
    const w1 = await repo.startBackup({ runId: "dedup-1" });
    await w1.addFile(fileNode("a.bin"), pieces(data));
    const first = (await w1.commit(META)).stats;
    const w2 = await repo.startBackup({ runId: "dedup-2" });
    await w2.addFile(fileNode("a.bin"), pieces(data, 333_333));
    const second = (await w2.commit(META)).stats;
    assert.ok(first.bytesStored > data.length, "the first backup stores the data");
    assert.equal(second.bytesNew, 0, "no data chunk is new the second time");
    assert.ok(second.bytesStored < first.bytesStored / 1000, `2nd stored ${second.bytesStored} bytes`);
    assert.equal(second.chunksNew, 0, "even the tree is deduplicated");
  } finally {
    await repo.close();
  }
});

void test("identical files within one backup are stored once", async () => {
  const { repo } = await newRepo();
  try {
    const data = random(5 << 20);
    const w = await repo.startBackup({ runId: "twins" });
    const a = await w.addFile(fileNode("a.bin"), pieces(data));
    const b = await w.addFile(fileNode("copy/b.bin"), pieces(data, 12345));
    const { stats } = await w.commit(META);
    assert.deepEqual(a.chunks, b.chunks);
    assert.equal(stats.chunksNew, a.chunks!.length + 1, "the data chunks once, plus one tree chunk");
    assert.ok(stats.bytesStored < data.length * 1.01, `stored ${stats.bytesStored} for 2 x ${data.length}`);
    assert.equal(stats.bytesRead, 2 * data.length);
  } finally {
    await repo.close();
  }
});

void test("compressible data is stored smaller, random data raw; both round-trip exactly", async () => {
  const { repo } = await newRepo();
  try {
    const text = jsonLines(4 << 20);
    const noise = random(2 << 20);
    const w = await repo.startBackup({ runId: "zstd" });
    const t = await w.addFile(fileNode("metrics.jsonl"), pieces(text));
    const { stats: s1 } = await w.commit(META);
    assert.ok(s1.bytesStored < text.length / 3, `text stored in ${s1.bytesStored} bytes`);
    const w2 = await repo.startBackup({ runId: "raw" });
    const n = await w2.addFile(fileNode("noise.bin"), pieces(noise));
    const { snapshot } = await w2.commit(META);

    const index = coreOf(repo).index;
    for (const id of t.chunks!) assert.equal(index.get(id)!.flags & BLOB_FLAG_ZSTD, BLOB_FLAG_ZSTD, "text is zstd");
    for (const id of n.chunks!) {
      const loc = index.get(id)!;
      assert.equal(loc.flags & BLOB_FLAG_ZSTD, 0, "random data is stored raw");
      assert.equal(loc.length, loc.rawLength + 33, "raw blob = plaintext + envelope overhead");
    }
    assert.ok((await readAll(repo.readFile(t))).equals(text));
    const [node] = await collect(repo.readTree(snapshot));
    assert.ok((await readAll(repo.readFile(node!))).equals(noise));
  } finally {
    await repo.close();
  }
});

void test("worker threads give the same chunk ids and restorable data", async () => {
  const { store, repo } = await newRepo({ workers: 2 });
  try {
    const data = Buffer.concat([jsonLines(6 << 20), random(6 << 20)]);
    const w = await repo.startBackup({ runId: "workers" });
    const node = await w.addFile(fileNode("mixed.bin"), pieces(data));
    await w.addFile(fileNode("tiny.txt"), pieces(Buffer.from("tiny")));
    const { snapshot } = await w.commit(META);
    await repo.close();
    const inline = await Repository.open(store, PASSWORD, FAST);
    const nodes = await collect(inline.readTree(snapshot));
    assert.deepEqual(nodes[0]!.chunks, node.chunks);
    assert.ok((await readAll(inline.readFile(nodes[0]!))).equals(data));
    assert.equal((await readAll(inline.readFile(nodes[1]!))).toString(), "tiny");
    const report = await inline.verify({ readData: true });
    assert.deepEqual(report.problems, []);
    await inline.close();
  } finally {
    await repo.close();
  }
});

void test("a backup aborted mid-way leaves its packs indexed; the next one uploads (almost) nothing again", async () => {
  const options = { packSizeBytes: 2 << 20, indexEveryPacks: 1 };
  const { store, repo } = await newRepo(options);
  const files = Array.from({ length: 30 }, () => random(1 << 20));
  const controller = new AbortController();
  const w1 = await repo.startBackup({ runId: "crash-1", signal: controller.signal });
  for (const [i, data] of files.slice(0, 20).entries()) await w1.addFile(fileNode(`f${i}`), pieces(data));
  controller.abort();
  await assert.rejects(w1.addFile(fileNode("f20"), pieces(files[20]!)), (err: unknown) => isCode(err, "CANCELLED"));
  await w1.abort();
  await repo.close();

  let indexFiles = 0;
  for await (const _ of store.list("index/")) indexFiles++;
  assert.ok(indexFiles >= 1, "the aborted backup wrote index files");
  const reopened = await Repository.open(store, PASSWORD, { ...FAST, ...options });
  try {
    const indexedBefore = coreOf(reopened).index;
    const w2 = await reopened.startBackup({ runId: "crash-2" });
    const nodes: TreeNode[] = [];
    for (const [i, data] of files.entries()) nodes.push(await w2.addFile(fileNode(`f${i}`), pieces(data)));
    const known = nodes.flatMap((n) => n.chunks!).filter((id) => indexedBefore.has(id)).length;
    assert.ok(known >= 10, `only ${known} chunks of the aborted run were indexed`);
    const { stats, snapshot } = await w2.commit(META);
    // Everything the aborted run stored is reused; at most its last, unfinished pack (2 MiB) is lost.
    assert.ok(stats.bytesNew <= (10 + 2 + 1) << 20, `re-run stored ${stats.bytesNew} new bytes of 30 MiB`);
    assert.ok(stats.packsWritten <= 8, `re-run wrote ${stats.packsWritten} packs (a full run writes ~15)`);
    const restored = await collect(reopened.readTree(snapshot));
    assert.ok((await readAll(reopened.readFile(restored[25]!))).equals(files[25]!));
  } finally {
    await reopened.close();
  }
});

void test("packs a killed backup stored but never indexed are recovered from their headers and reused", async () => {
  // Packs no index names; the lock is put back below: the state of a process killed before its
  // first index write.
  const { store, options, files } = await unindexedPacks(12, "killed-1");
  let packs = 0;
  for await (const _ of store.list("data/")) packs++;
  assert.ok(packs >= 4, `the killed run stored ${packs} packs`);
  // A pack truncated by a broken writer is skipped, not trusted.
  const packKeys: string[] = [];
  for await (const o of store.list("data/")) packKeys.push(o.key);
  const [truncated, flipped] = packKeys;
  store.overwrite(truncated!, store.raw(truncated!)!.subarray(0, 1000));
  // A pack whose header still opens but whose blob data was damaged is not trusted either: its
  // chunks would otherwise be deduplicated against and the new snapshot would not restore.
  const damaged = Buffer.from(store.raw(flipped!)!);
  damaged[100] = damaged[100]! ^ 0xff;
  store.overwrite(flipped!, damaged);

  const reopened = await Repository.open(store, PASSWORD, { ...FAST, ...options });
  try {
    const now = new Date().toISOString();
    const lock = { exclusive: false, hostname: hostname(), pid: await deadPid(), createdAt: now, refreshedAt: now };
    await writeLock(coreOf(reopened), randomBytes(32).toString("hex"), { ...lock, purpose: "backup killed-1" });
    assert.equal(coreOf(reopened).index.chunkCount, 0);
    const w2 = await reopened.startBackup({ runId: "killed-2" });
    assert.ok(
      coreOf(reopened).index.chunkCount >= 4,
      "chunks of the intact orphan packs are indexed before the backup",
    );
    for (const [i, data] of files.entries()) await w2.addFile(fileNode(`f${i}`), pieces(data));
    const { stats, snapshot } = await w2.commit(META);
    assert.ok(stats.bytesNew <= 6 << 20, `re-run stored ${stats.bytesNew} new bytes of 12 MiB`);
    const tree = await collect(reopened.readTree(snapshot));
    for (const [i, data] of files.entries()) assert.ok((await readAll(reopened.readFile(tree[i]!))).equals(data));
  } finally {
    await reopened.close();
  }
});

void test("index files are written during a backup, before commit", async () => {
  const { store, repo } = await newRepo({ packSizeBytes: 1 << 20, indexEveryPacks: 2 });
  try {
    const w = await repo.startBackup({ runId: "incremental-index" });
    await w.addFile(fileNode("a.bin"), pieces(random(12 << 20)));
    await new Promise((resolve) => setTimeout(resolve, 50));
    let indexFiles = 0;
    for await (const _ of store.list("index/")) indexFiles++;
    assert.ok(indexFiles >= 2, `expected index files before commit, found ${indexFiles}`);
    await w.commit(META);
  } finally {
    await repo.close();
  }
});

void test("addFile calls that do not wait for each other keep their order; identical files in flight are stored once", async () => {
  const { store, repo } = await newRepo({ workers: 2 });
  try {
    const w = await repo.startBackup({ runId: "pipelined" });
    const same = random(40_000);
    const files = Array.from({ length: 200 }, (_, i) => (i % 10 === 0 ? same : random(1000 + i * 37)));
    const calls: Promise<TreeNode>[] = [];
    for (const [i, data] of files.entries()) {
      if (i === 50) calls.push(w.addFile(fileNode("big.bin"), pieces(random(3 << 20))));
      calls.push(w.addFile(fileNode(`f${String(i).padStart(3, "0")}`), pieces(data)));
    }
    const nodes = await Promise.all(calls);
    const { snapshot, stats } = await w.commit(META);
    assert.equal(stats.filesNew, 201);
    const expectedNew = 1 + 180 + nodes.find((n) => n.path === "big.bin")!.chunks!.length + snapshot.tree.chunks.length;
    assert.equal(stats.chunksNew, expectedNew, "the 20 copies of one file are one chunk");
    await repo.close();
    const reopened = await Repository.open(store, PASSWORD, FAST);
    const tree = await collect(reopened.readTree(snapshot));
    assert.deepEqual(
      tree.map((n) => n.path),
      calls.map((_, k) => nodes[k]!.path),
    );
    for (const [i, data] of files.entries()) {
      const node = tree.find((n) => n.path === `f${String(i).padStart(3, "0")}`)!;
      assert.ok((await readAll(reopened.readFile(node))).equals(data), node.path);
    }
    await reopened.close();
  } finally {
    await repo.close();
  }
});

void test("a producer that reuses one buffer for every piece is read correctly", async () => {
  const { repo } = await newRepo({ workers: 2 });
  try {
    const data = random(1_500_000);
    async function* reusing(pieceSize: number): AsyncGenerator<Uint8Array> {
      const buffer = Buffer.alloc(pieceSize);
      for (let i = 0; i < data.length; i += pieceSize) {
        const n = data.copy(buffer, 0, i, Math.min(data.length, i + pieceSize));
        yield buffer.subarray(0, n);
      }
    }
    const w = await repo.startBackup({ runId: "reuse" });
    const nodes = await Promise.all([
      w.addFile(fileNode("small-pieces"), reusing(100_000)),
      w.addFile(
        fileNode("one-small"),
        (async function* () {
          const buffer = Buffer.from(data.subarray(0, 300_000));
          yield buffer;
          buffer.fill(0);
        })(),
      ),
    ]);
    await w.commit(META);
    assert.ok((await readAll(repo.readFile(nodes[0]))).equals(data));
    assert.ok((await readAll(repo.readFile(nodes[1]))).equals(data.subarray(0, 300_000)));
  } finally {
    await repo.close();
  }
});

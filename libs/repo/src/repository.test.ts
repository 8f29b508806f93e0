import assert from "node:assert/strict";
import { mkdir } from "node:fs/promises";
import { test } from "node:test";
import { IotvaultError, isCode } from "@iotvault/errors";
import { LocalDirectoryStore, MemoryStore } from "@iotvault/storage";
import * as manifests from "./manifests.js";
import { Repository } from "./repository.js";
import { withTempDir } from "./test-support.js";
import { FAST, META, PASSWORD, collect, dirNode, fileNode, newRepo, pieces, random, readAll } from "./test-util.js";

void test("open with a wrong passphrase is refused with WRONG_KEY and names no secret", async () => {
  const { store, repo } = await newRepo();
  await repo.close();
  const wrong = Buffer.from("hunter2-not-the-passphrase", "utf8");
  await assert.rejects(Repository.open(store, wrong, FAST), (err: unknown) => {
    assert.ok(isCode(err, "WRONG_KEY"), `expected WRONG_KEY, got ${String(err)}`);
    const text = `${err.message} ${err.hint ?? ""} ${JSON.stringify(err.details)}`;
    assert.ok(!text.includes(wrong.toString()) && !text.includes(PASSWORD.toString()), "a passphrase leaked");
    assert.match(err.hint ?? "", /IOTVAULT_PASSWORD/);
    return true;
  });
  const reopened = await Repository.open(store, PASSWORD, FAST);
  assert.equal(reopened.id, repo.id);
  await reopened.close();
});

void test("a store without a repository is FAILED_PRECONDITION; init twice is ALREADY_EXISTS", async () => {
  const empty = new MemoryStore();
  assert.equal(await Repository.exists(empty), false);
  await assert.rejects(Repository.open(empty, PASSWORD, FAST), (err: unknown) => {
    assert.ok(isCode(err, "FAILED_PRECONDITION"));
    assert.match(err.message, /no iotvault repository at memory:.*iotvault repo init/);
    return true;
  });
  const { store, repo } = await newRepo();
  await repo.close();
  assert.equal(await Repository.exists(store), true);
  await assert.rejects(Repository.init(store, PASSWORD, FAST), (err: unknown) => isCode(err, "ALREADY_EXISTS"));
});

void test("two inits racing on one directory: one wins, the repository opens, no stray slot is left", async () => {
  await withTempDir(async (dir) => {
    for (let round = 0; round < 5; round++) {
      await mkdir(`${dir}/r${round}`);
      const store = new LocalDirectoryStore(`${dir}/r${round}`);
      const other = Buffer.from(`another passphrase ${round}`, "utf8");
      const results = await Promise.allSettled([
        Repository.init(store, PASSWORD, FAST),
        Repository.init(store, other, FAST),
      ]);
      const won = results.flatMap((r, i) => (r.status === "fulfilled" ? [{ repo: r.value, i }] : []));
      const outcomes = results.map((r) => (r.status === "fulfilled" ? "ok" : String(r.reason)));
      assert.equal(won.length, 1, `round ${round}: ${outcomes.join("; ")}`);
      for (const r of results) {
        if (r.status === "rejected") assert.ok(isCode(r.reason, "ALREADY_EXISTS"), String(r.reason));
      }
      const { repo, i } = won[0]!;
      await repo.close();
      const reopened = await Repository.open(store, i === 0 ? PASSWORD : other, FAST);
      assert.equal(reopened.id, repo.id);
      await reopened.close();
      await assert.rejects(Repository.open(store, i === 0 ? other : PASSWORD, FAST), (err: unknown) =>
        isCode(err, "WRONG_KEY"),
      );
      const slots = [];
      for await (const info of store.list("keys/")) slots.push(info.key);
      assert.equal(slots.length, 1, `round ${round}: slots ${slots.join(", ")}`);
    }
  });
});

void test("no key material is stored in the clear", async () => {
  const { store, repo } = await newRepo();
  const w = await repo.startBackup({ runId: "r" });
  await w.addFile(fileNode("a.txt"), pieces(Buffer.from("a secret sensor reading 42")));
  await w.commit(META);
  await repo.close();
  for await (const info of store.list("")) {
    const bytes = store.raw(info.key)!;
    assert.ok(!bytes.includes(PASSWORD), `${info.key} contains the passphrase`);
    assert.ok(!bytes.includes(Buffer.from("sensor reading")), `${info.key} contains plaintext`);
  }
});

void test("a repository of a newer format version is refused with a clear error", async () => {
  const { store, repo } = await newRepo();
  await repo.close();
  const config = JSON.parse(store.raw("config")!.toString("utf8")) as Record<string, unknown>;
  store.overwrite("config", Buffer.from(JSON.stringify({ ...config, version: 2 })));
  await assert.rejects(Repository.open(store, PASSWORD, FAST), (err: unknown) => {
    assert.ok(isCode(err, "FAILED_PRECONDITION"), String(err));
    assert.match(err.message, /format version 2, newer than this iotvault supports \(1\)/);
    assert.match(err.hint ?? "", /upgrade/);
    return true;
  });
});

void test("a changed config (chunker parameters) fails authentication", async () => {
  const { store, repo } = await newRepo();
  await repo.close();
  const config = JSON.parse(store.raw("config")!.toString("utf8")) as { chunker: Record<string, number> };
  config.chunker["minSize"] = 4096;
  store.overwrite("config", Buffer.from(JSON.stringify(config)));
  await assert.rejects(Repository.open(store, PASSWORD, FAST), (err: unknown) => isCode(err, "DATA_CORRUPT"));
});

void test("snapshotIdFor is deterministic per run and per repository", async () => {
  const { store, repo } = await newRepo();
  const id = repo.snapshotIdFor("run-1");
  assert.match(id, /^[0-9a-f]{64}$/);
  assert.equal(repo.snapshotIdFor("run-1"), id);
  assert.notEqual(repo.snapshotIdFor("run-2"), id);
  await repo.close();
  const reopened = await Repository.open(store, PASSWORD, FAST);
  assert.equal(reopened.snapshotIdFor("run-1"), id);
  await reopened.close();
  const { repo: other } = await newRepo();
  assert.notEqual(other.snapshotIdFor("run-1"), id);
  await other.close();
});

void test("a committed run is visible by id; committing the same run again is refused", async () => {
  const { repo } = await newRepo();
  try {
    const w = await repo.startBackup({ runId: "run-x" });
    assert.equal(await repo.hasSnapshot(w.snapshotId), false);
    await w.addNode(dirNode("etc"));
    const { snapshot } = await w.commit({ ...META, tags: ["nightly"], labels: { site: "edge-1" } });
    assert.equal(snapshot.id, repo.snapshotIdFor("run-x"));
    assert.equal(await repo.hasSnapshot(snapshot.id), true);
    await assert.rejects(repo.startBackup({ runId: "run-x" }), (err: unknown) => isCode(err, "ALREADY_EXISTS"));
    // The refused start left no lock behind: an exclusive one is granted without waiting.
    await (await repo.lockIndexed("exclusive", { waitMs: 0 })).release();
    const loaded = await repo.loadSnapshot(snapshot.id);
    assert.deepEqual(loaded, snapshot);
    assert.deepEqual(loaded.tags, ["nightly"]);
  } finally {
    await repo.close();
  }
});

void test("listSnapshots reads each manifest once per process; a forgotten one goes, a changed object is read again", async () => {
  const { store, repo } = await newRepo();
  const other = await Repository.open(store, PASSWORD, FAST); // another open in the same process
  try {
    const commit = async (runId: string) => {
      const w = await repo.startBackup({ runId });
      await w.addNode(dirNode("etc"));
      return (await w.commit(META)).snapshot;
    };
    for (const run of ["r1", "r2", "r3"]) await commit(run);
    let reads = manifests.manifestReads;
    const first = await repo.listSnapshots();
    assert.equal(first.length, 3);
    assert.equal(manifests.manifestReads - reads, 3);
    reads = manifests.manifestReads;
    const again = await other.listSnapshots();
    assert.deepEqual(again, first, "the same manifests, from memory");
    assert.equal(manifests.manifestReads - reads, 0);
    again[0]!.tags.push("changed by a caller");
    assert.deepEqual((await repo.listSnapshots())[0]!.tags, [], "callers get their own copies");

    const fourth = await commit("r4");
    reads = manifests.manifestReads;
    const { removed } = await repo.forget({ policy: { keepLast: 3 } }); // lists them too
    assert.equal(removed.length, 1);
    const now = await other.listSnapshots();
    assert.deepEqual(
      now.map((m) => m.id).sort(),
      [fourth.id, ...first.map((m) => m.id)].filter((id) => id !== removed[0]).sort(),
    );
    assert.equal(manifests.manifestReads - reads, 1, "only the new manifest was read, once");

    // An object whose size changed under the same name is read again (here: found damaged).
    const key = `snapshots/${fourth.id}`;
    store.overwrite(key, Buffer.concat([store.raw(key)!, Buffer.from([0])]));
    await assert.rejects(other.listSnapshots(), (err: unknown) => isCode(err, "DATA_CORRUPT"));
  } finally {
    await other.close();
    await repo.close();
  }
});

void test("loadSnapshot by prefix; short, unknown and ambiguous prefixes are refused", async () => {
  const { store, repo } = await newRepo();
  try {
    const ids: string[] = [];
    for (const [i, runId] of ["a", "b", "c"].entries()) {
      const w = await repo.startBackup({ runId });
      await w.addNode(dirNode(`d${i}`));
      ids.push((await w.commit({ ...META, time: new Date(Date.UTC(2026, 0, 1 + i)) })).snapshot.id);
    }
    const listed = await repo.listSnapshots();
    assert.deepEqual(
      listed.map((s) => s.id),
      [ids[2], ids[1], ids[0]],
      "newest first",
    );
    const byPrefix = await repo.loadSnapshot(ids[1]!.slice(0, 8));
    assert.equal(byPrefix.id, ids[1]);
    await assert.rejects(repo.loadSnapshot(ids[1]!.slice(0, 5)), (err: unknown) => isCode(err, "INVALID_ARGUMENT"));
    const unknown = ids[0]!.startsWith("ffffff") ? "eeeeee" : "ffffff";
    await assert.rejects(repo.loadSnapshot(unknown), (err: unknown) => isCode(err, "NOT_FOUND"));
    // A second object sharing the first 10 characters makes that prefix ambiguous.
    const twin = ids[0]!.slice(0, 10) + "0".repeat(54);
    await store.put(`snapshots/${twin === ids[0] ? "1".repeat(64) : twin}`, Buffer.from("x"));
    await assert.rejects(repo.loadSnapshot(ids[0]!.slice(0, 10)), (err: unknown) => {
      assert.ok(isCode(err, "INVALID_ARGUMENT"));
      assert.match(err.message, /ambiguous/);
      return true;
    });
  } finally {
    await repo.close();
  }
});

void test("tree nodes come back in the order they were added, across many tree chunks", async () => {
  const { repo } = await newRepo({ chunker: { minSize: 1024, avgSize: 4096, maxSize: 16384 } });
  try {
    const w = await repo.startBackup({ runId: "tree" });
    const paths: string[] = [];
    for (let i = 0; i < 3000; i++) {
      const path = `dir-${Math.floor(i / 100)}/données-日本語-${i}`;
      paths.push(path);
      if (i % 100 === 0) await w.addNode(dirNode(path));
      else await w.addNode({ path, type: "symlink", mode: 0o777, mtimeNs: "5", uid: 0, gid: 0, target: `../t/${i}` });
    }
    const { snapshot, stats } = await w.commit(META);
    assert.ok(snapshot.tree.chunks.length > 10, `expected many tree chunks, got ${snapshot.tree.chunks.length}`);
    assert.equal(stats.dirs + stats.symlinks, 3000);
    const nodes = await collect(repo.readTree(snapshot));
    assert.deepEqual(
      nodes.map((n) => n.path),
      paths,
    );
    assert.equal(nodes[1]!.target, "../t/1");
  } finally {
    await repo.close();
  }
});

void test("addFile fills size, chunks and sha256; an empty file has no chunks", async () => {
  const { repo } = await newRepo();
  try {
    const w = await repo.startBackup({ runId: "files" });
    const empty = await w.addFile(fileNode("empty"), pieces(Buffer.alloc(0)));
    assert.equal(empty.size, 0);
    assert.deepEqual(empty.chunks, []);
    assert.equal(empty.sha256, "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855");
    const data = random(3 << 20);
    const node = await w.addFile(fileNode("data.bin"), pieces(data, 100_000));
    assert.equal(node.size, data.length);
    const { snapshot } = await w.commit(META);
    const nodes = await collect(repo.readTree(snapshot));
    assert.equal((await readAll(repo.readFile(nodes[0]!))).length, 0);
    assert.ok((await readAll(repo.readFile(nodes[1]!))).equals(data));
  } finally {
    await repo.close();
  }
});

void test("invalid nodes and calls after commit are refused", async () => {
  const { repo } = await newRepo();
  try {
    const w = await repo.startBackup({ runId: "bad" });
    await assert.rejects(w.addNode({ ...dirNode("x"), mode: -1 }), (err: unknown) => isCode(err, "INVALID_ARGUMENT"));
    await assert.rejects(w.addNode(fileNode("f")), (err: unknown) => isCode(err, "INVALID_ARGUMENT"));
    await w.commit(META);
    await assert.rejects(w.addNode(dirNode("late")), (err: unknown) => err instanceof IotvaultError);
  } finally {
    await repo.close();
  }
});

void test("a damaged key slot is skipped when another slot opens; alone, its error is reported", async () => {
  const { store, repo } = await newRepo();
  await repo.close();
  const slots: string[] = [];
  for await (const info of store.list("keys/")) slots.push(info.key);
  const good = store.raw(slots[0]!)!;
  const other = `keys/${"ab".repeat(32)}`;
  await store.put(other, Buffer.from("{ not json"));
  const reopened = await Repository.open(store, PASSWORD, FAST);
  await reopened.close();
  await store.delete(slots[0]!);
  await assert.rejects(Repository.open(store, PASSWORD, FAST), (err: unknown) => isCode(err, "DATA_CORRUPT"));
  const newer = JSON.parse(good.toString("utf8")) as Record<string, unknown>;
  await store.delete(other);
  await store.put(slots[0]!, Buffer.from(JSON.stringify({ ...newer, version: 9 })));
  await assert.rejects(Repository.open(store, PASSWORD, FAST), (err: unknown) => {
    assert.ok(isCode(err, "FAILED_PRECONDITION"), String(err));
    assert.match(err.message, /newer than this iotvault supports/);
    return true;
  });
});

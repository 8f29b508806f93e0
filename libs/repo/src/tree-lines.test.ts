/**
 * An incremental backup's unchanged files: nodes read from the parent with `frozen` are added
 * by copying the line they were stored as, and the tree is hashed and chunked in batches of
 * lines. Both must give exactly the bytes, chunks and checks of encoding every node.
 */
import assert from "node:assert/strict";
import { createHash } from "node:crypto";
import { test } from "node:test";
import { encodeNode, type TreeNode } from "./tree.js";
import { META, collect, dirNode, fileNode, newRepo, pieces } from "./test-util.js";
import type { Repository } from "./repository.js";
import type { SnapshotManifest } from "./snapshot.js";

/** A parent with a tree of several batches (> 64 KiB of lines): dirs, files with shared content, odd names. */
async function parentSnapshot(repo: Repository, files: number): Promise<SnapshotManifest> {
  const w = await repo.startBackup({ runId: "parent" });
  for (let d = 0; d < 4; d++) {
    await w.addNode(dirNode(`d${d}`));
    for (let i = 0; i < files / 4; i++) {
      const name = i % 7 === 0 ? `ü-\u{1F600}-"quoted"-${i}` : `file-${String(i).padStart(5, "0")}`;
      const content = Buffer.from(`content ${d}/${i % 50}\n`.repeat(1 + (i % 5)));
      const node = fileNode(`d${d}/${name}`, { size: content.length, inode: String(1000 + i), ctimeNs: "17" });
      await w.addFile(node, pieces(content));
    }
  }
  await w.addNode({ ...dirNode("links"), mode: 0o700 });
  await w.addNode({ path: "links/l", type: "symlink", mode: 0o777, mtimeNs: "1", uid: 0, gid: 0, target: "../d0" });
  return (await w.commit(META)).snapshot;
}

/** Backs the parent's tree up again, every file node passed through `pass`. */
async function again(repo: Repository, parent: SnapshotManifest, frozen: boolean, pass = (n: TreeNode) => n) {
  const w = await repo.startBackup({ runId: `again-${frozen}`, parent });
  for await (const node of repo.readTree(parent, undefined, { frozen })) {
    if (node.type === "file") await w.addUnchangedFile(pass(node));
    else await w.addNode(node);
  }
  const copied = w.nodesCopied;
  return { snapshot: (await w.commit({ ...META, backupType: "incremental" })).snapshot, copied };
}

for (const workers of [1, 2]) {
  void test(`unchanged frozen parent nodes are copied as stored: same tree bytes, chunks and checks (workers: ${workers})`, async () => {
    const { repo } = await newRepo({ workers });
    try {
      const parent = await parentSnapshot(repo, 1200);
      assert.ok(parent.tree.bytes > 3 * 64 * 1024, `the tree spans several batches (${parent.tree.bytes} bytes)`);
      const plain = await collect(repo.readTree(parent));
      const expected = createHash("sha256")
        .update(plain.map((n) => encodeNode(n)).join(""))
        .digest("hex");
      assert.equal(parent.tree.sha256, expected, "batched lines hash as the nodes encoded one by one");

      const copied = await again(repo, parent, true);
      assert.equal(copied.copied, 1200, "every file node was copied");
      const encoded = await again(repo, parent, false);
      assert.equal(encoded.copied, 0, "nodes read without `frozen` are encoded");
      for (const s of [copied.snapshot, encoded.snapshot]) {
        assert.deepEqual(s.tree, parent.tree, "the same lines, so the same chunks, sha256, size and node count");
        assert.deepEqual(await collect(repo.readTree(s)), plain);
      }
    } finally {
      await repo.close();
    }
  });
}

void test("frozen nodes cannot be changed, and a changed copy is checked and encoded, not copied", async () => {
  const { repo } = await newRepo();
  try {
    const parent = await parentSnapshot(repo, 40);
    const [file] = (await collect(repo.readTree(parent, undefined, { frozen: true }))).filter((n) => n.type === "file");
    assert.ok(file && Object.isFrozen(file) && Object.isFrozen(file.chunks));
    assert.throws(() => {
      (file as { sha256?: string }).sha256 = "0".repeat(64);
    }, TypeError);
    assert.throws(() => file.chunks!.push(file.chunks![0]!), TypeError);

    // A copy with other content: encoded from its members (a copied line would keep the old sha256).
    const other = "a".repeat(64);
    const { snapshot, copied } = await again(repo, parent, true, (n) =>
      n.path === file.path ? { ...n, sha256: other } : n,
    );
    assert.equal(copied, 39);
    const back = (await collect(repo.readTree(snapshot))).find((n) => n.path === file.path);
    assert.equal(back?.sha256, other);

    // A copy that is not a valid node is refused, as any node the caller builds.
    const w = await repo.startBackup({ runId: "bad", parent });
    await assert.rejects(w.addUnchangedFile({ ...file, sha256: "not-hex" }), /invalid sha256/);
    await w.abort();
  } finally {
    await repo.close();
  }
});

void test("readTree with filesOfAtLeast yields exactly the file nodes of that size or more, and still checks the tree", async () => {
  const { repo } = await newRepo();
  try {
    const w = await repo.startBackup({ runId: "sizes" });
    await w.addNode(dirNode("d"));
    const files: [string, number][] = [
      ["d/a", 50],
      ["d/b", 150],
      ['d/x"size":999999', 10], // the member's text inside a name: escaped, never taken for it
      ["d/y-size-200", 200],
    ];
    for (const [path, size] of files) await w.addFile(fileNode(path, { size }), pieces(Buffer.alloc(size, 1)));
    const { snapshot } = await w.commit(META);
    const big = await collect(repo.readTree(snapshot, undefined, { filesOfAtLeast: 150 }));
    assert.deepEqual(
      big.map((n) => n.path),
      ["d/b", "d/y-size-200"],
    );
    assert.deepEqual(await collect(repo.readTree(snapshot, undefined, { filesOfAtLeast: 1_000_000 })), []);
  } finally {
    await repo.close();
  }
});

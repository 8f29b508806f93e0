/**
 * The fast paths of backup and restore: files read and sealed by the worker threads themselves
 * (addLocalFile), and contents fetched ahead and written into descriptors by the workers
 * (readFiles().write), each against real temporary files.
 */
import assert from "node:assert/strict";
import { closeSync, mkdirSync, mkdtempSync, openSync, readFileSync, rmSync, statSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { setTimeout as sleep } from "node:timers/promises";
import { test } from "node:test";
import { isCode } from "@iotvault/errors";
import type { MemoryStore } from "@iotvault/storage";
import { packKey } from "./format.js";
import type { LocalFileStat } from "./pipeline-core.js";
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
import type { TreeNode } from "./tree.js";

function withDir<T>(fn: (dir: string) => Promise<T>): Promise<T> {
  const dir = mkdtempSync(join(tmpdir(), "iotvault-fast-"));
  return fn(dir).finally(() => rmSync(dir, { recursive: true, force: true }));
}

const nodeOf = (path: string) => (stat: LocalFileStat) => ({
  ...fileNode(path),
  mode: stat.mode & 0o7777,
  mtimeNs: stat.mtimeNs.toString(),
  inode: stat.ino.toString(),
});

/** Counts the store's gets of pack data from now on (the reads of a restore). */
function countDataGets(store: MemoryStore): () => number {
  let gets = 0;
  const get = store.get.bind(store);
  store.get = (...args) => {
    if (args[0].startsWith("data/")) gets++;
    return get(...args);
  };
  return () => gets;
}

/** Writes each file's content through `readFiles().write` into a new file; returns what was written. */
async function restoreAll(repo: Repository, nodes: TreeNode[], dir: string): Promise<Map<string, Buffer>> {
  const reader = repo.readFiles({ aheadBytes: 8 << 20 });
  const out = new Map<string, Buffer>();
  try {
    await Promise.all(
      nodes.map(async (node, i) => {
        const path = join(dir, `out-${i}`);
        const fd = openSync(path, "w+");
        try {
          assert.equal(await reader.write(node, fd), node.size);
        } finally {
          closeSync(fd);
        }
        out.set(node.path, readFileSync(path));
      }),
    );
  } finally {
    reader.close();
  }
  return out;
}

for (const workers of [1, 2]) {
  void test(`addLocalFile reads files in the sealer (workers: ${workers}); vanished files are not added and say why`, async () => {
    await withDir(async (dir) => {
      const { store, repo } = await newRepo({ workers });
      try {
        const files = new Map<string, Buffer>([
          ["a.json", jsonLines(300_000)],
          ["b.bin", random(2_500_000)], // more than one chunk (512 KiB minimum)
          ["c.txt", Buffer.from("tiny")],
          ["empty", Buffer.alloc(0)],
        ]);
        for (const [name, data] of files) writeFileSync(join(dir, name), data);
        mkdirSync(join(dir, "a-directory"));
        const w = await repo.startBackup({ runId: `local-${workers}` });
        const outcomes = await Promise.all([
          ...[...files.keys()].map((name) =>
            w.addLocalFile(join(dir, name), files.get(name)!.length, { node: nodeOf(name) }),
          ),
          w.addLocalFile(join(dir, "missing"), 10, { node: nodeOf("missing") }),
          w.addLocalFile(join(dir, "a-directory"), 10, { node: nodeOf("a-directory") }),
        ]);
        const { snapshot, stats } = await w.commit(META);
        assert.deepEqual(
          outcomes.map((o) => (o.added ? "added" : o.reason)),
          ["added", "added", "added", "added", "gone", "gone"],
        );
        assert.equal(stats.filesNew, 4);
        assert.equal(
          stats.bytesRead,
          [...files.values()].reduce((n, d) => n + d.length, 0),
        );
        const first = outcomes[0];
        assert.ok(first.added && first.node.inode === statSync(join(dir, "a.json")).ino.toString());
        await repo.close();

        const reopened = await Repository.open(store, PASSWORD, FAST);
        try {
          const tree = await collect(reopened.readTree(snapshot));
          assert.deepEqual(
            tree.map((n) => n.path),
            ["a.json", "b.bin", "c.txt", "empty"],
          );
          assert.ok(tree[1]!.chunks!.length > 1, "b.bin is several chunks");
          const restored = await restoreAll(reopened, tree, dir);
          for (const [name, data] of files) assert.ok(restored.get(name)!.equals(data), name);
        } finally {
          await reopened.close();
        }
      } finally {
        await repo.close();
      }
    });
  });
}

void test("readFiles fetches many files in few requests; read() yields them in order", async () => {
  await withDir(async (dir) => {
    const { store, repo } = await newRepo({ workers: 2, packSizeBytes: 4 << 20 });
    try {
      const w = await repo.startBackup({ runId: "many" });
      const contents = Array.from({ length: 300 }, (_, i) => (i % 3 ? jsonLines(5_000 + i * 31) : random(9_000 + i)));
      contents.push(random(3 << 20));
      await Promise.all(contents.map((data, i) => w.addFile(fileNode(`f${String(i).padStart(3, "0")}`), pieces(data))));
      const { snapshot } = await w.commit(META);
      const tree = await collect(repo.readTree(snapshot));

      const gets = countDataGets(store);
      const restored = await restoreAll(repo, tree, dir);
      tree.forEach((node, i) => assert.ok(restored.get(node.path)!.equals(contents[i]!), node.path));
      assert.ok(
        gets() <= 12,
        `${gets()} ranged gets for ${tree.length} files in ${coreOf(repo).index.packs().size} packs`,
      );

      const reader = repo.readFiles();
      try {
        const streams = tree.slice(0, 20).map((node) => reader.read(node));
        for (const [i, stream] of streams.entries()) {
          const parts: Buffer[] = [];
          for await (const part of stream) parts.push(part);
          assert.ok(Buffer.concat(parts).equals(contents[i]!));
        }
      } finally {
        reader.close();
      }
    } finally {
      await repo.close();
    }
  });
});

void test("written files with equal contents, and well-compressed ones, are fetched in a few requests", async () => {
  await withDir(async (dir) => {
    const { store, repo } = await newRepo({ workers: 2, packSizeBytes: 4 << 20 });
    try {
      // A PostgreSQL cluster's shape: the same small files in every database (deduplicated to one
      // chunk each, which the restore asks for several times), and between them relation files
      // that zstd shrinks ~50x (40 MiB of plaintext, well past the look-ahead of 8 MiB below,
      // in under 2 MiB stored).
      const table = (rows: number, seed: number) => {
        const lines: string[] = [];
        for (let i = 0; i < rows; i++) lines.push(`row ${seed} ${i} ${"x".repeat(120)} ${i % 7}\n`);
        return Buffer.from(lines.join(""));
      };
      const shared = Array.from({ length: 40 }, (_, i) => random(2_000 + i * 37));
      const contents: Buffer[] = [];
      for (let db = 0; db < 4; db++) {
        contents.push(...shared.slice(0, 20), table(80_000, db), ...shared.slice(20));
      }
      const w = await repo.startBackup({ runId: "cluster" });
      const nodes = [];
      for (const [i, data] of contents.entries()) {
        nodes.push(await w.addFile(fileNode(`base/${String(i).padStart(3, "0")}`), pieces(data)));
      }
      const { stats } = await w.commit(META);
      const total = contents.reduce((n, c) => n + c.length, 0);
      assert.ok(stats.bytesStored * 10 < total, `stored ${stats.bytesStored} of ${total}`);

      const gets = countDataGets(store);
      const tree = nodes.map((n, i) => ({ ...n, size: contents[i]!.length }));
      const restored = await restoreAll(repo, tree, dir);
      tree.forEach((node, i) => assert.ok(restored.get(node.path)!.equals(contents[i]!), node.path));
      // Four first requests (one file each, before the rest is queued), then about one per pack.
      // A duplicate chunk used to end its range (~100 gets here), and counting the written
      // plaintext against the look-ahead cut the stored megabytes into many windows.
      const packs = coreOf(repo).index.packs().size;
      assert.ok(gets() <= 4 + 2 * packs, `${gets()} ranged gets for ${tree.length} files in ${packs} packs`);
    } finally {
      await repo.close();
    }
  });
});

void test("a range of well-compressed chunks is opened by several worker jobs, and restored byte for byte", async () => {
  await withDir(async (dir) => {
    const { store, repo } = await newRepo({ workers: 2 });
    try {
      // 40 MiB that zstd shrinks ~50x: one ranged get holds all of it.
      const lines: string[] = [];
      for (let i = 0, n = 0; n < 40 << 20; i++)
        n += lines[lines.push(`row ${i} ${"x".repeat(120)} ${i % 7}\n`) - 1]!.length;
      const data = Buffer.from(lines.join(""));
      const w = await repo.startBackup({ runId: "compressible" });
      const node = await w.addFile(fileNode("relation"), pieces(data));
      const { stats } = await w.commit(META);
      assert.ok(stats.bytesStored * 10 < data.length, `stored ${stats.bytesStored} of ${data.length}`);

      const sealer: unknown = Reflect.get(repo, "sealer");
      const opener = sealer as { open: (...args: unknown[]) => Promise<unknown> };
      const open = opener.open.bind(opener);
      let jobs = 0;
      opener.open = (...args) => {
        jobs++;
        return open(...args);
      };
      const gets = countDataGets(store);
      // The reader's default look-ahead (64 MiB of plaintext): the whole file in one window.
      const restoreOne = async () => {
        const reader = repo.readFiles();
        const path = join(dir, "relation");
        const fd = openSync(path, "w");
        try {
          await reader.write({ ...node, size: data.length }, fd);
        } finally {
          reader.close();
          closeSync(fd);
        }
        return readFileSync(path);
      };
      assert.ok((await restoreOne()).equals(data));
      assert.ok(gets() <= 2, `${gets()} ranged gets`);
      // At most 8 MiB of plaintext per job: the workers share the range.
      assert.ok(jobs >= Math.ceil(data.length / (8 << 20)), `${jobs} worker jobs for ${gets()} ranged gets`);

      // A damaged chunk in the middle of such a range fails the file, naming the pack.
      const loc = coreOf(repo).index.get(node.chunks![Math.floor(node.chunks!.length / 2)]!)!;
      store.raw(packKey(loc.packId))![loc.offset + Math.floor(loc.length / 2)]! ^= 1;
      await assert.rejects(restoreOne(), (err: unknown) => {
        assert.ok(isCode(err, "DATA_CORRUPT") && (err as Error).message.includes(loc.packId), String(err));
        return true;
      });
    } finally {
      await repo.close();
    }
  });
});

void test("a damaged blob fails the write of its file only, naming the pack; the others are written", async () => {
  await withDir(async (dir) => {
    const { store, repo } = await newRepo({ workers: 2, packSizeBytes: 1 << 20 });
    try {
      const w = await repo.startBackup({ runId: "damaged" });
      const a = await w.addFile(fileNode("a.bin"), pieces(random(1 << 20)));
      const b = await w.addFile(fileNode("b.bin"), pieces(random(1 << 20)));
      await w.commit(META);
      const loc = coreOf(repo).index.get(a.chunks![0]!)!;
      store.raw(packKey(loc.packId))![loc.offset + 100]! ^= 1;

      const reader = repo.readFiles();
      const fdA = openSync(join(dir, "a"), "w+");
      const fdB = openSync(join(dir, "b"), "w+");
      try {
        const [ra, rb] = await Promise.allSettled([reader.write(a, fdA), reader.write(b, fdB)]);
        assert.equal(ra.status, "rejected");
        const err = ra.reason as Error;
        assert.ok(isCode(err, "DATA_CORRUPT") && err.message.includes(loc.packId) && err.message.includes("a.bin"));
        assert.equal(rb.status, "fulfilled");
      } finally {
        reader.close();
        closeSync(fdA);
        closeSync(fdB);
      }
      assert.equal(readFileSync(join(dir, "b")).length, 1 << 20);
    } finally {
      await repo.close();
    }
  });
});

void test("addLocalFile waits while a full pack waits for its upload: a slow store slows the backup instead of filling memory", async () => {
  await withDir(async (dir) => {
    const { store, repo } = await newRepo({ workers: 2, packSizeBytes: 256 * 1024 });
    // Pack uploads wait for the gate: a store far slower than the workers.
    let open!: () => void;
    const gate = new Promise<void>((resolve) => (open = resolve));
    const put = store.put.bind(store);
    store.put = async (...args) => {
      if (args[0].startsWith("data/")) await gate;
      return put(...args);
    };
    const files = Array.from({ length: 120 }, (_, i) => {
      const data = random(64 * 1024);
      writeFileSync(join(dir, `f${i}`), data);
      return data;
    });
    try {
      const w = await repo.startBackup({ runId: "slow-store" });
      let taken = 0;
      const adding = files.map((data, i) =>
        w.addLocalFile(join(dir, `f${i}`), data.length, { node: nodeOf(`f${i}`) }).then((o) => {
          taken++;
          return o;
        }),
      );
      // Until the files stop being taken in (or all are).
      for (let before = -1; taken !== before && taken < files.length;) {
        before = taken;
        await sleep(300);
      }
      // One pack uploading, one full and waiting, one being filled: ~12 files of 64 KiB. Without
      // the wait, every file was taken in and its blobs copied aside until the upload ended.
      assert.ok(taken <= 20, `${taken} of ${files.length} files were taken in while no pack could be stored`);
      open();
      const outcomes = await Promise.all(adding);
      assert.ok(outcomes.every((o) => o.added));
      const { snapshot } = await w.commit(META);
      const tree = await collect(repo.readTree(snapshot));
      const restored = await restoreAll(repo, tree, dir);
      files.forEach((data, i) => assert.ok(restored.get(`f${i}`)!.equals(data), `f${i}`));
    } finally {
      open();
      await repo.close();
    }
  });
});

void test("commit stores the last pack beside the one still being stored, and no more at once", async () => {
  const { store, repo } = await newRepo({
    ...FAST,
    packSizeBytes: 256 * 1024,
    chunker: { minSize: 16 * 1024, avgSize: 64 * 1024, maxSize: 128 * 1024 },
  });
  // The first pack's upload is held until a second upload starts (or 20 s pass: then it was not).
  let second!: () => void;
  const secondStarted = new Promise<void>((resolve) => (second = resolve));
  let puts = 0;
  let running = 0;
  let most = 0;
  const put = store.put.bind(store);
  store.put = async (...args) => {
    if (!args[0].startsWith("data/")) return put(...args);
    const nth = ++puts;
    most = Math.max(most, ++running);
    try {
      if (nth === 1) await Promise.race([secondStarted, sleep(20_000)]);
      else second();
      return await put(...args);
    } finally {
      running--;
    }
  };
  try {
    const w = await repo.startBackup({ runId: "last-pack" });
    const data = random(400 * 1024);
    const node = await w.addFile(fileNode("a.bin"), pieces(data, 64 * 1024));
    const { snapshot } = await w.commit(META);
    assert.ok(puts >= 2, `${puts} packs`);
    assert.equal(most, 2, "the last pack was stored while the first still was, and never more than two at once");
    assert.deepEqual((await collect(repo.readTree(snapshot))).find((n) => n.path === "a.bin")?.sha256, node.sha256);
    assert.ok((await readAll(repo.readFile(node))).equals(data));
  } finally {
    second();
    await repo.close();
  }
});

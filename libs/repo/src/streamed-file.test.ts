/**
 * Large local files are streamed through one pipeline thread a segment at a time
 * (LocalFileStream): the chunks must be exactly those of a whole-file pass, a file that changes
 * under the read must come out "changed" (or, for database files, be kept as read), and a
 * stream given up must not leave its descriptor open.
 */
import assert from "node:assert/strict";
import { createHash, randomBytes } from "node:crypto";
import { appendFileSync, mkdtempSync, readdirSync, readlinkSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { test } from "node:test";
import { gearTable } from "./chunker.js";
import { DEFAULT_CHUNKER } from "./format.js";
import { chunkId } from "./blob.js";
import { Chunker } from "./chunker.js";
import { KnownChunks, knownIn } from "./known-chunks.js";
import { STREAM_SEGMENT_BYTES, type StreamedChunk } from "./pipeline-core.js";
import { Repository } from "./repository.js";
import { InlineSealer, type ChunkSealer } from "./sealer.js";
import { FAST, META, PASSWORD, coreOf, fileNode, newRepo, pieces } from "./test-util.js";
import type { TreeNode } from "./tree.js";
import { WorkerSealer } from "./workers.js";

function withDir<T>(fn: (dir: string) => Promise<T>): Promise<T> {
  const dir = mkdtempSync(join(tmpdir(), "iotvault-stream-"));
  return fn(dir).finally(() => rmSync(dir, { recursive: true, force: true }));
}

/** Compressible (base64 text) and incompressible stretches, all unique, so that chunks of every size occur. */
function mixed(bytes: number): Buffer {
  const parts: Buffer[] = [];
  for (let n = 0; n < bytes;) {
    const part = parts.length % 2 === 0 ? Buffer.from(randomBytes(3 << 20).toString("base64")) : randomBytes(2 << 20);
    parts.push(part.subarray(0, bytes - n));
    n += Math.min(part.length, bytes - n);
  }
  return Buffer.concat(parts);
}

const sha256 = (b: Uint8Array) => createHash("sha256").update(b).digest("hex");

/** Descriptors of this process (worker threads share them) open on `path`. */
function openDescriptors(path: string): number {
  return readdirSync("/proc/self/fd").filter((fd) => {
    try {
      return readlinkSync(`/proc/self/fd/${fd}`) === path;
    } catch {
      return false;
    }
  }).length;
}

for (const workers of [1, 2]) {
  void test(`large local files are streamed in segments with the chunks of a whole-file pass (workers: ${workers})`, async () => {
    await withDir(async (dir) => {
      const { store, repo } = await newRepo({ workers });
      try {
        const files = new Map<string, Buffer>([
          ["just-above", mixed(8 * 1024 * 1024 + 1)],
          ["two-segments", mixed(2 * STREAM_SEGMENT_BYTES)],
          ["long", mixed(3 * STREAM_SEGMENT_BYTES + 12345)],
        ]);
        for (const [name, data] of files) writeFileSync(join(dir, name), data);
        const w = await repo.startBackup({ runId: `stream-${workers}` });
        const streamed = await Promise.all(
          [...files].map(([name, data]) =>
            w.addLocalFile(join(dir, name), data.length, { node: () => fileNode(`streamed/${name}`) }),
          ),
        );
        // The same contents through the general path (the main thread's chunker).
        const whole: TreeNode[] = [];
        for (const [name, data] of files) whole.push(await w.addFile(fileNode(`whole/${name}`), pieces(data, 1 << 20)));
        const { snapshot, stats } = await w.commit(META);
        streamed.forEach((o, i) => {
          assert.ok(o.added);
          const [name, data] = [...files][i]!;
          assert.equal(o.node.size, data.length, name);
          assert.equal(o.node.sha256, sha256(data), name);
          assert.deepEqual(o.node.chunks, whole[i]!.chunks, `${name}: same chunks as a whole-file pass`);
        });
        assert.equal(stats.filesNew, 6);
        await repo.close();

        const reopened = await Repository.open(store, PASSWORD, FAST);
        try {
          for await (const node of reopened.readTree(snapshot)) {
            const name = node.path.split("/")[1]!;
            const parts: Buffer[] = [];
            for await (const piece of reopened.readFile(node)) parts.push(piece);
            assert.ok(Buffer.concat(parts).equals(files.get(name)!), node.path);
          }
        } finally {
          await reopened.close();
        }
      } finally {
        await repo.close();
      }
    });
  });
}

for (const workers of [1, 2]) {
  void test(`a large file streamed alone (split across the workers when there are two), and fixed chunks (workers: ${workers})`, async () => {
    await withDir(async (dir) => {
      const { store, repo } = await newRepo({ workers });
      try {
        const data = mixed(3 * STREAM_SEGMENT_BYTES + 4321);
        const original = Buffer.from(data);
        const path = join(dir, "relation");
        writeFileSync(path, data);
        const w = await repo.startBackup({ runId: `alone-${workers}` });
        // One after the other: each stream is alone (split with two workers, reusing the ring).
        const cdc = await w.addLocalFile(path, data.length, { node: () => fileNode("a-cdc") });
        const fixed = await w.addLocalFile(path, data.length, {
          fixedChunks: true,
          tolerateChanges: true,
          node: () => fileNode("b-fixed"),
        });
        const whole = await w.addFile(fileNode("c-whole"), pieces(data, 1 << 20));
        // A page changed in place: one fixed chunk changes, the others are known.
        const at = 2 * STREAM_SEGMENT_BYTES + 100;
        data[at] = data[at]! ^ 0xff;
        writeFileSync(path, data);
        const changed = await w.addLocalFile(path, data.length, {
          fixedChunks: true,
          node: () => fileNode("d-changed"),
        });
        const { snapshot, stats } = await w.commit(META);
        assert.ok(cdc.added && fixed.added && changed.added);
        const sealer: unknown = Reflect.get(repo, "sealer");
        if (workers > 1) assert.equal((sealer as WorkerSealer).splitStreams, 3, "each stream alone was split");
        assert.deepEqual(cdc.node.chunks, whole.chunks, "the split stream cuts the chunks of a whole-file pass");
        assert.equal(cdc.node.sha256, sha256(original));
        assert.equal(fixed.node.sha256, sha256(original));
        assert.equal(changed.node.sha256, sha256(data));
        const avg = DEFAULT_CHUNKER.avgSize;
        assert.equal(fixed.node.chunks!.length, Math.ceil(original.length / avg), "fixed chunks of the average size");
        const differing = fixed.node.chunks!.flatMap((id, i) => (id === changed.node.chunks![i] ? [] : [i]));
        assert.deepEqual(differing, [Math.floor(at / avg)], "one byte changed in place changes one fixed chunk");
        // Stored: the content-defined and the fixed chunks of the file, the changed one, and the tree.
        assert.equal(stats.chunksNew, new Set([...cdc.node.chunks!, ...fixed.node.chunks!]).size + 2);
        await repo.close();

        const reopened = await Repository.open(store, PASSWORD, FAST);
        try {
          for await (const node of reopened.readTree(snapshot)) {
            const parts: Buffer[] = [];
            for await (const piece of reopened.readFile(node)) parts.push(piece);
            assert.ok(Buffer.concat(parts).equals(node.path === "d-changed" ? data : original), node.path);
          }
        } finally {
          await reopened.close();
        }
      } finally {
        await repo.close();
      }
    });
  });
}

/** A sealer configured like a repository's, for the stream's own tests. */
function sealerFor(workers: number): ChunkSealer {
  const macKey = randomBytes(32);
  const sealer = workers > 1 ? new WorkerSealer(workers, 1, macKey) : new InlineSealer(1, macKey);
  sealer.configure({ gear: gearTable(randomBytes(32)), chunker: { ...DEFAULT_CHUNKER, normalization: 2 } });
  return sealer;
}

const KEY = { key: randomBytes(32), keyId: 1 };

for (const workers of [1, 2]) {
  void test(`a streamed file that changes under every read is "changed"; with tolerateChanges it is kept as read (workers: ${workers})`, async () => {
    await withDir(async (dir) => {
      const sealer = sealerFor(workers);
      try {
        const path = join(dir, "growing.log");
        const original = mixed(3 * STREAM_SEGMENT_BYTES);
        writeFileSync(path, original);
        // Appends while each segment is taken over: every attempt sees the file change.
        const changed = await sealer.sealStreamedLocalFile(
          path,
          { attempts: 3 },
          () => KEY,
          (chunks) => {
            appendFileSync(path, "one more line\n");
            assert.ok(chunks.every((c) => "sealed" in c && c.sealed.length > 0));
          },
        );
        assert.equal(changed.kind, "changed");
        assert.match((changed as { message: string }).message, /changed while being read, 3 times in a row/);
        assert.equal(openDescriptors(path), 0, "every attempt closed the file");

        writeFileSync(path, original);
        let appended = 0;
        const kept = await sealer.sealStreamedLocalFile(
          path,
          { attempts: 1, tolerateChanges: true },
          () => KEY,
          () => {
            if (appended++ === 0) appendFileSync(path, "written meanwhile\n");
          },
        );
        assert.equal(kept.kind, "read");
        if (kept.kind !== "read") return;
        const content = Buffer.concat([original, Buffer.from("written meanwhile\n")]);
        assert.equal(kept.size, content.length, "read to the end, the append included");
        assert.equal(kept.sha256, sha256(content));

        const gone = await sealer.sealStreamedLocalFile(
          join(dir, "missing"),
          { attempts: 3 },
          () => KEY,
          () => {},
        );
        assert.equal(gone.kind, "gone");
      } finally {
        await sealer.close();
      }
    });
  });

  void test(`a stream given up by its caller closes the file and the sealer goes on (workers: ${workers})`, async () => {
    await withDir(async (dir) => {
      const sealer = sealerFor(workers);
      try {
        const path = join(dir, "big");
        writeFileSync(path, mixed(4 * STREAM_SEGMENT_BYTES));
        const seen: StreamedChunk[][] = [];
        await assert.rejects(
          sealer.sealStreamedLocalFile(
            path,
            { attempts: 1 },
            () => KEY,
            (chunks) => {
              seen.push(chunks);
              throw new Error("the backup was cancelled");
            },
          ),
          /the backup was cancelled/,
        );
        assert.equal(seen.length, 1);
        // The worker closes the stream on the close job that follows the segments asked for ahead.
        for (let i = 0; i < 50 && openDescriptors(path) > 0; i++) await new Promise((r) => setTimeout(r, 20));
        assert.equal(openDescriptors(path), 0, "the given-up stream closed its descriptor");
        const again = await sealer.sealStreamedLocalFile(
          path,
          { attempts: 1 },
          () => KEY,
          () => {},
        );
        assert.equal(again.kind, "read");
      } finally {
        await sealer.close();
      }
    });
  });
}

void test("KnownChunks: every id added is found, through the shared buffer too, across growth; others are not", () => {
  const known = new KnownChunks(10);
  const ids = Array.from({ length: 5000 }, () => randomBytes(32).toString("hex"));
  const before = known.shared;
  for (const id of ids) known.add(id);
  assert.notEqual(known.shared, before, "the table grew into a new buffer");
  const table = new BigUint64Array(known.shared);
  for (const id of ids) assert.ok(known.has(id) && knownIn(table, id), id);
  const others = Array.from({ length: 5000 }, () => randomBytes(32).toString("hex"));
  assert.equal(others.filter((id) => knownIn(table, id)).length, 0);
  // An id whose first 64 bits are those of a known one is a hit: the caller must check the whole id.
  assert.ok(knownIn(table, ids[0]!.slice(0, 16) + "0".repeat(48)));
});

for (const workers of [1, 2]) {
  void test(`a streamed file's chunks found in the known table come back unsealed, the others sealed (workers: ${workers})`, async () => {
    await withDir(async (dir) => {
      const sealer = sealerFor(workers);
      try {
        const path = join(dir, "big");
        writeFileSync(path, mixed(3 * STREAM_SEGMENT_BYTES));
        const all: StreamedChunk[] = [];
        const first = await sealer.sealStreamedLocalFile(
          path,
          { attempts: 1 },
          () => KEY,
          (c) => void all.push(...c),
        );
        assert.equal(first.kind, "read");
        assert.ok(all.length > 4 && all.every((c) => "sealed" in c));
        const known = new KnownChunks(all.length);
        const half = all.filter((_, i) => i % 2 === 0).map((c) => c.id);
        for (const id of half) known.add(id);
        const again: StreamedChunk[] = [];
        const second = await sealer.sealStreamedLocalFile(
          path,
          { attempts: 1, known: known.shared },
          () => KEY,
          (c) => void again.push(...c),
        );
        assert.deepEqual(second, first, "the same file summary and chunk ids");
        assert.deepEqual(
          again.filter((c) => !("sealed" in c)).map((c) => c.id),
          half,
        );
        assert.ok(again.every((c) => "sealed" in c !== half.includes(c.id)));
      } finally {
        await sealer.close();
      }
    });
  });
}

void test("a backup streams known chunks without sealing them; a chunk the table only seemed to know makes the file be read again", async () => {
  await withDir(async (dir) => {
    const { store, repo } = await newRepo({ workers: 2 });
    try {
      const data = mixed(2 * STREAM_SEGMENT_BYTES + 777);
      const path = join(dir, "big");
      writeFileSync(path, data);
      const node = { node: () => fileNode("big") };
      const w1 = await repo.startBackup({ runId: "first" });
      await w1.addLocalFile(path, data.length, node);
      const one = await w1.commit(META);
      const w2 = await repo.startBackup({ runId: "second" });
      await w2.addLocalFile(path, data.length, node);
      const two = await w2.commit(META);
      assert.equal(two.stats.chunksNew, 0);

      // The chunks of another file, put in the session's table as if their 64-bit prefixes collided.
      const other = mixed(STREAM_SEGMENT_BYTES + 4321);
      writeFileSync(join(dir, "other"), other);
      const core = coreOf(repo);
      const chunker = new Chunker(core.config.chunker, core.gear);
      const ids = [...chunker.push(other), ...chunker.finish()].map((c) => chunkId(core.macKey, c));
      const w3 = await repo.startBackup({ runId: "third" });
      const table = (w3 as unknown as { knownChunks(): KnownChunks }).knownChunks();
      for (const id of ids) table.add(id);
      const added = await w3.addLocalFile(join(dir, "other"), other.length, { node: () => fileNode("other") });
      const three = await w3.commit(META);
      assert.ok(added.added);
      assert.deepEqual(added.node.chunks, ids);
      assert.equal(
        three.stats.chunksNew,
        ids.length + 1,
        "every chunk (and the tree's) was sealed and stored after all",
      );
      assert.ok(ids.every((id) => repo.hasChunk(id)));
      await repo.close();

      const reopened = await Repository.open(store, PASSWORD, FAST);
      try {
        for (const [snapshot, expected] of [
          [one.snapshot, data],
          [two.snapshot, data],
          [three.snapshot, other],
        ] as const) {
          for await (const n of reopened.readTree(snapshot)) {
            const parts: Buffer[] = [];
            for await (const piece of reopened.readFile(n)) parts.push(piece);
            assert.ok(Buffer.concat(parts).equals(expected), `${snapshot.id} ${n.path}`);
          }
        }
      } finally {
        await reopened.close();
      }
    } finally {
      await repo.close();
    }
  });
});

void test("streams run one per worker at a time: many large files never hold more files open than there are workers", async () => {
  await withDir(async (dir) => {
    const sealer = sealerFor(2);
    try {
      const paths = Array.from({ length: 5 }, (_, i) => join(dir, `f${i}`));
      for (const p of paths) writeFileSync(p, mixed(2 * STREAM_SEGMENT_BYTES));
      let most = 0;
      const results = await Promise.all(
        paths.map((p) =>
          sealer.sealStreamedLocalFile(
            p,
            { attempts: 1 },
            () => KEY,
            () => {
              most = Math.max(
                most,
                paths.map(openDescriptors).reduce((a, b) => a + b, 0),
              );
            },
          ),
        ),
      );
      assert.ok(results.every((r) => r.kind === "read"));
      assert.ok(most >= 1 && most <= 2, `at most 2 files open at once, saw ${most}`);
    } finally {
      await sealer.close();
    }
  });
});

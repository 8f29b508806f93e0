import assert from "node:assert/strict";
import { randomBytes } from "node:crypto";
import { test } from "node:test";
import { Chunker, gearTable } from "./chunker.js";
import { newConfig } from "./config.js";
import { META, fileNode, newRepo, pieces, random } from "./test-util.js";

const params = newConfig().chunker;

function chunkAll(data: Buffer, secret: Buffer, pieceSize: number): Buffer[] {
  const chunker = new Chunker(params, gearTable(secret));
  const out: Buffer[] = [];
  for (let i = 0; i < data.length; i += pieceSize) out.push(...chunker.push(data.subarray(i, i + pieceSize)));
  out.push(...chunker.finish());
  return out;
}

void test("chunks respect min/max sizes and concatenate back to the input", () => {
  const data = random(40 << 20);
  const chunks = chunkAll(data, randomBytes(32), 3 << 20);
  assert.ok(chunks.length >= 10, `expected many chunks, got ${chunks.length}`);
  chunks.slice(0, -1).forEach((c, i) => {
    assert.ok(c.length >= params.minSize, `chunk ${i} is ${c.length} bytes, below the minimum`);
    assert.ok(c.length <= params.maxSize, `chunk ${i} is ${c.length} bytes, above the maximum`);
  });
  assert.ok(Buffer.concat(chunks).equals(data));
  const avg = data.length / chunks.length;
  assert.ok(avg > params.minSize && avg < 2 * params.avgSize, `average chunk ${avg} is far from 1 MiB`);
});

void test("boundaries do not depend on how the input is split, but on the repository secret", () => {
  const data = random(12 << 20);
  const secret = randomBytes(32);
  const lengths = (cs: Buffer[]) => cs.map((c) => c.length).join(",");
  const a = chunkAll(data, secret, 1 << 20);
  const b = chunkAll(data, secret, 777_777);
  assert.equal(lengths(a), lengths(b));
  const other = chunkAll(data, randomBytes(32), 1 << 20);
  assert.notEqual(lengths(a), lengths(other), "another secret must give other boundaries");
});

void test("a chunker is reusable after finish() and reset()", () => {
  const data = random(3 << 20);
  const chunker = new Chunker(params, gearTable(Buffer.alloc(32, 7)));
  const first = [...chunker.push(data), ...chunker.finish()];
  assert.equal([...chunker.push(random(1000))].length, 0, "1000 bytes are not a chunk yet");
  chunker.reset();
  const second = [...chunker.push(data), ...chunker.finish()];
  assert.deepEqual(
    first.map((c) => c.length),
    second.map((c) => c.length),
  );
});

void test("an insertion in the middle of a large file changes only the chunks around it", async () => {
  const { repo } = await newRepo();
  try {
    const original = random(24 << 20);
    const middle = original.length >> 1;
    const edited = Buffer.concat([original.subarray(0, middle), random(100), original.subarray(middle)]);

    const w1 = await repo.startBackup({ runId: "insert-1" });
    const a = await w1.addFile(fileNode("big.bin"), pieces(original));
    await w1.commit(META);
    const w2 = await repo.startBackup({ runId: "insert-2" });
    const b = await w2.addFile(fileNode("big.bin"), pieces(edited, 700_000));
    const { stats } = await w2.commit(META);

    const before = new Set(a.chunks);
    const changed = b.chunks!.filter((id) => !before.has(id));
    assert.ok(a.chunks!.length >= 12, `expected >= 12 chunks for 24 MiB, got ${a.chunks!.length}`);
    assert.ok(changed.length >= 1 && changed.length <= 3, `${changed.length} chunk ids changed, expected 1-3`);
    assert.ok(b.chunks!.length - changed.length >= a.chunks!.length - 3, "most chunk ids must be shared");
    assert.ok(stats.chunksNew <= 4, `the second backup stored ${stats.chunksNew} new chunks`);
  } finally {
    await repo.close();
  }
});

import assert from "node:assert/strict";
import { createHash, randomBytes } from "node:crypto";
import { test } from "node:test";
import { isCode } from "@iotvault/errors";
import { MemoryStore } from "./memory-store.js";
import { abortable, putFromStream, readObjectStream } from "./streams.js";

const sha256 = (data: Uint8Array) => createHash("sha256").update(data).digest("hex");

async function* chunksOf(data: Buffer, size: number): AsyncGenerator<Buffer> {
  for (let at = 0; at < data.length; at += size) yield data.subarray(at, at + size);
}

void test("putFromStream buffers for a non-streaming store and checks size and sha256 first", async () => {
  const store = new MemoryStore();
  const data = randomBytes(10_000);
  const ok = await putFromStream(store, "data/aa/p", chunksOf(data, 999), {
    expectedSize: data.length,
    expectedSha256: sha256(data),
  });
  assert.deepEqual(ok, { existed: false, size: data.length, sha256: sha256(data) });
  assert.deepEqual(await store.get("data/aa/p"), data);

  const short = putFromStream(store, "data/aa/short", chunksOf(data, 999), { expectedSize: data.length + 1 });
  await assert.rejects(short, (err) => isCode(err, "INVALID_ARGUMENT") && /announced/.test(err.message));
  const long = putFromStream(store, "data/aa/long", chunksOf(data, 999), { expectedSize: 10 });
  await assert.rejects(long, (err) => isCode(err, "INVALID_ARGUMENT"));
  const corrupt = putFromStream(store, "data/aa/bad", chunksOf(data, 999), { expectedSha256: sha256(randomBytes(8)) });
  await assert.rejects(corrupt, (err) => isCode(err, "DATA_CORRUPT") && err.retryable);
  const big = putFromStream(store, "data/aa/big", chunksOf(data, 999), { maxBytes: 5000 });
  await assert.rejects(big, (err) => isCode(err, "RESOURCE_EXHAUSTED") && !err.retryable);
  for (const key of ["data/aa/short", "data/aa/long", "data/aa/bad", "data/aa/big"]) {
    assert.equal(await store.stat(key), undefined, key);
  }
});

void test("putFromStream with ifAbsent reports the existing object's size", async () => {
  const store = new MemoryStore();
  await store.put("keys/k", Buffer.from("abc"));
  const result = await putFromStream(store, "keys/k", chunksOf(Buffer.from("longer"), 2), { ifAbsent: true });
  assert.deepEqual(result, { existed: true, size: 3 });
  assert.equal((await store.get("keys/k")).toString(), "abc");
});

void test("readObjectStream slices a non-streaming store's range into chunks", async () => {
  const store = new MemoryStore();
  const data = randomBytes(2500);
  await store.put("p", data);
  const chunks: Buffer[] = [];
  for await (const chunk of readObjectStream(store, "p", { offset: 100, length: 2000 }, { chunkBytes: 512 })) {
    chunks.push(chunk);
  }
  assert.deepEqual(
    chunks.map((c) => c.length),
    [512, 512, 512, 464],
  );
  assert.deepEqual(Buffer.concat(chunks), data.subarray(100, 2100));
});

void test("abortable rejects a step of a hanging source as soon as the signal fires", async () => {
  const controller = new AbortController();
  async function* hanging(): AsyncGenerator<number> {
    yield 1;
    await new Promise(() => undefined);
  }
  const seen: number[] = [];
  const started = Date.now();
  await assert.rejects(
    (async () => {
      for await (const n of abortable(hanging(), controller.signal, "test stream")) {
        seen.push(n);
        setTimeout(() => controller.abort(), 20);
      }
    })(),
    (err) => isCode(err, "CANCELLED") && /test stream was cancelled/.test(err.message),
  );
  assert.deepEqual(seen, [1]);
  assert.ok(Date.now() - started < 2000);
});

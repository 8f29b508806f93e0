/**
 * The ObjectStore conformance suite (like restic's backend test suite): one set of
 * `node:test` tests that every ObjectStore implementation must pass, whether it is in memory,
 * a local directory, S3, SFTP or a client of the storage-gateway.
 *
 * ```ts
 * // my-store.test.ts
 * import { runObjectStoreConformance } from "@iotvault/storage/conformance";
 * runObjectStoreConformance("MyStore", async () => {
 *   const store = await MyStore.open(...);
 *   return { store, cleanup: () => store.close() };
 * });
 * ```
 *
 * The factory is called once per test and must return an empty store; `cleanup` runs after
 * the test, also when it fails.
 */
import assert from "node:assert/strict";
import { createHash, randomBytes } from "node:crypto";
import { describe, test, type TestContext } from "node:test";
import { isCode, type ErrorCode } from "@iotvault/errors";
import type { ObjectInfo, ObjectStore } from "./object-store.js";

export interface ConformanceFixture {
  /** An empty store. */
  store: ObjectStore;
  /** Releases what the factory made (temp dirs, servers, connections). */
  cleanup(): Promise<void>;
  /**
   * Starts writing `data` to `key` through the store's real write path and interrupts the
   * writer mid-way (a killed process, a cancelled call, an aborted signal: whatever is
   * realistic for the store). Resolves once the interrupted writer has stopped; it must not
   * throw because of the interruption itself. Without it, the interrupted-upload test is
   * skipped.
   */
  interruptPut?: ((key: string, data: Uint8Array) => Promise<void>) | undefined;
}

export interface ConformanceOptions {
  /** Size of the large-object round trip (default 20 MiB). */
  largeObjectBytes?: number | undefined;
}

const sha256 = (data: Uint8Array): string => createHash("sha256").update(data).digest("hex");

async function collect(store: ObjectStore, prefix: string): Promise<ObjectInfo[]> {
  const out: ObjectInfo[] = [];
  for await (const info of store.list(prefix)) out.push(info);
  return out;
}

async function keysUnder(store: ObjectStore, prefix: string): Promise<string[]> {
  return (await collect(store, prefix)).map((info) => info.key).sort();
}

function hasCode(code: ErrorCode): (err: unknown) => boolean {
  return (err: unknown) => {
    assert.ok(isCode(err, code), `expected an IotvaultError ${code}, got ${String(err)}`);
    return true;
  };
}

/**
 * Registers the conformance tests of one ObjectStore implementation under `describe(name)`.
 * Call it at the top level of a test file.
 */
export function runObjectStoreConformance(
  name: string,
  factory: () => Promise<ConformanceFixture>,
  options: ConformanceOptions = {},
): void {
  const largeBytes = options.largeObjectBytes ?? 20 * 1024 * 1024;

  const it = (title: string, body: (fx: ConformanceFixture, t: TestContext) => Promise<void>) =>
    void test(title, async (t) => {
      const fx = await factory();
      try {
        await body(fx, t);
      } finally {
        await fx.cleanup();
      }
    });

  void describe(`ObjectStore conformance: ${name}`, () => {
    it("put, get, stat, list and delete round-trip an object", async ({ store }) => {
      const data = randomBytes(1000);
      assert.deepEqual(await store.put("config", data), { existed: false });
      assert.deepEqual(await store.get("config"), data);
      const info = await store.stat("config");
      assert.equal(info?.key, "config");
      assert.equal(info?.size, 1000);
      assert.ok(info.modifiedAt instanceof Date && Math.abs(info.modifiedAt.getTime() - Date.now()) < 60_000);
      assert.deepEqual(await keysUnder(store, ""), ["config"]);
      assert.equal(await store.delete("config"), true);
      assert.equal(await store.stat("config"), undefined);
      assert.deepEqual(await keysUnder(store, ""), []);
      assert.equal(await store.delete("config"), false);
    });

    it("an empty object round-trips", async ({ store }) => {
      await store.put("locks/empty", new Uint8Array(0));
      assert.equal((await store.get("locks/empty")).length, 0);
      assert.equal((await store.stat("locks/empty"))?.size, 0);
      assert.deepEqual(await keysUnder(store, "locks/"), ["locks/empty"]);
    });

    it("a missing object: get is NOT_FOUND, stat undefined, delete false", async ({ store }) => {
      await assert.rejects(store.get("data/ab/missing"), hasCode("NOT_FOUND"));
      await assert.rejects(store.get("data/ab/missing", { offset: 1, length: 2 }), hasCode("NOT_FOUND"));
      assert.equal(await store.stat("data/ab/missing"), undefined);
      assert.equal(await store.delete("data/ab/missing"), false);
      assert.deepEqual(await keysUnder(store, "data/"), []);
    });

    it("partial reads: offset, offset + length, ranges past the end are clamped", async ({ store }) => {
      const data = randomBytes(4096);
      await store.put("data/00/pack", data);
      assert.deepEqual(await store.get("data/00/pack", { offset: 100 }), data.subarray(100));
      assert.deepEqual(await store.get("data/00/pack", { offset: 100, length: 50 }), data.subarray(100, 150));
      assert.deepEqual(await store.get("data/00/pack", { offset: 0, length: 1 }), data.subarray(0, 1));
      assert.deepEqual(await store.get("data/00/pack", { offset: 4000, length: 500 }), data.subarray(4000));
      assert.equal((await store.get("data/00/pack", { offset: 4096 })).length, 0);
      assert.equal((await store.get("data/00/pack", { offset: 10_000, length: 10 })).length, 0);
    });

    it("a put replaces an existing object whole", async ({ store }) => {
      await store.put("index/1", randomBytes(5000));
      const second = randomBytes(300);
      assert.deepEqual(await store.put("index/1", second), { existed: false });
      assert.deepEqual(await store.get("index/1"), second);
      assert.equal((await store.stat("index/1"))?.size, 300);
      assert.deepEqual(await keysUnder(store, "index/"), ["index/1"]);
    });

    it("ifAbsent keeps an existing object and says so", async ({ store }) => {
      const first = Buffer.from("first");
      assert.deepEqual(await store.put("keys/a", first, { ifAbsent: true }), { existed: false });
      assert.deepEqual(await store.put("keys/a", Buffer.from("second, longer"), { ifAbsent: true }), {
        existed: true,
      });
      assert.deepEqual(await store.get("keys/a"), first);
      assert.equal((await store.stat("keys/a"))?.size, first.length);
    });

    it("concurrent ifAbsent writers of one key: exactly one writes", async ({ store }) => {
      const values = Array.from({ length: 6 }, () => randomBytes(64 * 1024));
      const results = await Promise.all(values.map((v) => store.put("locks/one", v, { ifAbsent: true })));
      assert.equal(results.filter((r) => !r.existed).length, 1, JSON.stringify(results));
      const winner = values[results.findIndex((r) => !r.existed)]!;
      assert.equal(sha256(await store.get("locks/one")), sha256(winner));
    });

    it("invalid keys are refused with INVALID_ARGUMENT", async ({ store }) => {
      const bad = ["", "../x", "a/../b", "/a", "a/", "a//b", ".", "a/./b", "..", "a b", "a\\b"];
      for (const key of bad) {
        await assert.rejects(store.put(key, Buffer.from("x")), hasCode("INVALID_ARGUMENT"), `put ${key}`);
        await assert.rejects(store.get(key), hasCode("INVALID_ARGUMENT"), `get ${key}`);
        await assert.rejects(store.stat(key), hasCode("INVALID_ARGUMENT"), `stat ${key}`);
        await assert.rejects(store.delete(key), hasCode("INVALID_ARGUMENT"), `delete ${key}`);
      }
      for (const prefix of ["../", "/", "a//", "a/../"]) {
        await assert.rejects(collect(store, prefix), hasCode("INVALID_ARGUMENT"), `list ${prefix}`);
      }
      assert.deepEqual(await keysUnder(store, ""), []);
    });

    it("concurrent writers of one key: the result is one of the values, whole", async ({ store }) => {
      const values = Array.from({ length: 8 }, (_, i) => Buffer.alloc(256 * 1024 + i * 1000, i + 1));
      await Promise.all(values.map((v) => store.put("snapshots/same", v)));
      const got = await store.get("snapshots/same");
      assert.ok(
        values.some((v) => v.equals(got)),
        `got ${got.length} bytes that match none of the written values`,
      );
      assert.equal((await store.stat("snapshots/same"))?.size, got.length);
      assert.deepEqual(await keysUnder(store, "snapshots/"), ["snapshots/same"]);
    });

    it("concurrent writers of different keys all land", async ({ store }) => {
      const objects = Array.from({ length: 32 }, (_, i) => ({
        key: `data/${(i % 4).toString(16).padStart(2, "0")}/obj-${i}`,
        data: randomBytes(1024 + i),
      }));
      await Promise.all(objects.map((o) => store.put(o.key, o.data)));
      for (const o of objects) assert.deepEqual(await store.get(o.key), o.data, o.key);
      assert.deepEqual(await keysUnder(store, "data/"), objects.map((o) => o.key).sort());
    });

    it("list: nested prefixes, partial segments, each object exactly once with its size", async ({ store }) => {
      const sizes: Record<string, number> = { "a/b/c": 1, "a/b/d": 2, "a/e": 3, "ab/x": 4, b: 5, "a/b/c2/deep": 6 };
      for (const [key, size] of Object.entries(sizes)) await store.put(key, Buffer.alloc(size));
      const all = await collect(store, "");
      assert.deepEqual(all.map((i) => i.key).sort(), Object.keys(sizes).sort(), "every object exactly once");
      for (const info of all) assert.equal(info.size, sizes[info.key], info.key);
      assert.deepEqual(await keysUnder(store, "a/"), ["a/b/c", "a/b/c2/deep", "a/b/d", "a/e"]);
      assert.deepEqual(await keysUnder(store, "a"), ["a/b/c", "a/b/c2/deep", "a/b/d", "a/e", "ab/x"]);
      assert.deepEqual(await keysUnder(store, "a/b/"), ["a/b/c", "a/b/c2/deep", "a/b/d"]);
      assert.deepEqual(await keysUnder(store, "a/b/c"), ["a/b/c", "a/b/c2/deep"]);
      assert.deepEqual(await keysUnder(store, "a/b/c2/"), ["a/b/c2/deep"]);
      assert.deepEqual(await keysUnder(store, "zzz/"), []);
      assert.deepEqual(await keysUnder(store, "b"), ["b"]);
    });

    it(`a large object (${largeBytes} bytes) round-trips with its sha256`, async ({ store }) => {
      const data = randomBytes(largeBytes);
      await store.put("data/ff/large", data);
      assert.equal((await store.stat("data/ff/large"))?.size, largeBytes);
      const got = await store.get("data/ff/large");
      assert.equal(got.length, largeBytes);
      assert.equal(sha256(got), sha256(data));
      const tail = await store.get("data/ff/large", { offset: largeBytes - 1000, length: 5000 });
      assert.equal(sha256(tail), sha256(data.subarray(largeBytes - 1000)));
    });

    it("an interrupted upload leaves no visible partial object", async ({ store, interruptPut }, t) => {
      if (!interruptPut) {
        t.skip("this store's fixture has no interruptPut hook (its put has no partial state to interrupt)");
        return;
      }
      const data = randomBytes(4 * 1024 * 1024);
      await interruptPut("data/aa/interrupted", data);
      assert.equal(await store.stat("data/aa/interrupted"), undefined);
      await assert.rejects(store.get("data/aa/interrupted"), hasCode("NOT_FOUND"));
      assert.deepEqual(await keysUnder(store, ""), []);
      // An interrupted overwrite keeps the previous version whole.
      const previous = randomBytes(1000);
      await store.put("data/aa/kept", previous);
      await interruptPut("data/aa/kept", data);
      assert.deepEqual(await store.get("data/aa/kept"), previous);
      assert.deepEqual(await keysUnder(store, ""), ["data/aa/kept"]);
    });

    it("stored bytes do not alias the caller's buffers", async ({ store }) => {
      const data = Buffer.from("original");
      await store.put("config", data);
      data.fill(0);
      const got = await store.get("config");
      assert.equal(got.toString(), "original");
      got.fill(0);
      assert.equal((await store.get("config")).toString(), "original");
    });
  });
}

import assert from "node:assert/strict";
import { createHash, randomBytes } from "node:crypto";
import { mkdir, mkdtemp, readFile, rename, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { describe, test, type TestContext } from "node:test";
import { isCode, type ErrorCode } from "@iotvault/errors";
import { runObjectStoreConformance } from "./conformance.js";
import { fanOut } from "./fan-out.js";
import { LocalDirectoryStore } from "./local-directory-store.js";
import type { ObjectInfo } from "./object-store.js";
import { ReplicatedStore, type ReplicatedStoreOptions } from "./replicated-store.js";
import { readObjectStream } from "./streams.js";
import { packOf, refusingWrites, treeDigest } from "./test-support.js";

const sha256 = (data: Uint8Array) => createHash("sha256").update(data).digest("hex");
const code = (expected: ErrorCode, message?: RegExp) => (err: unknown) => {
  assert.ok(isCode(err, expected), `expected ${expected}, got ${String(err)}`);
  if (message) assert.match(err.message, message);
  return true;
};

interface Logged {
  level: "info" | "warn";
  message: string;
  fields: Record<string, unknown>;
}

const toClose = new WeakMap<TestContext, ReplicatedStore[]>();
/** A temp dir removed after the test, once the stores given to closeLater() are closed. */
async function tempRoot(t: TestContext): Promise<string> {
  const root = await mkdtemp(join(tmpdir(), "iotvault-replicated-"));
  toClose.set(t, []);
  t.after(async () => {
    for (const store of toClose.get(t) ?? []) await store.close().catch(() => undefined);
    await rm(root, { recursive: true, force: true });
  });
  return root;
}
function closeLater(t: TestContext, store: ReplicatedStore): void {
  toClose.get(t)?.push(store);
}

/** Two local directories (primary, replica) under one temp dir, and the journal beside them. */
async function setup(t: TestContext | undefined, options: ReplicatedStoreOptions = {}) {
  const root = await mkdtemp(join(tmpdir(), "iotvault-replicated-"));
  const dirs = [join(root, "primary"), join(root, "replica")] as const;
  for (const dir of dirs) await mkdir(dir);
  const journalPath = join(root, "state", "main.journal");
  const logged: Logged[] = [];
  const logger = {
    info: (message: string, fields: Record<string, unknown> = {}) => logged.push({ level: "info", message, fields }),
    warn: (message: string, fields: Record<string, unknown> = {}) => logged.push({ level: "warn", message, fields }),
  };
  const urls = dirs.map((d) => `file://${d}`);
  const open = (extra: ReplicatedStoreOptions = {}) =>
    ReplicatedStore.open(
      dirs.map((dir, i) => ({ url: urls[i]!, store: new LocalDirectoryStore(dir) })),
      { journalPath, logger, ...options, ...extra },
    );
  let store = await open();
  const fx = {
    root,
    dirs,
    urls,
    journalPath,
    logged,
    get store() {
      return store;
    },
    /** Closes the store and opens a new one on the same journal (a gateway restart). */
    reopen: async () => {
      await store.close();
      store = await open();
      return store;
    },
    /** The replica's directory renamed away: its store reports its root missing. */
    replicaDown: () => rename(dirs[1], `${dirs[1]}.away`),
    replicaUp: () => rename(`${dirs[1]}.away`, dirs[1]),
    cleanup: async () => {
      await store.close().catch(() => undefined);
      await rm(root, { recursive: true, force: true });
    },
  };
  t?.after(() => fx.cleanup());
  return fx;
}

/** A put that reports its missing targets (putStream of one chunk). */
function putReport(store: ReplicatedStore, key: string, data: Uint8Array, ifAbsent = false) {
  return store.putStream(
    key,
    (async function* () {
      yield data;
    })(),
    { ifAbsent },
  );
}

async function keysOf(store: { list(prefix: string): AsyncIterable<ObjectInfo> }, prefix = ""): Promise<string[]> {
  const keys: string[] = [];
  for await (const info of store.list(prefix)) keys.push(info.key);
  return keys.sort();
}

runObjectStoreConformance("ReplicatedStore (two LocalDirectoryStores, both up)", async () => {
  const fx = await setup(undefined);
  return {
    store: fx.store,
    cleanup: fx.cleanup,
    interruptPut: async (key, data) => {
      const controller = new AbortController();
      async function* stalled(): AsyncGenerator<Uint8Array> {
        yield data.subarray(0, data.length >> 1);
        controller.abort();
        await new Promise(() => undefined);
      }
      await fx.store.putStream(key, stalled(), { signal: controller.signal }).then(
        () => assert.fail("the interrupted put resolved"),
        (err: unknown) => assert.ok(isCode(err, "CANCELLED"), String(err)),
      );
      assert.equal(fx.store.pendingCopies, 0, "a put that landed nowhere journals nothing");
    },
  };
});

void describe("ReplicatedStore", () => {
  void test("writes land on both targets byte for byte, in parallel from one stream", async (t) => {
    const fx = await setup(t);
    const pack = packOf(randomBytes(3 * 1024 * 1024 + 5));
    const chunks = async function* () {
      for (let at = 0; at < pack.data.length; at += 256 * 1024) yield pack.data.subarray(at, at + 256 * 1024);
    };
    const result = await fx.store.putStream(pack.key, chunks(), {
      expectedSize: pack.data.length,
      expectedSha256: sha256(pack.data),
    });
    assert.deepEqual(result, {
      existed: false,
      size: pack.data.length,
      sha256: sha256(pack.data),
      missingTargets: [],
    });
    assert.deepEqual(await fx.store.put("config", Buffer.from("cfg")), { existed: false });
    assert.deepEqual(await treeDigest(fx.dirs[0]), await treeDigest(fx.dirs[1]));
    assert.equal(Object.keys(await treeDigest(fx.dirs[0])).length, 2);
    assert.equal(fx.store.location, `file://${fx.dirs[0]} (+1 replica)`);
    assert.deepEqual(fx.store.targets, fx.urls);
    await assert.rejects(
      fx.store.putStream("data/00/x", chunks(), { expectedSize: 10 }),
      code("INVALID_ARGUMENT", /longer than the announced 10 bytes/),
    );
    assert.equal(fx.store.pendingCopies, 0);
    assert.deepEqual(await keysOf(fx.store), ["config", pack.key]);
  });

  void test("with the replica down: puts succeed with a missing target, reads and lists use the primary", async (t) => {
    const fx = await setup(t);
    await fx.store.put("config", Buffer.from("before"));
    await fx.replicaDown();
    const pack = packOf(randomBytes(100_000));
    assert.deepEqual((await putReport(fx.store, pack.key, pack.data)).missingTargets, [fx.urls[1]]);
    assert.deepEqual(await putReport(fx.store, "snapshots/s1", Buffer.from("s1")), {
      existed: false,
      size: 2,
      sha256: sha256(Buffer.from("s1")),
      missingTargets: [fx.urls[1]],
    });
    assert.equal(await fx.store.delete("config"), true);
    const [primary, replica] = fx.store.targetStatus();
    assert.deepEqual(primary, { url: fx.urls[0], available: true, pendingCopies: 0, lastError: "" });
    assert.equal(replica?.available, false);
    assert.equal(replica?.pendingCopies, 3, "two copies and one delete wait for the replica");
    assert.match(replica?.lastError ?? "", /does not exist/);
    assert.ok(fx.logged.some((l) => l.level === "warn" && /unavailable/.test(l.message)));
    assert.deepEqual(await fx.store.get(pack.key), pack.data);
    assert.equal((await fx.store.stat("snapshots/s1"))?.size, 2);
    assert.equal(await fx.store.stat("config"), undefined);
    assert.deepEqual(await keysOf(fx.store), [pack.key, "snapshots/s1"]);

    await fx.replicaUp();
    const healed = await fx.store.heal();
    assert.deepEqual(healed, { copied: 2, deleted: 1, failed: 0, remaining: 0, healedTargets: [fx.urls[1]] });
    assert.deepEqual(await treeDigest(fx.dirs[1]), await treeDigest(fx.dirs[0]));
    assert.deepEqual(fx.store.targetStatus()[1], { url: fx.urls[1], available: true, pendingCopies: 0, lastError: "" });
    assert.ok(fx.logged.some((l) => l.level === "info" && /healed/.test(l.message) && l.fields["copied"] === 2));
  });

  void test("with the primary down: reads fall back to the replica, list is the union of what is reachable", async (t) => {
    const fx = await setup(t);
    const early = packOf(randomBytes(5000));
    await fx.store.put(early.key, early.data);
    await rename(fx.dirs[0], `${fx.dirs[0]}.away`);
    const late = packOf(randomBytes(7000));
    assert.deepEqual((await putReport(fx.store, late.key, late.data)).missingTargets, [fx.urls[0]]);
    assert.deepEqual(await fx.store.get(early.key, { offset: 10, length: 20 }), early.data.subarray(10, 30));
    const streamed: Buffer[] = [];
    for await (const chunk of fx.store.getStream(late.key, undefined, { chunkBytes: 1000 })) streamed.push(chunk);
    assert.deepEqual(Buffer.concat(streamed), late.data);
    assert.deepEqual(await keysOf(fx.store, "data/"), [early.key, late.key].sort());
    await rename(`${fx.dirs[0]}.away`, fx.dirs[0]);
    // The primary is back but misses `late`: reads skip it for that key, list shows both once.
    assert.deepEqual(await fx.store.get(late.key), late.data);
    assert.deepEqual(await keysOf(fx.store, "data/"), [early.key, late.key].sort());
    assert.equal((await fx.store.heal()).copied, 1);
    assert.deepEqual(await treeDigest(fx.dirs[0]), await treeDigest(fx.dirs[1]));
  });

  void test("a put that no target stores is UNAVAILABLE and names every target", async (t) => {
    const fx = await setup(t);
    await fx.replicaDown();
    await rename(fx.dirs[0], `${fx.dirs[0]}.away`);
    await assert.rejects(fx.store.put("config", Buffer.from("x")), (err: unknown) => {
      code("UNAVAILABLE", /no target of the repository could store config/)(err);
      assert.ok(fx.urls.every((u) => (err as Error).message.includes(u)));
      assert.equal((err as { retryable: boolean }).retryable, true);
      return true;
    });
    await assert.rejects(fx.store.get("config"), code("UNAVAILABLE"));
    await assert.rejects(keysOf(fx.store), code("UNAVAILABLE"));
    assert.equal(fx.store.pendingCopies, 0);
  });

  void test("a damaged copy of a pack on the primary is detected by its hash, served from the replica and repaired", async (t) => {
    const fx = await setup(t, { verifyBufferBytes: 64 * 1024 });
    const small = packOf(randomBytes(40_000));
    const large = packOf(randomBytes(300_000)); // above verifyBufferBytes: checked at its end
    for (const p of [small, large]) await fx.store.put(p.key, p.data);
    for (const p of [small, large]) {
      const file = join(fx.dirs[0], p.key);
      const bytes = await readFile(file);
      bytes[1000] = bytes[1000]! ^ 0xff;
      await writeFile(file, bytes);
    }
    assert.deepEqual(await fx.store.get(small.key), small.data, "get falls back");
    const streamed: Buffer[] = [];
    for await (const chunk of fx.store.getStream(small.key)) streamed.push(chunk);
    assert.equal(sha256(Buffer.concat(streamed)), sha256(small.data), "getStream falls back before sending");
    // The large pack: the damage is seen at its end; the retry reads the replica.
    await assert.rejects(
      (async () => {
        for await (const _ of fx.store.getStream(large.key)) void _;
      })(),
      code("DATA_CORRUPT", /does not match its SHA-256 name/),
    );
    const retried: Buffer[] = [];
    for await (const chunk of fx.store.getStream(large.key)) retried.push(chunk);
    assert.equal(sha256(Buffer.concat(retried)), sha256(large.data));
    assert.ok(fx.logged.some((l) => l.level === "warn" && l.fields["key"] === small.key));
    assert.equal(fx.store.targetStatus()[0]?.pendingCopies, 2, "both damaged copies are journaled for repair");
    // A range is not checked (it cannot be): it comes from the replica while a repair is pending.
    assert.deepEqual(await fx.store.get(small.key, { offset: 999, length: 3 }), small.data.subarray(999, 1002));
    assert.equal((await fx.store.heal()).copied, 2);
    assert.deepEqual(await treeDigest(fx.dirs[0]), await treeDigest(fx.dirs[1]));
    assert.equal(sha256(await readFile(join(fx.dirs[0], large.key))), sha256(large.data));
  });

  void test("the journal survives a restart; the next heal makes both targets byte-identical", async (t) => {
    const fx = await setup(t);
    await fx.store.put("config", Buffer.from("config"));
    await fx.replicaDown();
    const packs = Array.from({ length: 12 }, () => packOf(randomBytes(20_000 + Math.floor(Math.random() * 50_000))));
    for (const p of packs) await fx.store.put(p.key, p.data);
    await fx.store.delete("config");
    await fx.store.put("index/i1", Buffer.from("index"));
    assert.equal(fx.store.pendingCopies, 14);
    const reopened = await fx.reopen();
    assert.equal(reopened.pendingCopies, 14);
    assert.equal(reopened.targetStatus()[1]?.pendingCopies, 14);
    // Still down: a pass copies nothing and keeps everything.
    assert.deepEqual(await reopened.heal(), { copied: 0, deleted: 0, failed: 0, remaining: 14, healedTargets: [] });
    await fx.replicaUp();
    const result = await reopened.heal();
    assert.deepEqual([result.copied, result.deleted, result.remaining], [13, 1, 0]);
    assert.deepEqual(await treeDigest(fx.dirs[1]), await treeDigest(fx.dirs[0]));
    assert.equal(Object.keys(await treeDigest(fx.dirs[1])).length, 13);
    await fx.reopen();
    assert.equal(fx.store.pendingCopies, 0, "the resolutions were durable too");
  });

  void test("a permanent error on one target fails the put, keeps the other copy and journals the target", async (t) => {
    const root = await tempRoot(t);
    const dirs = [join(root, "a"), join(root, "b")];
    for (const dir of dirs) await mkdir(dir);
    let refuse = true;
    const store = await ReplicatedStore.open(
      [
        { url: "file:///a", store: new LocalDirectoryStore(dirs[0]!) },
        { url: "file:///b", store: new LocalDirectoryStore(dirs[1]!, { fs: refusingWrites("EACCES", () => refuse) }) },
      ],
      { journalPath: join(root, "journal") },
    );
    closeLater(t, store);
    await assert.rejects(store.put("snapshots/s", Buffer.from("s")), code("PERMISSION_DENIED", /permission denied/));
    assert.deepEqual(Object.keys(await treeDigest(dirs[0]!)), ["snapshots/s"]);
    assert.deepEqual(store.targetStatus()[1]?.available, true, "reachable, only failing");
    assert.match(store.targetStatus()[1]?.lastError ?? "", /permission denied/);
    assert.equal(store.targetStatus()[1]?.pendingCopies, 1);
    const refused = await store.heal();
    assert.deepEqual([refused.copied, refused.failed, refused.remaining], [0, 1, 1], "kept while refused");
    refuse = false;
    assert.equal((await store.heal()).copied, 1);
    assert.deepEqual(await treeDigest(dirs[1]!), await treeDigest(dirs[0]!));
  });

  void test("ifAbsent sees an object that only one target holds, and journals the copy for the other", async (t) => {
    const fx = await setup(t);
    await writeFile(join(fx.dirs[1], "config"), "replica only");
    assert.deepEqual(await putReport(fx.store, "config", Buffer.from("new"), true), {
      existed: true,
      size: 12,
      missingTargets: [fx.urls[0]],
    });
    assert.equal((await fx.store.get("config")).toString(), "replica only");
    await fx.store.heal();
    assert.equal(await readFile(join(fx.dirs[0], "config"), "utf8"), "replica only");
  });

  void test("reconcile finds what a new replica lacks; heal copies it", async (t) => {
    const root = await tempRoot(t);
    const [a, b] = [join(root, "a"), join(root, "b")];
    await mkdir(b);
    const alone = new LocalDirectoryStore(a);
    await mkdir(a);
    for (let i = 0; i < 5; i++) await alone.put(`index/${i}`, randomBytes(100));
    const store = await ReplicatedStore.open(
      [
        { url: "file:///a", store: alone },
        { url: "file:///b", store: new LocalDirectoryStore(b) },
      ],
      { journalPath: join(root, "journal") },
    );
    closeLater(t, store);
    assert.equal(store.reconcileNeeded, true);
    await store.delete("index/4"); // deleted on both: nothing to copy for it
    assert.deepEqual(await store.reconcile(), { journaled: 4, complete: true });
    assert.equal(store.reconcileNeeded, false);
    assert.equal((await store.heal()).copied, 4);
    assert.deepEqual(await treeDigest(b), await treeDigest(a));
    assert.deepEqual(await store.reconcile(), { journaled: 0, complete: true });
  });

  void test("a slow reader of a fan-out holds the source back; a detached one does not", async () => {
    let pulled = 0;
    async function* source(): AsyncGenerator<Uint8Array> {
      for (let i = 0; i < 20; i++) {
        pulled++;
        yield Buffer.from([i]);
      }
    }
    const fan = fanOut(source(), 3, { maxQueued: 2, what: "test" });
    const fast = (async () => {
      const got: number[] = [];
      for await (const chunk of fan.branches[0]!) got.push(chunk[0]!);
      return got;
    })();
    const slow = fan.branches[1]![Symbol.asyncIterator]();
    await new Promise((resolve) => setTimeout(resolve, 20));
    assert.ok(pulled <= 4, `the source ran ${pulled} chunks ahead of the slow reader`);
    fan.detach(2); // never read: detached, it must not block the others
    for (let i = 0; i < 20; i++) assert.equal((await slow.next()).value?.[0], i);
    assert.equal((await slow.next()).done, true);
    assert.deepEqual(
      await fast,
      Array.from({ length: 20 }, (_, i) => i),
    );
    await fan.done;
  });

  void test("readObjectStream of a replicated store reads a range", async (t) => {
    const fx = await setup(t);
    const data = randomBytes(10_000);
    await fx.store.put("snapshots/s", data);
    const parts: Buffer[] = [];
    for await (const chunk of readObjectStream(
      fx.store,
      "snapshots/s",
      { offset: 100, length: 5000 },
      { chunkBytes: 999 },
    ))
      parts.push(chunk);
    assert.deepEqual(Buffer.concat(parts), data.subarray(100, 5100));
    assert.ok(parts.every((p) => p.length <= 999));
  });
});

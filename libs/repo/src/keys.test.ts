import assert from "node:assert/strict";
import { randomBytes } from "node:crypto";
import { test } from "node:test";
import { isCode } from "@iotvault/errors";
import { MemoryStore, type ObjectStore } from "@iotvault/storage";
import { KeyPreparer } from "./key-prep.js";
import * as keys from "./keys.js";
import { Repository } from "./repository.js";
import { FAST, META, PASSWORD, collect, fileNode, newRepo, pieces, random, readAll } from "./test-util.js";

const OTHER = Buffer.from("a second operator's passphrase");

test("key add: a second passphrase and a key file open the same repository; list shows slots and data keys", async () => {
  const { store, repo } = await newRepo();
  const keyFile = randomBytes(64);
  try {
    const second = await repo.addKey(OTHER);
    const third = await repo.addKey({ keyFile });
    const listing = await repo.listKeys();
    assert.equal(listing.slots.length, 3);
    assert.deepEqual(listing.slots.map((s) => s.type).sort(), ["keyfile", "passphrase", "passphrase"]);
    assert.equal(listing.slots.filter((s) => s.inUse).length, 1);
    assert.equal(listing.dataKeys.length, 1);
    assert.ok(listing.dataKeys[0]!.current);
    assert.ok([second, third].every((id) => listing.slots.some((s) => s.id === id)));
    assert.doesNotMatch(JSON.stringify(listing), new RegExp(keyFile.toString("hex").slice(0, 16)));
    await assert.rejects(repo.addKey({ keyFile: Buffer.from("short") }), (e: unknown) => isCode(e, "INVALID_ARGUMENT"));
  } finally {
    await repo.close();
  }
  for (const secret of [PASSWORD, OTHER, { keyFile }]) {
    const r = await Repository.open(store, secret, FAST);
    await r.close();
  }
  await assert.rejects(
    Repository.open(store, { keyFile: randomBytes(64) }, FAST),
    (e: unknown) => isCode(e, "WRONG_KEY") && /key file/.test(e.message),
  );
});

test("a key slot whose scrypt parameters would need too much memory or time is refused before deriving", async () => {
  const { store, repo } = await newRepo();
  await repo.close();
  const keys: string[] = [];
  for await (const info of store.list("keys/")) keys.push(info.key);
  const original = store.raw(keys[0]!)!;
  // Each is within the per-parameter ranges, but not together: 16 GiB of memory; 2^28 work.
  for (const kdf of [
    { N: 2 ** 22, r: 32, p: 1 },
    { N: 2 ** 20, r: 16, p: 16 },
  ]) {
    const slot = JSON.parse(original.toString("utf8")) as { kdf: Record<string, unknown> };
    slot.kdf = { ...slot.kdf, ...kdf };
    store.overwrite(keys[0]!, Buffer.from(JSON.stringify(slot)));
    await assert.rejects(Repository.open(store, PASSWORD, FAST), (e: unknown) => {
      assert.ok(isCode(e, "DATA_CORRUPT"), String(e));
      assert.match(e.message, /out-of-range scrypt parameters/);
      return true;
    });
  }
  store.overwrite(keys[0]!, original);
  await (await Repository.open(store, PASSWORD, FAST)).close();
});

test("a second open with the same passphrase derives no slot key again; a wrong one is still refused", async () => {
  const { store, repo } = await newRepo();
  await repo.close();
  const first = await Repository.open(store, PASSWORD, FAST);
  await first.close();
  const before = keys.scryptDerivations;
  const again = await Repository.open(store, PASSWORD, FAST);
  assert.equal(again.id, first.id);
  await again.close();
  assert.equal(keys.scryptDerivations, before, "the slot key came from the cache");
  await assert.rejects(Repository.open(store, OTHER, FAST), (e: unknown) => isCode(e, "WRONG_KEY"));
  await assert.rejects(Repository.open(store, OTHER, FAST), (e: unknown) => isCode(e, "WRONG_KEY"));
});

test("opens at the same time share one derivation; prepareKeys derives ahead and skips what does not open", async () => {
  const a = await newRepo();
  const b = await newRepo();
  await a.repo.close();
  await b.repo.close();
  keys.forgetDerivedKeys(); // init left both slot keys in the cache
  let before = keys.scryptDerivations;
  const both = await Promise.all([Repository.open(a.store, PASSWORD, FAST), Repository.open(a.store, PASSWORD, FAST)]);
  await Promise.all(both.map((r) => r.close()));
  assert.equal(keys.scryptDerivations, before + 1, "one derivation for two concurrent opens");

  before = keys.scryptDerivations;
  const empty = new MemoryStore(); // no repository here: skipped
  assert.equal(await Repository.prepareKeys([empty, b.store], PASSWORD), 1);
  assert.equal(keys.scryptDerivations, before + 1, "b's slot key was derived");
  await (await Repository.open(b.store, PASSWORD, FAST)).close();
  assert.equal(keys.scryptDerivations, before + 1, "and the open after it used it");
  assert.equal(await Repository.prepareKeys([b.store], OTHER), 0, "a secret that opens nothing prepares nothing");
});

test("KeyPreparer derives each repository's key once, one at a time, and tries again one that did not open", async () => {
  const a = await newRepo();
  const b = await newRepo();
  await a.repo.close();
  await b.repo.close();
  const stores = new Map<string, ObjectStore>([
    ["a", a.store],
    ["b", b.store],
  ]);
  const storeFor = (name: string) => stores.get(name) ?? new MemoryStore();
  keys.forgetDerivedKeys();
  const told: string[] = [];
  const prep = new KeyPreparer(storeFor, () => PASSWORD, {
    onPrepared: (info) => told.push(`${info.repository}: ${info.reason}`),
  });
  const before = keys.scryptDerivations;
  // Asked twice at once, once with a repository that is not there yet and an empty name.
  const [first, second] = await Promise.all([
    prep.prepare(["a", "later"], "first"),
    prep.prepare(["a", "b", ""], "second"),
  ]);
  assert.deepEqual(first, ["a"]);
  assert.deepEqual(second, ["b"], "a was being prepared already");
  assert.equal(keys.scryptDerivations, before + 2, "one derivation each");
  assert.ok(prep.has("a") && prep.has("b") && !prep.has("later"));
  assert.deepEqual(told, ["a: first", "b: second"]);
  assert.deepEqual(await prep.prepare(["b", "a"], "again"), [], "prepared before: nothing to do");
  await (await Repository.open(a.store, PASSWORD, FAST)).close();
  assert.equal(keys.scryptDerivations, before + 2, "the open after it found the key");
  // The repository that did not open is tried again once it is there.
  const later = await newRepo();
  await later.repo.close();
  stores.set("later", later.store);
  assert.deepEqual(await prep.prepare(["later"], "later"), ["later"]);
  // A secret that opens nothing, or cannot be read, prepares nothing and never rejects.
  assert.deepEqual(await new KeyPreparer(storeFor, () => OTHER).prepare(["a"], "other"), []);
  const unreadable = new KeyPreparer(storeFor, () => {
    throw new Error("the password file is gone");
  });
  assert.deepEqual(await unreadable.prepare(["a"], "unreadable"), []);
  assert.equal(unreadable.has("a"), false);
  // A callback that throws neither fails the call nor stops the ones after it.
  keys.forgetDerivedKeys();
  const throwing = new KeyPreparer(storeFor, () => PASSWORD, {
    onPrepared: () => {
      throw new Error("the log is gone");
    },
  });
  assert.deepEqual(await throwing.prepare(["a"], "first"), ["a"]);
  assert.deepEqual(await throwing.prepare(["b"], "second"), ["b"]);
});

test("key remove: refuses the last slot and the slot in use; removes another", async () => {
  const { store, repo } = await newRepo();
  try {
    const only = (await repo.listKeys()).slots[0]!.id;
    await assert.rejects(
      repo.removeKey(only),
      (e: unknown) => isCode(e, "FAILED_PRECONDITION") && /last key slot/.test(e.message),
    );
    const second = await repo.addKey(OTHER);
    await assert.rejects(
      repo.removeKey(only),
      (e: unknown) => isCode(e, "FAILED_PRECONDITION") && /in use/.test(e.message),
    );
    await repo.removeKey(second.slice(0, 10));
    assert.equal((await repo.listKeys()).slots.length, 1);
    await assert.rejects(repo.removeKey("ffffff"), (e: unknown) => isCode(e, "NOT_FOUND"));
  } finally {
    await repo.close();
  }
  await assert.rejects(Repository.open(store, OTHER, FAST), (e: unknown) => isCode(e, "WRONG_KEY"));
});

test("key rotate: new data is sealed with a new key, old snapshots stay readable, no pack is rewritten", async () => {
  const { store, repo } = await newRepo();
  const before = random(3 << 20);
  const w1 = await repo.startBackup({ runId: "before-rotation" });
  await w1.addFile(fileNode("a.bin"), pieces(before));
  const { snapshot: s1 } = await w1.commit(META);
  const packsBefore = new Map<string, Buffer>();
  for await (const o of store.list("data/")) packsBefore.set(o.key, Buffer.from(store.raw(o.key)!));
  const keyFile = randomBytes(64);
  await repo.addKey({ keyFile });

  // Another slot whose secret is not given: refused unless dropped.
  await assert.rejects(
    repo.rotateKeys({ current: PASSWORD }),
    (e: unknown) => isCode(e, "FAILED_PRECONDITION") && /other key slot/.test(e.message),
  );
  await assert.rejects(repo.rotateKeys({ current: OTHER, keep: [{ keyFile }] }), (e: unknown) =>
    isCode(e, "WRONG_KEY"),
  );
  const oldKeyId = (await repo.listKeys()).dataKeys[0]!.id;
  const rotated = await repo.rotateKeys({ current: PASSWORD, keep: [{ keyFile }] });
  assert.notEqual(rotated.dataKeyId, oldKeyId);
  assert.equal(rotated.slots.length, 2);

  const after = random(2 << 20);
  const w2 = await repo.startBackup({ runId: "after-rotation" });
  await w2.addFile(fileNode("b.bin"), pieces(after));
  await w2.commit(META);
  await repo.close();

  // Old packs are untouched; new packs name the new key id in their envelopes.
  for (const [key, bytes] of packsBefore) assert.ok(store.raw(key)!.equals(bytes), `${key} was rewritten`);
  const newPacks = [];
  for await (const o of store.list("data/")) if (!packsBefore.has(o.key)) newPacks.push(store.raw(o.key)!);
  assert.ok(newPacks.length > 0);
  const listing = await (async () => {
    const r = await Repository.open(store, { keyFile }, FAST);
    try {
      // Both snapshots read back with the new master key's keyring.
      const snaps = await r.listSnapshots();
      assert.equal(snaps.length, 2);
      const old = await collect(r.readTree(await r.loadSnapshot(s1.id)));
      assert.ok((await readAll(r.readFile(old[0]!))).equals(before));
      return await r.listKeys();
    } finally {
      await r.close();
    }
  })();
  assert.equal(listing.dataKeys.length, 2);
  assert.equal(listing.dataKeys.find((k) => k.current)?.id, rotated.dataKeyId);
  assert.equal(listing.slots.length, 2);
  // The passphrase still works (its slot was re-made); a dropped slot would not.
  const again = await Repository.open(store, PASSWORD, FAST);
  await again.close();
});

test("key rotate with --drop-other-slots removes slots whose secret was not given", async () => {
  const { store, repo } = await newRepo();
  try {
    await repo.addKey(OTHER);
    await repo.rotateKeys({ current: PASSWORD, dropOtherSlots: true });
    assert.equal((await repo.listKeys()).slots.length, 1);
  } finally {
    await repo.close();
  }
  await assert.rejects(Repository.open(store, OTHER, FAST), (e: unknown) => isCode(e, "WRONG_KEY"));
});

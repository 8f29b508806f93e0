import assert from "node:assert/strict";
import { test } from "node:test";
import { isCode } from "@iotvault/errors";
import { Repository } from "./repository.js";
import { FAST, PASSWORD, newRepo, random } from "./test-util.js";

test("sealed objects: whole objects outside packs, idempotent, different content refused, tamper detected", async () => {
  const { store, repo } = await newRepo();
  await repo.close();
  // A process that only handles sealed objects opens without the index.
  const r = await Repository.open(store, PASSWORD, { ...FAST, loadIndex: false });
  try {
    const segment = Buffer.concat([Buffer.alloc(8 << 20, 0), random(1024)]); // WAL-like: mostly zeros
    const first = await r.putSealedObject("wal/7000000000000000001/00000001/000000010000000000000001", segment);
    assert.equal(first.existed, false);
    assert.ok(first.storedBytes < segment.length / 10, `compressed: ${first.storedBytes}`);
    const again = await r.putSealedObject("wal/7000000000000000001/00000001/000000010000000000000001", segment);
    assert.equal(again.existed, true);
    await assert.rejects(
      r.putSealedObject("wal/7000000000000000001/00000001/000000010000000000000001", random(100)),
      (e: unknown) => isCode(e, "ALREADY_EXISTS") && /different content/.test(e.message),
    );
    assert.ok((await r.getSealedObject("wal/7000000000000000001/00000001/000000010000000000000001")).equals(segment));
    const keys = [];
    for await (const o of r.listSealedObjects("wal/7000000000000000001/")) keys.push(o.key);
    assert.equal(keys.length, 1);
    await assert.rejects(r.getSealedObject("wal/x/none"), (e: unknown) => isCode(e, "NOT_FOUND"));
    await assert.rejects(r.putSealedObject("data/ab/evil", random(10)), (e: unknown) => isCode(e, "INVALID_ARGUMENT"));
    await assert.rejects(
      r.verify(),
      (e: unknown) => isCode(e, "FAILED_PRECONDITION") && /without its index/.test(e.message),
    );
    // A flipped byte is detected.
    const key = "wal/7000000000000000001/00000001/000000010000000000000001";
    const raw = Buffer.from(store.raw(key)!);
    raw[raw.length - 20]! ^= 0xff;
    store.overwrite(key, raw);
    await assert.rejects(r.getSealedObject(key), (e: unknown) => isCode(e, "DATA_CORRUPT"));
    assert.ok(await r.deleteSealedObject(key));
  } finally {
    await r.close();
  }
});

import assert from "node:assert/strict";
import { test } from "node:test";
import { isCode } from "@iotvault/errors";
import { runObjectStoreConformance } from "./conformance.js";
import { MemoryStore } from "./memory-store.js";

// MemoryStore.put is a single Map.set: there is no partial state to interrupt, so the fixture
// has no interruptPut hook and that test reports itself as skipped.
runObjectStoreConformance("MemoryStore", async () => ({ store: new MemoryStore(), cleanup: async () => undefined }));

void test("MemoryStore: an aborted signal refuses the put with CANCELLED", async () => {
  const store = new MemoryStore();
  const controller = new AbortController();
  controller.abort();
  await assert.rejects(store.put("config", Buffer.from("x"), { signal: controller.signal }), (err) =>
    isCode(err, "CANCELLED"),
  );
  assert.equal(await store.stat("config"), undefined);
});

void test("MemoryStore: negative or fractional ranges are INVALID_ARGUMENT", async () => {
  const store = new MemoryStore();
  await store.put("config", Buffer.from("0123456789"));
  for (const range of [{ offset: -1 }, { offset: 1.5 }, { offset: 0, length: -2 }]) {
    await assert.rejects(store.get("config", range), (err) => isCode(err, "INVALID_ARGUMENT"), JSON.stringify(range));
  }
});

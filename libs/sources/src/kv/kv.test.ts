import assert from "node:assert/strict";
import { test } from "node:test";
import { connect } from "@nats-io/transport-node";
import { Kvm } from "@nats-io/kv";
import { isCode } from "@iotvault/errors";
import { startNats } from "@iotvault/testing";
import { withSandbox } from "../test-util.js";
import { loadCatalog } from "../rdf/catalog.js";
import { runBackup, runRestore } from "../rdf/test-support.js";

async function withNats(fn: (ctx: { services: { bus: { nc: unknown } }; kvm: Kvm }) => Promise<void>): Promise<void> {
  const nats = await startNats();
  const nc = await connect({ servers: nats.url });
  try {
    await fn({ services: { bus: { nc } }, kvm: new Kvm(nc) });
  } finally {
    await nc.close();
    await nats.stop();
  }
}

const text = (v: Uint8Array | undefined) => Buffer.from(v ?? []).toString("utf8");

void test("kv: every key with its revision; incremental takes unchanged keys from the parent", async () => {
  await withNats(async ({ services, kvm }) => {
    await withSandbox(async ({ repo, dir }) => {
      const kv = await kvm.create("gateway-config");
      await kv.put("mqtt.host", "broker.local");
      await kv.put("mqtt.port", "1883");
      await kv.put("sensors/t1", JSON.stringify({ unit: "C" }));
      await kv.put("old", "x");
      await kv.delete("old");
      const first = await runBackup(repo, "kv:gateway-config", { runId: "r1", services });
      const catalog = (await loadCatalog(repo, first.snapshot))!;
      assert.deepEqual(
        catalog.entries.map((e) => [e.key, e.revision, e.path]),
        [
          ["mqtt.host", 1, "keys/mqtt.host"],
          ["mqtt.port", 2, "keys/mqtt.port"],
          ["sensors/t1", 3, "keys/sensors%2Ft1"],
        ],
      );
      await kv.put("mqtt.port", "8883");
      await kv.put("mqtt.tls", "on");
      const second = await runBackup(repo, "kv:gateway-config", { runId: "r2", services, parent: first.snapshot });
      const status = Object.fromEntries(
        (await loadCatalog(repo, second.snapshot))!.entries.map((e) => [e.key, e.status]),
      );
      assert.deepEqual(status, {
        "mqtt.host": "unchanged",
        "mqtt.port": "changed",
        "mqtt.tls": "new",
        "sensors/t1": "unchanged",
      });
      assert.equal(second.stats.filesUnchanged, 2);
      // A kv: snapshot restores into a directory too: one file per key.
      const files = await runRestore(repo, second.snapshot, dir("kv-files"));
      assert.equal(files.files, 4);
      await assert.rejects(runBackup(repo, "kv:missing-bucket", { runId: "r3", services }), (e: unknown) =>
        isCode(e, "NOT_FOUND"),
      );
    });
  });
});

void test("kv: restore checks revisions, names the changed keys and overwrites only when forced", async () => {
  await withNats(async ({ services, kvm }) => {
    await withSandbox(async ({ repo }) => {
      const kv = await kvm.create("cfg");
      await kv.put("a", "1");
      await kv.put("b", "2");
      await kv.put("c", "3");
      const { snapshot } = await runBackup(repo, "kv:cfg", { runId: "r1", services });
      // Since the backup: a changed, c deleted, d added.
      await kv.put("a", "changed");
      await kv.delete("c");
      await kv.put("d", "new");
      await assert.rejects(runRestore(repo, snapshot, "kv:cfg", { services }), (e: unknown) => {
        assert.ok(isCode(e, "FAILED_PRECONDITION"));
        assert.match((e as Error).message, /1 key\(s\) of cfg changed since the backup and were not overwritten: a$/);
        return true;
      });
      assert.equal(text((await kv.get("c"))?.value), ""); // nothing written by the refused restore
      const r = await runRestore(repo, snapshot, "kv:cfg", { services, options: { force: "true" } });
      assert.equal(r.verified, true);
      assert.deepEqual([r.details["written"], r.details["unchanged"], r.details["overwritten"]], [2, 1, ["a"]]);
      assert.deepEqual(
        [text((await kv.get("a"))?.value), text((await kv.get("c"))?.value), text((await kv.get("d"))?.value)],
        ["1", "3", "new"],
      );
      // Into another bucket: created, every key written.
      const other = await runRestore(repo, snapshot, "kv:cfg-copy", { services });
      assert.equal(other.files, 3);
      const copy = await kvm.open("cfg-copy");
      assert.equal(text((await copy.get("b"))?.value), "2");
      // A key that differs in another bucket is a conflict as well.
      await copy.put("b", "other");
      await assert.rejects(runRestore(repo, snapshot, "kv:cfg-copy", { services }), /changed since the backup.*: b$/);
    });
  });
});

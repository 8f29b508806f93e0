import assert from "node:assert/strict";
import { mkdir, writeFile } from "node:fs/promises";
import { join } from "node:path";
import { test } from "node:test";
import { describeTree, withSandbox } from "../test-util.js";
import { loadCatalog } from "../rdf/catalog.js";
import { runBackup, runRestore } from "../rdf/test-support.js";

async function makeConfig(root: string): Promise<void> {
  await mkdir(join(root, "gateway"), { recursive: true });
  await writeFile(join(root, "gateway/app.yaml"), "mqtt:\n  host: broker.local\n  port: 1883\n");
  await writeFile(join(root, "gateway/devices.json"), '{ "devices": [ { "id": "t1", "kind": "thermo" } ] }\n');
  await writeFile(join(root, "gateway/limits.toml"), "[temperature]\nmax = 30.5\n");
  await writeFile(join(root, "legacy.ini"), "[main]\nlog = debug\n");
  await writeFile(join(root, "mosquitto.conf"), "listener 1883\nallow_anonymous false\n");
  await writeFile(join(root, "firmware.bin"), Buffer.from([0, 1, 2, 3, 255]));
}

void test("config: files are checked, stored byte for byte, incrementally, and restored", async () => {
  await withSandbox(async ({ dir, repo }) => {
    const src = dir("etc");
    await makeConfig(src);
    const first = await runBackup(repo, `config:${src}`, { runId: "r1" });
    assert.deepEqual(first.warnings, []);
    const catalog = (await loadCatalog(repo, first.snapshot))!;
    assert.deepEqual(
      catalog.entries.map((e) => [e.path, e.format, e.config?.ok]),
      [
        ["gateway/app.yaml", "yaml", true],
        ["gateway/devices.json", "json", true],
        ["gateway/limits.toml", "toml", true],
        ["legacy.ini", "ini", true],
        ["mosquitto.conf", "conf", true],
      ],
    );
    await writeFile(join(src, "gateway/limits.toml"), "[temperature]\nmax = = 30.5\n");
    const second = await runBackup(repo, `config:${src}`, { runId: "r2", parent: first.snapshot });
    assert.equal(second.stats.filesChanged, 1);
    assert.equal(second.stats.filesUnchanged, 5);
    assert.equal(second.warnings.length, 1);
    assert.equal(second.warnings[0]!.path, "gateway/limits.toml");
    assert.match(second.warnings[0]!.message, /line 2/);
    const dst = dir("restored");
    await runRestore(repo, second.snapshot, dst);
    assert.deepEqual(await describeTree(dst), await describeTree(src));
  });
});

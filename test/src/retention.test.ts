/**
 * Retention through the real CLI and services: forget with a policy (and a hold), prune while a
 * backup runs, and the catalog rebuilt from the repository alone.
 */
import assert from "node:assert/strict";
import { mkdir, readdir, rm, writeFile } from "node:fs/promises";
import { join } from "node:path";
import { after, before, describe, it } from "node:test";
import { makeGatewayTree, randomBlocks } from "@iotvault/sample";
import { tempDir, waitFor, type TempDir } from "@iotvault/testing";
import { TestStack } from "./harness.js";

async function packCount(dir: string): Promise<number> {
  let n = 0;
  for (const d of await readdir(join(dir, "data")).catch(() => [])) n += (await readdir(join(dir, "data", d))).length;
  return n;
}

describe("retention end to end: forget, hold, prune, catalog rebuild", { timeout: 300_000 }, () => {
  let stack: TestStack;
  let data: TempDir;
  let src: string;
  let repoDir: string;
  const snapshots: string[] = [];

  before(async () => {
    stack = await TestStack.start();
    data = await tempDir("iotvault-retention-");
    src = join(data.path, "gw");
    repoDir = join(data.path, "repo");
    await makeGatewayTree(src, { sizeBytes: 2 << 20, seed: 3 });
    await stack.cliJson(["repo", "init", "r", "--url", `file://${repoDir}`]);
    await stack.cliJson(["job", "create", "gw", "--source", `fs:${src}`, "--repo", "r", "--type", "full"]);
    // Four snapshots, each with data no other snapshot has (a blob present only during its run).
    for (let i = 0; i < 4; i++) {
      const parts: Buffer[] = [];
      for (const b of randomBlocks(`retention-${i}`, 3 << 20)) parts.push(b);
      await writeFile(join(src, `blob-${i}.bin`), Buffer.concat(parts));
      const run = await stack.cliJson(["backup", "gw", "--wait"]);
      assert.equal(run.status, "RUN_STATUS_SUCCEEDED");
      snapshots.push(run.snapshotId);
      await rm(join(src, `blob-${i}.bin`));
    }
  });

  after(async () => {
    await stack?.stop();
    await data?.cleanup();
  });

  it("forget keeps what the policy and the holds keep, and the catalog hides the rest", async () => {
    const held = await stack.cliJson(["hold", snapshots[0]!, "--reason", "audit 2026"]);
    assert.equal(held.held, true);
    const dry = await stack.cliJson(["forget", "--job", "gw", "--keep-last", "2", "--dry-run"]);
    assert.deepEqual(dry.removed.sort(), [snapshots[1]].sort());
    const done = await stack.cliJson(["forget", "--job", "gw", "--keep-last", "2"]);
    assert.deepEqual(done.removed, [snapshots[1]]);
    const live = await waitFor(
      async () => {
        const s = await stack.cliJson(["snapshots", "--job", "gw"]);
        return s.length === 3 ? s : undefined;
      },
      { what: "the catalog to hide the forgotten snapshot" },
    );
    assert.ok(!live.some((s: any) => s.snapshotId === snapshots[1]));
    assert.equal(live.find((s: any) => s.snapshotId === snapshots[0]).held, true);
  });

  it("prune frees the forgotten data, waits for a running backup, and every kept snapshot restores", async () => {
    const before = await packCount(repoDir);
    // A big backup in progress holds its shared lock: prune must wait for it.
    await mkdir(join(src, "big"), { recursive: true });
    const parts: Buffer[] = [];
    for (const b of randomBlocks("retention-big", 96 << 20)) parts.push(b);
    await writeFile(join(src, "big", "blob.bin"), Buffer.concat(parts));
    const queued = await stack.cliJson(["backup", "gw"]);
    await waitFor(
      async () => (await stack.cliJson<any[]>(["locks", "--repo", "r"])).some((l) => !l.exclusive) || undefined,
      {
        timeoutMs: 60_000,
        intervalMs: 50,
        what: "the backup's lock",
      },
    );
    const pruned = await stack.cliJson(["prune", "--repo", "r", "--wait", "120"]);
    const run = (await stack.cliJson(["runs", "--job", "gw"])).find((r: any) => r.runId === queued.runId);
    assert.equal(run.status, "RUN_STATUS_SUCCEEDED", "prune ran only after the backup finished");
    assert.ok(pruned.packsDeleted + pruned.packsRepacked > 0, JSON.stringify(pruned));
    assert.ok(
      pruned.bytesFreed > 2 << 20,
      `freed ${pruned.bytesFreed} bytes, the forgotten snapshot's 3 MiB blob expected`,
    );
    assert.ok((await packCount(repoDir)) <= before + 10);
    for (const id of [snapshots[0]!, snapshots[2]!, snapshots[3]!, run.snapshotId]) {
      const v = await stack.cliJson(["verify", id, "--read-data"]);
      assert.equal(v.ok, true, `${id}: ${JSON.stringify(v.problems)}`);
    }
    const target = join(data.path, "restore-after-prune");
    const restored = await stack.cliJson(["restore", snapshots[3]!, "--to", target]);
    assert.equal(restored.verified, true);
  });

  it("rebuilds the catalog's snapshots from the repository alone", async () => {
    // Lose the catalog's snapshot rows, as after a catalog database loss.
    const { default: pg } = await import("pg");
    const client = new pg.Client({ connectionString: stack.db.url });
    await client.connect();
    await client.query("DELETE FROM snapshots");
    await client.end();
    assert.equal((await stack.cliJson(["snapshots", "--job", "gw"])).length, 0);
    const r = await stack.cliJson(["catalog", "rebuild", "--repo", "r"]);
    assert.equal(r.seen, 4);
    assert.equal(r.added, 4);
    const rows = await stack.cliJson(["snapshots", "--job", "gw"]);
    assert.equal(rows.length, 4);
    assert.equal(rows.find((s: any) => s.snapshotId === snapshots[0]).held, true);
  });

  it("applies the job's own retention policy after each run", async () => {
    await stack.cliJson(["job", "update", "gw", "--keep-last", "1"]);
    const run = await stack.cliJson(["backup", "gw", "--wait"]);
    assert.equal(run.status, "RUN_STATUS_SUCCEEDED");
    const live = await waitFor(
      async () => {
        const s = await stack.cliJson(["snapshots", "--job", "gw"]);
        return s.length === 2 ? s : undefined;
      },
      { what: "the executor's forget to reach the catalog" },
    );
    // The newest run's snapshot and the held one stay.
    assert.deepEqual(live.map((s: any) => s.snapshotId).sort(), [run.snapshotId, snapshots[0]].sort());
  });
});

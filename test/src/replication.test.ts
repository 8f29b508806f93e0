/**
 * A repository with a replica, end to end through the five services and the real CLI: `repo
 * init --replica`, the replica's directory renamed away (its store reports its root missing),
 * `backup --wait` completes degraded (in `iotvault runs` and in the BackupCompleted event), the
 * replica comes back and the gateway's self-heal task copies what it missed, then the replica
 * alone (the primary renamed away) restores the snapshot byte-identical and verifies it.
 */
import assert from "node:assert/strict";
import { createHash, randomBytes } from "node:crypto";
import { readFile, readdir, rename, writeFile } from "node:fs/promises";
import { join, relative } from "node:path";
import { after, before, describe, it } from "node:test";
import { jetstreamManager } from "@nats-io/jetstream";
import { connect } from "@nats-io/transport-node";
import { BackupCompleted } from "@iotvault/proto";
import { makeGatewayTree } from "@iotvault/sample";
import { tempDir, waitFor, type TempDir } from "@iotvault/testing";
import { TestStack } from "./harness.js";
import { comparable, walk } from "./tree.js";

interface TargetStatusJson {
  url: string;
  available: boolean;
  pendingCopies: number;
  lastError: string;
}

/** relative path -> sha256 of each object file of a file:// target (temp files left out). */
async function objects(dir: string): Promise<Record<string, string>> {
  const out: Record<string, string> = {};
  for (const entry of await readdir(dir, { recursive: true, withFileTypes: true })) {
    if (!entry.isFile() || entry.name.startsWith(".tmp~")) continue;
    const path = join(entry.parentPath, entry.name);
    out[relative(dir, path)] = createHash("sha256")
      .update(await readFile(path))
      .digest("hex");
  }
  return Object.fromEntries(Object.entries(out).sort(([a], [b]) => (a < b ? -1 : 1)));
}

describe("a repository with a replica (five services, real CLI)", { timeout: 600_000 }, () => {
  let stack: TestStack;
  let data: TempDir;
  let src: string;
  let primary: string;
  let replica: string;
  let degraded: any;

  const targets = async (): Promise<TargetStatusJson[]> => {
    const repos = await stack.cliJson<{ name: string; targetStatus: TargetStatusJson[] }[]>(["repo", "list"]);
    return repos.find((r) => r.name === "main")!.targetStatus;
  };

  before(async () => {
    stack = await TestStack.start({
      extraEnv: { IOTVAULT_GATEWAY_HEAL_INTERVAL_MS: "200", IOTVAULT_GATEWAY_HEAL_MAX_INTERVAL_MS: "1000" },
    });
    data = await tempDir("iotvault-e2e-replication-");
    src = join(data.path, "gateway");
    primary = join(data.path, "primary");
    replica = join(data.path, "replica");
    await makeGatewayTree(src, { sizeBytes: 3 << 20, seed: 11 });
  });

  after(async () => {
    await stack?.stop();
    await data?.cleanup();
  });

  it("repo init --replica makes both targets; a backup with both up is not degraded", async () => {
    const init = await stack.cliJson([
      "repo",
      "init",
      "main",
      "--url",
      `file://${primary}`,
      "--replica",
      `file://${replica}`,
    ]);
    assert.deepEqual(init.targets, [`file://${primary}`, `file://${replica}`]);
    await stack.cliJson(["job", "create", "gw", "--source", `fs:${src}`, "--repo", "main"]);
    const run = await stack.cliJson(["backup", "gw", "--wait"]);
    assert.equal(run.status, "RUN_STATUS_SUCCEEDED", JSON.stringify(run));
    assert.notEqual(run.degraded, true);
    assert.deepEqual(await objects(replica), await objects(primary));
    const listed = await stack.cli(["repo", "list"]);
    assert.match(listed.stdout, /main\s+file:\/\/\S+\s+primary\s+up\s+0/);
    assert.match(listed.stdout, /replica\s+up\s+0/);
  });

  it("with the replica's directory gone, backup --wait succeeds and the run is degraded", async () => {
    await rename(replica, `${replica}.away`);
    await writeFile(join(src, "new-while-degraded.bin"), randomBytes(1 << 20));
    degraded = await stack.cliJson(["backup", "gw", "--wait"]);
    assert.equal(degraded.status, "RUN_STATUS_SUCCEEDED", JSON.stringify(degraded));
    const runs = await stack.cliJson(["runs", "--job", "gw"]);
    const run = runs.find((r: any) => r.runId === degraded.runId);
    assert.equal(run.degraded, true, JSON.stringify(run));
    assert.notEqual(runs.find((r: any) => r.runId !== degraded.runId).degraded, true);

    const [p, r] = await targets();
    assert.deepEqual(p, { url: `file://${primary}`, available: true, pendingCopies: 0, lastError: "" });
    assert.equal(r?.available, false);
    assert.ok((r?.pendingCopies ?? 0) > 0, JSON.stringify(r));
    assert.match(r?.lastError ?? "", /does not exist/);

    // The event other services read says which target missed objects.
    const nc = await connect({ servers: stack.nats.url });
    try {
      const jsm = await jetstreamManager(nc);
      const message = await jsm.streams.getMessage("IOTVAULT_EVENTS", {
        last_by_subj: "iotvault.events.backup.completed",
      });
      const event = BackupCompleted.fromJSON(JSON.parse(new TextDecoder().decode(message!.data)));
      assert.equal(event.runId, degraded.runId);
      assert.equal(event.degraded, true);
      assert.deepEqual(event.missingTargets, [`file://${replica}`]);
    } finally {
      await nc.close();
    }
  });

  it("the replica back, the gateway copies what it missed: both targets byte-identical", async () => {
    await rename(`${replica}.away`, replica);
    await waitFor(
      async () => {
        const [, r] = await targets();
        return (r?.available === true && r.pendingCopies === 0) || undefined;
      },
      { timeoutMs: 30_000, intervalMs: 300, what: "the self-heal task to catch the replica up" },
    );
    assert.deepEqual(await objects(replica), await objects(primary));
    const log = await readFile(stack.logFile("storage-gateway"), "utf8");
    assert.match(log, /replication target healed/);
  });

  it("the replica alone (primary gone) restores the degraded run's snapshot byte-identical and verifies it", async () => {
    await rename(primary, `${primary}.away`);
    try {
      const target = join(data.path, "restored");
      const restored = await stack.cliJson(["restore", degraded.snapshotId, "--to", target]);
      assert.equal(restored.verified, true);
      assert.deepEqual(comparable(await walk(target)), comparable(await walk(src)));
      const verified = await stack.cliJson(["verify", degraded.snapshotId, "--read-data"]);
      assert.equal(verified.ok, true, JSON.stringify(verified.problems));
      const [p] = await targets();
      assert.equal(p?.available, false, "the primary is reported down");
    } finally {
      await rename(`${primary}.away`, primary);
    }
  });
});

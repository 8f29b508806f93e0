/**
 * End to end through all five services, as real processes, driven by the real CLI:
 * backup -> restore byte-identical, dedup of an unchanged tree, one trace across services,
 * and the faults: a killed executor, a malformed event, a wrong passphrase, a path escape.
 */
import assert from "node:assert/strict";
import { mkdir, readFile, readdir, symlink, utimes, writeFile, chmod, stat } from "node:fs/promises";
import { join } from "node:path";
import { after, before, describe, it } from "node:test";
import { headers as natsHeaders, connect } from "@nats-io/transport-node";
import { jetstream, jetstreamManager } from "@nats-io/jetstream";
import { DeadLetter } from "@iotvault/proto";
import { Repository } from "@iotvault/repo";
import { makeGatewayTree, randomBlocks } from "@iotvault/sample";
import { LocalDirectoryStore } from "@iotvault/storage";
import { readSpans } from "@iotvault/telemetry";
import { tempDir, waitFor, type TempDir } from "@iotvault/testing";
import { TestStack } from "./harness.js";
import { comparable, walk } from "./tree.js";

async function fidelityExtras(root: string): Promise<void> {
  await mkdir(join(root, "edge/empty-dir"), { recursive: true });
  await writeFile(join(root, "edge/empty-file"), "");
  await writeFile(join(root, "edge/mode-640.conf"), "a=1\n");
  await chmod(join(root, "edge/mode-640.conf"), 0o640);
  await writeFile(join(root, "edge/Ünïcødé — 温度センサー.txt"), "température 21.5 °C\n");
  await symlink("mode-640.conf", join(root, "edge/link-to-file"));
  await symlink("empty-dir", join(root, "edge/link-to-dir"));
  await symlink("does-not-exist", join(root, "edge/dangling"));
  const t = new Date(Date.UTC(2023, 4, 6, 7, 8, 9, 987));
  await utimes(join(root, "edge/mode-640.conf"), t, t);
  await utimes(join(root, "edge/empty-dir"), t, t);
}

describe("iotvault end to end (five services, real NATS, PostgreSQL, gRPC)", { timeout: 600_000 }, () => {
  let stack: TestStack;
  let data: TempDir;
  let src: string;
  let repoDir: string;
  let first: any;

  before(async () => {
    stack = await TestStack.start();
    data = await tempDir("iotvault-e2e-data-");
    src = join(data.path, "gateway");
    repoDir = join(data.path, "repository");
    await makeGatewayTree(src, { sizeBytes: 6 << 20, seed: 7 });
    await fidelityExtras(src);
    await stack.cliJson(["repo", "init", "main", "--url", `file://${repoDir}`]);
    await stack.cliJson(["job", "create", "gw", "--source", `fs:${src}`, "--repo", "main"]);
  });

  after(async () => {
    await stack?.stop();
    await data?.cleanup();
  });

  it("backs up through scheduler, executor, gateway and catalog, and restores a byte-identical tree", async () => {
    first = await stack.cliJson(["backup", "gw", "--wait"]);
    assert.equal(first.status, "RUN_STATUS_SUCCEEDED", JSON.stringify(first));
    assert.match(first.snapshotId, /^[0-9a-f]{64}$/);
    assert.ok(Number(first.stats.bytesStored) > 0);
    // The snapshot is in the catalog and in the repository on disk.
    const snaps = await stack.cliJson(["snapshots", "--job", "gw"]);
    assert.equal(snaps[0].snapshotId, first.snapshotId);
    assert.ok((await readdir(join(repoDir, "snapshots"))).includes(first.snapshotId));

    const target = join(data.path, "restore-1");
    const restored = await stack.cliJson(["restore", first.snapshotId.slice(0, 10), "--to", target]);
    assert.equal(restored.verified, true);
    assert.deepEqual(comparable(await walk(target)), comparable(await walk(src)));
  });

  it("a second backup of the unchanged tree adds almost no bytes and reads no file again", async () => {
    const second = await stack.cliJson(["backup", "gw", "--wait"]);
    assert.equal(second.status, "RUN_STATUS_SUCCEEDED");
    assert.notEqual(second.snapshotId, first.snapshotId);
    assert.equal(Number(second.stats.bytesNew), 0);
    assert.equal(Number(second.stats.bytesRead), 0);
    assert.ok(
      Number(second.stats.bytesStored) < Number(first.stats.bytesStored) / 50,
      `stored ${second.stats.bytesStored} vs ${first.stats.bytesStored}`,
    );
  });

  it("one trace id covers the run's spans in at least four services, and `iotvault trace` shows them", async () => {
    const run = await stack
      .cliJson(["runs", "--job", "gw", "--limit", "5"])
      .then((runs: any[]) => runs.find((r) => r.runId === first.runId));
    assert.match(run.traceId, /^[0-9a-f]{32}$/);
    const spans = await waitFor(
      async () => {
        const s = await readSpans(join(stack.env["IOTVAULT_HOME"]!, "traces"), run.traceId);
        return new Set(s.map((x) => x.service)).size >= 4 ? s : undefined;
      },
      { timeoutMs: 10_000, what: "spans of four services" },
    );
    const services = new Set(spans.map((s) => s.service));
    for (const s of ["scheduler", "executor", "storage-gateway", "catalog"])
      assert.ok(services.has(s), `no span of ${s}: ${[...services].join(", ")}`);
    const text = await stack.cli(["trace", first.runId]);
    assert.equal(text.code, 0, text.stderr);
    for (const s of ["scheduler", "executor", "storage-gateway", "catalog"])
      assert.match(text.stdout, new RegExp(`\\[${s}\\]`));
  });

  it("backup --wait follows the run through the catalog's WatchRun stream, and gives up at --timeout", async () => {
    // The first backup's wait was a WatchRun call, not a GetRun poll: the catalog's server span
    // (span files are appended to as spans end).
    const spanFile = join(stack.env["IOTVAULT_HOME"]!, "traces", "catalog.jsonl");
    await waitFor(
      async () =>
        (await readFile(spanFile, "utf8").catch(() => ""))
          .split("\n")
          .filter(Boolean)
          .some((l) => (JSON.parse(l) as { name: string }).name === "CatalogService/WatchRun") || undefined,
      { timeoutMs: 10_000, what: "a WatchRun span of the catalog" },
    );
    // No executor serves the site "nowhere": the run stays queued and the wait ends at its timeout.
    await stack.cliJson([
      "job",
      "create",
      "gw-nowhere",
      "--source",
      `fs:${src}`,
      "--repo",
      "main",
      "--site",
      "nowhere",
    ]);
    try {
      const started = Date.now();
      const r = await stack.cli(["backup", "gw-nowhere", "--wait", "--timeout", "1"]);
      assert.notEqual(r.code, 0);
      assert.match(r.stderr, /did not finish within 1 s/);
      assert.match(r.stderr, /is an executor up for the job's site/);
      assert.ok(Date.now() - started < 20_000, "the wait ended near its timeout");
    } finally {
      await stack.cliJson(["job", "delete", "gw-nowhere"]);
    }
  });

  it("derives a new repository's key ahead: the executor when a job for it is created, the restore service when a backup into it completes", async () => {
    const small = join(data.path, "small");
    await mkdir(small, { recursive: true });
    await writeFile(join(small, "settings.yaml"), "sampling_hz: 10\n");
    await stack.cliJson(["repo", "init", "second", "--url", `file://${join(data.path, "second-repository")}`]);
    await stack.cliJson(["job", "create", "gw-second", "--source", `fs:${small}`, "--repo", "second"]);
    const prepared = (service: "executor" | "restore", reason: string) =>
      waitFor(
        async () =>
          (await readFile(stack.logFile(service), "utf8"))
            .split("\n")
            .filter((l) => l.includes('"msg":"repository key prepared"'))
            .map((l) => JSON.parse(l) as { repository: string; reason: string })
            .find((l) => l.repository === "second" && l.reason === reason),
        { timeoutMs: 30_000, intervalMs: 100, what: `the ${service} to derive the key of "second" (${reason})` },
      );
    await prepared("executor", "job created");
    const run = await stack.cliJson(["backup", "gw-second", "--wait"]);
    assert.equal(run.status, "RUN_STATUS_SUCCEEDED", JSON.stringify(run));
    await prepared("restore", "backup completed");
    const target = join(data.path, "restore-second");
    const restored = await stack.cliJson(["restore", run.snapshotId, "--to", target]);
    assert.equal(restored.verified, true);
    assert.equal(await readFile(join(target, "settings.yaml"), "utf8"), "sampling_hz: 10\n");
  });

  it("sends a malformed event to the dead-letter subject with the reason, and the catalog keeps going", async () => {
    const nc = await connect({ servers: stack.nats.url });
    try {
      const js = jetstream(nc);
      const h = natsHeaders();
      h.set("Iotvault-Event-Type", "iotvault.v1.BackupCompleted");
      await js.publish("iotvault.events.backup.completed", new TextEncoder().encode("{not json"), {
        headers: h,
        msgID: "garbage-1",
      });
      const jsm = await jetstreamManager(nc);
      const dead = await waitFor(
        async () => {
          try {
            const m = await jsm.streams.getMessage("IOTVAULT_DLQ", {
              last_by_subj: "iotvault.dlq.iotvault.events.backup.completed",
            });
            return m ?? undefined;
          } catch {
            return undefined;
          }
        },
        { timeoutMs: 10_000, what: "the dead letter" },
      );
      const letter = DeadLetter.fromJSON(JSON.parse(new TextDecoder().decode(dead.data)));
      assert.equal(letter.subject, "iotvault.events.backup.completed");
      assert.match(letter.reason, /malformed/i);
      assert.equal(Buffer.from(letter.payload).toString(), "{not json");
    } finally {
      await nc.close();
    }
    // The catalog still records new runs.
    const after = await stack.cliJson(["backup", "gw", "--wait"]);
    assert.equal(after.status, "RUN_STATUS_SUCCEEDED");
  });

  it("refuses a snapshot path that would escape the restore directory, and writes nothing outside", async () => {
    const pass = Buffer.from(
      (await import("node:fs")).readFileSync(stack.env["IOTVAULT_PASSWORD_FILE"]!, "utf8").trim(),
    );
    const repo = await Repository.open(new LocalDirectoryStore(repoDir), pass, { scryptLogN: 14 });
    let snapshotId: string;
    try {
      const writer = await repo.startBackup({ runId: "evil-run" });
      const now = `${Date.now()}000000`;
      await writer.addNode({ path: "ok", type: "dir", mode: 0o755, mtimeNs: now, uid: 0, gid: 0 });
      async function* content() {
        yield Buffer.from("pwned\n");
      }
      await writer.addFile(
        { path: "ok/../../escaped.txt", type: "file", mode: 0o644, mtimeNs: now, uid: 0, gid: 0, size: 6 },
        content(),
      );
      const { snapshot } = await writer.commit({
        jobId: "evil",
        jobName: "evil",
        source: "fs:/evil",
        backupType: "full",
        hostname: "x",
        time: new Date(),
        tags: [],
        labels: {},
        metadata: {},
      });
      snapshotId = snapshot.id;
    } finally {
      await repo.close();
    }
    const target = join(data.path, "restore-evil", "inner");
    const r = await stack.cli(["restore", snapshotId, "--repo", "main", "--to", target]);
    assert.notEqual(r.code, 0);
    assert.match(r.stderr, /refus/i);
    assert.match(r.stderr, /escaped\.txt/);
    await assert.rejects(stat(join(data.path, "restore-evil", "escaped.txt")));
    await assert.rejects(stat(join(data.path, "escaped.txt")));
  });

  it("fails a run on a repository it cannot open (wrong passphrase) with a clear, permanent error", async () => {
    const otherPass = join(data.path, "other.pass");
    await writeFile(otherPass, "a completely different passphrase\n", { mode: 0o600 });
    await stack.cliJson(["repo", "init", "other", "--url", `file://${join(data.path, "other-repo")}`], {
      IOTVAULT_PASSWORD_FILE: otherPass,
    });
    await stack.cliJson(["job", "create", "gw-other", "--source", `fs:${src}`, "--repo", "other"]);
    const r = await stack.cli(["backup", "gw-other", "--wait", "--json"]);
    assert.notEqual(r.code, 0);
    const run = JSON.parse(r.stdout);
    assert.equal(run.status, "RUN_STATUS_FAILED");
    assert.equal(run.error.code, "WRONG_KEY");
    assert.equal(run.attempts, 1, "a wrong key is not retried");
    assert.doesNotMatch(r.stdout, /completely different/);
  });

  it("manages keys: a key-file slot, rotation without rewriting packs, removal; backups and restores go on", async () => {
    const keyFile = join(data.path, "operator.key");
    const added = await stack.cliJson(["key", "add", "--repo", "main", "--new-key-file", keyFile]);
    assert.match(added.slot, /^[0-9a-f]{64}$/);
    assert.equal(((await stat(keyFile)).mode & 0o777).toString(8), "600");
    let keys = await stack.cliJson(["key", "list", "--repo", "main"]);
    assert.equal(keys.slots.length, 2);
    // The key file opens the repository on its own (no passphrase in the environment).
    const viaKeyFile = await stack.cliJson(["key", "list", "--repo", "main"], {
      IOTVAULT_PASSWORD_FILE: "",
      IOTVAULT_KEY_FILE: keyFile,
    });
    assert.equal(viaKeyFile.slots.filter((s: any) => s.inUse)[0].type, "keyfile");

    const packsBefore = await readdir(join(repoDir, "data"), { recursive: true });
    const refused = await stack.cli(["key", "rotate", "--repo", "main"]);
    assert.notEqual(refused.code, 0);
    assert.match(refused.stderr, /other key slot/);
    const rotated = await stack.cliJson(["key", "rotate", "--repo", "main", "--keep-key-file", keyFile]);
    assert.equal(rotated.slots.length, 2);
    keys = await stack.cliJson(["key", "list", "--repo", "main"]);
    assert.equal(keys.dataKeys.length, 2);
    const packsAfter = await readdir(join(repoDir, "data"), { recursive: true });
    for (const p of packsBefore) assert.ok(packsAfter.includes(p), `pack ${p} was removed or rewritten`);

    // The services (opening with the passphrase) back up with the new key and restore old snapshots.
    const run = await stack.cliJson(["backup", "gw", "--wait"]);
    assert.equal(run.status, "RUN_STATUS_SUCCEEDED");
    const target = join(data.path, "restore-after-rotation");
    const restored = await stack.cliJson(["restore", first.snapshotId, "--to", target]);
    assert.equal(restored.verified, true);

    const keyFileSlot = keys.slots.find((s: any) => s.type === "keyfile").id;
    await stack.cliJson(["key", "remove", keyFileSlot.slice(0, 12), "--repo", "main"]);
    const last = await stack.cli(["key", "remove", keys.slots.find((s: any) => s.inUse).id, "--repo", "main"]);
    assert.notEqual(last.code, 0);
    assert.match(last.stderr, /last key slot|in use/);
    const denied = await stack.cli(["key", "list", "--repo", "main"], {
      IOTVAULT_PASSWORD_FILE: "",
      IOTVAULT_KEY_FILE: keyFile,
    });
    assert.notEqual(denied.code, 0);
    assert.match(denied.stderr, /key file does not open/);
  });

  it("redelivers the work of an executor killed mid-run, and the run completes without re-uploading stored packs", async () => {
    const big = join(data.path, "big");
    await mkdir(big, { recursive: true });
    for (let i = 0; i < 4; i++) {
      const parts: Buffer[] = [];
      for (const b of randomBlocks(`kill-${i}`, 96 << 20)) parts.push(b);
      await writeFile(join(big, `blob-${i}.bin`), Buffer.concat(parts));
    }
    await stack.cliJson(["repo", "init", "killrepo", "--url", `file://${join(data.path, "kill-repo")}`]);
    await stack.cliJson(["job", "create", "big", "--source", `fs:${big}`, "--repo", "killrepo"]);
    const queued = await stack.cliJson(["backup", "big"]);
    // Kill the executor as soon as it has stored two packs.
    const packsStored = async () => {
      let n = 0;
      try {
        for (const d of await readdir(join(data.path, "kill-repo", "data"))) {
          n += (await readdir(join(data.path, "kill-repo", "data", d))).filter((f) => /^[0-9a-f]{64}$/.test(f)).length;
        }
      } catch {
        // no pack directory yet
      }
      return n;
    };
    await waitFor(async () => (await packsStored()) >= 2 || undefined, {
      timeoutMs: 60_000,
      intervalMs: 10,
      what: "a first pack of the big backup",
    });
    await stack.kill("executor");
    const mid = await stack.cliJson(["runs", "--job", "big"]);
    assert.notEqual(
      mid[0]?.status,
      "RUN_STATUS_SUCCEEDED",
      "the run finished before the kill: the test needs a bigger source",
    );
    const restarted = await restartPreparingKeys(stack, "executor");
    // (a repository of another passphrase, made by an earlier test, is skipped)
    assert.ok(restarted.repositories >= 1 && restarted.repositories <= restarted.listed, JSON.stringify(restarted));
    const run = await waitFor(
      async () => {
        const runs = await stack.cliJson(["runs", "--job", "big"]);
        const r = runs.find((x: any) => x.runId === queued.runId);
        return r?.status === "RUN_STATUS_SUCCEEDED" ? r : undefined;
      },
      { timeoutMs: 120_000, intervalMs: 500, what: "the redelivered run to complete" },
    );
    assert.ok(run.attempts >= 2, `attempts ${run.attempts}`);
    assert.ok(
      Number(run.stats.bytesNew) < 4 * (96 << 20),
      `packs stored before the kill were reused: ${JSON.stringify(run.stats)}`,
    );
    // The killed backup's lock sent the redelivered one looking for its unindexed packs, and
    // went once they were indexed; the completed run released its own.
    assert.deepEqual(await stack.cliJson(["locks", "--repo", "killrepo"]), []);
    await stack.kill("restore");
    const restore = await restartPreparingKeys(stack, "restore");
    assert.deepEqual(restore, restarted);
    const v = await stack.cliJson(["verify", run.snapshotId, "--read-data"]);
    assert.equal(v.ok, true, JSON.stringify(v.problems));
  });
});

/**
 * Starts a service again and waits for it to log that it derived the repositories' keys ahead
 * of the first operation (they exist now, unlike at the stack's first start).
 */
async function restartPreparingKeys(
  stack: TestStack,
  service: "executor" | "restore",
): Promise<{ repositories: number; listed: number }> {
  const logged = (await readFile(stack.logFile(service), "utf8")).length;
  await stack.startService(service);
  const line = await waitFor(
    async () =>
      (await readFile(stack.logFile(service), "utf8"))
        .slice(logged)
        .split("\n")
        .find((l) => l.includes('"msg":"repository keys prepared"')),
    { timeoutMs: 60_000, intervalMs: 100, what: `the restarted ${service} to prepare the repositories' keys` },
  );
  const { repositories, listed } = JSON.parse(line) as { repositories: number; listed: number };
  return { repositories, listed };
}

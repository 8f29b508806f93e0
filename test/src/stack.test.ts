/**
 * `iotvault stack up | status | down` as a user runs them: with no NATS and no PostgreSQL at the
 * configured URLs, stack up starts both (privately, on loopback) and the five services, is
 * idempotent, and stack down stops exactly what it started.
 */
import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { once } from "node:events";
import { readFile, rm, writeFile } from "node:fs/promises";
import { join } from "node:path";
import { Writable } from "node:stream";
import { after, before, describe, it } from "node:test";
import { isAlive, serviceNodeFlags } from "@iotvault/host";
import pg from "pg";
import { freePort, tempDir, type TempDir } from "@iotvault/testing";
import { startGrpcServer } from "@iotvault/rpc";
import { createLogger } from "@iotvault/telemetry";
import { CLI } from "./harness.js";

/** A logger that writes nowhere: the test's stand-in server is not under test. */
function quiet() {
  return createLogger({ service: "stand-in", stream: new Writable({ write: (_c, _e, done) => done() }) });
}

describe("iotvault stack (embedded default)", { timeout: 300_000 }, () => {
  let home: TempDir;
  let env: NodeJS.ProcessEnv;
  let pgPort: number;

  const cli = async (args: string[]) => {
    const child = spawn(process.execPath, [CLI, ...args], { env, stdio: ["ignore", "pipe", "pipe"] });
    let stdout = "";
    let stderr = "";
    child.stdout.on("data", (d: Buffer) => (stdout += d.toString()));
    child.stderr.on("data", (d: Buffer) => (stderr += d.toString()));
    const [code] = (await once(child, "exit")) as [number];
    return { code, stdout, stderr };
  };

  before(async () => {
    home = await tempDir("iotvault-stack-");
    pgPort = await freePort();
    env = {
      PATH: process.env["PATH"],
      HOME: home.path,
      IOTVAULT_HOME: join(home.path, "home"),
      IOTVAULT_NATS_URL: `nats://127.0.0.1:${await freePort()}`,
      IOTVAULT_DATABASE_URL: `postgres://postgres@127.0.0.1:${pgPort}/iotvault`,
      IOTVAULT_PASSWORD_FILE: join(home.path, "pass"),
      IOTVAULT_SCRYPT_LOGN: "12",
    };
    for (const s of ["SCHEDULER", "EXECUTOR", "STORAGE_GATEWAY", "CATALOG", "RESTORE"]) {
      env[`IOTVAULT_${s}_LISTEN`] = `127.0.0.1:${await freePort()}`;
    }
    await writeFile(join(home.path, "pass"), "stack test passphrase\n", { mode: 0o600 });
  });

  after(async () => {
    await cli(["stack", "down"]).catch(() => undefined);
    await home.cleanup();
    if (process.getuid?.() === 0) await rm(`/var/lib/iotvault/postgres-${pgPort}`, { recursive: true, force: true });
  });

  it("starts NATS, PostgreSQL and the five services, runs a backup, and stops only what it started", async () => {
    const up = await cli(["stack", "up", "--json"]);
    assert.equal(up.code, 0, up.stderr);
    const components = JSON.parse(up.stdout).components as {
      name: string;
      state: string;
      pid?: number;
      managed: boolean;
    }[];
    assert.equal(components.length, 7);
    for (const c of components) {
      assert.equal(c.state, "running", `${c.name}: ${JSON.stringify(c)}`);
      assert.equal(c.managed, true, `${c.name} was started by stack up`);
    }

    // The repository secret reaches only the services that open repositories.
    for (const c of components.filter((x) => x.pid && x.name !== "nats" && x.name !== "postgres")) {
      const environ = await readFile(`/proc/${c.pid}/environ`, "utf8");
      const has = environ.split("\0").some((v) => v.startsWith("IOTVAULT_PASSWORD_FILE="));
      assert.equal(has, c.name === "executor" || c.name === "restore", `${c.name} sees the repository secret: ${has}`);
      // Each service runs with its Node options (the gateway, executor and restore service with a larger first heap limit).
      const argv = (await readFile(`/proc/${c.pid}/cmdline`, "utf8")).split("\0");
      const options = argv.slice(
        1,
        argv.findIndex((a) => a.endsWith("main.js")),
      );
      assert.deepEqual(options, serviceNodeFlags(c.name, env), `${c.name}: ${argv.join(" ")}`);
    }
    for (const s of ["storage-gateway", "executor", "restore"])
      assert.ok(serviceNodeFlags(s).includes("--initial-heap-size=128"), s);
    for (const s of ["catalog", "scheduler"])
      assert.ok(!serviceNodeFlags(s).some((f) => f.startsWith("--initial-heap-size")), s);
    // Source maps only when debugging (each service keeps every module's map in memory otherwise).
    assert.deepEqual(serviceNodeFlags("catalog", {}), []);
    assert.deepEqual(serviceNodeFlags("executor", {}), ["--initial-heap-size=128"]);
    assert.deepEqual(serviceNodeFlags("executor", { IOTVAULT_DEBUG: "1" }), [
      "--enable-source-maps",
      "--initial-heap-size=128",
    ]);
    // The private PostgreSQL wants a password over TCP (no trust authentication).
    const anonymous = new pg.Client({
      host: "127.0.0.1",
      port: pgPort,
      user: "postgres",
      database: "postgres",
      password: "wrong",
    });
    await assert.rejects(anonymous.connect(), /password authentication failed/);
    await anonymous.end().catch(() => undefined);

    // Idempotent: a second stack up starts nothing new.
    const again = await cli(["stack", "up"]);
    assert.equal(again.code, 0, again.stderr);
    assert.doesNotMatch(again.stderr, /starting/);

    // The stack works: a backup goes through.
    const src = join(home.path, "src");
    for (const args of [
      ["sample", src, "--size-mib", "1"],
      // Repositories go under the home (or another allowed root of the storage-gateway).
      ["repo", "init", "r", "--url", `file://${join(env.IOTVAULT_HOME!, "repos", "r")}`],
      ["job", "create", "j", "--source", src, "--repo", "r"],
    ]) {
      const r = await cli(args);
      assert.equal(r.code, 0, `iotvault ${args.join(" ")}: ${r.stderr}${r.stdout}`);
    }
    const backup = await cli(["backup", "j", "--wait", "--json"]);
    assert.equal(backup.code, 0, backup.stderr + backup.stdout);
    assert.equal(JSON.parse(backup.stdout).status, "RUN_STATUS_SUCCEEDED");

    const down = await cli(["stack", "down", "--json"]);
    assert.equal(down.code, 0, down.stderr);
    assert.deepEqual(JSON.parse(down.stdout).stopped.sort(), [
      "catalog",
      "executor",
      "nats",
      "postgres",
      "restore",
      "scheduler",
      "storage-gateway",
    ]);
    for (const c of components) if (c.pid) assert.equal(isAlive(c.pid), false, `${c.name} (pid ${c.pid}) still runs`);

    const status = await cli(["stack", "status", "--json"]);
    assert.equal(status.code, 3, "status exits 3 when services are down");
    for (const c of JSON.parse(status.stdout).components) assert.equal(c.state, "stopped", c.name);
  });

  it("refuses to count another server on a service's port as that service", async () => {
    // A gRPC server with a health service (here: one that says it is a catalog) holds the
    // storage-gateway's address. stack up must not take it for the gateway.
    const listen = env["IOTVAULT_STORAGE_GATEWAY_LISTEN"]!;
    const other = await startGrpcServer({ listen, serviceName: "catalog", services: [], logger: quiet() });
    try {
      const up = await cli(["stack", "up"]);
      assert.equal(up.code, 1, up.stderr);
      assert.match(up.stderr, new RegExp(`another server answers on ${listen}, not the storage-gateway service`));
      assert.match(up.stderr, /hint: .*services\.storage-gateway\.listen/);
      const status = await cli(["stack", "status", "--json"]);
      const gateway = (JSON.parse(status.stdout).components as { name: string; state: string }[]).find(
        (c) => c.name === "storage-gateway",
      );
      assert.equal(gateway?.state, "unhealthy");
    } finally {
      await other.shutdown(1000);
      await cli(["stack", "down"]);
    }
  });

  it("explains what to do when a command needs services that are not running", async () => {
    await cli(["stack", "down"]); // whatever the test before left running
    const r = await cli(["runs"]);
    assert.equal(r.code, 1);
    assert.match(r.stderr, /cannot reach the catalog service/);
    assert.match(r.stderr, /hint: .*stack up/);
    // As a restore_command, wal-fetch must not say "segment not archived" (exit 1) for a broken setup.
    const broken = await cli([
      "wal-fetch",
      "000000010000000000000001",
      "/tmp/x",
      "--repo",
      "r",
      "--system-id",
      "1",
    ]).then(async () => {
      const child = spawn(process.execPath, [CLI, "wal-fetch", "a", "/tmp/x", "--repo", "r", "--system-id", "1"], {
        env: { ...env, IOTVAULT_CONFIG: join(home.path, "missing.yaml") },
        stdio: "ignore",
      });
      const [code] = (await once(child, "exit")) as [number];
      return code;
    });
    assert.equal(broken, 126);
    // Its --help is help, not a failure.
    const help = await cli(["wal-fetch", "--help"]);
    assert.equal(help.code, 0, help.stderr);
    assert.match(help.stdout, /^usage: iotvault wal-fetch /);
  });
});

import assert from "node:assert/strict";
import { spawn, type ChildProcess } from "node:child_process";
import { randomBytes } from "node:crypto";
import { mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { test, type TestContext } from "node:test";
import { pathToFileURL } from "node:url";
import { StorageGatewayServiceClient } from "@iotvault/proto";
import { callUnary, checkHealth, createClient } from "@iotvault/rpc";
import { freePort } from "@iotvault/testing";
import { STORAGE_GATEWAY_SERVICE_NAME } from "./server.js";
import { putMessages, putObject, waitFor } from "./test-support.js";

const MAIN = join(import.meta.dirname, "main.js");

interface Started {
  child: ChildProcess;
  address: string;
  home: string;
  stderr: () => string;
  exit: Promise<number | null>;
}

async function startMain(t: TestContext, env: Record<string, string> = {}): Promise<Started> {
  const home = await mkdtemp(join(tmpdir(), "iotvault-gateway-main-"));
  const address = `127.0.0.1:${await freePort()}`;
  const child = spawn(process.execPath, [MAIN], {
    env: {
      PATH: process.env["PATH"] ?? "",
      IOTVAULT_HOME: home,
      IOTVAULT_STORAGE_GATEWAY_LISTEN: address,
      IOTVAULT_LOG_LEVEL: "info",
      ...env,
    },
    stdio: ["ignore", "ignore", "pipe"],
  });
  let stderr = "";
  child.stderr.on("data", (d: Buffer) => (stderr += d.toString()));
  const exit = new Promise<number | null>((resolve) => child.once("exit", (c) => resolve(c)));
  t.after(async () => {
    child.kill("SIGKILL");
    await exit;
    await rm(home, { recursive: true, force: true });
  });
  return { child, address, home, stderr: () => stderr, exit };
}

async function waitServing(started: Started): Promise<void> {
  await waitFor(
    async () => {
      if (started.child.exitCode !== null) throw new Error(`main.js exited early:\n${started.stderr()}`);
      // Its own "serving" line first: a gateway of a test running in parallel may answer on a
      // port this one found free a moment before.
      if (!started.stderr().includes('"msg":"storage-gateway serving"')) return false;
      return (
        (await checkHealth(started.address, { service: STORAGE_GATEWAY_SERVICE_NAME, deadlineMs: 500 })) === "SERVING"
      );
    },
    15_000,
    "the gateway's health check to be SERVING",
  );
}

void test("dist/main.js serves gRPC health, and SIGTERM drains: the upload in flight completes, exit 0", async (t) => {
  const started = await startMain(t);
  await waitServing(started);
  const client = createClient(StorageGatewayServiceClient, started.address);
  t.after(() => client.close());
  const repoUrl = pathToFileURL(join(started.home, "repos", "main")).href;
  await callUnary(client, "createRepository", { name: "main", url: repoUrl, replicas: [] });

  // An upload in flight when SIGTERM arrives: header and half the data sent, the rest later.
  const data = randomBytes(4 * 1024 * 1024);
  const messages = [...putMessages({ repository: "main", key: "data/ab/inflight" }, data, 512 * 1024)];
  let release: () => void = () => undefined;
  const gate = new Promise<void>((resolve) => (release = resolve));
  async function* slowUpload() {
    yield* messages.slice(0, 4);
    await gate;
    yield* messages.slice(4);
  }
  const upload = putObject(client, slowUpload());
  await new Promise((resolve) => setTimeout(resolve, 200));
  started.child.kill("SIGTERM");
  await waitFor(async () => /draining/.test(started.stderr()), 5000, "the drain log line");
  const late = createClient(StorageGatewayServiceClient, started.address);
  t.after(() => late.close());
  await assert.rejects(callUnary(late, "listRepositories", {}, { deadlineMs: 2000 }), "no new calls while draining");
  release();
  assert.deepEqual(await upload, { size: BigInt(data.length), existed: false, missingTargets: [] });
  assert.equal(await started.exit, 0, started.stderr());
  assert.match(started.stderr(), /storage-gateway stopped/);
});

void test("dist/main.js keeps repositories across restarts and exits 1 with a clear message on bad settings", async (t) => {
  const started = await startMain(t);
  await waitServing(started);
  const client = createClient(StorageGatewayServiceClient, started.address);
  t.after(() => client.close());
  const repoUrl = pathToFileURL(join(started.home, "repos", "kept")).href;
  await callUnary(client, "createRepository", { name: "kept", url: repoUrl, replicas: [] });
  started.child.kill("SIGINT");
  assert.equal(await started.exit, 0, started.stderr());

  const again = await startMain(t, { IOTVAULT_HOME: started.home });
  await waitServing(again);
  const client2 = createClient(StorageGatewayServiceClient, again.address);
  t.after(() => client2.close());
  const { repositories } = await callUnary(client2, "listRepositories", {});
  assert.deepEqual(repositories, [
    {
      name: "kept",
      targets: [repoUrl],
      targetStatus: [{ url: repoUrl, available: true, pendingCopies: 0n, lastError: "" }],
    },
  ]);
  again.child.kill("SIGTERM");
  assert.equal(await again.exit, 0, again.stderr());

  const bad = await startMain(t, { IOTVAULT_GATEWAY_MAX_OBJECT_MIB: "lots" });
  assert.equal(await bad.exit, 1);
  assert.match(bad.stderr(), /IOTVAULT_GATEWAY_MAX_OBJECT_MIB: expected a positive integer/);
});

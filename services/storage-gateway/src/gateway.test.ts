import assert from "node:assert/strict";
import { createHash, randomBytes } from "node:crypto";
import { mkdir, readFile, stat, writeFile } from "node:fs/promises";
import { join } from "node:path";
import { describe, test, type TestContext } from "node:test";
import { pathToFileURL } from "node:url";
import { SpanKind } from "@opentelemetry/api";
import { isCode, type ErrorCode } from "@iotvault/errors";
import type { PutObjectRequest } from "@iotvault/proto";
import { callServerStream, callUnary, checkHealth, GatewayObjectStore } from "@iotvault/rpc";
import { runObjectStoreConformance } from "@iotvault/storage/conformance";
import { startTelemetry } from "@iotvault/telemetry";
import { STORAGE_GATEWAY_SERVICE_NAME } from "./server.js";
import { filesUnder, putMessages, putObject, startTestGateway, waitFor, type TestGateway } from "./test-support.js";

const sha256 = (data: Uint8Array) => createHash("sha256").update(data).digest("hex");
const code = (expected: ErrorCode, message?: RegExp) => (err: unknown) => {
  assert.ok(isCode(err, expected), `expected ${expected}, got ${String(err)}`);
  if (message) assert.match(err.message, message);
  return true;
};

async function gatewayFor(t: TestContext, options?: Parameters<typeof startTestGateway>[0]): Promise<TestGateway> {
  const gw = await startTestGateway(options);
  t.after(() => gw.close());
  return gw;
}

const hasTemp = async (dir: string) => (await filesUnder(dir)).some((f) => f.split("/").pop()!.startsWith(".tmp~"));

/**
 * Sends the header and part of the data, waits until the gateway has started writing to disk
 * (its temp file exists), then cancels the call as a client that goes away would.
 */
async function cancelledUpload(gw: TestGateway, key: string, data: Uint8Array): Promise<void> {
  let settle: (err: unknown) => void = () => undefined;
  const finished = new Promise<unknown>((resolve) => (settle = resolve));
  const call = gw.client.putObject((err) => settle(err));
  const messages = [...putMessages({ repository: "main", key }, data, 256 * 1024)];
  for (const message of messages.slice(0, messages.length >> 1)) call.write(message);
  await waitFor(() => hasTemp(gw.repoDir), 5000, "the upload to reach the repository");
  call.cancel();
  const err = (await finished) as { code?: number } | null;
  assert.equal(err?.code, 1, "the call ended as CANCELLED");
  await waitFor(async () => !(await hasTemp(gw.repoDir)), 5000, "the gateway to remove its temp file");
}

runObjectStoreConformance("GatewayObjectStore -> gRPC -> storage-gateway -> LocalDirectoryStore", async () => {
  const gw = await startTestGateway();
  const store = new GatewayObjectStore(gw.client, "main", { address: gw.running.address });
  return { store, cleanup: () => gw.close(), interruptPut: (key, data) => cancelledUpload(gw, key, data) };
});

void describe("StorageGatewayService", () => {
  void test("a size or sha256 mismatch is refused and nothing becomes visible", async (t) => {
    const gw = await gatewayFor(t);
    const data = randomBytes(3 * 1024 * 1024 + 17);
    const repository = "main";
    await assert.rejects(
      putObject(gw.client, putMessages({ repository, key: "data/ab/p", size: BigInt(data.length + 1) }, data)),
      code("INVALID_ARGUMENT", /announced/),
    );
    await assert.rejects(
      putObject(gw.client, putMessages({ repository, key: "data/ab/p", size: 1000n }, data)),
      code("INVALID_ARGUMENT", /longer than the announced 1000 bytes/),
    );
    await assert.rejects(
      putObject(gw.client, putMessages({ repository, key: "data/ab/p", sha256: sha256(randomBytes(4)) }, data)),
      code("DATA_CORRUPT", /sha256/),
    );
    const { info } = await callUnary(gw.client, "statObject", { repository, key: "data/ab/p" });
    assert.equal(info, undefined);
    assert.deepEqual(await filesUnder(gw.repoDir), [], "no object and no temp file");

    const ok = await putObject(gw.client, putMessages({ repository, key: "data/ab/p", sha256: sha256(data) }, data));
    assert.deepEqual(ok, { size: BigInt(data.length), existed: false, missingTargets: [] });
    assert.deepEqual(await filesUnder(gw.repoDir), ["data/ab/p"]);
    const again = await putObject(gw.client, putMessages({ repository, key: "data/ab/p", ifAbsent: true }, data));
    assert.deepEqual(again, { size: BigInt(data.length), existed: true, missingTargets: [] });
  });

  void test("the header must come first, once; oversized objects are refused from the header", async (t) => {
    const gw = await gatewayFor(t, { maxObjectBytes: 1024 * 1024 });
    const data = Buffer.from("payload");
    const header = [...putMessages({ repository: "main", key: "k" }, data)][0]!;
    const dataOnly: PutObjectRequest = { part: { $case: "data", value: data } };
    await assert.rejects(putObject(gw.client, [dataOnly]), code("INVALID_ARGUMENT", /first message/));
    await assert.rejects(putObject(gw.client, [header, header]), code("INVALID_ARGUMENT", /only the first message/));
    await assert.rejects(putObject(gw.client, []), code("INVALID_ARGUMENT", /first message/));
    const big = randomBytes(2 * 1024 * 1024);
    await assert.rejects(
      putObject(gw.client, putMessages({ repository: "main", key: "big" }, big)),
      (err) =>
        code("RESOURCE_EXHAUSTED", /exceeds the gateway's limit of 1048576 bytes/)(err) &&
        !(err as { retryable: boolean }).retryable,
    );
    assert.deepEqual(await filesUnder(gw.repoDir), []);
  });

  void test("an unknown repository is NOT_FOUND with a hint to run `iotvault repo init`", async (t) => {
    const gw = await gatewayFor(t);
    const notFound = (err: unknown) => {
      code("NOT_FOUND", /^unknown repository nope$/)(err);
      assert.match((err as { hint?: string }).hint ?? "", /iotvault repo init/);
      return true;
    };
    const repository = "nope";
    await assert.rejects(putObject(gw.client, putMessages({ repository, key: "k" }, Buffer.from("x"))), notFound);
    await assert.rejects(callUnary(gw.client, "statObject", { repository, key: "k" }), notFound);
    await assert.rejects(callUnary(gw.client, "deleteObject", { repository, key: "k" }), notFound);
    const drain = async (it: AsyncIterable<unknown>) => {
      for await (const _ of it) assert.fail("streamed from an unknown repository");
    };
    await assert.rejects(
      drain(callServerStream(gw.client, "getObject", { repository, key: "k", offset: 0n, length: 0n })),
      notFound,
    );
    await assert.rejects(drain(callServerStream(gw.client, "listObjects", { repository, prefix: "" })), notFound);
  });

  void test("invalid keys and prefixes are refused by the gateway itself", async (t) => {
    const gw = await gatewayFor(t);
    await assert.rejects(
      putObject(gw.client, putMessages({ repository: "main", key: "../escape" }, Buffer.from("x"))),
      code("INVALID_ARGUMENT", /invalid object key/),
    );
    await assert.rejects(
      callUnary(gw.client, "statObject", { repository: "main", key: "/etc/passwd" }),
      code("INVALID_ARGUMENT"),
    );
    await assert.rejects(
      (async () => {
        for await (const _ of callServerStream(gw.client, "listObjects", { repository: "main", prefix: "../" }))
          assert.fail();
      })(),
      code("INVALID_ARGUMENT"),
    );
    assert.deepEqual(await filesUnder(gw.root).then((f) => f.filter((p) => !p.startsWith("state/"))), []);
  });

  void test("CreateRepository: a 0700 directory, idempotent, ALREADY_EXISTS for another URL, survives a restart", async (t) => {
    const gw = await gatewayFor(t);
    const dir = join(gw.root, "new", "repo");
    const url = pathToFileURL(dir).href;
    const created = await callUnary(gw.client, "createRepository", { name: "backup-2", url, replicas: [] });
    const single = { url, available: true, pendingCopies: 0n, lastError: "" };
    assert.deepEqual(created.repository, { name: "backup-2", targets: [url], targetStatus: [single] });
    assert.equal((await stat(dir)).mode & 0o777, 0o700);
    const again = await callUnary(gw.client, "createRepository", { replicas: [], name: "backup-2", url: `${url}/` });
    assert.deepEqual(again.repository, { name: "backup-2", targets: [url], targetStatus: [single] });
    await assert.rejects(
      callUnary(gw.client, "createRepository", {
        name: "backup-2",
        url: pathToFileURL(join(gw.root, "other")).href,
        replicas: [],
      }),
      code("ALREADY_EXISTS", /backup-2 already exists/),
    );
    await assert.rejects(
      callUnary(gw.client, "createRepository", { name: "main", url, replicas: [] }),
      code("ALREADY_EXISTS", /main already exists/),
    );
    await putObject(gw.client, putMessages({ repository: "backup-2", key: "config" }, Buffer.from("cfg")));

    await gw.restart();
    const { repositories } = await callUnary(gw.client, "listRepositories", {});
    assert.deepEqual(
      repositories.map((r) => r.name),
      ["backup-2", "main"],
    );
    const chunks: Buffer[] = [];
    for await (const m of callServerStream(gw.client, "getObject", {
      repository: "backup-2",
      key: "config",
      offset: 0n,
      length: 0n,
    })) {
      chunks.push(m.data);
    }
    assert.equal(Buffer.concat(chunks).toString(), "cfg");
    const state = JSON.parse(await readFile(join(gw.stateDir, "repositories.json"), "utf8")) as {
      repositories: Record<string, unknown>;
    };
    assert.deepEqual(Object.keys(state.repositories), ["backup-2"], "only runtime repositories are stored");
  });

  void test("CreateRepository refuses bad names, relative paths and schemes not served yet", async (t) => {
    const gw = await gatewayFor(t);
    const create = (name: string, url: string) => callUnary(gw.client, "createRepository", { name, url, replicas: [] });
    const dir = pathToFileURL(join(gw.root, "r")).href;
    await assert.rejects(create("Bad_Name", dir), code("INVALID_ARGUMENT", /invalid repository name/));
    await assert.rejects(create("-x", dir), code("INVALID_ARGUMENT"));
    await assert.rejects(create("ok", "file://relative/path"), code("INVALID_ARGUMENT", /invalid file URL/));
    await assert.rejects(create("ok", "not a url"), code("INVALID_ARGUMENT", /invalid repository URL/));
    await assert.rejects(
      create("ok", "s3://AKEY:SECRET@bucket/prefix?endpoint=127.0.0.1:9000"),
      code("INVALID_ARGUMENT", /carries credentials/),
    );
    await assert.rejects(
      create("ok", "sftp://backup:pw@host:22/srv/repo"),
      code("INVALID_ARGUMENT", /carries credentials/),
    );
    await assert.rejects(create("ok", "ftp://host/srv/repo"), code("UNIMPLEMENTED", /scheme ftp:\/\//));
    const { repositories } = await callUnary(gw.client, "listRepositories", {});
    assert.deepEqual(
      repositories.map((r) => r.name),
      ["main"],
    );
  });

  void test("a client that cancels mid-upload leaves no object and no temp file", async (t) => {
    const gw = await gatewayFor(t);
    await cancelledUpload(gw, "data/cd/cancelled", randomBytes(8 * 1024 * 1024));
    const { info } = await callUnary(gw.client, "statObject", { repository: "main", key: "data/cd/cancelled" });
    assert.equal(info, undefined);
    assert.deepEqual(await filesUnder(gw.repoDir), []);
  });

  void test("GetObject honours ranges and streams messages of at most 1 MiB", async (t) => {
    const gw = await gatewayFor(t);
    const data = randomBytes(3.5 * 1024 * 1024);
    await putObject(gw.client, putMessages({ repository: "main", key: "data/ef/p" }, data));
    const read = async (offset: number, length: number) => {
      const sizes: number[] = [];
      const parts: Buffer[] = [];
      const request = { repository: "main", key: "data/ef/p", offset: BigInt(offset), length: BigInt(length) };
      for await (const m of callServerStream(gw.client, "getObject", request)) {
        sizes.push(m.data.length);
        parts.push(m.data);
      }
      return { sizes, data: Buffer.concat(parts) };
    };
    const whole = await read(0, 0);
    assert.deepEqual(whole.sizes, [1 << 20, 1 << 20, 1 << 20, 512 * 1024]);
    assert.equal(sha256(whole.data), sha256(data));
    const middle = await read(1000, 1500 * 1024);
    assert.deepEqual(middle.data, data.subarray(1000, 1000 + 1500 * 1024));
    assert.deepEqual(middle.sizes, [1 << 20, 476 * 1024]);
    assert.deepEqual((await read(data.length - 10, 100)).data, data.subarray(data.length - 10));
    assert.deepEqual((await read(data.length + 5, 0)).sizes, []);
    await assert.rejects(
      read(0, 0)
        .then(() => callUnary(gw.client, "deleteObject", { repository: "main", key: "data/ef/p" }))
        .then(() => read(0, 0)),
      code("NOT_FOUND"),
    );
  });

  void test("ListObjects sends batches of at most 1000 objects, each once", async (t) => {
    const gw = await gatewayFor(t);
    const keys: string[] = [];
    for (let d = 0; d < 5; d++) {
      const dir = join(gw.repoDir, "index", `d${d}`);
      await mkdir(dir, { recursive: true });
      for (let i = 0; i < 500; i++) {
        keys.push(`index/d${d}/obj-${i}`);
        await writeFile(join(dir, `obj-${i}`), "x");
      }
    }
    await writeFile(join(gw.repoDir, "config"), "not under the prefix");
    const batches: number[] = [];
    const listed: string[] = [];
    for await (const batch of callServerStream(gw.client, "listObjects", { repository: "main", prefix: "index/" })) {
      batches.push(batch.objects.length);
      for (const info of batch.objects) {
        listed.push(info.key);
        assert.equal(info.size, 1n);
        assert.ok(info.modifiedAt instanceof Date);
      }
    }
    assert.deepEqual(batches, [1000, 1000, 500]);
    assert.deepEqual(listed.sort(), keys.sort());
    const empty: number[] = [];
    for await (const batch of callServerStream(gw.client, "listObjects", { repository: "main", prefix: "none/" }))
      empty.push(batch.objects.length);
    assert.deepEqual(empty, []);
  });

  void test("storage I/O runs in gateway.write / gateway.read spans under the SERVER span", async (t) => {
    const telemetry = startTelemetry({ serviceName: "storage-gateway", inMemory: true });
    t.after(() => telemetry.shutdown());
    const gw = await gatewayFor(t);
    const data = randomBytes(5000);
    await putObject(gw.client, putMessages({ repository: "main", key: "snapshots/s1" }, data));
    for await (const _ of callServerStream(gw.client, "getObject", {
      repository: "main",
      key: "snapshots/s1",
      offset: 0n,
      length: 0n,
    })) {
      // drain
    }
    await telemetry.flush();
    const spans = telemetry.memoryExporter!.getFinishedSpans();
    const server = (method: string) => spans.find((s) => s.kind === SpanKind.SERVER && s.name.endsWith(`/${method}`));
    const write = spans.find((s) => s.name === "gateway.write");
    const read = spans.find((s) => s.name === "gateway.read");
    assert.ok(write && read, `spans: ${spans.map((s) => s.name).join(", ")}`);
    assert.equal(write.instrumentationScope.name, "iotvault.storage-gateway");
    assert.deepEqual(
      [write.attributes["iotvault.repository"], write.attributes["iotvault.key"], write.attributes["iotvault.bytes"]],
      ["main", "snapshots/s1", 5000],
    );
    assert.equal(read.attributes["iotvault.bytes"], 5000);
    assert.equal(write.parentSpanContext?.spanId, server("PutObject")?.spanContext().spanId);
    assert.equal(read.parentSpanContext?.spanId, server("GetObject")?.spanContext().spanId);
    assert.equal(write.spanContext().traceId, server("PutObject")?.spanContext().traceId);
  });

  void test("gRPC health is SERVING while up and unreachable after shutdown", async (t) => {
    const gw = await startTestGateway();
    t.after(() => gw.close());
    assert.equal(await checkHealth(gw.running.address, { service: STORAGE_GATEWAY_SERVICE_NAME }), "SERVING");
    assert.equal(await checkHealth(gw.running.address), "SERVING");
    await gw.running.shutdown(1000);
    assert.equal(await checkHealth(gw.running.address, { deadlineMs: 500 }), "UNREACHABLE");
  });
});

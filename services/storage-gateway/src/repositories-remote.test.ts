/**
 * s3:// and sftp:// repositories for real: the gateway against Ceph radosgw and OpenSSH sshd
 * started by the test kit, reached through gRPC (GatewayObjectStore) as the executor does.
 * The credentials come from this test process's environment, as they would from the
 * gateway's in production (main.ts passes process.env).
 */
import assert from "node:assert/strict";
import { createHash, randomBytes } from "node:crypto";
import { mkdtemp, rm, stat, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, test, type TestContext } from "node:test";
import { isCode, type ErrorCode } from "@iotvault/errors";
import { StorageGatewayServiceClient } from "@iotvault/proto";
import { callUnary, createClient, GatewayObjectStore } from "@iotvault/rpc";
import {
  missingRadosgwPrograms,
  sshdUnavailableReason,
  startRadosgw,
  startSshd,
  type RadosgwHandle,
  type SshdHandle,
} from "@iotvault/testing";
import { Client } from "minio";
import { RepositoryRegistry, type ConfiguredRepository } from "./repositories.js";
import { startStorageGateway } from "./server.js";

const sha256 = (data: Uint8Array) => createHash("sha256").update(data).digest("hex");
const code = (expected: ErrorCode, message?: RegExp) => (err: unknown) => {
  assert.ok(isCode(err, expected), `expected ${expected}, got ${String(err)}`);
  if (message) assert.match(err.message, message);
  return true;
};

async function tempDir(t: TestContext): Promise<string> {
  const dir = await mkdtemp(join(tmpdir(), "iotvault-gw-remote-"));
  t.after(() => rm(dir, { recursive: true, force: true }));
  return dir;
}

/** A gateway in this process on 127.0.0.1:0 and a gRPC client, both closed after the test. */
async function gateway(t: TestContext, stateDir: string, repositories: Record<string, ConfiguredRepository> = {}) {
  const running = await startStorageGateway({ listen: "127.0.0.1:0", stateDir, repositories });
  const client = createClient(StorageGatewayServiceClient, running.address);
  t.after(async () => {
    client.close();
    await running.shutdown(1000);
    await running.registry.close();
  });
  return {
    running,
    client,
    store: (name: string) => new GatewayObjectStore(client, name, { address: running.address }),
  };
}

async function newBucket(s3: RadosgwHandle, t: TestContext): Promise<string> {
  const admin = new Client({
    endPoint: s3.host,
    port: s3.port,
    useSSL: false,
    accessKey: s3.accessKey,
    secretKey: s3.secretKey,
    region: s3.region,
    pathStyle: true,
  });
  const bucket = `gw-${randomBytes(5).toString("hex")}`;
  await admin.makeBucket(bucket, s3.region);
  t.after(async () => {
    const names: string[] = [];
    for await (const item of admin.listObjectsV2(bucket, "", true)) if (item.name) names.push(item.name);
    if (names.length > 0) await admin.removeObjects(bucket, names);
    await admin.removeBucket(bucket);
  });
  return bucket;
}

const missingCeph = missingRadosgwPrograms();
let radosgwStarted = false;
after(async () => {
  if (radosgwStarted) await (await startRadosgw()).stop();
});

void test("an s3:// repository through the gateway: objects, multipart, ListRepositories without credentials, CreateRepository", async (t) => {
  if (missingCeph.length > 0) {
    t.skip(`Ceph radosgw is not installed: missing ${missingCeph.join(", ")}`);
    return;
  }
  radosgwStarted = true;
  const s3 = await startRadosgw();
  const bucket = await newBucket(s3, t);
  process.env["IOTVAULT_S3_ACCESS_KEY"] = s3.accessKey;
  process.env["IOTVAULT_S3_SECRET_KEY"] = s3.secretKey;
  t.after(() => {
    delete process.env["IOTVAULT_S3_ACCESS_KEY"];
    delete process.env["IOTVAULT_S3_SECRET_KEY"];
  });
  const dir = await tempDir(t);
  const url = `s3://${bucket}/site-a?endpoint=${s3.endpoint}&tls=false`;
  const gw = await gateway(t, join(dir, "state"), { s3main: { url } });
  const store = gw.store("s3main");

  const small = Buffer.from("config bytes");
  assert.deepEqual(await store.put("config", small, { ifAbsent: true }), { existed: false });
  assert.deepEqual(await store.put("config", Buffer.from("other"), { ifAbsent: true }), { existed: true });
  const pack = randomBytes(9 * 1024 * 1024 + 5); // above the 8 MiB part size: a multipart upload
  await store.put("data/ab/pack", pack);
  assert.equal(sha256(await store.get("data/ab/pack")), sha256(pack));
  assert.deepEqual(await store.get("data/ab/pack", { offset: 100, length: 10 }), pack.subarray(100, 110));
  assert.equal((await store.stat("data/ab/pack"))?.size, pack.length);
  const listed: string[] = [];
  for await (const info of store.list("")) listed.push(info.key);
  assert.deepEqual(listed.sort(), ["config", "data/ab/pack"]);
  assert.equal(await store.delete("config"), true);
  await assert.rejects(store.get("config"), code("NOT_FOUND"));

  const { repositories } = await callUnary(gw.client, "listRepositories", {});
  const shown = JSON.stringify(repositories, (_key, value: unknown) =>
    typeof value === "bigint" ? String(value) : value,
  );
  assert.deepEqual(
    repositories.map((r) => r.name),
    ["s3main"],
  );
  assert.deepEqual(repositories[0]?.targets, [
    `s3://${bucket}/site-a?endpoint=${s3.endpoint}&region=us-east-1&tls=false`,
  ]);
  assert.ok(!shown.includes(s3.secretKey) && !shown.includes(s3.accessKey), "no credentials in ListRepositories");

  // A missing bucket is refused at creation (and nothing is registered); an existing one works.
  await assert.rejects(
    callUnary(gw.client, "createRepository", {
      replicas: [],
      name: "nobucket",
      url: `s3://no-such-${bucket}?endpoint=${s3.endpoint}&tls=false`,
    }),
    code("FAILED_PRECONDITION", /does not exist/),
  );
  const created = await callUnary(gw.client, "createRepository", {
    replicas: [],
    name: "s3other",
    url: `s3://${bucket}/other?endpoint=${s3.endpoint}&tls=false`,
  });
  assert.deepEqual(created.repository?.targets, [
    `s3://${bucket}/other?endpoint=${s3.endpoint}&region=us-east-1&tls=false`,
  ]);
  await gw.store("s3other").put("index/1", Buffer.from("x"));
  assert.equal((await gw.store("s3other").stat("index/1"))?.size, 1);
  assert.equal(await store.stat("index/1"), undefined, "the two prefixes of one bucket are separate repositories");
});

void test("wrong S3 credentials come back as PERMISSION_DENIED; a credentials file overrides the environment", async (t) => {
  if (missingCeph.length > 0) {
    t.skip(`Ceph radosgw is not installed: missing ${missingCeph.join(", ")}`);
    return;
  }
  radosgwStarted = true;
  const s3 = await startRadosgw();
  const bucket = await newBucket(s3, t);
  const dir = await tempDir(t);
  const credentials = join(dir, "good.env");
  await writeFile(credentials, `IOTVAULT_S3_ACCESS_KEY=${s3.accessKey}\nIOTVAULT_S3_SECRET_KEY=${s3.secretKey}\n`, {
    mode: 0o600,
  });
  const wrongSecret = "definitely-not-the-secret-42";
  const url = `s3://${bucket}?endpoint=${s3.endpoint}&tls=false`;
  const registry = await RepositoryRegistry.open({
    stateDir: join(dir, "state"),
    configured: { good: { url, credentialsFile: credentials }, bad: { url } },
    env: { IOTVAULT_S3_ACCESS_KEY: s3.accessKey, IOTVAULT_S3_SECRET_KEY: wrongSecret },
  });
  t.after(() => registry.close());
  await registry.store("good").put("config", Buffer.from("ok"));
  await assert.rejects(registry.store("bad").get("config"), (err) => {
    code("PERMISSION_DENIED", new RegExp(`S3 endpoint ${s3.endpoint}, bucket ${bucket}`))(err);
    assert.ok(!(err as Error).message.includes(wrongSecret));
    return true;
  });
});

const sshdUnavailable = sshdUnavailableReason();

void test("an sftp:// repository created at run time: the directory is made, it survives a restart", async (t) => {
  if (sshdUnavailable) {
    t.skip(`cannot start sshd: ${sshdUnavailable}`);
    return;
  }
  const sshd: SshdHandle = await startSshd();
  t.after(() => sshd.stop());
  process.env["IOTVAULT_SFTP_KEY_FILE"] = sshd.keyFile;
  process.env["IOTVAULT_SFTP_KNOWN_HOSTS"] = sshd.knownHostsFile;
  t.after(() => {
    delete process.env["IOTVAULT_SFTP_KEY_FILE"];
    delete process.env["IOTVAULT_SFTP_KNOWN_HOSTS"];
  });
  const dir = await tempDir(t);
  const stateDir = join(dir, "state");
  const url = `sftp://${sshd.user}@127.0.0.1:${sshd.port}${sshd.root}/repos/main`;
  const first = await gateway(t, stateDir);
  const created = await callUnary(first.client, "createRepository", { replicas: [], name: "nas", url });
  assert.equal(created.repository?.name, "nas");
  assert.ok((await stat(join(sshd.root, "repos/main"))).isDirectory(), "CreateRepository made the directory");
  const data = randomBytes(2 * 1024 * 1024 + 3);
  await first.store("nas").put("data/cd/pack", data);
  const { repositories } = await callUnary(first.client, "listRepositories", {});
  assert.deepEqual(repositories[0]?.targets, [`sftp://127.0.0.1:${sshd.port}${sshd.root}/repos/main`]);
  await first.running.shutdown(1000);

  const second = await gateway(t, stateDir);
  assert.equal(sha256(await second.store("nas").get("data/cd/pack")), sha256(data));
  assert.equal(second.running.registry.get("nas").origin, "runtime");
});

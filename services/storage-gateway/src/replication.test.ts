/**
 * Repositories with replicas through the real gateway: CreateRepository with replicas, degraded
 * writes while a replica's directory is gone (its store reports the root missing), target
 * status in ListRepositories, the self-heal task, a restart with a non-empty journal, and an
 * sftp:// replica (the test kit's OpenSSH sshd) next to a file:// primary.
 */
import assert from "node:assert/strict";
import { createHash, randomBytes } from "node:crypto";
import { mkdir, mkdtemp, readFile, readdir, rename, rm, stat } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join, relative } from "node:path";
import { Writable } from "node:stream";
import { after, test, type TestContext } from "node:test";
import { pathToFileURL } from "node:url";
import { parseConfig } from "@iotvault/config";
import { isCode, type ErrorCode } from "@iotvault/errors";
import { StorageGatewayServiceClient, type RepositoryInfo } from "@iotvault/proto";
import { callUnary, createClient, GatewayObjectStore } from "@iotvault/rpc";
import { createLogger } from "@iotvault/telemetry";
import { sshdUnavailableReason, startSshd, waitFor, type SshdHandle } from "@iotvault/testing";
import type { GatewayOptions } from "./config.js";
import { JOURNALS_DIR, type ConfiguredRepository } from "./repositories.js";
import { startStorageGateway, type RunningStorageGateway } from "./server.js";
import { putMessages, putObject } from "./test-support.js";

const sha256 = (data: Uint8Array) => createHash("sha256").update(data).digest("hex");
const code = (expected: ErrorCode, message?: RegExp) => (err: unknown) => {
  assert.ok(isCode(err, expected), `expected ${expected}, got ${String(err)}`);
  if (message) assert.match(err.message, message);
  return true;
};
const packOf = (data: Buffer) => {
  const id = sha256(data);
  return { key: `data/${id.slice(0, 2)}/${id}`, data };
};

/** relative path -> sha256 of each file under `dir` (temp files left out). */
async function digest(dir: string): Promise<Record<string, string>> {
  const out: Record<string, string> = {};
  for (const entry of await readdir(dir, { recursive: true, withFileTypes: true })) {
    if (!entry.isFile() || entry.name.startsWith(".tmp~")) continue;
    const path = join(entry.parentPath, entry.name);
    out[relative(dir, path)] = sha256(await readFile(path));
  }
  return Object.fromEntries(Object.entries(out).sort(([a], [b]) => (a < b ? -1 : 1)));
}

interface Fixture {
  root: string;
  stateDir: string;
  logs: string[];
  running: RunningStorageGateway;
  client: StorageGatewayServiceClient;
  store(name: string): GatewayObjectStore;
  listRepositories(): Promise<RepositoryInfo[]>;
  /** Stops the gateway and starts it again on the same state directory. */
  restart(options?: Partial<GatewayOptions>): Promise<void>;
}

async function gateway(
  t: TestContext,
  setup: {
    repositories?: Record<string, ConfiguredRepository>;
    options?: Partial<GatewayOptions>;
    env?: Record<string, string>;
  } = {},
  rootDir?: string,
): Promise<Fixture> {
  const root = rootDir ?? (await mkdtemp(join(tmpdir(), "iotvault-gw-replication-")));
  const stateDir = join(root, "state");
  const logs: string[] = [];
  const logger = createLogger({
    service: "storage-gateway",
    stream: new Writable({
      write: (chunk: Buffer, _encoding, done) => {
        logs.push(chunk.toString());
        done();
      },
    }),
  });
  const start = (options: Partial<GatewayOptions> = {}) =>
    startStorageGateway({
      listen: "127.0.0.1:0",
      stateDir,
      repositories: setup.repositories,
      allowedRoots: [root],
      env: setup.env ?? {},
      options: { healIntervalMs: 50, healMaxIntervalMs: 200, ...setup.options, ...options },
      logger,
    });
  const fx: Fixture = {
    root,
    stateDir,
    logs,
    running: await start(),
    client: undefined as unknown as StorageGatewayServiceClient,
    store: (name) => new GatewayObjectStore(fx.client, name, { address: fx.running.address }),
    listRepositories: async () => (await callUnary(fx.client, "listRepositories", {})).repositories,
    restart: async (options) => {
      fx.client.close();
      await fx.running.shutdown(1000);
      fx.running = await start(options);
      fx.client = createClient(StorageGatewayServiceClient, fx.running.address);
    },
  };
  fx.client = createClient(StorageGatewayServiceClient, fx.running.address);
  t.after(async () => {
    fx.client.close();
    await fx.running.shutdown(1000);
    if (!rootDir) await rm(root, { recursive: true, force: true });
  });
  return fx;
}

/** A configured repository "main": a primary and one replica directory under the fixture's root. */
async function twoDirectories(root: string) {
  const primary = join(root, "primary");
  const replica = join(root, "replica");
  await mkdir(primary, { recursive: true });
  await mkdir(replica, { recursive: true });
  const urls = [pathToFileURL(primary).href, pathToFileURL(replica).href] as const;
  return {
    primary,
    replica,
    urls,
    repositories: { main: { url: urls[0], replicas: [urls[1]] } },
    down: () => rename(replica, `${replica}.away`),
    up: () => rename(`${replica}.away`, replica),
  };
}

void test("CreateRepository with replicas: every target is made, persisted, compared on a second call", async (t) => {
  const fx = await gateway(t);
  const [primary, replica] = [join(fx.root, "repos", "p"), join(fx.root, "repos", "r")];
  const [p, r] = [pathToFileURL(primary).href, pathToFileURL(replica).href];
  const create = (name: string, url: string, replicas: string[]) =>
    callUnary(fx.client, "createRepository", { name, url, replicas });
  const created = await create("rep", p, [`${r}/`]);
  const status = (url: string) => ({ url, available: true, pendingCopies: 0n, lastError: "" });
  assert.deepEqual(created.repository, { name: "rep", targets: [p, r], targetStatus: [status(p), status(r)] });
  for (const dir of [primary, replica]) assert.equal((await stat(dir)).mode & 0o777, 0o700);
  assert.deepEqual((await create("rep", p, [r])).repository?.targets, [p, r], "the same targets: a no-op");
  const other = pathToFileURL(join(fx.root, "repos", "other")).href;
  await assert.rejects(create("rep", p, [other]), code("ALREADY_EXISTS", /rep already exists with other replicas/));
  await assert.rejects(create("rep", other, [r]), code("ALREADY_EXISTS", /rep already exists with another URL/));
  const attached = await create("rep", p, []);
  assert.deepEqual(attached.repository?.targets, [p, r], "the primary alone names the repository as it is");
  await assert.rejects(create("rep2", p, [p]), code("INVALID_ARGUMENT", /given twice/));
  const outside = pathToFileURL(join(tmpdir(), `iotvault-elsewhere-${randomBytes(4).toString("hex")}`)).href;
  await assert.rejects(create("rep3", p.replace(/p$/, "q"), [outside]), code("PERMISSION_DENIED", /allowed root/));

  await fx.store("rep").put("config", Buffer.from("cfg"));
  assert.equal(await readFile(join(replica, "config"), "utf8"), "cfg");
  await fx.restart();
  const [info] = await fx.listRepositories();
  assert.deepEqual(info?.targets, [p, r]);
  const state = JSON.parse(await readFile(join(fx.stateDir, "repositories.json"), "utf8"));
  assert.deepEqual(state.repositories.rep.replicas, [r]);
  assert.ok((await readdir(join(fx.stateDir, JOURNALS_DIR))).includes("rep.journal"));
});

void test("a replica down: puts report it missing, ListRepositories shows it with pending copies, self-heal copies them back", async (t) => {
  const root = await mkdtemp(join(tmpdir(), "iotvault-gw-replication-"));
  t.after(() => rm(root, { recursive: true, force: true }));
  const dirs = await twoDirectories(root);
  const fx = await gateway(t, { repositories: dirs.repositories }, root);
  const store = fx.store("main");
  await store.put("config", Buffer.from("config"));
  await dirs.down();

  const pack = packOf(randomBytes(2 * 1024 * 1024 + 1));
  const response = await putObject(
    fx.client,
    putMessages({ repository: "main", key: pack.key, sha256: sha256(pack.data) }, pack.data),
  );
  assert.deepEqual(response, { size: BigInt(pack.data.length), existed: false, missingTargets: [dirs.urls[1]] });
  await store.put("snapshots/s1", Buffer.from("snapshot"));
  assert.deepEqual(store.missingTargets(), [dirs.urls[1]], "the client keeps the targets it saw missing");
  assert.equal(await store.delete("config"), true);

  const [info] = await fx.listRepositories();
  const [primary, replica] = info!.targetStatus;
  assert.deepEqual(primary, { url: dirs.urls[0], available: true, pendingCopies: 0n, lastError: "" });
  assert.equal(replica?.available, false);
  assert.equal(replica?.pendingCopies, 3n, "two objects to copy, one delete to replay");
  assert.match(replica?.lastError ?? "", /does not exist/);
  assert.equal(sha256(await store.get(pack.key)), sha256(pack.data));

  await dirs.up();
  await waitFor(async () => (await fx.listRepositories())[0]?.targetStatus[1]?.pendingCopies === 0n || undefined, {
    timeoutMs: 10_000,
    what: "the self-heal task to copy what the replica missed",
  });
  assert.deepEqual(await digest(dirs.replica), await digest(dirs.primary));
  assert.deepEqual(Object.keys(await digest(dirs.replica)).sort(), [pack.key, "snapshots/s1"].sort());
  const healed = fx.logs.map((l) => JSON.parse(l)).find((l) => /healed/.test(l.msg));
  assert.equal(healed?.level, "info");
  assert.equal(healed?.repository, "main");
  assert.equal(healed?.target, dirs.urls[1]);
});

void test("a restart with a non-empty journal heals; the primary gone, reads come from the replica", async (t) => {
  const root = await mkdtemp(join(tmpdir(), "iotvault-gw-replication-"));
  t.after(() => rm(root, { recursive: true, force: true }));
  const dirs = await twoDirectories(root);
  const fx = await gateway(t, { repositories: dirs.repositories }, root);
  const store = fx.store("main");
  await dirs.down();
  const packs = Array.from({ length: 6 }, () => packOf(randomBytes(50_000)));
  for (const p of packs) await store.put(p.key, p.data);
  assert.equal((await fx.listRepositories())[0]?.targetStatus[1]?.pendingCopies, 6n);

  // Stop the gateway with the replica still down, bring the replica back, start again.
  await fx.running.shutdown(1000);
  await dirs.up();
  await fx.restart();
  await waitFor(async () => (await fx.listRepositories())[0]?.targetStatus[1]?.pendingCopies === 0n || undefined, {
    timeoutMs: 10_000,
    what: "the restarted gateway to heal the replica from its journal",
  });
  assert.deepEqual(await digest(dirs.replica), await digest(dirs.primary));

  await rename(dirs.primary, `${dirs.primary}.away`);
  const reader = fx.store("main");
  for (const p of packs) assert.equal(sha256(await reader.get(p.key)), sha256(p.data));
  const listed: string[] = [];
  for await (const info of reader.list("data/")) listed.push(info.key);
  assert.equal(listed.length, 6);
  assert.equal((await fx.listRepositories())[0]?.targetStatus[0]?.available, false);
  await rename(`${dirs.primary}.away`, dirs.primary);
});

void test("replicas from the configuration file (storage.repositories.<name>.replicas)", async (t) => {
  const root = await mkdtemp(join(tmpdir(), "iotvault-gw-replication-"));
  t.after(() => rm(root, { recursive: true, force: true }));
  const dirs = await twoDirectories(root);
  const config = parseConfig({
    storage: { repositories: { main: { url: dirs.urls[0], replicas: [dirs.urls[1]] }, plain: { url: dirs.urls[0] } } },
  });
  assert.deepEqual(config.storage.repositories["plain"]?.replicas, [], "no replicas by default");
  assert.throws(
    () => parseConfig({ storage: { repositories: { main: { url: dirs.urls[0], replicas: "file:///x" } } } }),
    code("CONFIG_INVALID", /storage\.repositories\.main\.replicas/),
  );
  const fx = await gateway(t, { repositories: config.storage.repositories }, root);
  const repositories = await fx.listRepositories();
  assert.deepEqual(
    repositories.map((r) => [r.name, r.targets]),
    [
      ["main", [...dirs.urls]],
      ["plain", [dirs.urls[0]]],
    ],
  );
});

const noSshd = sshdUnavailableReason();
let sshd: Promise<SshdHandle> | undefined;
after(async () => {
  if (sshd) await (await sshd).stop();
});

void test(
  "an sftp:// replica of a file:// primary (configured, key from the environment)",
  { skip: noSshd },
  async (t) => {
    const s = await (sshd ??= startSshd());
    const root = await mkdtemp(join(tmpdir(), "iotvault-gw-replication-"));
    t.after(() => rm(root, { recursive: true, force: true }));
    const primary = join(root, "primary");
    await mkdir(primary);
    const sftpUrl = `sftp://${s.user}@127.0.0.1:${s.port}${s.root}?fingerprint=${s.hostKeyFingerprint}`;
    const fx = await gateway(
      t,
      {
        repositories: { mixed: { url: pathToFileURL(primary).href, replicas: [sftpUrl] } },
        env: { IOTVAULT_SFTP_KEY_FILE: s.keyFile },
      },
      root,
    );
    const [info] = await fx.listRepositories();
    assert.equal(info?.targets[0], pathToFileURL(primary).href);
    assert.ok(info?.targets[1]?.startsWith(`sftp://127.0.0.1:${s.port}${s.root}?fingerprint=`), info?.targets[1]);
    assert.ok(!info?.targets[1]?.includes(`${s.user}@`), "no user name in what ListRepositories shows");
    const store = fx.store("mixed");
    const pack = packOf(randomBytes(1024 * 1024 + 7));
    await store.put(pack.key, pack.data);
    await store.put("config", Buffer.from("cfg"));
    assert.deepEqual(store.missingTargets(), []);
    assert.deepEqual(await digest(s.root), await digest(primary));
    await rename(primary, `${primary}.away`);
    assert.equal(sha256(await store.get(pack.key)), sha256(pack.data), "read from the SFTP replica");
  },
);

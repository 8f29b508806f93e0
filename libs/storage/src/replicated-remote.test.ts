/**
 * ReplicatedStore with a file:// primary and a remote replica, for real: an S3 replica on the
 * test kit's Ceph radosgw and an SFTP replica on its OpenSSH sshd, each reached through a TCP
 * proxy the test switches off (the server goes down) and on again.
 */
import assert from "node:assert/strict";
import { createHash, randomBytes } from "node:crypto";
import { mkdir, mkdtemp, readFile, rename, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, describe, test, type TestContext } from "node:test";
import {
  missingRadosgwPrograms,
  sshdUnavailableReason,
  startRadosgw,
  startSshd,
  type SshdHandle,
} from "@iotvault/testing";
import { Client } from "minio";
import { runObjectStoreConformance } from "./conformance.js";
import { LocalDirectoryStore } from "./local-directory-store.js";
import type { ObjectStore } from "./object-store.js";
import { ReplicatedStore } from "./replicated-store.js";
import { S3_MIN_PART_BYTES, S3Store } from "./s3-store.js";
import { SftpStore } from "./sftp-store.js";
import { packOf, switchableProxy, treeDigest, type SwitchableProxy } from "./test-support.js";

const sha256 = (data: Uint8Array) => createHash("sha256").update(data).digest("hex");
const missingCeph = missingRadosgwPrograms();
const noSshd = sshdUnavailableReason();

let sshdStarted: Promise<SshdHandle> | undefined;
const sshd = () => (sshdStarted ??= startSshd());
let radosgwStarted = false;
after(async () => {
  if (sshdStarted) await (await sshdStarted).stop();
  if (radosgwStarted) await (await startRadosgw()).stop();
});

interface Remote {
  url: string;
  /** The replica's store, reached through the proxy. */
  store: ObjectStore;
  proxy: SwitchableProxy;
  /** key -> sha256 of what the replica's server holds (read without the proxy). */
  digest(): Promise<Record<string, string>>;
  cleanup(): Promise<void>;
}

async function sftpRemote(): Promise<Remote> {
  const s = await sshd();
  const proxy = await switchableProxy({ host: s.host, port: s.port });
  const root = join(s.root, `repo-${randomBytes(6).toString("hex")}`);
  const store = new SftpStore({
    host: "127.0.0.1",
    port: proxy.port,
    username: s.user,
    root,
    privateKey: await readFile(s.keyFile),
    hostKey: { fingerprints: [s.hostKeyFingerprint] },
    retry: { baseDelayMs: 10, attempts: 2 },
    connectTimeoutMs: 2000,
  });
  await store.ensureRoot();
  return {
    url: `sftp://${s.user}@127.0.0.1:${proxy.port}${root}`,
    store,
    proxy,
    digest: () => treeDigest(root),
    cleanup: async () => {
      await store.close();
      await proxy.close();
      await rm(root, { recursive: true, force: true });
    },
  };
}

async function s3Remote(): Promise<Remote> {
  radosgwStarted = true;
  const s3 = await startRadosgw();
  const admin = new Client({
    endPoint: s3.host,
    port: s3.port,
    useSSL: false,
    accessKey: s3.accessKey,
    secretKey: s3.secretKey,
    region: s3.region,
    pathStyle: true,
  });
  const bucket = `rep-${randomBytes(5).toString("hex")}`;
  await admin.makeBucket(bucket, s3.region);
  const proxy = await switchableProxy({ host: s3.host, port: s3.port });
  const options = {
    tls: false,
    region: s3.region,
    bucket,
    prefix: "main",
    accessKey: s3.accessKey,
    secretKey: s3.secretKey,
    partSizeBytes: S3_MIN_PART_BYTES,
  };
  const store = new S3Store({
    ...options,
    endpoint: `127.0.0.1:${proxy.port}`,
    retry: { baseDelayMs: 10, attempts: 2 },
  });
  const direct = new S3Store({ ...options, endpoint: s3.endpoint });
  return {
    url: `s3://${bucket}/main?endpoint=127.0.0.1:${proxy.port}&region=${s3.region}&tls=false`,
    store,
    proxy,
    digest: async () => {
      const out: Record<string, string> = {};
      for await (const info of direct.list("")) out[info.key] = sha256(await direct.get(info.key));
      return Object.fromEntries(Object.entries(out).sort(([a], [b]) => (a < b ? -1 : 1)));
    },
    cleanup: async () => {
      await store.close();
      await proxy.close();
      const names: string[] = [];
      for await (const item of admin.listObjectsV2(bucket, "", true)) if (item.name) names.push(item.name);
      if (names.length > 0) await admin.removeObjects(bucket, names);
      await admin.removeBucket(bucket);
      await direct.close();
    },
  };
}

/** A file:// primary in a temp dir plus `remote` as the replica. */
async function replicated(remote: Remote) {
  const root = await mkdtemp(join(tmpdir(), "iotvault-replicated-remote-"));
  const primaryDir = join(root, "primary");
  await mkdir(primaryDir);
  const store = await ReplicatedStore.open(
    [
      { url: `file://${primaryDir}`, store: new LocalDirectoryStore(primaryDir) },
      { url: remote.url, store: remote.store },
    ],
    { journalPath: join(root, "journal") },
  );
  return {
    store,
    primaryDir,
    cleanup: async () => {
      await store.close();
      await remote.cleanup();
      await rm(root, { recursive: true, force: true });
    },
  };
}

async function once(data: Uint8Array): Promise<AsyncIterable<Uint8Array>> {
  return (async function* () {
    yield data;
  })();
}

/** Down, degraded writes, fallback reads, back up, heal, both byte-identical, then the primary down. */
async function outageAndHeal(t: TestContext, remote: Remote): Promise<void> {
  const fx = await replicated(remote);
  t.after(() => fx.cleanup());
  const { store } = fx;
  const first = packOf(randomBytes(300_000));
  await store.put("config", Buffer.from("config v1"));
  await store.put(first.key, first.data);
  assert.deepEqual(await remote.digest(), await treeDigest(fx.primaryDir));

  await remote.proxy.down();
  const second = packOf(randomBytes(6 * 1024 * 1024 + 3)); // a multipart upload on S3
  const written = await store.putStream(second.key, await once(second.data), { expectedSize: second.data.length });
  assert.deepEqual(written.missingTargets, [remote.url]);
  assert.deepEqual((await store.putStream("snapshots/s2", await once(Buffer.from("s2")))).missingTargets, [remote.url]);
  assert.equal(await store.delete("config"), true);
  const status = store.targetStatus()[1]!;
  assert.deepEqual([status.available, status.pendingCopies], [false, 3]);
  assert.notEqual(status.lastError, "");
  assert.equal(sha256(await store.get(second.key)), sha256(second.data));
  const listed: string[] = [];
  for await (const info of store.list("")) listed.push(info.key);
  assert.deepEqual(listed.sort(), [first.key, second.key, "snapshots/s2"].sort());
  assert.equal((await store.heal()).remaining, 3, "nothing is copied while the replica is down");

  await remote.proxy.up();
  const healed = await store.heal();
  assert.deepEqual([healed.copied, healed.deleted, healed.remaining], [2, 1, 0]);
  assert.deepEqual(store.targetStatus()[1], { url: remote.url, available: true, pendingCopies: 0, lastError: "" });
  assert.deepEqual(await remote.digest(), await treeDigest(fx.primaryDir));

  // The replica alone serves everything once the primary is gone.
  await rename(fx.primaryDir, `${fx.primaryDir}.away`);
  assert.equal(sha256(await store.get(second.key)), sha256(second.data));
  assert.equal(sha256(await store.get(first.key, { offset: 0, length: 1000 })), sha256(first.data.subarray(0, 1000)));
  assert.equal(await store.stat("config"), undefined);
  assert.equal(store.targetStatus()[0]?.available, false);
  await rename(`${fx.primaryDir}.away`, fx.primaryDir);
}

void describe("ReplicatedStore: file:// primary, sftp:// replica (OpenSSH sshd)", () => {
  if (noSshd) {
    void test.skip(`sshd is needed: ${noSshd}`);
    return;
  }
  runObjectStoreConformance(
    "ReplicatedStore (file:// + sftp://)",
    async () => {
      const fx = await replicated(await sftpRemote());
      return {
        store: fx.store,
        cleanup: fx.cleanup,
        // The uploader's signal fires while its source stalls half-way: neither target keeps anything.
        interruptPut: async (key, data) => {
          const controller = new AbortController();
          async function* stalled(): AsyncGenerator<Uint8Array> {
            yield data.subarray(0, data.length >> 1);
            controller.abort();
            await new Promise(() => undefined);
          }
          await fx.store.putStream(key, stalled(), { signal: controller.signal }).then(
            () => assert.fail("the interrupted put resolved"),
            (err: unknown) => assert.match(String(err), /cancelled/),
          );
        },
      };
    },
    { largeObjectBytes: 4 * 1024 * 1024 },
  );

  void test("sshd down: degraded writes, reads from the primary; back up: heal makes both identical", async (t) => {
    await outageAndHeal(t, await sftpRemote());
  });
});

void describe("ReplicatedStore: file:// primary, s3:// replica (Ceph radosgw)", () => {
  if (missingCeph.length > 0) {
    void test.skip(`Ceph is needed: ${missingCeph.join(", ")}`);
    return;
  }
  void test(
    "radosgw down: degraded writes, reads from the primary; back up: heal makes both identical",
    { timeout: 180_000 },
    async (t) => {
      await outageAndHeal(t, await s3Remote());
    },
  );
});

import assert from "node:assert/strict";
import { execFile } from "node:child_process";
import { createHash, randomBytes } from "node:crypto";
import { chown, mkdir, readdir, readFile, rm, stat, utimes, writeFile } from "node:fs/promises";
import { join } from "node:path";
import { after, describe, test, type TestContext } from "node:test";
import { promisify } from "node:util";
import { isCode, type ErrorCode } from "@iotvault/errors";
import {
  freePort,
  sshdUnavailableReason,
  startSshd,
  startTcpProxy,
  type SshdHandle,
  type TcpProxyHandle,
} from "@iotvault/testing";
import { runObjectStoreConformance } from "./conformance.js";
import { SFTP_TEMP_PREFIX, SftpStore, type SftpStoreOptions } from "./sftp-store.js";

const exec = promisify(execFile);
const unavailable = sshdUnavailableReason();
const sha256 = (data: Uint8Array) => createHash("sha256").update(data).digest("hex");
const code = (expected: ErrorCode, message?: RegExp) => (err: unknown) => {
  assert.ok(isCode(err, expected), `expected ${expected}, got ${String(err)}`);
  if (message) assert.match(err.message, message);
  return true;
};

// One sshd for the whole file (it starts in about 0.1 s, but there is no need for more).
let server: Promise<SshdHandle> | undefined;
const sshd = () => (server ??= startSshd());
after(async () => {
  if (server) await (await server).stop();
});

/** A fresh repository directory on the server (created by the store as the SFTP user). */
function newRoot(s: SshdHandle): string {
  return join(s.root, `repo-${randomBytes(6).toString("hex")}`);
}

async function storeOptions(s: SshdHandle, extra: Partial<SftpStoreOptions> = {}): Promise<SftpStoreOptions> {
  return {
    host: s.host,
    port: s.port,
    username: s.user,
    root: newRoot(s),
    privateKey: await readFile(s.keyFile),
    hostKey: { knownHosts: await readFile(s.knownHostsFile, "utf8"), knownHostsSource: s.knownHostsFile },
    ...extra,
  };
}

/** A store on a new, existing root; closed and removed after the test. */
async function testStore(t: TestContext, extra: Partial<SftpStoreOptions> = {}) {
  const s = await sshd();
  const store = new SftpStore(await storeOptions(s, extra));
  t.after(async () => {
    await store.close();
    await rm(store.root, { recursive: true, force: true });
  });
  await store.ensureRoot();
  return { s, store };
}

/** A store that reaches sshd through a TCP proxy the test can cut (host key pinned). */
async function proxiedStore(t: TestContext | undefined, extra: Partial<SftpStoreOptions> = {}) {
  const s = await sshd();
  const proxy = await startTcpProxy({ host: s.host, port: s.port });
  const store = new SftpStore(
    await storeOptions(s, { port: proxy.port, hostKey: { fingerprints: [s.hostKeyFingerprint] }, ...extra }),
  );
  const cleanup = async () => {
    await store.close();
    await proxy.close();
    await rm(store.root, { recursive: true, force: true });
  };
  t?.after(cleanup);
  await store.ensureRoot();
  return { s, proxy, store, cleanup };
}

async function keys(store: SftpStore, prefix = ""): Promise<string[]> {
  const out: string[] = [];
  for await (const info of store.list(prefix)) out.push(info.key);
  return out.sort();
}

async function tempFiles(dir: string): Promise<string[]> {
  const entries = await readdir(dir, { recursive: true, withFileTypes: true });
  return entries.filter((e) => e.isFile() && e.name.startsWith(SFTP_TEMP_PREFIX)).map((e) => e.name);
}

/** Drops the proxy's connections once `bytes` have been yielded, then yields the rest. */
async function* droppingAfter(data: Uint8Array, bytes: number, proxy: TcpProxyHandle): AsyncGenerator<Uint8Array> {
  for (let at = 0; at < data.length; at += 256 * 1024) {
    if (at >= bytes && proxy.open > 0) {
      proxy.dropConnections();
      await new Promise((resolve) => setTimeout(resolve, 50));
    }
    yield data.subarray(at, at + 256 * 1024);
  }
}

if (unavailable) {
  void test("SftpStore against sshd", (t) => t.skip(`cannot start an SFTP server: ${unavailable}`));
} else {
  runObjectStoreConformance("SftpStore (OpenSSH sshd)", async () => {
    const { proxy, store, cleanup } = await proxiedStore(undefined);
    return {
      store,
      cleanup,
      // The network drops mid-upload: the proxy cuts the SSH connection after half the bytes.
      // The put fails with UNAVAILABLE; only an invisible temp file may be left on the server.
      interruptPut: async (key, data) => {
        await store.putStream(key, droppingAfter(data, data.length >> 1, proxy)).then(
          () => assert.fail("the interrupted put resolved"),
          (err: unknown) => assert.ok(isCode(err, "UNAVAILABLE"), String(err)),
        );
      },
    };
  });

  void describe("SftpStore (OpenSSH sshd)", () => {
    void test("objects are files at their key path; temp files are never listed and cleanupTemp removes old ones", async (t) => {
      const { store } = await testStore(t);
      await store.put("data/ab/p1", Buffer.from("hello"));
      assert.equal(await readFile(join(store.root, "data/ab/p1"), "utf8"), "hello");
      assert.equal((await stat(join(store.root, "data/ab"))).mode & 0o777, 0o700);
      assert.equal((await stat(join(store.root, "data/ab/p1"))).mode & 0o777, 0o600);
      assert.deepEqual(await tempFiles(store.root), [], "a finished put leaves no temp file");

      const old = join(store.root, "data/ab", `${SFTP_TEMP_PREFIX}0123456789abcdef`);
      const recent = join(store.root, `${SFTP_TEMP_PREFIX}fedcba9876543210`);
      await writeFile(old, "partial");
      await writeFile(recent, "partial");
      const twoHoursAgo = new Date(Date.now() - 2 * 3600_000);
      await utimes(old, twoHoursAgo, twoHoursAgo);
      assert.deepEqual(await keys(store), ["data/ab/p1"]);
      assert.deepEqual(await store.cleanupTemp(), { removed: 1 });
      assert.deepEqual(await tempFiles(store.root), [`${SFTP_TEMP_PREFIX}fedcba9876543210`]);
    });

    void test("connections are reused, and a dropped connection is replaced on the next operation", async (t) => {
      const { proxy, store } = await proxiedStore(t, { connections: 2 });
      await Promise.all(Array.from({ length: 20 }, (_, i) => store.put(`k/${i}`, randomBytes(1000))));
      for (let i = 0; i < 20; i++) assert.ok(await store.stat(`k/${i}`));
      assert.ok(proxy.accepted <= 2, `${proxy.accepted} connections for 40 operations`);

      const before = proxy.accepted;
      proxy.dropConnections();
      await new Promise((resolve) => setTimeout(resolve, 50));
      assert.equal((await store.stat("k/3"))?.size, 1000, "the next operation reconnects");
      assert.equal(proxy.accepted, before + 1);

      // A buffer put interrupted by a drop is retried on a new connection.
      const data = randomBytes(3 << 20);
      const dropping = setTimeout(() => proxy.dropConnections(), 5);
      await store.put("k/big", data);
      clearTimeout(dropping);
      assert.equal(sha256(await store.get("k/big")), sha256(data));
    });

    void test("an unknown host key is refused with PERMISSION_DENIED naming the fingerprint", async (t) => {
      const s = await sshd();
      const options = await storeOptions(s, {
        hostKey: { knownHosts: "", knownHostsSource: "/tmp/empty_known_hosts" },
      });
      const store = new SftpStore(options);
      t.after(() => store.close());
      await assert.rejects(store.stat("config"), (err) => {
        code("PERMISSION_DENIED", /is not in \/tmp\/empty_known_hosts/)(err);
        assert.ok((err as Error).message.includes(s.hostKeyFingerprint), (err as Error).message);
        assert.match((err as { hint: string }).hint, /fingerprint=SHA256:/);
        return true;
      });
    });

    void test("a changed host key is refused; a wrong pin too; the right pin is accepted", async (t) => {
      const s = await sshd();
      const other = `[127.0.0.1]:${s.port} ssh-ed25519 ${randomEd25519Blob().toString("base64")}\n`;
      const changed = new SftpStore(await storeOptions(s, { hostKey: { knownHosts: other } }));
      const wrongPin = new SftpStore(
        await storeOptions(s, { hostKey: { fingerprints: [`SHA256:${"A".repeat(43)}`] } }),
      );
      const rightPin = new SftpStore(await storeOptions(s, { hostKey: { fingerprints: [s.hostKeyFingerprint] } }));
      t.after(() => Promise.all([changed.close(), wrongPin.close(), rightPin.close()]));
      await assert.rejects(changed.stat("config"), code("PERMISSION_DENIED", /host key of SFTP host .* changed/));
      await assert.rejects(wrongPin.stat("config"), code("PERMISSION_DENIED", /not the pinned SHA256:AAAA/));
      await rightPin.ensureRoot();
      assert.equal(await rightPin.stat("config"), undefined);
      await rm(rightPin.root, { recursive: true, force: true });
    });

    void test("a key the server does not accept is PERMISSION_DENIED; no server is UNAVAILABLE", async (t) => {
      const s = await sshd();
      const otherKey = join(s.root, "..", "other_key");
      await exec("ssh-keygen", ["-q", "-t", "ed25519", "-N", "", "-f", otherKey]);
      const refused = new SftpStore(await storeOptions(s, { privateKey: await readFile(otherKey) }));
      const nobody = new SftpStore(
        await storeOptions(s, {
          port: await freePort(),
          hostKey: { fingerprints: [s.hostKeyFingerprint] },
          retry: { attempts: 1 },
        }),
      );
      t.after(() => Promise.all([refused.close(), nobody.close()]));
      await assert.rejects(refused.stat("config"), code("PERMISSION_DENIED", /refused the key of user/));
      await assert.rejects(nobody.put("config", Buffer.from("x")), code("UNAVAILABLE", /is unreachable/));
    });

    void test("a missing repository directory is FAILED_PRECONDITION; ensureRoot creates it", async (t) => {
      const s = await sshd();
      const store = new SftpStore(await storeOptions(s));
      t.after(async () => {
        await store.close();
        await rm(store.root, { recursive: true, force: true });
      });
      const precondition = code("FAILED_PRECONDITION", /does not exist/);
      await assert.rejects(store.put("data/ab/x", Buffer.from("x")), precondition);
      await assert.rejects(store.get("config"), precondition);
      await assert.rejects(store.stat("config"), precondition);
      await assert.rejects(store.delete("config"), precondition);
      await assert.rejects(keys(store), precondition);
      await store.ensureRoot();
      await store.put("config", Buffer.from("now"));
      assert.equal((await stat(store.root)).mode & 0o777, 0o700);
    });

    void test("a directory the SFTP user may not write is PERMISSION_DENIED with a hint", async (t) => {
      const { store } = await testStore(t);
      const locked = join(store.root, "locked");
      await mkdir(locked, { mode: 0o755 }); // owned by root: the SFTP user can read, not write
      await assert.rejects(store.put("locked/x", Buffer.from("x")), (err) => {
        code("PERMISSION_DENIED", /permission denied writing locked\/x/)(err);
        assert.match((err as { hint: string }).hint, /give the SFTP user/);
        return true;
      });
    });

    void test("getStream reads bounded chunks of the range from one open file", async (t) => {
      const { store } = await testStore(t);
      const data = randomBytes(3 << 20);
      await store.put("data/cd/p", data);
      const chunks: Buffer[] = [];
      for await (const chunk of store.getStream(
        "data/cd/p",
        { offset: 10, length: (2 << 20) + 5 },
        { chunkBytes: 1 << 20 },
      )) {
        chunks.push(chunk);
      }
      assert.deepEqual(
        chunks.map((c) => c.length),
        [1 << 20, 1 << 20, 5],
      );
      assert.deepEqual(Buffer.concat(chunks), data.subarray(10, (2 << 20) + 15));
    });

    void test("a full volume on the server is RESOURCE_EXHAUSTED (tmpfs)", async (t) => {
      const { s, store } = await testStore(t);
      const mountPoint = join(store.root, "full");
      await mkdir(mountPoint);
      try {
        await exec("mount", ["-t", "tmpfs", "-o", "size=1m,mode=0700", "tmpfs", mountPoint]);
      } catch (err) {
        t.skip(`cannot mount a tmpfs here (${(err as Error).message.split("\n")[0]})`);
        return;
      }
      try {
        const { uid, gid } = await stat(store.root);
        await chown(mountPoint, uid, gid);
        assert.equal(s.user.length > 0, true);
        await assert.rejects(
          store.put("full/big", randomBytes(2 << 20)),
          code("RESOURCE_EXHAUSTED", /disk full writing full\/big/),
        );
        assert.deepEqual(await readdir(mountPoint), [], "the failed upload removed its temp file");
      } finally {
        await exec("umount", ["-l", mountPoint]);
      }
    });
  });
}

/** The blob of a random (not a real) ed25519 public key, to stand for another server's key. */
function randomEd25519Blob(): Buffer {
  const name = Buffer.from("ssh-ed25519");
  const key = randomBytes(32);
  const blob = Buffer.alloc(4 + name.length + 4 + key.length);
  blob.writeUInt32BE(name.length, 0);
  name.copy(blob, 4);
  blob.writeUInt32BE(key.length, 4 + name.length);
  key.copy(blob, 8 + name.length);
  return blob;
}

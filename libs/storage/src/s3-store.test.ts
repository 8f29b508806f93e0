import assert from "node:assert/strict";
import { createHash, randomBytes } from "node:crypto";
import { createServer, request, type IncomingMessage, type Server, type ServerResponse } from "node:http";
import { after, describe, test, type TestContext } from "node:test";
import { isCode, type ErrorCode } from "@iotvault/errors";
import { freePort, missingRadosgwPrograms, startRadosgw, waitFor, type RadosgwHandle } from "@iotvault/testing";
import { Client } from "minio";
import { runObjectStoreConformance } from "./conformance.js";
import { S3_MIN_PART_BYTES, S3Store, type S3StoreOptions } from "./s3-store.js";

const missing = missingRadosgwPrograms();
const sha256 = (data: Uint8Array) => createHash("sha256").update(data).digest("hex");
const code = (expected: ErrorCode, message?: RegExp) => (err: unknown) => {
  assert.ok(isCode(err, expected), `expected ${expected}, got ${String(err)}`);
  if (message) assert.match(err.message, message);
  return true;
};

let started = false;
async function radosgw(): Promise<RadosgwHandle> {
  started = true;
  return startRadosgw();
}
after(async () => {
  if (started) await (await startRadosgw()).stop();
});

function admin(s3: RadosgwHandle): Client {
  return new Client({
    endPoint: s3.host,
    port: s3.port,
    useSSL: false,
    accessKey: s3.accessKey,
    secretKey: s3.secretKey,
    region: s3.region,
    pathStyle: true,
  });
}

/** A new bucket, emptied and removed after the test (also when it fails). */
async function bucketFor(s3: RadosgwHandle, register: (cleanup: () => Promise<void>) => void): Promise<string> {
  const client = admin(s3);
  const bucket = `t-${randomBytes(6).toString("hex")}`;
  await client.makeBucket(bucket, s3.region);
  register(async () => {
    const names: string[] = [];
    for await (const item of client.listObjectsV2(bucket, "", true)) if (item.name) names.push(item.name);
    if (names.length > 0) await client.removeObjects(bucket, names);
    for await (const upload of client.listIncompleteUploads(bucket, "", true)) {
      await client.abortMultipartUpload(bucket, upload.key, upload.uploadId);
    }
    await client.removeBucket(bucket);
  });
  return bucket;
}

function storeOptions(s3: RadosgwHandle, bucket: string, extra: Partial<S3StoreOptions> = {}): S3StoreOptions {
  return {
    endpoint: s3.endpoint,
    tls: false,
    region: s3.region,
    bucket,
    prefix: "repo",
    accessKey: s3.accessKey,
    secretKey: s3.secretKey,
    partSizeBytes: S3_MIN_PART_BYTES,
    ...extra,
  };
}

async function testStore(t: TestContext, extra: Partial<S3StoreOptions> = {}) {
  const s3 = await radosgw();
  const bucket = await bucketFor(s3, (cleanup) => t.after(cleanup));
  const store = new S3Store(storeOptions(s3, bucket, extra));
  t.after(() => store.close());
  return { s3, bucket, store, client: admin(s3) };
}

async function keys(store: S3Store, prefix = ""): Promise<string[]> {
  const out: string[] = [];
  for await (const info of store.list(prefix)) out.push(info.key);
  return out.sort();
}

if (missing.length > 0) {
  void test("S3Store against radosgw", (t) => t.skip(`Ceph radosgw is not installed: missing ${missing.join(", ")}`));
} else {
  runObjectStoreConformance(
    "S3Store (radosgw)",
    async () => {
      const s3 = await radosgw();
      const cleanups: (() => Promise<void>)[] = [];
      const bucket = await bucketFor(s3, (cleanup) => cleanups.push(cleanup));
      const store = new S3Store(storeOptions(s3, bucket));
      return {
        store,
        cleanup: async () => {
          await store.close();
          for (const cleanup of cleanups) await cleanup();
        },
        // A multipart upload cancelled mid-way, as the gateway does when its client goes away:
        // the source yields the data twice (more than one 5 MiB part), then stalls; once the
        // server shows the upload in progress, the signal fires. The store must abort the
        // upload: no object, and no incomplete upload left behind.
        interruptPut: async (key, data) => {
          const controller = new AbortController();
          async function* stalled(): AsyncGenerator<Uint8Array> {
            yield data;
            yield data;
            await new Promise(() => undefined);
          }
          const put = store.putStream(key, stalled(), { signal: controller.signal });
          const outcome = put.then(
            () => "resolved",
            (err: unknown) => err,
          );
          await waitFor(async () => (await store.incompleteUploads()).some((u) => u.key === key) || undefined, {
            timeoutMs: 20_000,
            what: `the multipart upload of ${key} to start`,
          });
          controller.abort();
          const result = await outcome;
          assert.ok(isCode(result, "CANCELLED"), `the interrupted put ended with ${String(result)}`);
          assert.deepEqual(await store.incompleteUploads(), [], "the cancelled upload was aborted");
        },
      };
    },
    { largeObjectBytes: 2 * S3_MIN_PART_BYTES + 1234 },
  );

  void describe("S3Store (radosgw)", () => {
    void test("a large put is a multipart upload (ETag -N), a small one a single PUT", async (t) => {
      const { bucket, store, client } = await testStore(t);
      const large = randomBytes(2 * S3_MIN_PART_BYTES + 10);
      await store.put("data/ab/large", large);
      await store.put("config", Buffer.from("small"));
      assert.match((await client.statObject(bucket, "repo/data/ab/large")).etag, /-3$/);
      assert.doesNotMatch((await client.statObject(bucket, "repo/config")).etag, /-\d+$/);
      assert.equal(sha256(await store.get("data/ab/large")), sha256(large));
      assert.deepEqual(await store.incompleteUploads(), []);
    });

    void test("streamed puts: the checks fail before completion and abort the multipart upload", async (t) => {
      const { store } = await testStore(t);
      const data = randomBytes(S3_MIN_PART_BYTES * 2 + 100);
      async function* chunks(): AsyncGenerator<Uint8Array> {
        for (let at = 0; at < data.length; at += 1 << 20) yield data.subarray(at, at + (1 << 20));
      }
      await assert.rejects(
        store.putStream("p/bad", chunks(), { expectedSha256: "0".repeat(64) }),
        code("DATA_CORRUPT"),
      );
      await assert.rejects(
        store.putStream("p/short", chunks(), { expectedSize: data.length + 1 }),
        code("INVALID_ARGUMENT"),
      );
      await assert.rejects(
        store.putStream("p/big", chunks(), { maxBytes: S3_MIN_PART_BYTES }),
        code("RESOURCE_EXHAUSTED"),
      );
      assert.deepEqual(await keys(store), []);
      assert.deepEqual(await store.incompleteUploads(), []);
      const ok = await store.putStream("p/ok", chunks(), { expectedSize: data.length, expectedSha256: sha256(data) });
      assert.deepEqual(ok, { existed: false, size: data.length, sha256: sha256(data) });
    });

    void test("ifAbsent on a multipart-sized object keeps the existing one and leaves no upload", async (t) => {
      const { store } = await testStore(t);
      const first = randomBytes(S3_MIN_PART_BYTES + 1);
      assert.deepEqual(await store.put("keys/big", first, { ifAbsent: true }), { existed: false });
      const stream = async function* () {
        yield randomBytes(S3_MIN_PART_BYTES);
        yield randomBytes(10);
      };
      const result = await store.putStream("keys/big", stream(), { ifAbsent: true });
      assert.equal(result.existed, true);
      assert.equal(sha256(await store.get("keys/big")), sha256(first));
      assert.deepEqual(await store.incompleteUploads(), []);
    });

    void test("getStream yields bounded chunks of the range", async (t) => {
      const { store } = await testStore(t);
      const data = randomBytes(300_000);
      await store.put("data/cd/p", data);
      const chunks: Buffer[] = [];
      for await (const chunk of store.getStream(
        "data/cd/p",
        { offset: 1000, length: 200_000 },
        { chunkBytes: 65536 },
      )) {
        assert.ok(chunk.length <= 65536);
        chunks.push(chunk);
      }
      assert.deepEqual(Buffer.concat(chunks), data.subarray(1000, 201_000));
      await assert.rejects(
        (async () => {
          for await (const _ of store.getStream("data/cd/none")) assert.fail("yielded a missing object");
        })(),
        code("NOT_FOUND"),
      );
    });

    void test("list pages through ListObjectsV2 and skips objects outside the key space", async (t) => {
      const { bucket, store, client } = await testStore(t, { listPageSize: 2 });
      for (const key of ["a/1", "a/2", "a/3", "b/4", "c"]) await store.put(key, Buffer.from(key));
      await client.putObject(bucket, "elsewhere/x", Buffer.from("not ours"));
      await client.putObject(bucket, "repo/odd name", Buffer.from("not a key"));
      await client.putObject(bucket, "repo/dir/", Buffer.from(""));
      assert.deepEqual(await keys(store), ["a/1", "a/2", "a/3", "b/4", "c"]);
      assert.deepEqual(await keys(store, "a/"), ["a/1", "a/2", "a/3"]);
    });

    void test("wrong credentials are PERMISSION_DENIED naming the endpoint and bucket, never the secret", async (t) => {
      const s3 = await radosgw();
      const bucket = await bucketFor(s3, (cleanup) => t.after(cleanup));
      const secret = "wrong-secret-value-0123456789";
      const store = new S3Store(storeOptions(s3, bucket, { secretKey: secret }));
      const unknown = new S3Store(storeOptions(s3, bucket, { accessKey: "NOSUCHKEY", secretKey: secret }));
      t.after(() => Promise.all([store.close(), unknown.close()]));
      const denied = (err: unknown) => {
        code("PERMISSION_DENIED", new RegExp(`S3 endpoint ${s3.endpoint}, bucket ${bucket}`))(err);
        assert.ok(!JSON.stringify({ m: (err as Error).message, h: (err as { hint?: string }).hint }).includes(secret));
        return true;
      };
      await assert.rejects(store.put("config", Buffer.from("x")), denied);
      await assert.rejects(store.get("config"), denied);
      await assert.rejects(store.stat("config"), denied);
      await assert.rejects(keys(store), denied);
      await assert.rejects(unknown.put("config", Buffer.from("x")), code("PERMISSION_DENIED", /access key is unknown/));
    });

    void test("a missing bucket is FAILED_PRECONDITION with a hint", async (t) => {
      const s3 = await radosgw();
      const store = new S3Store(storeOptions(s3, `missing-${randomBytes(4).toString("hex")}`));
      t.after(() => store.close());
      const precondition = (err: unknown) => {
        code("FAILED_PRECONDITION", /bucket missing-[0-9a-f]+ does not exist at S3 endpoint/)(err);
        assert.match((err as { hint: string }).hint, /create the bucket/);
        return true;
      };
      await assert.rejects(store.put("config", Buffer.from("x")), precondition);
      await assert.rejects(store.get("config"), precondition);
      await assert.rejects(store.stat("config"), precondition);
      await assert.rejects(store.delete("config"), precondition);
      await assert.rejects(keys(store), precondition);
      await assert.rejects(store.put("big", randomBytes(S3_MIN_PART_BYTES + 1)), precondition);
    });

    void test("an unreachable endpoint is UNAVAILABLE (retryable) after the retries", async () => {
      const port = await freePort();
      const store = new S3Store({
        endpoint: `127.0.0.1:${port}`,
        tls: false,
        bucket: "any",
        accessKey: "a",
        secretKey: "b",
        retry: { attempts: 2, baseDelayMs: 5 },
      });
      await assert.rejects(store.get("config"), (err) => {
        code(
          "UNAVAILABLE",
          new RegExp(`S3 endpoint 127.0.0.1:${port}, bucket any is unreachable \\(ECONNREFUSED\\)`),
        )(err);
        assert.equal((err as { retryable: boolean }).retryable, true);
        return true;
      });
    });

    void test("5xx answers are retried with backoff: two 503s, then the request goes through", async (t) => {
      const s3 = await radosgw();
      const bucket = await bucketFor(s3, (cleanup) => t.after(cleanup));
      const proxy = await startFlakyProxy(s3.port, 2);
      t.after(() => proxy.close());
      const store = new S3Store(
        storeOptions(s3, bucket, { endpoint: `127.0.0.1:${proxy.port}`, retry: { baseDelayMs: 5 } }),
      );
      t.after(() => store.close());
      await store.put("config", Buffer.from("through the proxy"));
      assert.equal(proxy.failed, 2);
      assert.equal((await store.get("config")).toString(), "through the proxy");

      proxy.failNext(10); // more 503s than attempts: the error says so, retryable
      await assert.rejects(store.get("config"), (err) => {
        code("UNAVAILABLE", /answered 503/)(err);
        return (err as { retryable: boolean }).retryable;
      });
      assert.equal(proxy.failed, 2 + 4, "4 attempts (the default policy)");
    });

    void test("a server that stops answering times out (UNAVAILABLE) instead of hanging", async (t) => {
      const server = createServer(() => undefined); // accepts, never answers
      const port = await listen(server);
      t.after(() => new Promise<void>((resolve) => server.close(() => resolve())).then(() => undefined));
      t.after(() => server.closeAllConnections());
      const store = new S3Store({
        endpoint: `127.0.0.1:${port}`,
        tls: false,
        bucket: "any",
        accessKey: "a",
        secretKey: "b",
        requestTimeoutMs: 200,
        retry: { attempts: 2, baseDelayMs: 5 },
      });
      const started = Date.now();
      await assert.rejects(store.get("config"), code("UNAVAILABLE", /ETIMEDOUT/));
      assert.ok(Date.now() - started < 5000);
    });

    void test("abortIncompleteUploads removes uploads of writers that died", async (t) => {
      const { bucket, store, client } = await testStore(t);
      await client.initiateNewMultipartUpload(bucket, "repo/data/ee/dead", {});
      await client.initiateNewMultipartUpload(bucket, "elsewhere/dead", {});
      assert.deepEqual(
        (await store.incompleteUploads()).map((u) => u.key),
        ["data/ee/dead"],
      );
      assert.deepEqual(await store.abortIncompleteUploads(), { aborted: 0 }, "younger than an hour: kept");
      assert.deepEqual(await store.abortIncompleteUploads({ olderThanMs: 0 }), { aborted: 1 });
      assert.deepEqual(await store.incompleteUploads(), []);
    });
  });
}

function listen(server: Server): Promise<number> {
  return new Promise((resolve, reject) => {
    server.once("error", reject);
    server.listen(0, "127.0.0.1", () => {
      const address = server.address();
      resolve(typeof address === "object" && address ? address.port : 0);
    });
  });
}

/** An HTTP proxy to radosgw that answers 503 to the next `failures` requests. */
async function startFlakyProxy(targetPort: number, failures: number) {
  let toFail = failures;
  const state = { failed: 0 };
  const server = createServer((req: IncomingMessage, res: ServerResponse) => {
    if (toFail > 0) {
      toFail--;
      state.failed++;
      req.resume();
      res.writeHead(503, { "content-type": "application/xml" });
      res.end('<?xml version="1.0"?><Error><Code>ServiceUnavailable</Code><Message>busy</Message></Error>');
      return;
    }
    const upstream = request(
      { host: "127.0.0.1", port: targetPort, method: req.method, path: req.url, headers: req.headers },
      (answer) => {
        res.writeHead(answer.statusCode ?? 502, answer.headers);
        answer.pipe(res);
      },
    );
    upstream.on("error", () => res.destroy());
    req.pipe(upstream);
  });
  const port = await listen(server);
  return {
    port,
    get failed() {
      return state.failed;
    },
    failNext(n: number) {
      toFail = n;
    },
    close: () =>
      new Promise<void>((resolve) => {
        server.closeAllConnections();
        server.close(() => resolve());
      }),
  };
}

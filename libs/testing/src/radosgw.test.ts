import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import { once } from "node:events";
import { createServer, type AddressInfo } from "node:net";
import { createHash, createHmac, randomBytes } from "node:crypto";
import { existsSync } from "node:fs";
import { request } from "node:http";
import { test } from "node:test";
import { IotvaultError } from "@iotvault/errors";
import { missingRadosgwPrograms, startRadosgw, type RadosgwHandle } from "./index.js";

const missing = missingRadosgwPrograms();

/** A minimal AWS SigV4 request (path-style, empty payload): enough to prove the keys work. */
function s3Request(
  s3: RadosgwHandle,
  method: string,
  path: string,
  secretKey = s3.secretKey,
): Promise<{ status: number; body: string }> {
  const amzDate = new Date()
    .toISOString()
    .replace(/[-:]/g, "")
    .replace(/\.\d{3}/, "");
  const date = amzDate.slice(0, 8);
  const payloadHash = createHash("sha256").update("").digest("hex");
  const host = s3.endpoint;
  const canonical = [
    method,
    path,
    "",
    `host:${host}\nx-amz-content-sha256:${payloadHash}\nx-amz-date:${amzDate}\n`,
    "host;x-amz-content-sha256;x-amz-date",
    payloadHash,
  ].join("\n");
  const scope = `${date}/${s3.region}/s3/aws4_request`;
  const toSign = ["AWS4-HMAC-SHA256", amzDate, scope, createHash("sha256").update(canonical).digest("hex")].join("\n");
  const hmac = (key: Buffer | string, data: string) => createHmac("sha256", key).update(data).digest();
  const signingKey = hmac(hmac(hmac(hmac(`AWS4${secretKey}`, date), s3.region), "s3"), "aws4_request");
  const signature = createHmac("sha256", signingKey).update(toSign).digest("hex");
  const authorization = `AWS4-HMAC-SHA256 Credential=${s3.accessKey}/${scope}, SignedHeaders=host;x-amz-content-sha256;x-amz-date, Signature=${signature}`;
  return new Promise((resolve, reject) => {
    const req = request(
      {
        host: s3.host,
        port: s3.port,
        method,
        path,
        headers: { host, "x-amz-date": amzDate, "x-amz-content-sha256": payloadHash, authorization },
      },
      (res) => {
        let body = "";
        res.setEncoding("utf8");
        res.on("data", (chunk: string) => (body += chunk));
        res.on("end", () => resolve({ status: res.statusCode ?? 0, body }));
      },
    );
    req.on("error", reject);
    req.end();
  });
}

if (missing.length > 0) {
  void test("startRadosgw", (t) => t.skip(`Ceph radosgw is not installed: missing ${missing.join(", ")}`));
} else {
  void test("startRadosgw: a start that fails says why, stops what it started, and the next call starts anew", async () => {
    // A deadline already past: the cluster is made, then the wait for radosgw gives up at once.
    // (The failed start used to wait for its own promise while stopping, and never ended.)
    let dir = "";
    await assert.rejects(startRadosgw({ readyTimeoutMs: 1 }), (err: unknown) => {
      assert.ok(err instanceof IotvaultError);
      assert.match(err.message, /^radosgw did not start: radosgw on 127\.0\.0\.1:\d+ did not answer in time/);
      dir = String(err.details?.["dir"]);
      return true;
    });
    assert.match(dir, /iotvault-ceph-/);
    assert.equal(existsSync(dir), false, "the failed cluster's directory is removed");
    // Other test processes may run clusters of their own: only this one's daemons count.
    const left = spawnSync("pgrep", ["-f", `${dir}/ceph.conf`], { encoding: "utf8" }).stdout.trim();
    assert.equal(left, "", "no daemon of the failed cluster is left");
  });

  void test("startRadosgw: a real S3 endpoint with SigV4, shared per process, stopped completely", async (t) => {
    // The first attempt gets a port another process holds: radosgw cannot bind it, and the
    // start is tried again on a free one.
    const holder = createServer().listen(0, "127.0.0.1");
    await once(holder, "listening");
    const taken = (holder.address() as AddressInfo).port;
    t.after(() => holder.close());
    const s3 = await startRadosgw({ port: taken });
    assert.notEqual(s3.port, taken, "started again on another port");
    let stopped = false;
    t.after(async () => {
      if (!stopped) await s3.stop();
    });
    t.diagnostic(`radosgw started in ${s3.startupMs} ms on ${s3.endpoint}`);
    assert.match(s3.endpoint, /^127\.0\.0\.1:\d+$/);
    assert.equal(await startRadosgw(), s3, "a second call shares the running cluster");

    const bucket = `kit-${randomBytes(4).toString("hex")}`;
    assert.equal((await s3Request(s3, "PUT", `/${bucket}`)).status, 200, "the test user may create a bucket");
    const listing = await s3Request(s3, "GET", "/");
    assert.equal(listing.status, 200);
    assert.match(listing.body, new RegExp(`<Name>${bucket}</Name>`));
    const forged = await s3Request(s3, "GET", "/", "not-the-secret");
    assert.equal(forged.status, 403, "SigV4 is verified");
    assert.match(forged.body, /SignatureDoesNotMatch/);

    await s3.stop();
    stopped = true;
    assert.equal(existsSync(s3.dir), false, "the cluster's directory is removed");
    await assert.rejects(s3Request(s3, "GET", "/"), /ECONNREFUSED/, "radosgw no longer listens");
  });
}

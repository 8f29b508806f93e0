import assert from "node:assert/strict";
import { existsSync, readFileSync } from "node:fs";
import { writeFile } from "node:fs/promises";
import { createServer } from "node:net";
import { join } from "node:path";
import { test } from "node:test";
import { isCode } from "@iotvault/errors";
import { findNatsServer, findPostgresBin, freePort, tempDir, waitFor } from "./index.js";

void test("tempDir creates an empty directory and cleanup removes it with its content", async () => {
  const dir = await tempDir("kit-test-");
  try {
    assert.ok(existsSync(dir.path));
    assert.match(dir.path, /kit-test-/);
    await writeFile(join(dir.path, "file.txt"), "x");
  } finally {
    await dir.cleanup();
  }
  assert.equal(existsSync(dir.path), false);
  await dir.cleanup(); // twice is fine
});

void test("freePort returns a port below the kernel's ephemeral range that can be bound on loopback", async () => {
  const port = await freePort();
  assert.ok(port > 0 && port < 65536);
  // Ports the kernel hands to port-0 listeners and outgoing connections come from this range.
  const first = Number(readFileSync("/proc/sys/net/ipv4/ip_local_port_range", "utf8").trim().split(/\s+/)[0]);
  assert.ok(port >= 10_000 && port < first, `${port} is not below the ephemeral range (from ${first})`);
  const server = createServer();
  await new Promise<void>((resolve, reject) => {
    server.once("error", reject);
    server.listen(port, "127.0.0.1", resolve);
  });
  await new Promise<void>((resolve) => server.close(() => resolve()));
});

void test("waitFor returns the first value that is neither undefined nor false", async () => {
  let calls = 0;
  const value = await waitFor(() => (++calls >= 3 ? { calls } : undefined), { intervalMs: 5 });
  assert.deepEqual(value, { calls: 3 });
  assert.equal(await waitFor(() => 0), 0, "0 is a value, not 'not yet'");
});

void test("waitFor times out with DEADLINE_EXCEEDED naming what it waited for and the last error", async () => {
  const started = Date.now();
  await assert.rejects(
    waitFor(
      () => {
        throw new Error("still booting");
      },
      { timeoutMs: 150, intervalMs: 20, what: "the widget to be ready" },
    ),
    (err: unknown) => {
      assert.ok(isCode(err, "DEADLINE_EXCEEDED"));
      assert.match(err.message, /timed out after 150 ms waiting for the widget to be ready/);
      assert.match(err.message, /last error: still booting/);
      return true;
    },
  );
  assert.ok(Date.now() - started >= 140);
  await assert.rejects(
    waitFor(() => false, { timeoutMs: 50 }),
    /waiting for a condition$/,
  );
});

void test("findNatsServer and findPostgresBin locate executables on this machine", () => {
  const nats = findNatsServer();
  assert.ok(nats?.endsWith("nats-server"), `nats-server not found (${String(nats)})`);
  assert.ok(findPostgresBin("pg_ctl")?.endsWith("pg_ctl"));
  assert.equal(findPostgresBin("no-such-postgres-tool"), undefined);
});

import assert from "node:assert/strict";
import { execFile, spawn } from "node:child_process";
import { once } from "node:events";
import { existsSync } from "node:fs";
import { connect } from "node:net";
import { createInterface } from "node:readline";
import { test } from "node:test";
import { promisify } from "node:util";
import { startNats, waitFor } from "./index.js";

const INDEX_URL = new URL("./index.js", import.meta.url).href;

/** The server's INFO line, or undefined when nothing accepts connections on the port. */
async function info(port: number): Promise<Record<string, unknown> | undefined> {
  return new Promise((resolve) => {
    let text = "";
    const socket = connect({ host: "127.0.0.1", port });
    const done = (value: Record<string, unknown> | undefined): void => {
      socket.destroy();
      resolve(value);
    };
    socket.setEncoding("utf8");
    socket.on("data", (chunk: string) => {
      text += chunk;
      const end = text.indexOf("\r\n");
      if (end >= 0) done(JSON.parse(text.slice(5, end)) as Record<string, unknown>);
    });
    socket.on("error", () => done(undefined));
  });
}

/**
 * One request over the raw NATS protocol (CONNECT, SUB, PUB, read the MSG), so that the kit's
 * own tests need no NATS client library.
 */
async function request(port: number, subject: string, body: unknown): Promise<Record<string, unknown>> {
  return new Promise((resolve, reject) => {
    const payload = JSON.stringify(body);
    let text = "";
    const socket = connect({ host: "127.0.0.1", port }, () => {
      socket.write(`CONNECT {"verbose":false,"headers":false}\r\nSUB _INBOX.kit 1\r\n`);
      socket.write(`PUB ${subject} _INBOX.kit ${Buffer.byteLength(payload)}\r\n${payload}\r\n`);
    });
    socket.setTimeout(5000, () => {
      socket.destroy();
      reject(new Error(`no reply to ${subject}`));
    });
    socket.setEncoding("utf8");
    socket.on("data", (chunk: string) => {
      text += chunk;
      const match = /MSG _INBOX\.kit 1 (\d+)\r\n/.exec(text);
      if (!match) return;
      const start = match.index + match[0].length;
      const length = Number(match[1]);
      if (Buffer.byteLength(text.slice(start)) < length) return;
      socket.destroy();
      resolve(JSON.parse(text.slice(start, start + length)) as Record<string, unknown>);
    });
    socket.on("error", reject);
  });
}

function alive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch {
    return false;
  }
}

void test("startNats starts a JetStream server on a loopback port; stop ends it and removes the store", async () => {
  const nats = await startNats();
  try {
    assert.equal(nats.url, `nats://127.0.0.1:${nats.port}`);
    const first = await info(nats.port);
    assert.equal(first?.["jetstream"], true);
    assert.ok(existsSync(nats.storeDir));
    assert.ok(alive(nats.pid));
  } finally {
    await nats.stop();
  }
  assert.equal(await info(nats.port), undefined);
  assert.equal(existsSync(nats.storeDir), false);
  await nats.stop(); // idempotent
});

void test("kill keeps the store dir, restart brings the server back on the same port", async () => {
  const nats = await startNats();
  try {
    const firstPid = nats.pid;
    const created = await request(nats.port, "$JS.API.STREAM.CREATE.KIT", {
      name: "KIT",
      subjects: ["kit.>"],
      storage: "file",
    });
    assert.equal(created["error"], undefined, JSON.stringify(created["error"]));
    await nats.kill();
    assert.equal(alive(firstPid), false);
    assert.equal(await info(nats.port), undefined);
    assert.ok(existsSync(nats.storeDir), "kill keeps the store");
    await nats.restart();
    assert.notEqual(nats.pid, firstPid);
    assert.equal((await info(nats.port))?.["jetstream"], true);
    // The stream lives in the store dir, so it is still there after the restart.
    const afterKill = await request(nats.port, "$JS.API.STREAM.INFO.KIT", {});
    assert.deepEqual((afterKill["config"] as { subjects?: unknown } | undefined)?.subjects, ["kit.>"]);
    await nats.restart(); // restart of a running server: SIGTERM, then start
    const afterRestart = await request(nats.port, "$JS.API.STREAM.INFO.KIT", {});
    assert.equal((afterRestart["config"] as { name?: unknown } | undefined)?.name, "KIT");
  } finally {
    await nats.stop();
  }
});

void test("startNats without JetStream, with extra args", async () => {
  const nats = await startNats({ jetstream: false, args: ["--name", "kit-test"] });
  try {
    const line = await info(nats.port);
    assert.equal(line?.["jetstream"], undefined);
    assert.equal(line?.["server_name"], "kit-test");
  } finally {
    await nats.stop();
  }
});

void test("a server that cannot start reports its output", async () => {
  await assert.rejects(startNats({ args: ["--no-such-flag"] }), (err: unknown) => {
    assert.match((err as Error).message, /nats-server on 127\.0\.0\.1:\d+ exited/);
    assert.match((err as Error).message, /no-such-flag/);
    return true;
  });
});

void test("no server outlives the test process that started it", async () => {
  const script = `
    import { startNats } from ${JSON.stringify(INDEX_URL)};
    const nats = await startNats();
    console.log(JSON.stringify({ pid: nats.pid, storeDir: nats.storeDir, port: nats.port }));
    process.exit(0);`;
  const { stdout } = await promisify(execFile)(process.execPath, ["--input-type=module", "-e", script]);
  const child = JSON.parse(stdout) as { pid: number; storeDir: string; port: number };
  await waitFor(() => !alive(child.pid), { what: "the orphaned nats-server to be killed" });
  assert.equal(existsSync(child.storeDir), false);
  assert.equal(await info(child.port), undefined);
});

void test("a test process ended by SIGTERM stops its servers too", async () => {
  const script = `
    import { startNats } from ${JSON.stringify(INDEX_URL)};
    const nats = await startNats();
    console.log(JSON.stringify({ pid: nats.pid, storeDir: nats.storeDir }));
    setInterval(() => {}, 1000);`;
  const child = spawn(process.execPath, ["--input-type=module", "-e", script], {
    stdio: ["ignore", "pipe", "inherit"],
  });
  try {
    const [line] = (await once(createInterface({ input: child.stdout }), "line")) as [string];
    const server = JSON.parse(line) as { pid: number; storeDir: string };
    assert.ok(alive(server.pid));
    child.kill("SIGTERM");
    const [code, signal] = (await once(child, "exit")) as [number | null, string | null];
    assert.equal(signal, "SIGTERM", `the test process still ends by its signal (code ${String(code)})`);
    await waitFor(() => !alive(server.pid), { what: "the nats-server to be killed" });
    assert.equal(existsSync(server.storeDir), false);
  } finally {
    child.kill("SIGKILL");
  }
});

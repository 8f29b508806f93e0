/**
 * The CLI loads only what a command needs: `wal-push` runs once per WAL segment as PostgreSQL's
 * archive_command, so the storage backends, the gRPC server side, the telemetry SDK and the
 * source adapters must stay out of it; the commands that only call the services (`restore`,
 * `backup`, ...) do without the repository library. A module hook records every module that
 * cli/dist loads (the bundle keeps the same boundaries: bundle.test.ts).
 */
import assert from "node:assert/strict";
import { fileURLToPath } from "node:url";
import { test } from "node:test";
import { HEAVY, loadedBy as loadedByEntry } from "./test-support.js";

const DIST_MAIN = fileURLToPath(new URL("./main.js", import.meta.url));
const loadedBy = (args: string[]) => loadedByEntry(DIST_MAIN, args);

void test("`iotvault wal-push --help` loads no storage backend, server, telemetry SDK, NATS or source adapter", () => {
  const urls = loadedBy(["wal-push", "--help"]);
  assert.ok(
    urls.some((u) => u.endsWith("/cli/dist/postgres.js")),
    "the command's own module was loaded",
  );
  for (const pattern of HEAVY) {
    const hit = urls.find((u) => pattern.test(u));
    assert.equal(hit, undefined, `wal-push loaded ${hit}`);
  }
});

void test("`iotvault help` loads no command module", () => {
  const urls = loadedBy(["help"]);
  const commands = urls.filter((u) => /\/cli\/dist\/(commands|postgres|retention|stack|context)\.js$/.test(u));
  assert.deepEqual(commands, []);
});

void test("`iotvault restore --help` (a command that only calls the services) loads no repository library", () => {
  const urls = loadedBy(["restore", "--help"]);
  assert.ok(
    urls.some((u) => u.endsWith("/cli/dist/commands.js")),
    "the command's own module was loaded",
  );
  for (const pattern of [...HEAVY, /\/repo\/dist\//, /\/node_modules\/zstd-napi\//]) {
    const hit = urls.find((u) => pattern.test(u));
    assert.equal(hit, undefined, `restore loaded ${hit}`);
  }
});

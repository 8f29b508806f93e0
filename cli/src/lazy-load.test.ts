/**
 * The CLI loads only what a command needs: `wal-push` runs once per WAL segment as PostgreSQL's
 * archive_command, so the storage backends, the gRPC server side, the telemetry SDK and the
 * source adapters must stay out of it; the commands that only call the services (`restore`,
 * `backup`, ...) do without the repository library. A module hook records every module loaded.
 */
import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import { fileURLToPath } from "node:url";
import { test } from "node:test";

const CLI = fileURLToPath(new URL("../bin/iotvault.js", import.meta.url));

/** Records the URL of every module loaded, on stderr, prefixed with "loaded ". */
const HOOK = `data:text/javascript,${encodeURIComponent(`
import { register } from "node:module";
register("data:text/javascript," + encodeURIComponent(
  "export async function load(url, context, next) { process.stderr.write('loaded ' + url + '\\\\n'); return next(url, context); }"
));
`)}`;

function loadedBy(args: string[]): string[] {
  const r = spawnSync(process.execPath, ["--import", HOOK, CLI, ...args], {
    encoding: "utf8",
    env: { ...process.env, IOTVAULT_HOME: "/nonexistent-iotvault-home" },
  });
  assert.equal(r.status, 0, r.stderr);
  const urls = r.stderr
    .split("\n")
    .filter((l) => l.startsWith("loaded "))
    .map((l) => l.slice("loaded ".length));
  assert.ok(urls.length > 0, "the hook saw no module: the test would prove nothing");
  return urls;
}

const HEAVY = [
  /\/node_modules\/minio\//,
  /\/node_modules\/ssh2/,
  /\/node_modules\/@opentelemetry\/sdk-/,
  /\/node_modules\/@opentelemetry\/exporter-/,
  /\/node_modules\/@nats-io\//,
  /\/rpc\/dist\/server\.js$/,
  /\/sources\/dist\/index\.js$/,
  /\/sample\/dist\//,
];

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

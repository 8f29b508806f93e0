/** Helpers of the CLI's tests: which modules a CLI process loads. */
import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";

/** Records the URL of every module loaded, on stderr, prefixed with "loaded ". */
const HOOK = `data:text/javascript,${encodeURIComponent(`
import { register } from "node:module";
register("data:text/javascript," + encodeURIComponent(
  "export async function load(url, context, next) { process.stderr.write('loaded ' + url + '\\\\n'); return next(url, context); }"
));
`)}`;

/** Runs `node <entry> ...args` (expecting exit 0) and returns the URL of every module it loaded. */
export function loadedBy(entry: string, args: string[]): string[] {
  const r = spawnSync(process.execPath, ["--import", HOOK, entry, ...args], {
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

/** What `wal-push` (PostgreSQL's archive_command, once per WAL segment) must never load. */
export const HEAVY: readonly RegExp[] = [
  /\/node_modules\/minio\//,
  /\/node_modules\/ssh2/,
  /\/node_modules\/@opentelemetry\/sdk-/,
  /\/node_modules\/@opentelemetry\/exporter-/,
  /\/node_modules\/@nats-io\//,
  /\/rpc\/dist\/server\.js$/,
  /\/sources\/dist\/index\.js$/,
  /\/sample\/dist\//,
];

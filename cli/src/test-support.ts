/** Helpers of the CLI's tests: which modules a CLI process loads. */
import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";

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

/**
 * Records, in a process running the bundle (cli/bundle/main.cjs), each bundled module as it is
 * first evaluated and each file required from outside the bundle. esbuild wraps every module of
 * the bundle that is not evaluated at start in an initializer keyed by its path, and the
 * initializer reads that key with Object.getOwnPropertyNames on its first call: the preload
 * wraps that function (before the bundle takes it) and Module._load.
 */
const BUNDLE_TRACE = `
const names = Object.getOwnPropertyNames;
const seen = [];
Object.getOwnPropertyNames = function (o) {
  const r = names(o);
  if (r.length === 1 && r[0].includes("/") && /\\.(c|m)?js$/.test(r[0])) seen.push("module /" + r[0]);
  return r;
};
const Module = require("node:module");
const load = Module._load;
Module._load = function (request, parent, isMain) {
  const loaded = load.apply(this, arguments);
  if (!Module.isBuiltin(request)) {
    try { seen.push("required " + Module._resolveFilename(request, parent)); } catch {}
  }
  return loaded;
};
process.on("exit", () => { for (const s of seen) process.stderr.write(s + "\\n"); });
`;

/**
 * Runs `node <bin> ...args` (expecting exit 0) with the bundle tracer: the bundled modules it
 * evaluated (as /path from the checkout, e.g. /cli/dist/postgres.js) and the files it required
 * from outside the bundle (absolute paths).
 */
export function bundleLoadsOf(bin: string, args: string[]): { modules: string[]; required: string[] } {
  const dir = mkdtempSync(join(tmpdir(), "iotvault-trace-"));
  try {
    const preload = join(dir, "trace.cjs");
    writeFileSync(preload, BUNDLE_TRACE);
    const r = spawnSync(process.execPath, ["--require", preload, bin, ...args], {
      encoding: "utf8",
      env: { ...process.env, IOTVAULT_HOME: "/nonexistent-iotvault-home", XDG_CACHE_HOME: join(dir, "cache") },
    });
    assert.equal(r.status, 0, r.stderr);
    const lines = r.stderr.split("\n");
    const modules = lines.filter((l) => l.startsWith("module ")).map((l) => l.slice("module ".length));
    const required = lines.filter((l) => l.startsWith("required ")).map((l) => l.slice("required ".length));
    assert.ok(modules.length > 0, "the tracer saw no bundled module: the test would prove nothing");
    return { modules, required };
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}

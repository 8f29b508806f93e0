/**
 * cli/bundle (scripts/bundle-cli.mjs, part of `npm run build`): the bin runs it only while it is
 * current, compiles it with the code cache it keeps per command, and a command run from it
 * evaluates what it evaluates from cli/dist. The end-to-end suites run every command through the
 * bin, that is, through the bundle.
 */
import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import {
  chmodSync,
  copyFileSync,
  existsSync,
  mkdirSync,
  mkdtempSync,
  readFileSync,
  readdirSync,
  rmSync,
  statSync,
  utimesSync,
  writeFileSync,
} from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { test } from "node:test";
import { HEAVY, bundleLoadsOf } from "./test-support.js";

const ROOT = fileURLToPath(new URL("../../", import.meta.url));
const BIN = join(ROOT, "cli", "bin", "iotvault.js");
const BUNDLE = join(ROOT, "cli", "bundle");

interface Metafile {
  inputs: Record<string, unknown>;
}

/** The bundle of this checkout; the suite runs after `npm run build` (test.sh: bootstrap). */
function bundleMeta(): Metafile {
  assert.ok(existsSync(join(BUNDLE, "meta.json")), "cli/bundle is missing: run `npm run build`");
  return JSON.parse(readFileSync(join(BUNDLE, "meta.json"), "utf8")) as Metafile;
}

/**
 * The tracer sees a bundled module when its initializer first runs; a module that esbuild put
 * at the script's top level runs at every start, unseen. Each heavy module in the bundle must
 * therefore be behind an initializer (keyed by its path), or the traces below could miss it.
 */
void test("every heavy module in the bundle is evaluated on first use only", () => {
  const text = readFileSync(join(BUNDLE, "main.cjs"), "utf8");
  const heavy = Object.keys(bundleMeta().inputs).filter((i) => HEAVY.some((p) => p.test(`/${i}`)));
  assert.ok(heavy.length > 0, "no heavy module in the bundle: the check would prove nothing");
  for (const input of heavy) {
    assert.ok(
      text.includes(`__esm({${JSON.stringify(input)}`) || text.includes(`__commonJS({${JSON.stringify(input)}`),
      `${input} runs at every start of the bundle`,
    );
  }
});

void test("the bin runs the bundle while it is current, and cli/dist when a file it was made from is newer", () => {
  const dir = join(tmpdir(), `iotvault-bin-${process.pid}`);
  rmSync(dir, { recursive: true, force: true });
  try {
    for (const d of ["cli/bin", "cli/bundle", "cli/dist"]) mkdirSync(join(dir, d), { recursive: true });
    copyFileSync(BIN, join(dir, "cli/bin/iotvault.js"));
    writeFileSync(join(dir, "cli/bundle/main.cjs"), 'process.stdout.write("bundle");\n');
    writeFileSync(join(dir, "cli/dist/main.js"), 'process.stdout.write("dist");\n');
    const input = join(dir, "cli/dist/main.js");
    const manifest = join(dir, "cli/bundle/inputs.json");
    writeFileSync(manifest, JSON.stringify({ newest: statSync(input).mtimeMs, inputs: ["cli/dist/main.js"] }));
    const run = () => {
      const r = spawnSync(process.execPath, [join(dir, "cli/bin/iotvault.js")], {
        encoding: "utf8",
        env: { ...process.env, XDG_CACHE_HOME: join(dir, "cache") },
      });
      assert.equal(r.status, 0, r.stderr);
      return r.stdout;
    };
    assert.equal(run(), "bundle");
    // A `tsc -b` after the bundle: the newer build runs.
    const later = new Date(Date.now() + 60_000);
    utimesSync(input, later, later);
    assert.equal(run(), "dist");
    // No record of what the bundle was made from, or an input gone: never the bundle.
    writeFileSync(manifest, JSON.stringify({ newest: later.getTime(), inputs: ["cli/dist/gone.js"] }));
    assert.equal(run(), "dist");
    rmSync(manifest);
    assert.equal(run(), "dist");
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

void test("this checkout's bin runs the bundle, and `wal-push --help` from it evaluates no heavy module", () => {
  const { modules, required } = bundleLoadsOf(BIN, ["wal-push", "--help"]);
  assert.ok(
    modules.includes("/cli/dist/postgres.js"),
    `the command's own module was not evaluated: ${modules.join(" ")}`,
  );
  for (const pattern of HEAVY) {
    const hit = modules.find((m) => pattern.test(m));
    assert.equal(hit, undefined, `wal-push evaluated ${hit}`);
  }
  // Everything came from the bundle, except the packages kept outside it (native addons).
  for (const f of required) assert.match(f, /\/node_modules\/zstd-napi\//, `required from outside the bundle: ${f}`);
});

void test("`restore --help` from the bundle evaluates no repository library", () => {
  const { modules, required } = bundleLoadsOf(BIN, ["restore", "--help"]);
  assert.ok(modules.includes("/cli/dist/commands.js"), "the command's own module was evaluated");
  for (const pattern of [...HEAVY, /\/repo\/dist\//, /\/node_modules\/zstd-napi\//]) {
    const hit = [...modules, ...required].find((m) => pattern.test(m));
    assert.equal(hit, undefined, `restore evaluated ${hit}`);
  }
});

void test("each command's compiled code is kept in the user's cache directory; a bad or missing cache only costs the compile", () => {
  const home = mkdtempSync(join(tmpdir(), "iotvault-cache-"));
  try {
    const run = (args: string[], cacheHome = home) =>
      spawnSync(process.execPath, [BIN, ...args], {
        encoding: "utf8",
        env: { ...process.env, XDG_CACHE_HOME: cacheHome, IOTVAULT_HOME: "/nonexistent-iotvault-home" },
      });
    const dir = join(home, "iotvault", "cli");
    const cacheOf = (command: string) => readdirSync(dir).filter((f) => f.startsWith(`${command}.`));
    const usage = /usage: iotvault <command>/;

    let r = run(["help"]);
    assert.equal(r.status, 0, r.stderr);
    assert.match(r.stdout, usage);
    const files = cacheOf("help");
    assert.ok(files.length === 1 && files[0]!.endsWith(".v8cache"), `one cache file: ${readdirSync(dir).join(" ")}`);
    const path = join(dir, files[0]!);
    assert.equal(statSync(dir).mode & 0o777, 0o700);
    assert.equal(statSync(path).mode & 0o777, 0o600);
    assert.ok(statSync(path).size > 10_000, "the cache holds compiled code");

    // Used as it is: not written again.
    const past = new Date("2001-01-01T00:00:00Z");
    utimesSync(path, past, past);
    r = run(["help"]);
    assert.equal(r.status, 0, r.stderr);
    assert.equal(statSync(path).mtimeMs, past.getTime(), "the cache was accepted, not rewritten");

    // A damaged cache: V8 refuses it, the command runs, the cache is made again.
    writeFileSync(path, "not a code cache");
    r = run(["help"]);
    assert.equal(r.status, 0, r.stderr);
    assert.match(r.stdout, usage);
    assert.ok(statSync(path).size > 10_000, "the damaged cache was replaced");

    // This checkout's caches of another bundle (or Node.js) go when a new one is written; those
    // of another checkout stay, unless written more than 30 days ago.
    const checkout = files[0]!.split(".")[1]!.split("-")[0]!;
    const stale = join(dir, `help.${checkout}-1-2-v0.0.0-x64.v8cache`);
    const elsewhere = join(dir, `help.other${checkout}-1-2-v0.0.0-x64.v8cache`);
    const gone = join(dir, `restore.gone${checkout}-1-2-v0.0.0-x64.v8cache`);
    writeFileSync(stale, "old");
    writeFileSync(elsewhere, "another checkout's");
    writeFileSync(gone, "a checkout's that is gone");
    const twoMonthsAgo = new Date(Date.now() - 60 * 24 * 3600 * 1000);
    utimesSync(gone, twoMonthsAgo, twoMonthsAgo);
    rmSync(path);
    r = run(["help"]);
    assert.equal(r.status, 0, r.stderr);
    const left = readdirSync(dir).join(" ");
    assert.ok(existsSync(path) && !existsSync(stale) && existsSync(elsewhere) && !existsSync(gone), left);

    // A command that fails, or a call for a command's usage, leaves no cache (it may have
    // compiled little of what the command runs).
    r = run(["restore"]);
    assert.equal(r.status, 2, r.stderr);
    r = run(["restore", "--help"]);
    assert.equal(r.status, 0, r.stderr);
    assert.deepEqual(cacheOf("restore"), []);

    // A cache directory others may write into is not used (its code would run in our calls).
    const shared = join(home, "shared");
    mkdirSync(join(shared, "iotvault", "cli"), { recursive: true });
    chmodSync(join(shared, "iotvault", "cli"), 0o777);
    r = run(["help"], shared);
    assert.equal(r.status, 0, r.stderr);
    assert.deepEqual(readdirSync(join(shared, "iotvault", "cli")), []);

    // No usable cache directory (here a file): the command still runs.
    const notADir = join(home, "a-file");
    writeFileSync(notADir, "");
    r = run(["help"], notADir);
    assert.equal(r.status, 0, r.stderr);
    assert.match(r.stdout, usage);
  } finally {
    rmSync(home, { recursive: true, force: true });
  }
});

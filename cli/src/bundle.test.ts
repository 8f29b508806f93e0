/**
 * cli/bundle (scripts/bundle-cli.mjs, part of `npm run build`): the bin runs it only while it is
 * current, and a command run from it loads what it loads from cli/dist, from a few files. The
 * end-to-end suites run every command through the bin, that is, through the bundle.
 */
import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import {
  copyFileSync,
  existsSync,
  mkdirSync,
  readFileSync,
  rmSync,
  statSync,
  utimesSync,
  writeFileSync,
} from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { test } from "node:test";
import { HEAVY, loadedBy } from "./test-support.js";

const ROOT = fileURLToPath(new URL("../../", import.meta.url));
const BIN = join(ROOT, "cli", "bin", "iotvault.js");
const BUNDLE = join(ROOT, "cli", "bundle");

interface Metafile {
  outputs: Record<string, { inputs: Record<string, unknown> }>;
}

/** The bundle of this checkout; the suite runs after `npm run build` (test.sh: bootstrap). */
function bundleMeta(): Metafile {
  assert.ok(existsSync(join(BUNDLE, "meta.json")), "cli/bundle is missing: run `npm run build`");
  return JSON.parse(readFileSync(join(BUNDLE, "meta.json"), "utf8")) as Metafile;
}

/** The modules the bundled files loaded by a run were made from, as /path from the checkout. */
function bundledInputs(meta: Metafile, urls: string[]): string[] {
  const inputs = new Set<string>();
  for (const url of urls) {
    if (!url.startsWith("file:")) continue;
    const file = fileURLToPath(url).slice(ROOT.length);
    for (const input of Object.keys(meta.outputs[file]?.inputs ?? {})) inputs.add(`/${input}`);
  }
  return [...inputs];
}

void test("the bin runs the bundle while it is current, and cli/dist when a file it was made from is newer", () => {
  const dir = join(tmpdir(), `iotvault-bin-${process.pid}`);
  rmSync(dir, { recursive: true, force: true });
  try {
    for (const d of ["cli/bin", "cli/bundle", "cli/dist"]) mkdirSync(join(dir, d), { recursive: true });
    copyFileSync(BIN, join(dir, "cli/bin/iotvault.js"));
    writeFileSync(join(dir, "cli/bundle/main.js"), 'process.stdout.write("bundle");\n');
    writeFileSync(join(dir, "cli/dist/main.js"), 'process.stdout.write("dist");\n');
    const input = join(dir, "cli/dist/main.js");
    const manifest = join(dir, "cli/bundle/inputs.json");
    writeFileSync(manifest, JSON.stringify({ newest: statSync(input).mtimeMs, inputs: ["cli/dist/main.js"] }));
    const run = () => {
      const r = spawnSync(process.execPath, [join(dir, "cli/bin/iotvault.js")], { encoding: "utf8" });
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

void test("this checkout's bin runs the bundle, and `wal-push --help` from it loads no heavy module", () => {
  const meta = bundleMeta();
  const urls = loadedBy(BIN, ["wal-push", "--help"]);
  const files = urls.filter((u) => u.startsWith("file:")).map((u) => fileURLToPath(u).slice(ROOT.length));
  assert.ok(
    files.includes("cli/bundle/main.js"),
    `the bundle did not run (is it older than cli/dist?): ${files.join(" ")}`,
  );
  // Everything came from the bundle, except the packages kept outside it (native addons).
  const outside = files.filter((f) => !f.startsWith("cli/bin/") && !f.startsWith("cli/bundle/"));
  for (const f of outside) assert.match(f, /^node_modules\/zstd-napi\//, `loaded from outside the bundle: ${f}`);
  const inputs = bundledInputs(meta, urls);
  assert.ok(inputs.includes("/cli/dist/postgres.js"), "the command's own module was loaded");
  for (const pattern of HEAVY) {
    const hit = inputs.find((i) => pattern.test(i));
    assert.equal(hit, undefined, `wal-push loaded a chunk made from ${hit}`);
  }
});

void test("`restore --help` from the bundle loads no repository library", () => {
  const meta = bundleMeta();
  const inputs = bundledInputs(meta, loadedBy(BIN, ["restore", "--help"]));
  assert.ok(inputs.includes("/cli/dist/commands.js"), "the command's own module was loaded");
  for (const pattern of [...HEAVY, /\/repo\/dist\//, /\/node_modules\/zstd-napi\//]) {
    const hit = inputs.find((i) => pattern.test(i));
    assert.equal(hit, undefined, `restore loaded a chunk made from ${hit}`);
  }
});

#!/usr/bin/env node
// The `iotvault` command: runs the built CLI. `npm run build` makes cli/dist (tsc) and a bundle of
// it, cli/bundle/main.cjs, that starts sooner; the bundle runs only while it is newer than every
// file it was made from (cli/bundle/inputs.json), cli/dist otherwise.
//
// The bundle is compiled with V8's code cache: a command that ended well leaves the compiled code
// of what it ran in the user's cache directory (one file per command and bundle, see
// cacheFileOf), and the next call of that command skips most of the compiling. A cache that is
// missing, unreadable or refused by V8 (another Node.js, another bundle) only costs the compile.
import { mkdirSync, readFileSync, readdirSync, renameSync, statSync, unlinkSync, writeFileSync } from "node:fs";
import Module, { createRequire } from "node:module";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";
import { Script } from "node:vm";

const BUNDLE = fileURLToPath(new URL("../bundle/main.cjs", import.meta.url));

/** The bundle's stat while it is current (newer than every file it was made from), else undefined. */
function currentBundle() {
  try {
    const { newest, inputs } = JSON.parse(readFileSync(new URL("../bundle/inputs.json", import.meta.url), "utf8"));
    const root = new URL("../../", import.meta.url);
    const bundle = statSync(BUNDLE);
    return inputs.every((f) => statSync(new URL(f, root)).mtimeMs <= newest) && bundle.isFile() ? bundle : undefined;
  } catch {
    return undefined;
  }
}

/**
 * Where this command's code cache goes: $XDG_CACHE_HOME/iotvault/cli (or ~/.cache/iotvault/cli),
 * named by the command, the checkout, the bundle (its mtime and size, from its stat `s`) and the
 * Node.js version.
 * Undefined without a cache directory, and for a call that only asks for a command's usage (its
 * cache would hold little of what the command runs).
 */
function cacheFileOf(bundle, s) {
  const home = process.env.XDG_CACHE_HOME || (process.env.HOME ? join(process.env.HOME, ".cache") : "");
  if (!home || process.argv.includes("--help") || process.argv.includes("-h")) return undefined;
  const command = /^[a-z][a-z-]{0,31}$/.test(process.argv[2] ?? "") ? process.argv[2] : "other";
  // The checkout's path in the name too: two checkouts of one user keep their own caches.
  let where = 0;
  for (let i = 0; i < bundle.length; i++) where = (Math.imul(where, 31) + bundle.charCodeAt(i)) >>> 0;
  const checkout = where.toString(36);
  const stamp = `${checkout}-${Math.trunc(s.mtimeMs)}-${s.size}-${process.version}-${process.arch}`;
  return { dir: join(home, "iotvault", "cli"), name: `${command}.${stamp}.v8cache`, stamp, checkout };
}

/**
 * A code cache is code that runs in every later call: it is read from, and written into, only a
 * directory of this user's that no one else may write into (a shared XDG_CACHE_HOME, say under
 * /tmp, is not used), and only a file of this user's.
 */
function ownedByMe(path, dir) {
  const s = statSync(path);
  if (process.getuid && s.uid !== process.getuid()) return false;
  return dir ? s.isDirectory() && (s.mode & 0o022) === 0 : s.isFile();
}

/**
 * Writes the code cache (atomically) and removes this checkout's caches of other bundles or
 * Node.js versions, and the caches of other checkouts written more than 30 days ago (a checkout
 * that is gone leaves none for long); never fails the command.
 */
function saveCache(script, cache) {
  try {
    mkdirSync(cache.dir, { recursive: true, mode: 0o700 });
    if (!ownedByMe(cache.dir, true)) return;
    const tmp = join(cache.dir, `.${cache.name}.${process.pid}`);
    writeFileSync(tmp, script.createCachedData(), { mode: 0o600 });
    renameSync(tmp, join(cache.dir, cache.name));
    const monthAgo = Date.now() - 30 * 24 * 3600 * 1000;
    for (const f of readdirSync(cache.dir)) {
      if (!f.endsWith(".v8cache")) continue;
      const stamp = f.slice(f.indexOf(".") + 1, -".v8cache".length);
      const path = join(cache.dir, f);
      const stale = stamp.startsWith(`${cache.checkout}-`) ? stamp !== cache.stamp : statSync(path).mtimeMs < monthAgo;
      if (stale) unlinkSync(path);
    }
  } catch {
    // no cache this time
  }
}

/**
 * Runs cli/bundle/main.cjs as Node.js runs a CommonJS module, compiled with the code cache
 * (`stat`: the bundle's, as currentBundle read it).
 */
function runBundle(stat) {
  const source = readFileSync(BUNDLE, "utf8").replace(/^#!.*/, "");
  let cache;
  let cached;
  try {
    cache = cacheFileOf(BUNDLE, stat);
    const file = cache && join(cache.dir, cache.name);
    if (file && ownedByMe(cache.dir, true) && ownedByMe(file, false)) cached = readFileSync(file);
  } catch {
    cached = undefined;
  }
  const script = new Script(Module.wrap(source), { filename: BUNDLE, cachedData: cached });
  if (cache && (cached === undefined || script.cachedDataRejected)) {
    // At exit the cache holds the functions the command compiled; kept only when it ended well.
    process.once("exit", (code) => {
      if (code === 0) saveCache(script, cache);
    });
  }
  const module = new Module(BUNDLE);
  module.filename = BUNDLE;
  script.runInThisContext()(module.exports, createRequire(BUNDLE), module, BUNDLE, dirname(BUNDLE));
}

const bundle = currentBundle();
if (!bundle) {
  import("../dist/main.js").catch((err) => {
    if (err && err.code === "ERR_MODULE_NOT_FOUND") {
      process.stderr.write("iotvault: the CLI is not built; run `npm run bootstrap` in the iotvault checkout\n");
      process.exit(1);
    }
    throw err;
  });
} else if (process.env.IOTVAULT_DEBUG) {
  // Stack traces through the bundle's source maps: they name the TypeScript sources of the CLI
  // and the libraries (loaded by Node.js's own loader, without the code cache).
  process.setSourceMapsEnabled(true);
  createRequire(import.meta.url)(BUNDLE);
} else {
  runBundle(bundle);
}

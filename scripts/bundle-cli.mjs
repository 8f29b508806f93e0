// Bundles the built CLI (cli/dist and the workspace libraries it imports, from their dist/)
// into cli/bundle: one CommonJS script, main.cjs, instead of ~300 modules, plus the worker
// threads' entry, seal-worker.js. Node.js resolves, reads and compiles each module on every
// start; the `iotvault` command starts once per call (wal-push once per WAL segment).
// `npm run build` runs this after `tsc -b`.
//
// Why CommonJS: cli/bin/iotvault.js compiles main.cjs with V8's code cache (node:vm's
// `cachedData`), which Node 20 offers for scripts, not for ES modules; a cached start skips
// compiling the bundle's functions (docs/performance.md). The lazy imports of cli/dist/main.js
// stay lazy: esbuild turns each imported module into an initializer that runs on first use,
// so a command evaluates what it evaluated before (cli/src/bundle.test.ts).
//
// cli/bin/iotvault.js runs the bundle only while it is newer than every file it was made from
// (cli/bundle/inputs.json), and cli/dist otherwise: a `tsc -b` without this step never runs old
// code. Packages that read files next to their own code, and native addons, stay outside the
// bundle and load from node_modules as before.
import { readFileSync, rmSync, statSync, writeFileSync } from "node:fs";
import { join, relative } from "node:path";
import { fileURLToPath } from "node:url";
import { build } from "esbuild";

const root = fileURLToPath(new URL("..", import.meta.url));
const outdir = join(root, "cli", "bundle");

const EXTERNAL = [
  // native addons
  "zstd-napi",
  "ssh2",
  "cpu-features",
  "pg-native",
  // read files beside their code (a .proto, a .wasm)
  "grpc-health-check",
  "oxigraph",
  // required by grpc-js only inside its server-side channelz and ORCA services, which the CLI
  // never starts: outside, it keeps ~0.3 MiB (protobufjs) out of the script every command loads
  "@grpc/proto-loader",
];

const common = {
  absWorkingDir: root,
  bundle: true,
  platform: "node",
  target: "node20",
  outdir,
  external: EXTERNAL,
  // Less text to read on every start; names stay what the code says, and the source maps (used
  // when IOTVAULT_DEBUG is set) lead stack traces back to cli/dist and the libraries.
  keepNames: true,
  minifyWhitespace: true,
  minifySyntax: true,
  sourcemap: "linked",
  // Positions only (the sources are in the checkout): small maps to read under --enable-source-maps.
  sourcesContent: false,
  metafile: true,
  logLevel: "warning",
};

rmSync(outdir, { recursive: true, force: true });
const [main, worker] = await Promise.all([
  build({
    ...common,
    entryPoints: { main: "cli/dist/main.js" },
    format: "cjs",
    outExtension: { ".js": ".cjs" },
    // import() of a package outside the bundle becomes require(): a script compiled by node:vm
    // has no loader for import().
    supported: { "dynamic-import": false },
    // The modules find files beside themselves (the worker's entry) from their own URL.
    define: { "import.meta.url": "__iotvaultModuleUrl", "import.meta.dirname": "__dirname" },
    // ("use strict" first: the banner comes before esbuild's own directive.)
    banner: { js: '"use strict";var __iotvaultModuleUrl = require("node:url").pathToFileURL(__filename).href;' },
  }),
  // Worker threads are started from `new URL("./seal-worker.js", import.meta.url)`: beside main.cjs,
  // an ES module (cli/package.json: "type": "module").
  build({
    ...common,
    entryPoints: { "seal-worker": "libs/repo/dist/seal-worker.js" },
    format: "esm",
    // CommonJS packages inside an ES module bundle call require() for Node's built-ins.
    banner: {
      js: "import { createRequire as __iotvaultRequire } from 'node:module'; const require = __iotvaultRequire(import.meta.url);",
    },
  }),
]);
const metafile = {
  inputs: { ...main.metafile.inputs, ...worker.metafile.inputs },
  outputs: { ...main.metafile.outputs, ...worker.metafile.outputs },
};

// Every file a bundled module finds beside itself must be there.
for (const file of Object.keys(metafile.outputs)) {
  if (!/\.c?js$/.test(file)) continue; // not the source maps
  const text = readFileSync(join(root, file), "utf8");
  // The bin compiles main.cjs with node:vm, which gives the script no loader for import().
  if (file.endsWith(".cjs") && /\bimport\(/.test(text)) throw new Error(`${file} calls import(): see supported above`);
  for (const m of text.matchAll(/new URL\("(\.\/[^"]+)",\s*(?:import\.meta\.url|__iotvaultModuleUrl)\)/g)) {
    const beside = join(root, file, "..", m[1]);
    try {
      statSync(beside);
    } catch {
      throw new Error(`${file} refers to ${m[1]}, which is not in ${relative(root, outdir)}: add it as an entry point`);
    }
  }
}

// What the bundle was made from: the workspace's built files and the lock file.
const inputs = Object.keys(metafile.inputs)
  .filter((f) => !f.includes("node_modules/"))
  .concat("package-lock.json");
const newest = Math.max(...inputs.map((f) => statSync(join(root, f)).mtimeMs));
writeFileSync(join(outdir, "inputs.json"), JSON.stringify({ newest, inputs }) + "\n");
writeFileSync(join(outdir, "meta.json"), JSON.stringify(metafile) + "\n");
const bytes = Object.values(metafile.outputs).reduce((n, o) => n + o.bytes, 0);
process.stderr.write(
  `cli/bundle: ${Object.keys(metafile.outputs).length} files, ${(bytes / 1048576).toFixed(1)} MiB, from ${Object.keys(metafile.inputs).length} modules\n`,
);

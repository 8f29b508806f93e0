// Bundles the built CLI (cli/dist and the workspace libraries it imports, from their dist/)
// into cli/bundle: a few files instead of ~300 modules. Node.js resolves, reads and compiles
// each module on every start; the `iotvault` command starts once per call (wal-push once per WAL
// segment), and the bundle starts ~0.15 s sooner. `npm run build` runs this after `tsc -b`.
//
// cli/bin/iotvault.js runs the bundle only while it is newer than every file it was made from
// (cli/bundle/inputs.json), and cli/dist otherwise: a `tsc -b` without this step never runs old
// code. Each command's module stays a separate chunk (dynamic imports split), so a command
// loads what it loaded before. Packages that read files next to their own code, and native
// addons, stay outside the bundle and load from node_modules as before.
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
  // never starts: outside, it keeps ~0.3 MiB (protobufjs) out of the chunk every command loads
  "@grpc/proto-loader",
];

rmSync(outdir, { recursive: true, force: true });
const result = await build({
  absWorkingDir: root,
  entryPoints: {
    main: "cli/dist/main.js",
    // Worker threads are started from `new URL("./seal-worker.js", import.meta.url)`: beside the chunk.
    "seal-worker": "libs/repo/dist/seal-worker.js",
  },
  bundle: true,
  splitting: true,
  format: "esm",
  platform: "node",
  target: "node20",
  outdir,
  chunkNames: "chunk-[hash]",
  external: EXTERNAL,
  // Less text to parse on every start (~25 ms); names stay what the code says, and the source
  // maps (used when IOTVAULT_DEBUG is set) lead stack traces back to cli/dist and the libraries.
  keepNames: true,
  minifyWhitespace: true,
  minifySyntax: true,
  sourcemap: "linked",
  // Positions only (the sources are in the checkout): small maps to read under --enable-source-maps.
  sourcesContent: false,
  metafile: true,
  logLevel: "warning",
  // CommonJS packages inside an ES module bundle call require() for Node's built-ins.
  banner: {
    js: "import { createRequire as __iotvaultRequire } from 'node:module'; const require = __iotvaultRequire(import.meta.url);",
  },
});

// Every file a bundled module finds beside itself must be there.
for (const file of Object.keys(result.metafile.outputs)) {
  if (!file.endsWith(".js")) continue; // not the source maps
  const text = readFileSync(join(root, file), "utf8");
  for (const m of text.matchAll(/new URL\("(\.\/[^"]+)",\s*import\.meta\.url\)/g)) {
    const beside = join(root, file, "..", m[1]);
    try {
      statSync(beside);
    } catch {
      throw new Error(`${file} refers to ${m[1]}, which is not in ${relative(root, outdir)}: add it as an entry point`);
    }
  }
}

// What the bundle was made from: the workspace's built files and the lock file.
const inputs = Object.keys(result.metafile.inputs)
  .filter((f) => !f.includes("node_modules/"))
  .concat("package-lock.json");
const newest = Math.max(...inputs.map((f) => statSync(join(root, f)).mtimeMs));
writeFileSync(join(outdir, "inputs.json"), JSON.stringify({ newest, inputs }) + "\n");
writeFileSync(join(outdir, "meta.json"), JSON.stringify(result.metafile) + "\n");
const bytes = Object.values(result.metafile.outputs).reduce((n, o) => n + o.bytes, 0);
process.stderr.write(
  `cli/bundle: ${Object.keys(result.metafile.outputs).length} files, ${(bytes / 1048576).toFixed(1)} MiB, from ${Object.keys(result.metafile.inputs).length} modules\n`,
);

#!/usr/bin/env node
// The `iotvault` command: runs the built CLI. `npm run build` makes cli/dist (tsc) and a bundle of
// it, cli/bundle, that starts sooner; the bundle runs only while it is newer than every file it
// was made from (cli/bundle/inputs.json), cli/dist otherwise.
import { readFileSync, statSync } from "node:fs";

function bundleIsCurrent() {
  try {
    const { newest, inputs } = JSON.parse(readFileSync(new URL("../bundle/inputs.json", import.meta.url), "utf8"));
    const root = new URL("../../", import.meta.url);
    return inputs.every((f) => statSync(new URL(f, root)).mtimeMs <= newest);
  } catch {
    return false;
  }
}

const entry = bundleIsCurrent() ? "../bundle/main.js" : "../dist/main.js";
// IOTVAULT_DEBUG prints stack traces: through the bundle's source maps, they name the TypeScript
// sources of the CLI and the libraries.
if (process.env.IOTVAULT_DEBUG) process.setSourceMapsEnabled(true);
import(entry).catch((err) => {
  if (err && err.code === "ERR_MODULE_NOT_FOUND") {
    process.stderr.write("iotvault: the CLI is not built; run `npm run bootstrap` in the iotvault checkout\n");
    process.exit(1);
  }
  throw err;
});

#!/usr/bin/env node
// The `iotvault` command: runs the built CLI (cli/dist, produced by `npm run build`).
import("../dist/main.js").catch((err) => {
  if (err && err.code === "ERR_MODULE_NOT_FOUND") {
    process.stderr.write("iotvault: the CLI is not built; run `npm run bootstrap` in the iotvault checkout\n");
    process.exit(1);
  }
  throw err;
});

import { BenchStack } from "./dist/stack.js";
import { StorageGatewayServiceClient } from "@iotvault/proto";
import { Repository } from "@iotvault/repo";
import { GatewayObjectStore, createClient } from "@iotvault/rpc";
import { restoreToDirectory } from "@iotvault/sources";
import { execSync } from "node:child_process";
import { readFileSync, rmSync } from "node:fs";
import { pathToFileURL } from "node:url";
const base = "/mnt/rt/rst"; rmSync(base, { recursive: true, force: true });
const home = `${base}/home`;
const stack = await BenchStack.start(home, { IOTVAULT_STORAGE_ROOTS: base }, process.argv[2] ? ["--cpu-prof", `--cpu-prof-dir=${process.argv[2]}`] : []);
try {
  const src = "/mnt/rt/incr/corpus0";
  await stack.cli(["repo", "init", "r", "--url", pathToFileURL(`${base}/repo`).href]);
  await stack.cli(["job", "create", "r", "--source", `fs:${src}`, "--repo", "r"]);
  const b = await stack.cli(["backup", "r", "--type", "full", "--wait"]);
  const snap = b.json.snapshotId;
  const address = stack.address("storage-gateway");
  const client = createClient(StorageGatewayServiceClient, address);
  const password = Buffer.from(readFileSync(stack.passwordFile, "utf8").trim());
  for (let i = 0; i < 3; i++) {
    for (const how of i % 2 ? ["service", "inproc"] : ["inproc", "service"]) {
      const target = `${base}/t-${how}-${i}`;
      execSync("sync");
      const t0 = performance.now();
      if (how === "service") {
        const r = await stack.cli(["restore", snap, "--to", target, "--no-verify"]);
        console.log(how, i, (performance.now() - t0).toFixed(0), "ms cli", r.wallMs.toFixed(0));
      } else {
        const repo = await Repository.open(new GatewayObjectStore(client, "r", { address }), password, {});
        const s = await repo.loadSnapshot(snap);
        await restoreToDirectory(repo, s, { target, verify: false });
        await repo.close();
        console.log(how, i, (performance.now() - t0).toFixed(0), "ms");
      }
      rmSync(target, { recursive: true, force: true });
    }
  }
  client.close();
} finally { await stack.stop(); }

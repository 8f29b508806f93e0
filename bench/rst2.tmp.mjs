import { backupDirectory, restoreToDirectory } from "@iotvault/sources";
import { LocalDirectoryStore } from "@iotvault/storage";
import { Repository } from "@iotvault/repo";
import { mkdirSync, rmSync, existsSync } from "node:fs";
import { execSync } from "node:child_process";
const base = "/mnt/rt/rst2";
if (!existsSync(`${base}/repo/config`)) {
  rmSync(base, { recursive: true, force: true }); mkdirSync(`${base}/repo`, { recursive: true });
  const repo = await Repository.init(new LocalDirectoryStore(`${base}/repo`), Buffer.from("pw-probe-123456"), { scryptLogN: 12 });
  const w = await repo.startBackup({ runId: "f" });
  await backupDirectory(repo, w, { root: "/mnt/rt/incr/corpus0" });
  await w.commit({ jobId: "b", jobName: "b", source: "fs:x", backupType: "full" });
  await repo.close();
}
const repo = await Repository.open(new LocalDirectoryStore(`${base}/repo`), Buffer.from("pw-probe-123456"), {});
const [snap] = await repo.listSnapshots();
for (let i = 0; i < Number(process.argv[2] ?? 3); i++) {
  const target = `${base}/t${i}`; rmSync(target, { recursive: true, force: true }); execSync("sync");
  const c0 = process.cpuUsage(); const t0 = performance.now();
  console.log("mark0", Number(process.hrtime.bigint() / 1000n));
  await restoreToDirectory(repo, snap, { target, verify: false });
  console.log("mark2", Number(process.hrtime.bigint() / 1000n));
  const cpu = process.cpuUsage(c0);
  console.log("restore", (performance.now() - t0).toFixed(0), "ms cpu", ((cpu.user + cpu.system) / 1000).toFixed(0));
  rmSync(target, { recursive: true, force: true });
}
await repo.close();

/**
 * A restore queues thousands of files for writing (each with an open descriptor) so that the
 * repository's reader can merge their chunks into large requests; under a low limit of open
 * files it queues fewer instead of failing with EMFILE. The limit is set for a child process
 * (`ulimit -n`), which restores a snapshot of more files than it may open at once.
 */
import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import { mkdtemp, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { test } from "node:test";

const FILES = 1500;
const LIMIT = 256;

const child = `
import { mkdir, readdir, readFile, writeFile } from "node:fs/promises";
import { join } from "node:path";
const { restoreToDirectory } = await import(${JSON.stringify(new URL("./fs/restore.js", import.meta.url).href)});
const { backup, withSandbox } = await import(${JSON.stringify(new URL("./test-util.js", import.meta.url).href)});
await withSandbox(async ({ dir, repo }) => {
  const src = dir("src");
  for (let d = 0; d < 10; d++) {
    await mkdir(join(src, "d" + d), { recursive: true });
    for (let f = 0; f < ${FILES} / 10; f++) await writeFile(join(src, "d" + d, "f" + f), "file " + d + "/" + f + "\\n");
  }
  const { snapshot } = await backup(repo, "r1", { root: src });
  const target = dir("target");
  const result = await restoreToDirectory(repo, snapshot, { target });
  let same = 0;
  for (let d = 0; d < 10; d++) {
    for (const name of await readdir(join(target, "d" + d))) {
      if ((await readFile(join(target, "d" + d, name), "utf8")) === "file " + d + "/" + name.slice(1) + "\\n") same++;
    }
  }
  console.log(JSON.stringify({ files: result.files, same }));
}, { workers: 2 });
`;

void test(`a restore of ${FILES} files succeeds with a limit of ${LIMIT} open files`, async () => {
  // A script file, not --eval: the pipeline's worker threads inherit the process's options.
  const dir = await mkdtemp(join(tmpdir(), "iotvault-fd-limit-"));
  try {
    const script = join(dir, "restore.mjs");
    await writeFile(script, child);
    const run = spawnSync("bash", ["-c", `ulimit -n ${LIMIT} && exec "$0" "$1"`, process.execPath, script], {
      encoding: "utf8",
      timeout: 120_000,
    });
    assert.equal(run.status, 0, `the restore failed:\n${run.stderr}`);
    assert.deepEqual(JSON.parse(run.stdout.trim().split("\n").pop()!), { files: FILES, same: FILES });
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
});

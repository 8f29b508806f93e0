import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { test } from "node:test";
import { isCode } from "@iotvault/errors";
import { Repository } from "./repository.js";
import { keepWorkerThreadsReady, readyWorkerThreads } from "./workers.js";
import { FAST, META, PASSWORD, fileNode, jsonLines, newRepo, pieces, readAll, collect } from "./test-util.js";

void test("threads kept ready go to the next operation and are replaced by fresh ones when it closes", async () => {
  keepWorkerThreadsReady(2);
  try {
    const before = readyWorkerThreads();
    assert.equal(before.length, 2);
    const data = jsonLines(3 << 20);
    const { store, repo } = await newRepo({ workers: 2 });
    let snapshot;
    try {
      const w = await repo.startBackup({ runId: "ready-1" });
      assert.deepEqual(readyWorkerThreads(), [], "the backup took both ready threads");
      await w.addFile(fileNode("a.jsonl"), pieces(data));
      snapshot = (await w.commit(META)).snapshot;
    } finally {
      await repo.close();
    }
    const after = readyWorkerThreads();
    assert.equal(after.length, 2, "topped up when the repository closed");
    for (const id of after) assert.ok(!before.includes(id), `thread ${id} is fresh, not one that worked`);

    // A restore through the fresh threads reads back what the first ones sealed.
    const again = await Repository.open(store, PASSWORD, { ...FAST, workers: 2 });
    try {
      const reader = again.readFiles();
      assert.deepEqual(readyWorkerThreads(), [], "the restore took the fresh threads");
      const [node] = await collect(again.readTree(snapshot));
      const content = await readAll(reader.read(node!));
      reader.close();
      assert.ok(content.equals(data));
    } finally {
      await again.close();
    }

    // An operation in the calling thread (one worker) leaves the ready threads alone.
    const ids = readyWorkerThreads();
    const inline = await Repository.open(store, PASSWORD, FAST);
    try {
      const [node] = await collect(inline.readTree(snapshot));
      assert.ok((await readAll(inline.readFile(node!))).equals(data));
      assert.deepEqual(readyWorkerThreads(), ids);
    } finally {
      await inline.close();
    }
    assert.deepEqual(readyWorkerThreads(), ids);
  } finally {
    keepWorkerThreadsReady(0);
  }
  assert.deepEqual(readyWorkerThreads(), [], "0 ends the ready threads");
});

void test("keepWorkerThreadsReady refuses a count out of range", () => {
  for (const bad of [-1, 1.5, 65, Number.NaN]) {
    assert.throws(
      () => keepWorkerThreadsReady(bad),
      (err: unknown) => isCode(err, "INVALID_ARGUMENT"),
    );
  }
  assert.deepEqual(readyWorkerThreads(), []);
});

void test("threads kept ready never keep the process alive", () => {
  // A script of its own (a worker inherits --input-type from `node -e`, and would not start).
  const dir = mkdtempSync(join(tmpdir(), "iotvault-ready-"));
  try {
    const script = join(dir, "ready.mjs");
    const url = new URL("./workers.js", import.meta.url).href;
    writeFileSync(
      script,
      `const m = await import(${JSON.stringify(url)});\n` +
        "m.keepWorkerThreadsReady(2);\n" +
        // Still there after their start: the process ends with them alive, not because they died.
        "setTimeout(() => console.log(m.readyWorkerThreads().length), 1000);\n",
    );
    const r = spawnSync(process.execPath, [script], { encoding: "utf8", timeout: 20_000 });
    assert.equal(r.error, undefined, "the process ended by itself");
    assert.equal(r.status, 0, r.stderr);
    assert.equal(r.stdout.trim(), "2");
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

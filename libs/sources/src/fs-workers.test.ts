/**
 * The file-system source with the repository's worker threads (as the executor runs it): small
 * files read and sealed by the workers, large ones streamed, contents written back by the
 * workers on restore; a second backup with a parent reads only what changed.
 */
import assert from "node:assert/strict";
import { randomBytes } from "node:crypto";
import { appendFileSync } from "node:fs";
import { mkdir, symlink, writeFile } from "node:fs/promises";
import { join } from "node:path";
import { test } from "node:test";
import { restoreToDirectory } from "./fs/restore.js";
import { backup, describeTree, withSandbox } from "./test-util.js";

/** Many small files in a few directories, some of several chunks, one streamed (over 8 MiB). */
async function makeTree(root: string): Promise<{ files: number; bytes: number }> {
  let files = 0;
  let bytes = 0;
  const put = async (path: string, data: Buffer | string) => {
    await mkdir(join(root, path, ".."), { recursive: true });
    await writeFile(join(root, path), data);
    files++;
    bytes += Buffer.byteLength(data);
  };
  for (let d = 0; d < 6; d++) {
    for (let f = 0; f < 60; f++) {
      const text = `{"dev":"gw-${d}","seq":${f},"value":${(f * 0.37).toFixed(2)}}\n`.repeat(20 + f * 7);
      await put(`dev-${d}/f-${String(f).padStart(3, "0")}.jsonl`, f % 5 === 0 ? randomBytes(3000 + f) : text);
    }
  }
  await put("blobs/two-chunks.bin", randomBytes(1_700_000));
  await put("blobs/streamed.img", randomBytes(9 << 20));
  await put("blobs/empty", "");
  await symlink("blobs/streamed.img", join(root, "latest.img"));
  return { files, bytes };
}

void test("with worker threads: a byte-identical round trip, then an incremental that reads only what changed", async () => {
  await withSandbox(
    async ({ dir, repo }) => {
      const src = dir("src");
      const made = await makeTree(src);
      const first = await backup(repo, "w1", { root: src });
      assert.equal(first.result.files, made.files);
      assert.equal(first.bytesRead, made.bytes);
      const dst = dir("dst");
      const restored = await restoreToDirectory(repo, first.snapshot, { target: dst, verify: true });
      assert.equal(restored.files, made.files);
      assert.deepEqual(await describeTree(dst), await describeTree(src));

      appendFileSync(join(src, "dev-2/f-010.jsonl"), "appended line\n");
      await mkdir(join(src, "dev-9"));
      await writeFile(join(src, "dev-9/new.txt"), "new\n");
      const second = await backup(repo, "w2", { root: src, parent: first.snapshot });
      const changed = Buffer.byteLength("new\n") + (await describeTree(src))["dev-2/f-010.jsonl"]!.size!;
      assert.equal(second.bytesRead, changed, "only the changed and new files are read");
      const dst2 = dir("dst2");
      await restoreToDirectory(repo, second.snapshot, { target: dst2 });
      assert.deepEqual(await describeTree(dst2), await describeTree(src));
    },
    { workers: 2 },
  );
});

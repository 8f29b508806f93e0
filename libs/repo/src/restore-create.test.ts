/**
 * FileReader.create: a worker makes a restored file of one chunk itself (NewFile): created
 * under a temporary name, written, moded and timed, renamed. A wrong sha256 is never written;
 * a failure of the target is an error of the target (its errno's code), never "corrupt", and
 * leaves nothing at either name.
 */
import assert from "node:assert/strict";
import { randomBytes } from "node:crypto";
import { lstatSync, readFileSync, readdirSync, symlinkSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { test } from "node:test";
import { isCode } from "@iotvault/errors";
import { META, collect, fileNode, newRepo, pieces, withTempDir } from "./test-util.js";
import type { Repository } from "./repository.js";
import type { TreeNode } from "./tree.js";

async function stored(repo: Repository, files: Record<string, Buffer>): Promise<TreeNode[]> {
  const w = await repo.startBackup({ runId: "create" });
  for (const [path, content] of Object.entries(files)) {
    await w.addFile(fileNode(path, { size: content.length }), pieces(content, 256 * 1024));
  }
  const { snapshot } = await w.commit(META);
  return collect(repo.readTree(snapshot));
}

for (const workers of [1, 2]) {
  void test(`a file of one chunk is made by the worker that opens it (workers: ${workers})`, async () => {
    await withTempDir(async (dir) => {
      const { repo } = await newRepo({ workers });
      const reader = repo.readFiles();
      try {
        const small = Buffer.from("mqtt:\n  port: 8883\n".repeat(50));
        const [node, large] = await stored(repo, { "a.yaml": small, "b.bin": randomBytes(4 << 20) });
        assert.equal(node!.chunks!.length, 1);
        assert.ok(large!.chunks!.length > 1);

        const final = join(dir, "a.yaml");
        const size = await reader.create(node!, {
          tmp: join(dir, ".a.tmp"),
          final,
          mode: 0o640,
          mtime: 1_700_000_000.5,
        });
        assert.equal(size, small.length);
        assert.ok(readFileSync(final).equals(small));
        const st = lstatSync(final);
        assert.equal(st.mode & 0o7777, 0o640);
        assert.equal(st.mtimeMs, 1_700_000_000_500);
        assert.deepEqual(readdirSync(dir), ["a.yaml"], "no temporary name left");

        // chmod after the write (a mode the umask would cut at creation).
        const moded = join(dir, "moded.yaml");
        await reader.create(node!, { tmp: join(dir, ".m.tmp"), final: moded, mode: 0o600, chmod: 0o777, mtime: 1 });
        assert.equal(lstatSync(moded).mode & 0o7777, 0o777);

        await assert.rejects(
          reader.create(large!, { tmp: join(dir, ".b.tmp"), final: join(dir, "b.bin"), mode: 0o644, mtime: 1 }),
          (err: unknown) => isCode(err, "INVALID_ARGUMENT"),
          "several chunks: written through a descriptor instead",
        );
      } finally {
        reader.close();
        await repo.close();
      }
    });
  });
}

void test("create: a wrong sha256 is never written; a failing target is the target's error and leaves nothing", async () => {
  await withTempDir(async (dir) => {
    const { repo } = await newRepo({ workers: 2 });
    const reader = repo.readFiles();
    try {
      const [node] = await stored(repo, { "c.json": Buffer.from('{"ok":true}\n') });
      const spec = (name: string) => ({
        tmp: join(dir, `.${name}.tmp`),
        final: join(dir, name),
        mode: 0o644,
        mtime: 1,
      });

      await assert.rejects(
        reader.create({ ...node!, sha256: "0".repeat(64) }, spec("lying.json")),
        (err: unknown) => isCode(err, "DATA_CORRUPT") && /does not match the sha256/.test((err as Error).message),
      );
      await assert.rejects(
        reader.create(node!, { ...spec("x"), tmp: join(dir, "missing", "x.tmp") }),
        (err: unknown) => isCode(err, "NOT_FOUND") && /creating the restored file failed/.test((err as Error).message),
      );
      // Something already at the temporary name (a symlink planted there): refused, not followed.
      const elsewhere = join(dir, "elsewhere.txt");
      writeFileSync(elsewhere, "untouched");
      symlinkSync(elsewhere, join(dir, ".planted.tmp"));
      await assert.rejects(reader.create(node!, spec("planted")), (err: unknown) => isCode(err, "ALREADY_EXISTS"));
      assert.equal(readFileSync(elsewhere, "utf8"), "untouched");
      assert.deepEqual(readdirSync(dir).sort(), [".planted.tmp", "elsewhere.txt"], "nothing else was made");

      // The reader goes on after failures.
      await reader.create(node!, spec("good.json"));
      assert.equal(readFileSync(join(dir, "good.json"), "utf8"), '{"ok":true}\n');
    } finally {
      reader.close();
      await repo.close();
    }
  });
});

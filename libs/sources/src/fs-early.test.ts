/**
 * Large files that changed since the parent are read ahead of their place in the walk
 * (fs/early.ts): the snapshot must be the one the walk alone makes, and nothing the walk
 * would not read (unchanged, excluded, not included, behind a symlink) may be read early.
 *
 * The walk is held back deterministically: the directory before the large files holds 48 MiB
 * of new files, and the walk never has more than 16 MiB of small files in flight, so it waits
 * for the workers long after the early reads looked at every large file.
 */
import assert from "node:assert/strict";
import { randomBytes } from "node:crypto";
import { mkdir, readFile, rename, symlink, writeFile } from "node:fs/promises";
import { join } from "node:path";
import { test } from "node:test";
import { LOCAL_FILE_MAX_BYTES, type Repository, type SnapshotManifest, type TreeNode } from "@iotvault/repo";
import { EarlyReads } from "./fs/early.js";
import { restoreToDirectory } from "./fs/restore.js";
import { backup, describeTree, withSandbox } from "./test-util.js";

const LARGE = LOCAL_FILE_MAX_BYTES + 1024 * 1024;

async function nodes(repo: Repository, snapshot: SnapshotManifest): Promise<TreeNode[]> {
  const out: TreeNode[] = [];
  for await (const n of repo.readTree(snapshot)) out.push(n);
  return out;
}

/** Inserts `bytes` in the middle of a file (content-defined chunks before and after stay). */
async function insertInMiddle(path: string, bytes: Buffer): Promise<void> {
  const data = await readFile(path);
  const mid = data.length >> 1;
  await writeFile(path, Buffer.concat([data.subarray(0, mid), bytes, data.subarray(mid)]));
}

for (const workers of [1, 2]) {
  void test(`only large changed files the walk would read are read early; the snapshot is the walk's own (workers: ${workers})`, async () => {
    await withSandbox(
      async ({ dir, repo }) => {
        const src = dir("src");
        for (const d of ["a", "z/b-excluded", "z/c-link", "z/bb-not-included"])
          await mkdir(join(src, d), { recursive: true });
        await writeFile(join(src, "a/small.txt"), "small\n");
        await writeFile(join(src, "z/a-unchanged.bin"), randomBytes(LARGE));
        await writeFile(join(src, "z/b-excluded/big.bin"), randomBytes(LARGE));
        await writeFile(join(src, "z/c-link/big.bin"), randomBytes(LARGE));
        await writeFile(join(src, "z/d-changed.csv"), randomBytes(LARGE));
        await writeFile(join(src, "z/bb-not-included/big.bin"), randomBytes(LARGE));
        const full = await backup(repo, "full", { root: src });
        assert.equal(full.result.readEarly, 0, "no parent, nothing read early");

        // What holds the walk back (see the header), then every large file but one changes.
        for (let i = 0; i < 48; i++) await writeFile(join(src, `a/new-${i}.bin`), randomBytes(1024 * 1024));
        await writeFile(join(src, "z/b-excluded/big.bin"), randomBytes(LARGE));
        const outside = dir("outside");
        await mkdir(outside);
        await writeFile(join(outside, "big.bin"), randomBytes(LARGE));
        await rename(join(src, "z/c-link"), dir("old-c-link"));
        await symlink(outside, join(src, "z/c-link"));
        await insertInMiddle(join(src, "z/d-changed.csv"), randomBytes(64 * 1024));
        await writeFile(join(src, "z/bb-not-included/big.bin"), randomBytes(LARGE));

        const seen: string[] = [];
        const options = {
          root: src,
          parent: full.snapshot,
          exclude: ["b-excluded"],
          include: ["a", "z/a-*", "z/b-*", "z/c-*", "z/d-*"],
        };
        const early = await backup(repo, "early", { ...options, onEarlyRead: (p) => seen.push(p) });
        const walked = await backup(repo, "walked", { ...options, earlyReads: false });
        assert.deepEqual(seen, workers > 1 ? ["z/d-changed.csv"] : [], "one pipeline thread: nothing to gain");
        assert.equal(early.result.readEarly, seen.length);
        assert.equal(walked.result.readEarly, 0);
        assert.deepEqual(await nodes(repo, early.snapshot), await nodes(repo, walked.snapshot));
        assert.deepEqual(early.snapshot.tree, walked.snapshot.tree);
        assert.equal(early.snapshot.stats.bytesRead, walked.snapshot.stats.bytesRead, "each file read once");
        assert.equal(early.snapshot.stats.bytesRead, 48 * 1024 * 1024 + LARGE + 64 * 1024);

        assert.deepEqual(
          (await nodes(repo, early.snapshot)).filter((n) => n.path.startsWith("z/")).map((n) => [n.path, n.type]),
          [
            ["z/a-unchanged.bin", "file"],
            ["z/c-link", "symlink"],
            ["z/d-changed.csv", "file"],
          ],
        );
        const dst = dir("dst");
        await restoreToDirectory(repo, early.snapshot, { target: dst, verify: true, include: ["z/d-changed.csv"] });
        assert.deepEqual((await describeTree(dst))["z/d-changed.csv"], (await describeTree(src))["z/d-changed.csv"]);
      },
      { workers },
    );
  });
}

void test("early reads run one after the other: a file decided on while another is read is read next", async () => {
  await withSandbox(
    async ({ dir, repo }) => {
      const src = dir("src");
      await mkdir(src, { recursive: true });
      for (const name of ["a.bin", "b.bin", "c.bin"]) await writeFile(join(src, name), randomBytes(LARGE));
      const full = await backup(repo, "full", { root: src });
      for (const name of ["a.bin", "b.bin", "c.bin"]) await insertInMiddle(join(src, name), randomBytes(4096));

      // No walk: the scan decides on all three while the first is being read; each of the
      // others must be read in turn (none dropped), the reads never overlapping.
      const writer = await repo.startBackup({ runId: "queued", parent: full.snapshot });
      const seen: string[] = [];
      let allRead!: () => void;
      const three = new Promise<void>((resolve) => (allRead = resolve));
      const early = new EarlyReads(repo, writer, {
        root: src,
        parent: full.snapshot,
        backedUp: () => true,
        changed: () => true,
        attempts: 3,
        onRead: (path) => {
          seen.push(path);
          if (seen.length === 3) allRead();
        },
      });
      const timeout = setTimeout(() => allRead(), 60_000); // (a file dropped from the queue is never read)
      await three;
      clearTimeout(timeout);
      assert.deepEqual(seen, ["a.bin", "b.bin", "c.bin"]);
      const handles = await Promise.all(seen.map((p) => early.claim(p)));
      await early.close();
      for (const [i, name] of seen.entries()) {
        const abs = join(src, name);
        const outcome = await writer.addLocalFile(abs, LARGE + 4096, {
          early: handles[i],
          node: (s) => ({
            path: name,
            type: "file",
            mode: s.mode & 0o7777,
            mtimeNs: "1",
            uid: s.uid,
            gid: s.gid,
            size: s.size,
          }),
        });
        assert.ok(outcome.added);
      }
      const { snapshot } = await writer.commit({ jobId: "j", jobName: "j", source: "fs:x", backupType: "incremental" });
      assert.equal(snapshot.stats.bytesRead, 3 * (LARGE + 4096), "each file read once, early");
      const restored = dir("restored");
      await restoreToDirectory(repo, snapshot, { target: restored, verify: true });
      for (const name of seen)
        assert.ok((await readFile(join(restored, name))).equals(await readFile(join(src, name))));
    },
    { workers: 2 },
  );
});

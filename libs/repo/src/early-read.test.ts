/**
 * readLocalFileEarly: a large local file read ahead of its place in the tree. The read's
 * result is what addLocalFile adds for that path (the file is not read again); a read never
 * added leaves only orphan chunks; a single pipeline thread reads nothing early.
 */
import assert from "node:assert/strict";
import { randomBytes } from "node:crypto";
import { writeFileSync } from "node:fs";
import { join } from "node:path";
import { test } from "node:test";
import { LOCAL_FILE_MAX_BYTES } from "./backup.js";
import type { LocalFileStat } from "./pipeline-core.js";
import { META, collect, newRepo, readAll, withTempDir } from "./test-util.js";

const LARGE = LOCAL_FILE_MAX_BYTES + 3 * 1024 * 1024;

const nodeOf = (path: string) => (s: LocalFileStat) => ({
  path,
  type: "file" as const,
  mode: s.mode & 0o7777,
  mtimeNs: s.mtimeNs.toString(),
  uid: s.uid,
  gid: s.gid,
  size: s.size,
});

void test("a file read early is added as it was read then, not read again", async () => {
  await withTempDir(async (dir) => {
    const { repo } = await newRepo({ workers: 2 });
    try {
      const before = randomBytes(LARGE);
      const after = randomBytes(LARGE);
      const early = join(dir, "early.bin");
      const other = join(dir, "other.bin");
      writeFileSync(early, before);
      writeFileSync(other, before);

      const w = await repo.startBackup({ runId: "early" });
      const handle = w.readLocalFileEarly(early);
      const forOther = w.readLocalFileEarly(other);
      assert.ok(handle && forOther);
      await Promise.all([handle.done, forOther.done]);
      writeFileSync(early, after); // the read is over: this content is never seen
      writeFileSync(other, after);
      const a = await w.addLocalFile(early, LARGE, { node: nodeOf("early.bin"), early: handle });
      // A handle for another path is not used: the file is read now.
      const b = await w.addLocalFile(other, LARGE, { node: nodeOf("other.bin"), early: handle });
      const { snapshot } = await w.commit(META);
      assert.ok(a.added && b.added);
      assert.equal(snapshot.stats.bytesRead, 2 * LARGE, "each file counted once");

      const files = await collect(repo.readTree(snapshot));
      assert.deepEqual(
        files.map((n) => n.path),
        ["early.bin", "other.bin"],
      );
      assert.ok((await readAll(repo.readFile(files[0]!))).equals(before), "early.bin as read early");
      assert.ok((await readAll(repo.readFile(files[1]!))).equals(after), "other.bin as read when added");
    } finally {
      await repo.close();
    }
  });
});

void test("an early read never added: the commit waits for it, the snapshot does not have it", async () => {
  await withTempDir(async (dir) => {
    const { repo } = await newRepo({ workers: 2 });
    try {
      const content = randomBytes(LARGE);
      writeFileSync(join(dir, "orphan.bin"), content);
      const w = await repo.startBackup({ runId: "orphan" });
      assert.ok(w.readLocalFileEarly(join(dir, "orphan.bin")));
      const { snapshot } = await w.commit(META); // at once: the read is still going
      assert.deepEqual(await collect(repo.readTree(snapshot)), []);
      assert.ok(snapshot.stats.packsWritten >= 1, "its chunks reached a pack before the commit");

      // Its chunks are stored and indexed: a later backup of the same content stores nothing new.
      const again = await repo.startBackup({ runId: "again" });
      await again.addLocalFile(join(dir, "orphan.bin"), LARGE, { node: nodeOf("orphan.bin") });
      const second = (await again.commit(META)).snapshot;
      assert.equal(second.stats.bytesRead, LARGE);
      assert.equal(second.stats.bytesNew, second.tree.bytes, "nothing new but the tree");
    } finally {
      await repo.close();
    }
  });
});

void test("with a single pipeline thread nothing is read early", async () => {
  await withTempDir(async (dir) => {
    const { repo } = await newRepo({ workers: 1 });
    try {
      writeFileSync(join(dir, "f.bin"), randomBytes(LARGE));
      const w = await repo.startBackup({ runId: "one" });
      assert.equal(w.readLocalFileEarly(join(dir, "f.bin")), undefined);
      const { snapshot } = await w.commit(META);
      assert.equal(snapshot.stats.packsWritten, 0);
    } finally {
      await repo.close();
    }
  });
});

import assert from "node:assert/strict";
import { lstat, mkdir, readFile, readdir, symlink, writeFile } from "node:fs/promises";
import { join } from "node:path";
import { test } from "node:test";
import { isCode } from "@iotvault/errors";
import type { Repository, SnapshotManifest, TreeNode } from "@iotvault/repo";
import type { RestoreContext } from "./adapter.js";
import { fsAdapter } from "./adapters/fs.js";
import { restoreToDirectory } from "./fs/restore.js";
import { backup, withSandbox } from "./test-util.js";

const meta = { jobId: "j", jobName: "evil", source: "fs:/evil", backupType: "full" } as const;
const base = { mode: 0o644, mtimeNs: "1600000000000000000", uid: 0, gid: 0 };

async function* bytes(text: string): AsyncGenerator<Uint8Array> {
  yield Buffer.from(text);
}

/** A hostile snapshot, written node by node through the BackupWriter (as a malicious writer could). */
async function craft(
  repo: Repository,
  runId: string,
  nodes: (TreeNode | { file: string; content: string })[],
): Promise<SnapshotManifest> {
  const w = await repo.startBackup({ runId });
  for (const n of nodes) {
    if ("file" in n) await w.addFile({ ...base, path: n.file, type: "file" }, bytes(n.content));
    else await w.addNode(n);
  }
  return (await w.commit(meta)).snapshot;
}

const entries = async (dir: string): Promise<string[]> => (await readdir(dir)).sort();

void test("a node path with '..' or an absolute path is refused; nothing escapes the target", async () => {
  await withSandbox(async ({ dir, repo }) => {
    const parent = dir("restore");
    await mkdir(parent);
    const target = join(parent, "target");
    for (const [i, path] of ["../escape.txt", "/tmp-abs-escape.txt", "a/../../escape.txt", "a//b", "./x"].entries()) {
      const snap = await craft(repo, `dots-${i}`, [{ file: path, content: "pwned" }]);
      await assert.rejects(restoreToDirectory(repo, snap, { target }), (err: unknown) => {
        assert.ok(isCode(err, "INVALID_ARGUMENT"), `${path}: ${String(err)}`);
        assert.ok(err.message.startsWith(`refusing to restore ${JSON.stringify(path)}`), err.message);
        return true;
      });
    }
    assert.deepEqual(await entries(parent), ["target"]);
    assert.deepEqual(await entries(target), []);
  });
});

void test("a symlink pointing outside the target is refused unless allowed", async () => {
  await withSandbox(async ({ dir, repo }) => {
    const outside = dir("outside");
    await mkdir(outside);
    const snap = await craft(repo, "ext", [
      { ...base, path: "ok-link", type: "symlink", mode: 0o777, target: "sub/../inside.txt" },
      { ...base, path: "out", type: "symlink", mode: 0o777, target: outside },
    ]);
    await assert.rejects(restoreToDirectory(repo, snap, { target: dir("t1") }), (err: unknown) => {
      assert.ok(isCode(err, "PERMISSION_DENIED"), String(err));
      assert.match(
        err.message,
        /refusing to restore "out": the symlink target .* points outside the restore directory/,
      );
      return true;
    });
    const relative = await craft(repo, "ext-rel", [
      { ...base, path: "a/up", type: "symlink", mode: 0o777, target: "../../../etc/passwd" },
    ]);
    await assert.rejects(restoreToDirectory(repo, relative, { target: dir("t2") }), (err: unknown) =>
      isCode(err, "PERMISSION_DENIED"),
    );
    const allowed = await restoreToDirectory(repo, snap, { target: dir("t3"), allowExternalSymlinks: true });
    assert.equal(allowed.symlinks, 2);
    assert.ok((await lstat(join(dir("t3"), "out"))).isSymbolicLink());
  });
});

void test("a chain of symlinks that each look inside but resolve outside is refused and removed", async () => {
  await withSandbox(async ({ dir, repo }) => {
    // "x -> ." and "a -> x/x/x/../.." both stay inside lexically; through x, a ends two levels
    // above the target. A loop counts as outside too.
    const snap = await craft(repo, "chain", [
      { ...base, path: "a", type: "symlink", mode: 0o777, target: "x/x/x/../.." },
      { ...base, path: "fine", type: "symlink", mode: 0o777, target: "x/sub/file" },
      { ...base, path: "x", type: "symlink", mode: 0o777, target: "." },
    ]);
    const target = dir("chain-target");
    await assert.rejects(restoreToDirectory(repo, snap, { target }), (err: unknown) => {
      assert.ok(isCode(err, "PERMISSION_DENIED"), String(err));
      assert.match(err.message, /refusing to restore "a": through other symlinks .* points outside/);
      return true;
    });
    assert.deepEqual(await entries(target), ["fine", "x"]);

    const loop = await craft(repo, "loop", [
      { ...base, path: "l1", type: "symlink", mode: 0o777, target: "l2" },
      { ...base, path: "l2", type: "symlink", mode: 0o777, target: "l1" },
    ]);
    await assert.rejects(restoreToDirectory(repo, loop, { target: dir("loop-target") }), (err: unknown) =>
      isCode(err, "PERMISSION_DENIED"),
    );
    const allowed = await restoreToDirectory(repo, snap, { target: dir("chain-allowed"), allowExternalSymlinks: true });
    assert.equal(allowed.symlinks, 3);
  });
});

void test("nothing is written through a symlinked parent, inside or outside the target", async () => {
  await withSandbox(async ({ dir, repo }) => {
    const outside = dir("outside");
    await mkdir(outside);
    const external = await craft(repo, "through-ext", [
      { ...base, path: "out", type: "symlink", mode: 0o777, target: outside },
      { file: "out/evil.txt", content: "pwned" },
    ]);
    await assert.rejects(
      restoreToDirectory(repo, external, { target: dir("t1"), allowExternalSymlinks: true }),
      (err: unknown) => {
        assert.ok(isCode(err, "PERMISSION_DENIED"), String(err));
        assert.match(err.message, /its parent out is a symlink/);
        return true;
      },
    );
    assert.deepEqual(await entries(outside), [], "nothing was written outside");

    const internal = await craft(repo, "through-int", [
      { ...base, path: "sub", type: "dir", mode: 0o755 },
      { ...base, path: "sub-link", type: "symlink", mode: 0o777, target: "sub" },
      { file: "sub-link/x.txt", content: "through a link" },
    ]);
    await assert.rejects(restoreToDirectory(repo, internal, { target: dir("t2") }), (err: unknown) =>
      isCode(err, "PERMISSION_DENIED"),
    );
    assert.deepEqual(await entries(join(dir("t2"), "sub")), []);

    // A symlink already present in the target is not followed either.
    const t3 = dir("t3");
    await mkdir(t3);
    await symlink(outside, join(t3, "etc"));
    const plain = await craft(repo, "pre-existing", [{ file: "etc/passwd", content: "pwned" }]);
    await assert.rejects(restoreToDirectory(repo, plain, { target: t3 }), (err: unknown) =>
      isCode(err, "PERMISSION_DENIED"),
    );
    assert.deepEqual(await entries(outside), []);
  });
});

void test("an existing file is refused without overwrite and replaced with it; no temp file is left", async () => {
  await withSandbox(async ({ dir, repo }) => {
    const src = dir("src");
    await mkdir(join(src, "etc"), { recursive: true });
    await writeFile(join(src, "etc/a.conf"), "from the snapshot");
    const { snapshot } = await backup(repo, "r", { root: src });
    const target = dir("target");
    await mkdir(join(target, "etc"), { recursive: true });
    await writeFile(join(target, "etc/a.conf"), "local edit");
    await assert.rejects(restoreToDirectory(repo, snapshot, { target }), (err: unknown) => {
      assert.ok(isCode(err, "ALREADY_EXISTS"), String(err));
      assert.match(err.message, /refusing to restore "etc\/a.conf": it already exists/);
      assert.match(err.hint ?? "", /overwrite/);
      return true;
    });
    assert.equal(await readFile(join(target, "etc/a.conf"), "utf8"), "local edit");
    await restoreToDirectory(repo, snapshot, { target, overwrite: true, verify: true });
    assert.equal(await readFile(join(target, "etc/a.conf"), "utf8"), "from the snapshot");
    assert.deepEqual(await entries(join(target, "etc")), ["a.conf"]);
  });
});

void test("a restore that fails mid-file leaves no half file under the final name", async () => {
  await withSandbox(async ({ dir, repo, store }) => {
    const src = dir("src");
    await mkdir(src);
    const big = Buffer.alloc(6 << 20);
    for (let i = 0; i < big.length; i += 4) big.writeUInt32LE((i * 2654435761) >>> 0, i);
    await writeFile(join(src, "big.bin"), big);
    const { snapshot } = await backup(repo, "r", { root: src });
    // Damage the last chunk's pack so that the failure comes after data was written.
    const node = (await (async () => {
      for await (const n of repo.readTree(snapshot)) return n;
      return undefined;
    })())!;
    const lastChunk = node.chunks![node.chunks!.length - 1]!;
    let damaged = 0;
    for await (const info of store.list("data/")) {
      const raw = store.raw(info.key)!;
      const core = Reflect.get(repo, "core") as { index: { get(id: string): { packId: string; offset: number } } };
      const loc = core.index.get(lastChunk);
      if (info.key.endsWith(loc.packId)) {
        raw[loc.offset + 40]! ^= 0xff;
        damaged++;
      }
    }
    assert.equal(damaged, 1);
    const target = dir("target");
    await assert.rejects(restoreToDirectory(repo, snapshot, { target }), (err: unknown) => isCode(err, "DATA_CORRUPT"));
    assert.deepEqual(await entries(target), []);
  });
});

/** Deterministic bytes that do not compress away (so that large files span several packs). */
function pattern(bytes: number, seed: number): Buffer {
  const b = Buffer.alloc(bytes);
  for (let i = 0; i + 4 <= bytes; i += 4) b.writeUInt32LE(Math.imul(i ^ seed, 2654435761) >>> 0, i);
  return b;
}

/** Small files, then two large ones (streamed at backup, many chunks at restore), then small files again. */
async function treeWithLargeFiles(src: string): Promise<Map<string, Buffer>> {
  const files = new Map<string, Buffer>();
  for (let i = 0; i < 40; i++) files.set(`a/small-${i}.txt`, Buffer.from(`a ${i} `.repeat(i * 50 + 1)));
  files.set("b-large.bin", pattern(33 << 20, 1));
  files.set("c-large.bin", pattern((34 << 20) + 123, 2));
  for (let i = 0; i < 40; i++) files.set(`z/small-${i}.txt`, Buffer.from(`z ${i} `.repeat(i * 70 + 1)));
  await mkdir(join(src, "a"));
  await mkdir(join(src, "z"));
  for (const [path, data] of files) await writeFile(join(src, path), data);
  return files;
}

for (const workers of [1, 2]) {
  void test(`large files between small ones are restored byte for byte (workers: ${workers})`, async () => {
    await withSandbox(
      async ({ dir, repo }) => {
        const src = dir("src");
        await mkdir(src);
        const files = await treeWithLargeFiles(src);
        const { snapshot } = await backup(repo, "lanes", { root: src });
        const target = dir("target");
        const result = await restoreToDirectory(repo, snapshot, { target, verify: true });
        assert.equal(result.files, files.size);
        for (const [path, data] of files) assert.ok((await readFile(join(target, path))).equals(data), path);
        assert.deepEqual(await entries(target), ["a", "b-large.bin", "c-large.bin", "z"]);
      },
      { workers },
    );
  });
}

for (const workers of [1, 2]) {
  void test(`a file that does not read back as its snapshot records fails the verified restore (workers: ${workers})`, async () => {
    await withSandbox(
      async ({ dir, repo }) => {
        const src = dir("src");
        await mkdir(src);
        const content = pattern(3 << 20, 7);
        await writeFile(join(src, "data.bin"), content);
        const { snapshot } = await backup(repo, "good", { root: src });
        // The same chunks under a node whose recorded SHA-256 is not theirs: what a target that
        // returns other bytes than were written looks like to the read-back.
        const [node] = await collectFiles(repo, snapshot);
        const w = await repo.startBackup({ runId: "liar" });
        await w.addUnchangedFile({ ...node!, sha256: "0".repeat(64) });
        const lying = (await w.commit(meta)).snapshot;

        const target = dir("target");
        await assert.rejects(
          restoreToDirectory(repo, lying, { target, verify: true }),
          (err: unknown) => isCode(err, "DATA_CORRUPT") && /data\.bin does not read back as written/.test(err.message),
        );
        assert.deepEqual(await entries(target), [], "no file under its final name, no temporary file");
        const unchecked = dir("unchecked");
        await restoreToDirectory(repo, lying, { target: unchecked, verify: false });
        assert.ok((await readFile(join(unchecked, "data.bin"))).equals(content));
        const checked = dir("checked");
        await restoreToDirectory(repo, snapshot, { target: checked, verify: true });
        assert.ok((await readFile(join(checked, "data.bin"))).equals(content));
      },
      { workers },
    );
  });
}

async function collectFiles(repo: Repository, snapshot: SnapshotManifest): Promise<TreeNode[]> {
  const files: TreeNode[] = [];
  for await (const n of repo.readTree(snapshot)) if (n.type === "file") files.push(n);
  return files;
}

void test("a damaged large file fails the restore cleanly: no half file, no temporary file, no hang", async () => {
  await withSandbox(
    async ({ dir, repo, store }) => {
      const src = dir("src");
      await mkdir(src);
      await treeWithLargeFiles(src);
      const { snapshot } = await backup(repo, "lanes-bad", { root: src });
      let node: TreeNode | undefined;
      for await (const n of repo.readTree(snapshot)) if (n.path === "c-large.bin") node = n;
      const middle = node!.chunks![Math.floor(node!.chunks!.length / 2)]!;
      const core = Reflect.get(repo, "core") as { index: { get(id: string): { packId: string; offset: number } } };
      const loc = core.index.get(middle);
      let damaged = 0;
      for await (const info of store.list("data/")) {
        if (!info.key.endsWith(loc.packId)) continue;
        store.raw(info.key)![loc.offset + 40]! ^= 0xff;
        damaged++;
      }
      assert.equal(damaged, 1);
      const target = dir("target");
      await assert.rejects(restoreToDirectory(repo, snapshot, { target }), (err: unknown) =>
        isCode(err, "DATA_CORRUPT"),
      );
      const left = (await readdir(target, { recursive: true })).filter((p) => p.includes(".iotvault-restore-"));
      assert.deepEqual(left, [], "no temporary file is left");
      assert.ok(!(await entries(target)).includes("c-large.bin"), "the damaged file is not under its name");
    },
    { workers: 2 },
  );
});

function context(repo: Repository, snapshot: SnapshotManifest, target: string): RestoreContext {
  return {
    repo,
    snapshot,
    target,
    include: [],
    overwrite: false,
    verify: true,
    allowExternalSymlinks: false,
    options: {},
    services: {},
    signal: new AbortController().signal,
    onProgress: () => undefined,
  };
}

void test("a file-system snapshot refuses a relative target or another kind's URL, writing nothing", async () => {
  await withSandbox(async ({ dir, repo }) => {
    const snap = await craft(repo, "plain", [{ file: "a.txt", content: "a" }]);
    const cwd = await entries(process.cwd());
    for (const target of ["kv:gateway", "relative/dir", "postgres://u:s3cret@h/db"]) {
      await assert.rejects(fsAdapter.restore(context(repo, snap, target)), (err: unknown) => {
        assert.ok(isCode(err, "INVALID_ARGUMENT"), String(err));
        assert.match(err.message, /restores into a directory/);
        assert.doesNotMatch(err.message, /s3cret/);
        return true;
      });
    }
    assert.deepEqual(await entries(process.cwd()), cwd, "nothing was created in the working directory");
    const ok = await fsAdapter.restore(context(repo, snap, dir("abs-target")));
    assert.equal(ok.files, 1);
  });
});

import assert from "node:assert/strict";
import { execFileSync } from "node:child_process";
import { createHash, randomBytes } from "node:crypto";
import { appendFileSync, writeFileSync } from "node:fs";
import { chmod, mkdir, rename, symlink, utimes, writeFile } from "node:fs/promises";
import { join } from "node:path";
import { test } from "node:test";
import { isCode } from "@iotvault/errors";
import { backupDirectory } from "./fs/backup.js";
import { restoreToDirectory } from "./fs/restore.js";
import { backup, describeTree, withSandbox } from "./test-util.js";

const T0 = new Date("2021-03-04T05:06:07.123456Z");

/** A small IoT-gateway-like tree with every kind of node the fs source handles. */
async function makeTree(root: string): Promise<void> {
  await mkdir(join(root, "données"), { recursive: true });
  await mkdir(join(root, "etc/app"), { recursive: true });
  await mkdir(join(root, "empty-dir"));
  await mkdir(join(root, "logs"));
  await writeFile(join(root, "données/Æ.txt"), "non-ASCII names work\n");
  await writeFile(join(root, "日本語.ttl"), "@prefix ex: <http://example.org/> .\nex:a ex:b ex:c .\n");
  await writeFile(join(root, "etc/app/config.yaml"), "mqtt:\n  port: 1883\n");
  await writeFile(join(root, "etc/app/run.sh"), "#!/bin/sh\nexec app\n");
  await chmod(join(root, "etc/app/run.sh"), 0o750);
  await writeFile(join(root, "etc/secret.key"), "k");
  await chmod(join(root, "etc/secret.key"), 0o600);
  await writeFile(join(root, "empty.txt"), "");
  await writeFile(join(root, "big.bin"), randomBytes(3 << 20));
  await writeFile(join(root, "logs/app.log"), "line\n".repeat(1000));
  await symlink("données/Æ.txt", join(root, "link-to-file"));
  await symlink("etc", join(root, "link-to-dir"));
  await symlink("missing-target", join(root, "dangling"));
  await chmod(join(root, "données"), 0o750);
  for (const p of ["données/Æ.txt", "日本語.ttl", "big.bin", "empty.txt", "etc/app", "empty-dir", "données", "etc"]) {
    await utimes(join(root, p), T0, T0);
  }
}

// Files created and finished synchronously (the default while fast) and through the thread pool.
for (const fileCallsInThreadPool of [false, true]) {
  void test(`backup then restore gives a byte-identical tree (contents, modes, mtimes, symlinks, empty and non-ASCII; file calls in the thread pool: ${fileCallsInThreadPool})`, async () => {
    await withSandbox(async ({ dir, repo }) => {
      const src = dir("src");
      await makeTree(src);
      const { snapshot, result } = await backup(repo, "r1", { root: src });
      assert.deepEqual(
        { files: result.files, dirs: result.dirs, symlinks: result.symlinks, warnings: result.warnings },
        { files: 8, dirs: 5, symlinks: 3, warnings: 0 },
      );
      const dst = dir("dst");
      const restored = await restoreToDirectory(repo, snapshot, { target: dst, verify: true, fileCallsInThreadPool });
      assert.equal(restored.verified, true);
      assert.equal(restored.files, 8);
      assert.deepEqual(await describeTree(dst), await describeTree(src));
    });
  });
}

void test("include and exclude globs; an excluded directory is not descended into", async () => {
  await withSandbox(async ({ dir, repo }) => {
    const src = dir("src");
    await makeTree(src);
    const warnings: string[] = [];
    const excluded = await backup(repo, "ex", {
      root: src,
      exclude: ["*.log", "etc/app", "big.bin"],
      onWarning: (w) => warnings.push(w.path),
    });
    const paths: string[] = [];
    for await (const n of repo.readTree(excluded.snapshot)) paths.push(n.path);
    assert.ok(paths.includes("logs"), "the logs dir itself is kept");
    assert.ok(!paths.some((p) => p.endsWith(".log") || p.startsWith("etc/app") || p === "big.bin"), paths.join());
    assert.ok(paths.includes("etc/secret.key"));

    const included = await backup(repo, "in", { root: src, include: ["etc/app", "*.ttl"] });
    const kept: string[] = [];
    for await (const n of repo.readTree(included.snapshot)) kept.push(n.path);
    assert.deepEqual(kept, ["etc", "etc/app", "etc/app/config.yaml", "etc/app/run.sh", "日本語.ttl"]);
    assert.deepEqual(warnings, []);
  });
});

void test("with a parent snapshot, unchanged files are not read again", async () => {
  await withSandbox(async ({ dir, repo }) => {
    const src = dir("src");
    await makeTree(src);
    const first = await backup(repo, "p1", { root: src });
    assert.ok(first.bytesRead > 3 << 20);

    await writeFile(join(src, "etc/app/config.yaml"), "mqtt:\n  port: 8883\n  tls: true\n");
    // Same size and mtime, but a new inode: must be read again.
    await writeFile(join(src, "empty.txt.new"), "");
    await rename(join(src, "empty.txt.new"), join(src, "empty.txt"));
    await utimes(join(src, "empty.txt"), T0, T0);

    const second = await backup(repo, "p2", { root: src, parent: first.snapshot });
    const changedBytes = "mqtt:\n  port: 8883\n  tls: true\n".length;
    assert.equal(second.bytesRead, changedBytes, "only the changed file's bytes were read");
    assert.equal(second.result.unchanged, 6);
    assert.equal(second.result.files, 8);
    assert.equal(second.snapshot.parent, first.snapshot.id);
    assert.equal(second.snapshot.stats.filesUnchanged, 6);
    assert.equal(second.snapshot.stats.filesChanged, 2);
    assert.equal(second.nodesCopied, 6, "the unchanged files' nodes are the parent's lines, copied");

    // Nothing changed: every file node is copied, and the tree is the parent's, chunk for chunk.
    const third = await backup(repo, "p3", { root: src, parent: second.snapshot });
    assert.equal(third.bytesRead, 0);
    assert.equal(third.nodesCopied, 8);
    assert.deepEqual(third.snapshot.tree, second.snapshot.tree);

    const dst = dir("dst");
    await restoreToDirectory(repo, second.snapshot, { target: dst, verify: true });
    assert.deepEqual(await describeTree(dst), await describeTree(src));
  });
});

void test("restore with an include pattern restores the matches and the directories leading to them", async () => {
  await withSandbox(async ({ dir, repo }) => {
    const src = dir("src");
    await makeTree(src);
    const { snapshot } = await backup(repo, "r", { root: src });
    const dst = dir("dst");
    const result = await restoreToDirectory(repo, snapshot, { target: dst, include: ["etc/app/*.yaml", "Æ.txt"] });
    assert.equal(result.files, 2);
    const tree = await describeTree(dst);
    assert.deepEqual(
      Object.keys(tree).sort(),
      ["données", "données/Æ.txt", "etc", "etc/app", "etc/app/config.yaml"].sort(),
    );
    const original = await describeTree(src);
    assert.deepEqual(tree["etc/app/config.yaml"], original["etc/app/config.yaml"]);
    assert.deepEqual(tree["données"], original["données"], "leading directories get their mode and mtime");
  });
});

void test("special files are skipped with a warning; a file changing while read is never recorded wrongly", async () => {
  await withSandbox(async ({ dir, repo }) => {
    const src = dir("src");
    await mkdir(src);
    execFileSync("mkfifo", [join(src, "a-fifo")]);
    const original = randomBytes(24 << 20); // streamed through a worker a segment at a time
    await writeFile(join(src, "growing.log"), original);
    await writeFile(join(src, "stable.txt"), "stable");
    const warnings: { path: string; message: string }[] = [];
    const appender = setInterval(() => appendFileSync(join(src, "growing.log"), "more\n"), 0);
    let result;
    let nodes;
    try {
      const writer = await repo.startBackup({ runId: "w" });
      result = await backupDirectory(repo, writer, { root: src, onWarning: (w) => warnings.push(w) });
      const { snapshot } = await writer.commit({ jobId: "j", jobName: "j", source: "fs:x", backupType: "full" });
      nodes = [];
      for await (const n of repo.readTree(snapshot)) nodes.push(n);
    } finally {
      clearInterval(appender);
    }
    assert.equal(warnings[0]?.path, "a-fifo");
    const log = nodes.find((n) => n.path === "growing.log");
    if (log === undefined) {
      // Skipped: it changed under every attempt.
      assert.deepEqual(
        warnings.map((w) => w.path),
        ["a-fifo", "growing.log"],
      );
      assert.match(warnings[1]!.message, /changed while being read/);
      assert.equal(result.warnings, 2);
    } else {
      // Recorded: then as one state the file really had (the original and whole appends), hash included.
      assert.equal(warnings.length, 1);
      const appended = log.size! - original.length;
      assert.ok(appended >= 0 && appended % 5 === 0, `size ${log.size} is not a state the file had`);
      const state = Buffer.concat([original, Buffer.from("more\n".repeat(appended / 5))]);
      assert.equal(log.sha256, createHash("sha256").update(state).digest("hex"));
    }
    assert.deepEqual(
      nodes.map((n) => n.path).filter((p) => p !== "growing.log"),
      ["stable.txt"],
    );
  });
});

void test("a name that is not valid UTF-8 is skipped with a warning naming its bytes; the rest is backed up", async () => {
  await withSandbox(async ({ dir, repo }) => {
    const src = dir("src");
    await mkdir(join(src, "etc"), { recursive: true });
    await writeFile(join(src, "etc/ok.conf"), "ok");
    // Latin-1 "caf\xe9.conf": a valid Linux name, not valid UTF-8; so are an overlong "/" and
    // an encoded UTF-16 surrogate. A name of valid multi-byte UTF-8 is kept.
    const named = (...bytes: number[]) => Buffer.concat([Buffer.from(join(src, "etc") + "/"), Buffer.from(bytes)]);
    writeFileSync(named(0x63, 0x61, 0x66, 0xe9, 0x2e, 0x63, 0x6f, 0x6e, 0x66), "x");
    writeFileSync(named(0x61, 0xc0, 0xaf), "x");
    writeFileSync(named(0x62, 0xed, 0xa0, 0x80), "x");
    writeFileSync(named(0xe2, 0x82, 0xac), "x"); // "€"
    const warnings: { path: string; message: string }[] = [];
    const writer = await repo.startBackup({ runId: "latin1" });
    const result = await backupDirectory(repo, writer, { root: src, onWarning: (w) => warnings.push(w) });
    const { snapshot } = await writer.commit({ jobId: "j", jobName: "j", source: "fs:x", backupType: "full" });
    const paths: string[] = [];
    for await (const n of repo.readTree(snapshot)) paths.push(n.path);
    assert.deepEqual(paths, ["etc", "etc/ok.conf", "etc/€"]);
    assert.equal(result.warnings, 3);
    assert.deepEqual(warnings.map((w) => w.path).sort(), [
      "etc/a\\xc0\\xaf",
      "etc/b\\xed\\xa0\\x80",
      "etc/caf\\xe9.conf",
    ]);
    for (const w of warnings) assert.match(w.message, /not valid UTF-8/);
  });
});

void test("a missing root or a root that is a file is refused", async () => {
  await withSandbox(async ({ dir, repo }) => {
    const writer = await repo.startBackup({ runId: "x" });
    await assert.rejects(backupDirectory(repo, writer, { root: dir("nope") }), (err: unknown) =>
      isCode(err, "NOT_FOUND"),
    );
    await writeFile(dir("file"), "x");
    await assert.rejects(backupDirectory(repo, writer, { root: dir("file") }), (err: unknown) =>
      isCode(err, "INVALID_ARGUMENT"),
    );
    await writer.abort();
  });
});

/**
 * The data-directory copy on a hand-made directory (fast, no server): what PostgreSQL's docs
 * say to leave out is left out, a moved pg_wal becomes an empty directory (never a link into
 * the original cluster), unchanged files are taken from the parent, and racy ones are read again.
 */
import assert from "node:assert/strict";
import { mkdir, mkdtemp, rm, symlink, utimes, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { describe, it } from "node:test";
import { Repository, type SnapshotManifest, type TreeNode } from "@iotvault/repo";
import { MemoryStore } from "@iotvault/storage";
import { RACY_WINDOW_MS, copyDataDirectory, isExcluded } from "./physical-walk.js";

async function makeDataDir(root: string): Promise<void> {
  const files: Record<string, string> = {
    PG_VERSION: "15\n",
    "postgresql.conf": "port = 5432\n",
    "postmaster.pid": "42\n",
    "postmaster.opts": "postgres\n",
    backup_label: "old\n",
    "base/1/1259": "catalog",
    "base/1/16384": "logged relation",
    "base/1/16384_fsm": "fsm",
    "base/1/16390": "unlogged main fork",
    "base/1/16390.1": "unlogged second segment",
    "base/1/16390_init": "init fork",
    "base/1/t3_16400": "temporary relation",
    "base/1/pg_internal.init": "relcache",
    "base/pgsql_tmp/pgsql_tmp123.0": "sort spill",
    "global/pg_control": "control",
    "pg_stat_tmp/global.stat": "stats",
    "pg_replslot/slot/state": "slot",
    "pg_xact/0000": "xact",
  };
  for (const [path, content] of Object.entries(files)) {
    await mkdir(join(root, path, ".."), { recursive: true });
    await writeFile(join(root, path), content);
  }
  await mkdir(join(root, "..", "elsewhere-wal"), { recursive: true });
  await writeFile(join(root, "..", "elsewhere-wal", "000000010000000000000001"), "wal");
  await symlink(join(root, "..", "elsewhere-wal"), join(root, "pg_wal"));
}

async function backup(
  repo: Repository,
  root: string,
  runId: string,
  parent?: SnapshotManifest,
  parentStartMs?: number,
) {
  const writer = await repo.startBackup({ runId, parent });
  const result = await copyDataDirectory(repo, writer, { root, parent, parentStartMs });
  const { snapshot } = await writer.commit({
    jobId: "j",
    jobName: "j",
    source: "postgres://x@h/p?mode=physical",
    backupType: "full",
  });
  const nodes: TreeNode[] = [];
  for await (const n of repo.readTree(snapshot)) nodes.push(n);
  return { snapshot, result, nodes };
}

describe("physical data-directory copy", () => {
  it("leaves out what PostgreSQL says to, and turns a moved pg_wal into an empty directory", async () => {
    const dir = await mkdtemp(join(tmpdir(), "iotvault-pgwalk-"));
    const repo = await Repository.init(new MemoryStore(), Buffer.from("walk test passphrase"), {
      scryptLogN: 10,
      workers: 1,
    });
    try {
      const root = join(dir, "data");
      await makeDataDir(root);
      const { nodes } = await backup(repo, root, "walk-1");
      const paths = nodes.map((n) => `${n.path}${n.type === "dir" ? "/" : n.type === "symlink" ? "@" : ""}`);
      assert.deepEqual(paths.sort(), [
        "PG_VERSION",
        "base/",
        "base/1/",
        "base/1/1259",
        "base/1/16384",
        "base/1/16384_fsm",
        "base/1/16390_init",
        "global/",
        "global/pg_control",
        "pg_replslot/",
        "pg_stat_tmp/",
        "pg_wal/",
        "pg_xact/",
        "pg_xact/0000",
        "postgresql.conf",
      ]);
      assert.equal(isExcluded("pg_wal/000000010000000000000001", new Set()), true);
      assert.equal(isExcluded("base/5/16390", new Set(["base/5/16390"])), true);
      assert.equal(isExcluded("base/5/16390_init", new Set(["base/5/16390"])), false);
    } finally {
      await repo.close();
      await rm(dir, { recursive: true, force: true });
    }
  });

  it("reads only files changed since the parent, and files written around the parent's start again", async () => {
    const dir = await mkdtemp(join(tmpdir(), "iotvault-pgwalk-"));
    const repo = await Repository.init(new MemoryStore(), Buffer.from("walk test passphrase"), {
      scryptLogN: 10,
      workers: 1,
    });
    try {
      const root = join(dir, "data");
      await makeDataDir(root);
      const old = new Date(Date.now() - 3600_000);
      for (const f of [
        "PG_VERSION",
        "postgresql.conf",
        "base/1/1259",
        "base/1/16384",
        "base/1/16384_fsm",
        "base/1/16390_init",
        "pg_xact/0000",
      ]) {
        await utimes(join(root, f), old, old);
      }
      // pg_control is written a moment before the parent's start: racy, so read again next time
      // although nothing about it changes.
      const start = Date.now();
      const racy = new Date(start - RACY_WINDOW_MS / 2);
      await utimes(join(root, "global/pg_control"), racy, racy);
      const first = await backup(repo, root, "walk-full");
      assert.equal(first.result.filesRead, 8);
      await writeFile(join(root, "base/1/16384"), "logged relation, changed");
      const second = await backup(repo, root, "walk-incr", first.snapshot, start);
      assert.deepEqual(second.result.readPaths.sort(), ["base/1/16384", "global/pg_control"]);
      assert.equal(second.result.unchanged, 6);
    } finally {
      await repo.close();
      await rm(dir, { recursive: true, force: true });
    }
  });
});

/**
 * Helpers for this package's tests (not exported from the package entry point).
 */
import { createHash } from "node:crypto";
import { lstat, mkdtemp, readFile, readdir, readlink, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { Repository, type SnapshotManifest } from "@iotvault/repo";
import { MemoryStore } from "@iotvault/storage";
import { backupDirectory, type BackupDirectoryOptions, type BackupDirectoryResult } from "./fs/backup.js";

export const PASSWORD = Buffer.from("test passphrase for sources", "utf8");

/** Runs `fn` with fresh temp directories and a fresh repository; cleans up even on failure. */
export async function withSandbox(
  fn: (s: { dir: (name: string) => string; repo: Repository; store: MemoryStore }) => Promise<void>,
  options: { workers?: number } = {},
): Promise<void> {
  const base = await mkdtemp(join(tmpdir(), "iotvault-sources-"));
  const store = new MemoryStore();
  const repo = await Repository.init(store, PASSWORD, { scryptLogN: 10, workers: options.workers ?? 1 });
  try {
    await fn({ dir: (name) => join(base, name), repo, store });
  } finally {
    await repo.close();
    await rm(base, { recursive: true, force: true });
  }
}

export async function backup(
  repo: Repository,
  runId: string,
  options: BackupDirectoryOptions,
): Promise<{ snapshot: SnapshotManifest; result: BackupDirectoryResult; bytesRead: number; nodesCopied: number }> {
  const writer = await repo.startBackup({ runId, parent: options.parent });
  const result = await backupDirectory(repo, writer, options);
  const { snapshot, stats } = await writer.commit({
    jobId: "job",
    jobName: "fs-test",
    source: `fs:${options.root}`,
    backupType: options.parent ? "incremental" : "full",
  });
  return { snapshot, result, bytesRead: stats.bytesRead, nodesCopied: writer.nodesCopied };
}

export interface Entry {
  type: "dir" | "file" | "symlink";
  mode: number;
  /** mtime in microseconds (restore sets times with microsecond precision). */
  mtimeUs: string;
  sha256?: string;
  size?: number;
  target?: string;
}

/** Everything that a restore must reproduce, per root-relative path. */
export async function describeTree(root: string): Promise<Record<string, Entry>> {
  const out: Record<string, Entry> = {};
  const visit = async (abs: string, rel: string): Promise<void> => {
    for (const name of (await readdir(abs)).sort()) {
      const path = rel ? `${rel}/${name}` : name;
      const full = join(abs, name);
      const s = await lstat(full, { bigint: true });
      const base = { mode: Number(s.mode & 0o7777n), mtimeUs: (s.mtimeNs / 1000n).toString() };
      if (s.isDirectory()) {
        out[path] = { type: "dir", ...base };
        await visit(full, path);
      } else if (s.isSymbolicLink()) {
        out[path] = { type: "symlink", ...base, target: await readlink(full) };
      } else {
        const data = await readFile(full);
        out[path] = {
          type: "file",
          ...base,
          size: data.length,
          sha256: createHash("sha256").update(data).digest("hex"),
        };
      }
    }
  };
  await visit(root, "");
  return out;
}

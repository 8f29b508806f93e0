/**
 * Helpers for this package's tests (not exported from the package entry point).
 */
import { randomBytes } from "node:crypto";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { MemoryStore } from "@iotvault/storage";
import type { RepoCore } from "./core.js";
import { Repository, type RepositoryOptions } from "./repository.js";
import type { TreeNode } from "./tree.js";

export const PASSWORD = Buffer.from("correct horse battery staple", "utf8");
export const FAST: RepositoryOptions = { scryptLogN: 10, workers: 1 };

export async function newRepo(options: RepositoryOptions = {}): Promise<{ store: MemoryStore; repo: Repository }> {
  const store = new MemoryStore();
  const repo = await Repository.init(store, PASSWORD, { ...FAST, ...options });
  return { store, repo };
}

/** The repository's internal state, for tests that look at packs and the index. */
export function coreOf(repo: Repository): RepoCore {
  return Reflect.get(repo, "core") as RepoCore;
}

export async function* pieces(data: Uint8Array, size = 1 << 20): AsyncGenerator<Uint8Array> {
  for (let i = 0; i < data.length; i += size) yield data.subarray(i, Math.min(data.length, i + size));
}

export function fileNode(path: string, extra: Partial<TreeNode> = {}): Omit<TreeNode, "chunks" | "sha256"> {
  return { path, type: "file", mode: 0o644, mtimeNs: "1700000000000000000", uid: 1000, gid: 1000, ...extra };
}

export function dirNode(path: string): TreeNode {
  return { path, type: "dir", mode: 0o755, mtimeNs: "1700000000000000000", uid: 1000, gid: 1000 };
}

export const META = { jobId: "job-1", jobName: "test", source: "fs:/test", backupType: "full" } as const;

export async function readAll(iter: AsyncIterable<Buffer>): Promise<Buffer> {
  const parts: Buffer[] = [];
  for await (const b of iter) parts.push(b);
  return Buffer.concat(parts);
}

export async function collect<T>(iter: AsyncIterable<T>): Promise<T[]> {
  const out: T[] = [];
  for await (const x of iter) out.push(x);
  return out;
}

/** Compressible text that looks like IoT JSON lines. */
export function jsonLines(bytes: number): Buffer {
  const lines: string[] = [];
  let size = 0;
  for (let i = 0; size < bytes; i++) {
    const line = `{"sensor":"urn:dev:${i % 97}","seq":${i},"temp":${(20 + (i % 13) / 10).toFixed(1)},"ok":true}\n`;
    lines.push(line);
    size += line.length;
  }
  return Buffer.from(lines.join(""), "utf8").subarray(0, bytes);
}

export const random = (n: number): Buffer => randomBytes(n);

/** Runs `fn` with a fresh temporary directory, removed afterwards. */
export async function withTempDir<T>(fn: (dir: string) => Promise<T>): Promise<T> {
  const dir = mkdtempSync(join(tmpdir(), "iotvault-repo-"));
  try {
    return await fn(dir);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}

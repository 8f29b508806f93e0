/**
 * Helpers for the retention, lock and prune tests (not exported from the package entry point):
 * a store wrapper that "crashes" on chosen writes, repository fingerprints, and a check that
 * every snapshot restores byte-identical.
 */
import { spawn } from "node:child_process";
import { createHash } from "node:crypto";
import { mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import assert from "node:assert/strict";
import { IotvaultError } from "@iotvault/errors";
import type { ByteRange, ObjectInfo, ObjectStore, PutOptions } from "@iotvault/storage";
import type { Repository, RepositoryOptions } from "./repository.js";
import type { SnapshotManifest } from "./snapshot.js";
import { FAST, META, fileNode, newRepo, pieces, random, readAll } from "./test-util.js";

/** Small chunks and packs, so that a few hundred KiB make many chunks and several packs. */
export const SMALL: RepositoryOptions = {
  ...FAST,
  packSizeBytes: 64 * 1024,
  chunker: { minSize: 1024, avgSize: 4096, maxSize: 16384 },
};

/**
 * Passes every call to `inner`, but throws UNAVAILABLE ("simulated crash") when `crashOn`
 * returns true for a put or delete (`nth` counts the calls of that op under that top-level
 * prefix). When `sticky`, every later write fails too (the process is "dead") until `revive()`.
 */
export class CrashingStore implements ObjectStore {
  crashed = false;
  /** When set, every put and delete first awaits it (to hold an operation in the middle). */
  pause: ((op: "put" | "delete", key: string) => Promise<void>) | undefined;
  private readonly counts = new Map<string, number>();

  constructor(
    readonly inner: ObjectStore,
    private crashOn: (op: "put" | "delete", key: string, nth: number) => boolean,
    private readonly sticky = true,
  ) {}

  get location(): string {
    return this.inner.location;
  }

  revive(crashOn: (op: "put" | "delete", key: string, nth: number) => boolean = () => false): void {
    this.crashed = false;
    this.crashOn = crashOn;
  }

  private async gate(op: "put" | "delete", key: string): Promise<void> {
    await this.pause?.(op, key);
    const kind = `${op}:${key.split("/")[0] ?? ""}`;
    const nth = (this.counts.get(kind) ?? 0) + 1;
    this.counts.set(kind, nth);
    if (this.crashed || this.crashOn(op, key, nth)) {
      this.crashed = this.sticky;
      throw new IotvaultError("UNAVAILABLE", `simulated crash at ${op} ${key}`);
    }
  }

  async put(key: string, data: Uint8Array, options?: PutOptions): Promise<{ existed: boolean }> {
    await this.gate("put", key);
    return this.inner.put(key, data, options);
  }

  async delete(key: string): Promise<boolean> {
    await this.gate("delete", key);
    return this.inner.delete(key);
  }

  get(key: string, range?: ByteRange, signal?: AbortSignal): Promise<Buffer> {
    return this.inner.get(key, range, signal);
  }

  stat(key: string): Promise<ObjectInfo | undefined> {
    return this.inner.stat(key);
  }

  list(prefix: string): AsyncIterable<ObjectInfo> {
    return this.inner.list(prefix);
  }
}

/** key -> sha256 of every object except locks (which come and go with every operation). */
export async function fingerprint(store: ObjectStore): Promise<Map<string, string>> {
  const out = new Map<string, string>();
  for await (const info of store.list("")) {
    if (info.key.startsWith("locks/")) continue;
    out.set(
      info.key,
      createHash("sha256")
        .update(await store.get(info.key))
        .digest("hex"),
    );
  }
  return out;
}

/** Keys under a prefix. */
export async function keysUnder(store: ObjectStore, prefix: string): Promise<string[]> {
  const keys: string[] = [];
  for await (const info of store.list(prefix)) keys.push(info.key);
  return keys.sort();
}

/** Bytes under data/ and index/ (what prune frees). */
export async function dataAndIndexBytes(store: ObjectStore): Promise<number> {
  let n = 0;
  for (const prefix of ["data/", "index/"]) for await (const info of store.list(prefix)) n += info.size;
  return n;
}

export type Files = ReadonlyMap<string, Buffer>;

/** One backup of the given files (all new or deduplicated by content), committed. */
export async function backupFiles(
  repo: Repository,
  runId: string,
  files: Files,
  meta: { jobId?: string; time?: Date } = {},
): Promise<SnapshotManifest> {
  const writer = await repo.startBackup({ runId });
  for (const [path, content] of files) await writer.addFile(fileNode(path), pieces(content));
  const { snapshot } = await writer.commit({ ...META, ...meta });
  return snapshot;
}

/** Every snapshot of the repository restores exactly the files expected for its run. */
export async function assertRestores(repo: Repository, expected: ReadonlyMap<string, Files>): Promise<number> {
  const snapshots = await repo.listSnapshots();
  assert.deepEqual(snapshots.map((s) => s.runId).sort(), [...expected.keys()].sort(), "the snapshots that remain");
  let files = 0;
  for (const snapshot of snapshots) {
    const want = expected.get(snapshot.runId)!;
    const seen = new Set<string>();
    for await (const node of repo.readTree(snapshot)) {
      if (node.type !== "file") continue;
      const content = await readAll(repo.readFile(node));
      assert.ok(content.equals(want.get(node.path)!), `${snapshot.runId}:${node.path} restores byte-identical`);
      seen.add(node.path);
      files++;
    }
    assert.deepEqual([...seen].sort(), [...want.keys()].sort(), `every file of ${snapshot.runId}`);
  }
  return files;
}

/** The pid of a process that has exited (for stale-lock tests). */
export async function deadPid(): Promise<number> {
  const child = spawn(process.execPath, ["-e", ""], { stdio: "ignore" });
  const pid = child.pid;
  await new Promise<void>((resolve, reject) => {
    child.once("exit", () => resolve());
    child.once("error", reject);
  });
  assert.ok(pid !== undefined);
  return pid;
}

/** A temporary directory removed after `fn`, whatever happens. */
export async function withTempDir<T>(fn: (dir: string) => Promise<T>): Promise<T> {
  const dir = await mkdtemp(join(tmpdir(), "iotvault-retention-"));
  try {
    return await fn(dir);
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
}

/**
 * A repository holding the packs of `count` 1 MiB files (f0, f1, ...) that no index names: a
 * backup stored them, was aborted (which indexes them and lets its lock go), then every index
 * file was deleted. Tests put back the lock a killed backup would leave, when they need it.
 */
export async function unindexedPacks(count: number, runId: string) {
  const options = { packSizeBytes: 2 << 20, indexEveryPacks: 1000, indexEveryMs: 60_000 };
  const { store, repo } = await newRepo(options);
  const files = Array.from({ length: count }, () => random(1 << 20));
  const w = await repo.startBackup({ runId });
  for (const [i, data] of files.entries()) await w.addFile(fileNode(`f${i}`), pieces(data));
  await w.abort();
  await repo.close();
  for (const key of await keysUnder(store, "index/")) await store.delete(key);
  return { store, options, files };
}

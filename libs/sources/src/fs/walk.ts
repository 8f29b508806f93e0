/**
 * A depth-first walk of a directory tree with siblings sorted by the bytes of their UTF-8
 * names (parents before children), the order tree nodes are stored in. Symlinks are not
 * followed. Entries are lstat-ed with synchronous calls (on many small entries they cost a
 * fraction of the async ones; see readSmallFile in backup.ts); memory is bounded by the depth
 * times the width of the directories on the current path.
 */
import { readdir } from "node:fs/promises";
import { lstatSync, type BigIntStats } from "node:fs";
import { join } from "node:path";

export type EntryKind = "dir" | "file" | "symlink" | "other";

export interface WalkEntry {
  /** Root-relative POSIX path. */
  path: string;
  abs: string;
  kind: EntryKind;
  stat: BigIntStats;
}

export interface WalkHooks {
  /** Return false to skip an entry (and, for a directory, everything under it). */
  accept(path: string, kind: EntryKind): boolean;
  warn(path: string, message: string): void;
  signal?: AbortSignal | undefined;
}

export function kindOf(stat: BigIntStats): EntryKind {
  if (stat.isFile()) return "file";
  if (stat.isDirectory()) return "dir";
  if (stat.isSymbolicLink()) return "symlink";
  return "other";
}

export function byNameBytes(a: string, b: string): number {
  return Buffer.compare(Buffer.from(a, "utf8"), Buffer.from(b, "utf8"));
}

async function listDir(abs: string, rel: string, hooks: WalkHooks): Promise<WalkEntry[]> {
  let names: string[];
  try {
    names = await readdir(abs);
  } catch (err) {
    hooks.warn(rel || ".", `cannot list the directory: ${(err as Error).message}`);
    return [];
  }
  names.sort(byNameBytes);
  const entries: WalkEntry[] = [];
  for (const name of names) {
    const path = rel === "" ? name : `${rel}/${name}`;
    const entryAbs = join(abs, name);
    try {
      const stat = lstatSync(entryAbs, { bigint: true });
      entries.push({ path, abs: entryAbs, kind: kindOf(stat), stat });
    } catch (err) {
      hooks.warn(path, `skipped, it vanished or cannot be read: ${(err as Error).message}`);
    }
  }
  return entries;
}

/** Yields every accepted entry under root (not root itself) in depth-first sorted order. */
export async function* walk(root: string, hooks: WalkHooks): AsyncGenerator<WalkEntry> {
  const stack: { entries: WalkEntry[]; next: number }[] = [{ entries: await listDir(root, "", hooks), next: 0 }];
  while (stack.length > 0) {
    hooks.signal?.throwIfAborted();
    const top = stack[stack.length - 1]!;
    const entry = top.entries[top.next++];
    if (!entry) {
      stack.pop();
      continue;
    }
    if (!hooks.accept(entry.path, entry.kind)) continue;
    yield entry;
    if (entry.kind === "dir") stack.push({ entries: await listDir(entry.abs, entry.path, hooks), next: 0 });
  }
}

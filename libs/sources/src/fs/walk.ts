/**
 * A depth-first walk of a directory tree with siblings sorted by the bytes of their UTF-8
 * names (parents before children), the order tree nodes are stored in. Symlinks are not
 * followed. Entries are lstat-ed with synchronous calls (on many small entries they cost a
 * fraction of the async ones; see readSmallFile in backup.ts); memory is bounded by the depth
 * times the width of the directories on the current path.
 *
 * Decision: repository format v1 stores paths as UTF-8 text. A name that is not valid UTF-8
 * (possible on Linux, where names are bytes) cannot be stored faithfully, so the entry is
 * skipped with a warning that names it (bytes escaped as \xNN) instead of being stored under a
 * mangled name that would restore as a different file.
 */
import { isUtf8 } from "node:buffer";
import { readdir } from "node:fs/promises";
import { lstatSync, type BigIntStats } from "node:fs";
import { join } from "node:path";
import { compareUtf8 } from "@iotvault/repo";

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

async function listDir(abs: string, rel: string, hooks: WalkHooks): Promise<WalkEntry[]> {
  let raw: Buffer[];
  try {
    raw = await readdir(abs, { encoding: "buffer" });
  } catch (err) {
    hooks.warn(rel || ".", `cannot list the directory: ${(err as Error).message}`);
    return [];
  }
  const names: string[] = [];
  for (const bytes of raw) {
    if (isUtf8(bytes)) {
      names.push(bytes.toString("utf8"));
    } else {
      const shown = escapeName(bytes);
      hooks.warn(
        rel === "" ? shown : `${rel}/${shown}`,
        "skipped: its name is not valid UTF-8 (iotvault stores UTF-8 paths); rename it to back it up",
      );
    }
  }
  names.sort(compareUtf8); // by the names' UTF-8 bytes
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

/** A name with invalid UTF-8: printable ASCII kept, every other byte as \xNN. */
function escapeName(bytes: Buffer): string {
  let out = "";
  for (const b of bytes)
    out += b >= 0x20 && b < 0x7f && b !== 0x5c ? String.fromCharCode(b) : `\\x${b.toString(16).padStart(2, "0")}`;
  return out;
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

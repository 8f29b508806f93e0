/**
 * What the benchmark checks a restore against: a manifest of a tree (type, mode, size, sha256 of
 * every file, symlink targets), and the apparent size of a directory (a repository).
 */
import { createHash } from "node:crypto";
import { closeSync, lstatSync, openSync, readSync, readdirSync, readlinkSync } from "node:fs";
import { join } from "node:path";

export interface ManifestEntry {
  type: "dir" | "file" | "symlink" | "other";
  mode: number;
  size: number;
  sha256?: string;
  target?: string;
}

export type Manifest = Map<string, ManifestEntry>;

const buffer = Buffer.allocUnsafe(4 << 20);

function sha256(path: string): string {
  const hash = createHash("sha256");
  const fd = openSync(path, "r");
  try {
    for (let n = readSync(fd, buffer); n > 0; n = readSync(fd, buffer)) hash.update(buffer.subarray(0, n));
  } finally {
    closeSync(fd);
  }
  return hash.digest("hex");
}

/** Every entry under `root` (not root itself), keyed by its root-relative path. */
export function manifest(root: string, rel = "", out: Manifest = new Map()): Manifest {
  for (const name of readdirSync(join(root, rel)).sort()) {
    const path = rel ? `${rel}/${name}` : name;
    const abs = join(root, path);
    const st = lstatSync(abs);
    const base = { mode: st.mode & 0o7777, size: 0 };
    if (st.isSymbolicLink()) out.set(path, { ...base, mode: 0, type: "symlink", target: readlinkSync(abs) });
    else if (st.isDirectory()) {
      out.set(path, { ...base, type: "dir" });
      manifest(root, path, out);
    } else if (st.isFile()) out.set(path, { ...base, type: "file", size: st.size, sha256: sha256(abs) });
    else out.set(path, { ...base, type: "other" });
  }
  return out;
}

/** Throws, listing the first differences, unless the tree at `root` matches `expected`. */
export function assertSameTree(expected: Manifest, root: string, what: string): void {
  const actual = manifest(root);
  const problems: string[] = [];
  for (const [path, e] of expected) {
    const a = actual.get(path);
    if (!a) problems.push(`missing ${path}`);
    else if (JSON.stringify(a) !== JSON.stringify(e))
      problems.push(`differs ${path}: ${JSON.stringify(a)} != ${JSON.stringify(e)}`);
  }
  for (const path of actual.keys()) if (!expected.has(path)) problems.push(`unexpected ${path}`);
  if (problems.length > 0) {
    throw new Error(
      `${what} is not the source tree (${problems.length} differences):\n  ${problems.slice(0, 10).join("\n  ")}`,
    );
  }
}

/** Sum of the sizes of the regular files under `root` (a repository's size on storage). */
export function treeBytes(root: string): number {
  let total = 0;
  for (const name of readdirSync(root)) {
    const abs = join(root, name);
    const st = lstatSync(abs);
    if (st.isDirectory()) total += treeBytes(abs);
    else if (st.isFile()) total += st.size;
  }
  return total;
}

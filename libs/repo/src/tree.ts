/**
 * Tree nodes: the contract between sources, the repository and restore. A snapshot's tree is
 * a stream of JSON lines (one node per line, members in a fixed order) stored as "tree" blobs.
 */
import { corrupt, isId } from "./format.js";

export type NodeType = "dir" | "file" | "symlink";

export interface TreeNode {
  /** Snapshot-relative POSIX path, no leading "/", never "." or ".." segments. */
  path: string;
  type: NodeType;
  /** Permission bits plus setuid/setgid/sticky (mode & 0o7777). */
  mode: number;
  /** Modification time, nanoseconds since the epoch, as a decimal string. */
  mtimeNs: string;
  uid: number;
  gid: number;
  /** Files: plain size in bytes. */
  size?: number;
  /** Files: change detection against the parent snapshot. */
  inode?: string;
  dev?: string;
  ctimeNs?: string;
  /** Symlinks: the link text, unchanged. */
  target?: string;
  /** Files: chunk ids in order (empty for an empty file). */
  chunks?: string[];
  /** Files: hex sha256 of the whole plain content. */
  sha256?: string;
}

const NODE_TYPES: ReadonlySet<string> = new Set(["dir", "file", "symlink"]);
const DECIMAL = /^(0|[1-9][0-9]*)$/;
const SHA256 = /^[0-9a-f]{64}$/;

/** One JSON line for a node, members in a fixed order so equal trees give equal bytes. */
export function encodeNode(node: TreeNode): string {
  const out: Record<string, unknown> = {
    path: node.path,
    type: node.type,
    mode: node.mode,
    mtimeNs: node.mtimeNs,
    uid: node.uid,
    gid: node.gid,
  };
  if (node.size !== undefined) out["size"] = node.size;
  if (node.inode !== undefined) out["inode"] = node.inode;
  if (node.dev !== undefined) out["dev"] = node.dev;
  if (node.ctimeNs !== undefined) out["ctimeNs"] = node.ctimeNs;
  if (node.target !== undefined) out["target"] = node.target;
  if (node.chunks !== undefined) out["chunks"] = node.chunks;
  if (node.sha256 !== undefined) out["sha256"] = node.sha256;
  return JSON.stringify(out) + "\n";
}

const isUint = (v: unknown): v is number => typeof v === "number" && Number.isSafeInteger(v) && v >= 0;
const isDecimal = (v: unknown): v is string => typeof v === "string" && DECIMAL.test(v);

/**
 * Structural check of a node (types and formats, not path safety: restore checks that, because
 * a tree is never trusted). Returns what is wrong, or undefined.
 */
export function nodeProblem(node: unknown): string | undefined {
  if (typeof node !== "object" || node === null) return "is not an object";
  const n = node as Record<string, unknown>;
  if (typeof n["path"] !== "string" || n["path"] === "") return "has no path";
  if (typeof n["type"] !== "string" || !NODE_TYPES.has(n["type"])) return "has an unknown type";
  if (!isUint(n["mode"]) || n["mode"] > 0o7777) return "has an invalid mode";
  if (!isDecimal(n["mtimeNs"])) return "has an invalid mtimeNs";
  if (!isUint(n["uid"]) || !isUint(n["gid"])) return "has an invalid uid or gid";
  if (n["size"] !== undefined && !isUint(n["size"])) return "has an invalid size";
  for (const key of ["inode", "dev", "ctimeNs"]) {
    if (n[key] !== undefined && !isDecimal(n[key])) return `has an invalid ${key}`;
  }
  if (n["type"] === "symlink" && typeof n["target"] !== "string") return "is a symlink without a target";
  if (n["chunks"] !== undefined && (!Array.isArray(n["chunks"]) || !n["chunks"].every(isId))) {
    return "has invalid chunk ids";
  }
  if (n["sha256"] !== undefined && (typeof n["sha256"] !== "string" || !SHA256.test(n["sha256"]))) {
    return "has an invalid sha256";
  }
  return undefined;
}

export function decodeNode(line: string, where: string): TreeNode {
  let value: unknown;
  try {
    value = JSON.parse(line);
  } catch {
    throw corrupt(`${where} is not valid JSON`);
  }
  const problem = nodeProblem(value);
  if (problem) throw corrupt(`${where} ${problem}`);
  return value as TreeNode;
}

/**
 * Why `path` is not a safe snapshot-relative path (absolute, "." or ".." or empty segments,
 * a NUL byte), or undefined when it is safe.
 */
export function unsafePathReason(path: string): string | undefined {
  if (path === "") return "the path is empty";
  if (path.includes("\0")) return "the path contains a NUL byte";
  if (path.startsWith("/")) return "the path is absolute";
  for (const segment of path.split("/")) {
    if (segment === "") return "the path has an empty segment";
    if (segment === "..") return "the path contains a '..' segment";
    if (segment === ".") return "the path contains a '.' segment";
  }
  return undefined;
}

/**
 * Compares two strings as Buffer.compare compares their UTF-8 bytes, without encoding them:
 * UTF-16 code units are in code point order (which is UTF-8's byte order) except where a
 * surrogate meets U+E000-U+FFFF, and there (or for a lone surrogate, which UTF-8 encodes as
 * U+FFFD) the bytes decide. Sorting names and merging walks compare every name many times.
 */
export function compareUtf8(a: string, b: string): number {
  if (a === b) return 0;
  const n = Math.min(a.length, b.length);
  for (let i = 0; i < n; i++) {
    const x = a.charCodeAt(i);
    const y = b.charCodeAt(i);
    if (x === y) continue;
    if ((x & 0xf800) === 0xd800 || (y & 0xf800) === 0xd800) {
      return Buffer.compare(Buffer.from(a, "utf8"), Buffer.from(b, "utf8"));
    }
    return x - y;
  }
  // One is a prefix of the other: the shorter comes first (also when it ends inside a surrogate
  // pair of the longer: alone, that unit is U+FFFD, EF BF BD, below the pair's F0-F4 lead byte).
  return a.length - b.length;
}

/**
 * Orders paths as a depth-first walk with siblings sorted by the bytes of their names
 * (parents before children). Sources add nodes in this order; merge-joins rely on it.
 */
export function comparePaths(a: string, b: string): number {
  if (a === b) return 0;
  let i = 0;
  let j = 0;
  for (;;) {
    const endA = a.indexOf("/", i);
    const endB = b.indexOf("/", j);
    const c = compareUtf8(a.slice(i, endA < 0 ? a.length : endA), b.slice(j, endB < 0 ? b.length : endB));
    if (c !== 0) return c;
    // Equal so far: the path with fewer segments comes first.
    if (endA < 0 || endB < 0) return (endA < 0 ? 0 : 1) - (endB < 0 ? 0 : 1);
    i = endA + 1;
    j = endB + 1;
  }
}

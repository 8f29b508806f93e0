/** Walks a directory tree into comparable entries (type, mode, mtime, size, content hash, link target). */
import { createHash } from "node:crypto";
import { createReadStream } from "node:fs";
import { lstat, readdir, readlink } from "node:fs/promises";
import { join } from "node:path";

export interface Entry {
  path: string;
  type: "dir" | "file" | "symlink" | "other";
  mode: number;
  /** Microseconds: what a restore keeps (Node's utimes go through libuv, which sets microseconds). */
  mtimeUs: number;
  size: number;
  sha256?: string;
  target?: string;
}

async function sha256(path: string): Promise<string> {
  const h = createHash("sha256");
  for await (const chunk of createReadStream(path)) h.update(chunk as Buffer);
  return h.digest("hex");
}

export async function walk(root: string, rel = ""): Promise<Entry[]> {
  const out: Entry[] = [];
  const names = (await readdir(join(root, rel))).sort();
  for (const name of names) {
    const p = rel ? `${rel}/${name}` : name;
    // From the exact nanoseconds: Math.floor of stat's mtimeMs (a double) can tell apart two
    // times in the same microsecond when they lie next to a millisecond boundary.
    const st = await lstat(join(root, p), { bigint: true });
    const base = { path: p, mode: Number(st.mode) & 0o7777, mtimeUs: Number(st.mtimeNs / 1000n), size: 0 };
    if (st.isSymbolicLink()) out.push({ ...base, type: "symlink", target: await readlink(join(root, p)) });
    else if (st.isDirectory()) {
      out.push({ ...base, type: "dir" });
      out.push(...(await walk(root, p)));
    } else if (st.isFile())
      out.push({ ...base, type: "file", size: Number(st.size), sha256: await sha256(join(root, p)) });
    else out.push({ ...base, type: "other" });
  }
  return out;
}

/** Symlink mtimes are not compared (not every platform can set them); everything else is. */
export function comparable(entries: Entry[]): Entry[] {
  return entries.map((e) => (e.type === "symlink" ? { ...e, mtimeUs: 0, mode: 0 } : e));
}

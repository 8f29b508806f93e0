/**
 * Reading a restored file back: the SHA-256 and length of what an open descriptor returns from
 * offset 0 to its end, in 1 MiB reads. The synchronous form runs in a worker thread (a
 * restore's check of what it wrote, beside the workers' other jobs), the asynchronous one on
 * the calling thread with reads in the thread pool (a repository without worker threads).
 */
import { createHash } from "node:crypto";
import { read, readSync } from "node:fs";
import { promisify } from "node:util";

export interface ReadBack {
  sha256: string;
  size: number;
}

const READ_BYTES = 1024 * 1024;
const readAt = promisify(read);

export function readBackSync(fd: number, buffer: Buffer = Buffer.allocUnsafe(READ_BYTES)): ReadBack {
  const hash = createHash("sha256");
  let size = 0;
  for (let n = readSync(fd, buffer, 0, buffer.length, 0); n > 0; n = readSync(fd, buffer, 0, buffer.length, size)) {
    hash.update(buffer.subarray(0, n));
    size += n;
  }
  return { sha256: hash.digest("hex"), size };
}

export async function readBack(fd: number, sizeHint: number): Promise<ReadBack> {
  const hash = createHash("sha256");
  const buffer = Buffer.allocUnsafe(Math.min(READ_BYTES, Math.max(1, sizeHint)));
  let size = 0;
  for (;;) {
    const { bytesRead } = await readAt(fd, buffer, 0, buffer.length, size);
    if (bytesRead === 0) break;
    hash.update(buffer.subarray(0, bytesRead));
    size += bytesRead;
  }
  return { sha256: hash.digest("hex"), size };
}

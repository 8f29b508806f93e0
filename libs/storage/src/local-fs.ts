import type { Dirent, Stats } from "node:fs";
import * as fsp from "node:fs/promises";

/** The part of a file handle LocalDirectoryStore uses (node's FileHandle satisfies it). */
export interface LocalFileHandle {
  write(buffer: Uint8Array, offset: number, length: number): Promise<{ bytesWritten: number }>;
  read(buffer: Uint8Array, offset: number, length: number, position: number): Promise<{ bytesRead: number }>;
  stat(): Promise<Stats>;
  sync(): Promise<void>;
  close(): Promise<void>;
}

/**
 * The file-system calls LocalDirectoryStore makes. The default is node:fs/promises; tests
 * inject a layer that fails with a chosen errno (EACCES cannot be provoked as root, ENOSPC
 * needs a full volume) to check how each failure is reported.
 */
export interface LocalFs {
  open(path: string, flags: string, mode?: number): Promise<LocalFileHandle>;
  rename(from: string, to: string): Promise<void>;
  link(existing: string, newPath: string): Promise<void>;
  unlink(path: string): Promise<void>;
  mkdir(path: string, mode: number): Promise<void>;
  readdir(path: string): Promise<Dirent[]>;
  lstat(path: string): Promise<Stats>;
  stat(path: string): Promise<Stats>;
}

export const nodeFs: LocalFs = {
  open: (path, flags, mode) => fsp.open(path, flags, mode),
  rename: (from, to) => fsp.rename(from, to),
  link: (existing, newPath) => fsp.link(existing, newPath),
  unlink: (path) => fsp.unlink(path),
  mkdir: async (path, mode) => {
    await fsp.mkdir(path, { mode });
  },
  readdir: (path) => fsp.readdir(path, { withFileTypes: true }),
  lstat: (path) => fsp.lstat(path),
  stat: (path) => fsp.stat(path),
};

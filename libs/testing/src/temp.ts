import { rmSync } from "node:fs";
import { mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { onProcessExit } from "./exit-hooks.js";

export interface TempDir {
  /** Absolute path of the new, empty directory. */
  path: string;
  /** Removes the directory and everything in it; safe to call twice. */
  cleanup(): Promise<void>;
}

/**
 * Creates an empty directory under the OS temp dir. It is removed by `cleanup()`, or at process
 * exit if the test forgot (or failed before) calling it.
 */
export async function tempDir(prefix = "iotvault-test-"): Promise<TempDir> {
  const path = await mkdtemp(join(tmpdir(), prefix));
  const unregister = onProcessExit(() => rmSync(path, { recursive: true, force: true }));
  return {
    path,
    async cleanup() {
      unregister();
      await rm(path, { recursive: true, force: true, maxRetries: 3 });
    },
  };
}

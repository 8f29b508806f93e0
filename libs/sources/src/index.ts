/**
 * @iotvault/sources — source adapters. For now the file-system source: back up a directory
 * into a repository (include/exclude globs, unchanged files taken from a parent snapshot),
 * and restore a snapshot into a directory, confined to it.
 *
 * ```ts
 * import { backupDirectory, parseSourceUrl, restoreToDirectory } from "@iotvault/sources";
 * const { root } = parseSourceUrl("fs:/srv/iot");
 * const writer = await repo.startBackup({ runId, parent });
 * const result = await backupDirectory(repo, writer, { root, exclude: ["*.tmp"], parent });
 * const { snapshot } = await writer.commit({ jobId, jobName, source: "fs:/srv/iot", backupType: "full" });
 * await restoreToDirectory(repo, snapshot, { target: "/tmp/restore", verify: true });
 * ```
 */
export {
  backupDirectory,
  type BackupDirectoryOptions,
  type BackupDirectoryResult,
  type FsProgress,
  type FsWarning,
} from "./fs/backup.js";
export { restoreToDirectory, type RestoreDirectoryOptions, type RestoreDirectoryResult } from "./fs/restore.js";
export { parseSourceUrl } from "./fs/url.js";
export { compileGlobs } from "./fs/globs.js";

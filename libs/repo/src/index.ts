/**
 * @iotvault/repo — repository format v1: content-defined chunking (FastCDC), keyed chunk ids,
 * zstd, AES-256-GCM, packs, index files and snapshot manifests on any ObjectStore.
 * The format is documented byte by byte in docs/repository-format.md.
 *
 * ```ts
 * import { Repository } from "@iotvault/repo";
 * const repo = await Repository.init(store, password);          // or Repository.open(...)
 * const writer = await repo.startBackup({ runId: "run-42" });
 * await writer.addNode({ path: "etc", type: "dir", mode: 0o755, mtimeNs: "0", uid: 0, gid: 0 });
 * await writer.addFile({ path: "etc/app.yaml", type: "file", mode: 0o644, mtimeNs: "0", uid: 0, gid: 0 }, content);
 * const { snapshot, stats } = await writer.commit({ jobId: "j1", jobName: "cfg", source: "fs:/srv", backupType: "full" });
 * for await (const node of repo.readTree(snapshot)) if (node.type === "file") for await (const b of repo.readFile(node)) use(b);
 * const report = await repo.verify({ readData: true });
 * await repo.forget({ policy: { keepDaily: 7, keepWeekly: 4 }, jobId: "j1" }); // manifests only
 * await repo.prune({ lockWaitMs: 60_000 });                                     // frees the data
 * await repo.close();
 * ```
 */
export { Repository, workerThreadsOf, type RepositoryOptions } from "./repository.js";
export { keepWorkerThreadsReady } from "./workers.js";
export { KeyPreparer } from "./key-prep.js";
export {
  LOCAL_FILE_MAX_BYTES,
  type AddFileOptions,
  type BackupOptions,
  type BackupProgressInfo,
  type BackupWriter,
  type EarlyLocalFile,
  type LocalFileOptions,
  type LocalFileOutcome,
} from "./backup.js";
export { NEW_FILE_FLAGS, type LocalFileStat, type NewFile } from "./pipeline-core.js";
export type { FileReader, ReadAheadOptions } from "./read-ahead.js";
export type { BackupStatsInfo, BackupTypeName, SnapshotManifest, SnapshotMeta, TreeRef } from "./snapshot.js";
export { snapshotGroupId } from "./snapshot.js";
export { compareUtf8, comparePaths, unsafePathReason, type NodeType, type TreeNode } from "./tree.js";
export type { VerifyOptions, VerifyProblem, VerifyProblemKind, VerifyProgressInfo, VerifyReport } from "./verify.js";
export { FORMAT_VERSION } from "./format.js";
export { SEALED_PREFIXES, type SealedPutResult } from "./sealed-objects.js";
export { MIN_KEY_FILE_BYTES, type RepositorySecret } from "./keys.js";
export type { KeyListing, RotateOptions, RotateResult } from "./key-admin.js";
export type { ChunkerParams } from "./config.js";
export type { LockInfo, LockKind, RepositoryLock } from "./locks.js";
export type { Hold } from "./holds.js";
export {
  decideRetention,
  policyFromJobRetention,
  type ForgetDecision,
  type ForgetOptions,
  type ForgetResult,
  type RetentionCandidate,
  type RetentionPolicy,
} from "./retention.js";
export { DEFAULT_REPACK_THRESHOLD, type PruneOptions, type PruneProgress, type PruneResult } from "./prune.js";

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
// What the services use (no semantic libraries): the registry, files, PostgreSQL recovery and drills.
export {
  backupDirectory,
  drillPostgres,
  gatewayRestoreCommand,
  isPgSnapshot,
  pgMetadataOf,
  registerSourceAdapter,
  restoreToDirectory,
  sourceAdapterFor,
  sourceSchemes,
  validateSourceUrl,
  type BackupContext,
  type BackupDirectoryOptions,
  type BackupDirectoryResult,
  type BackupKind,
  type BackupSourceResult,
  type DrillCheckResult,
  type PgDrillOptions,
  type PgDrillResult,
  type PgSnapshotMetadata,
  type RecoveryOutcome,
  type RecoveryPoint,
  type RestoreContext,
  type RestoreDirectoryOptions,
  type RestoreDirectoryResult,
  type RestoreTargetResult,
  type SourceAdapter,
  type SourceJob,
  type SourceProgress,
  type SourceWarning,
  type WalFetchCommand,
} from "./core.js";
export { type FsProgress, type FsWarning } from "./fs/backup.js";
export { parseSourceUrl } from "./fs/url.js";
export { fsAdapter } from "./adapters/fs.js";
export { compileGlobs } from "./fs/globs.js";
export { rdfAdapter } from "./rdf/adapter.js";
export { rulesAdapter } from "./rules/adapter.js";
export { configAdapter } from "./config/adapter.js";
export { kvAdapter, keyPath, parseKvUrl } from "./kv/adapter.js";
export {
  graphPath,
  parseSparqlUrl,
  sparqlAdapter,
  SYSTEM_GRAPH_PREFIXES,
  type SparqlSource,
} from "./sparql/adapter.js";
export {
  CATALOG_PREFIX,
  catalogSummaryOf,
  loadCatalog,
  type CatalogEntry,
  type CatalogSummary,
  type EntryStatus,
  type SemanticCatalog,
  type SemanticSourceKind,
} from "./rdf/catalog.js";
export {
  diffSnapshots,
  type DiffSnapshotsOptions,
  type FileChange,
  type GraphChange,
  type OntologyChange,
  type SnapshotDiff,
} from "./rdf/diff.js";
export type { ShaclDetails } from "./rdf/shacl.js";
export { pgAdapter, type PgServices } from "./pg/adapter.js";
export {
  parsePostgresUrl,
  redactPostgresUrl,
  type PgConnection,
  type PgMode,
  type PgSourceUrl,
  type RowCheck,
} from "./pg/url.js";
export {
  DEFAULT_WAL_SEGMENT_SIZE,
  formatLsn,
  listWal,
  listWalSystems,
  parseLsn,
  segmentName,
  systemIdFromPgControl,
  walFetch,
  walFileKind,
  walKey,
  walPrune,
  walPush,
  type WalFileKind,
  type WalObject,
  type WalPruneOptions,
  type WalPruneResult,
  type WalPushOptions,
  type WalPushResult,
  type WalRepository,
} from "./pg/wal.js";
export { shellQuote } from "./pg/recovery.js";
export { type TableRecord } from "./pg/metadata.js";
export { LocalCluster, freeLoopbackPort, type ClusterOptions } from "./pg/cluster.js";

/**
 * `@iotvault/sources/core` — what the services need without the semantic sources' libraries:
 * the registry (semantic adapters load on their first use), the file-system backup and restore,
 * and PostgreSQL's recovery and drill helpers. The package's main entry exports all of this too,
 * and loads the RDF stack with it (~27 MiB in a bare process, ~11-14 MiB more in a service).
 */
export { registerSourceAdapter, sourceAdapterFor, sourceSchemes, validateSourceUrl } from "./registry.js";
export type {
  BackupContext,
  BackupKind,
  BackupSourceResult,
  RecoveryPoint,
  RestoreContext,
  RestoreTargetResult,
  SourceAdapter,
  SourceJob,
  SourceProgress,
  SourceWarning,
} from "./adapter.js";
export { backupDirectory, type BackupDirectoryOptions, type BackupDirectoryResult } from "./fs/backup.js";
export { restoreToDirectory, type RestoreDirectoryOptions, type RestoreDirectoryResult } from "./fs/restore.js";
export { gatewayRestoreCommand, type RecoveryOutcome, type WalFetchCommand } from "./pg/recovery.js";
export { drillPostgres, type DrillCheckResult, type PgDrillOptions, type PgDrillResult } from "./pg/drill.js";
export { isPgSnapshot, pgMetadataOf, type PgSnapshotMetadata } from "./pg/metadata.js";

/**
 * The source adapter contract: how the executor backs up any kind of source (file system,
 * PostgreSQL, configuration, semantic models, rules) into one snapshot, and how a snapshot is
 * brought back to a target. Each kind registers itself by URL scheme (registry.ts).
 */
import type { BackupWriter, Repository, SnapshotManifest } from "@iotvault/repo";

export type BackupKind = "full" | "incremental" | "differential";

export interface SourceJob {
  id: string;
  name: string;
  /** The source URL (fs:/path, postgres://..., kv:bucket, rdf:/path, sparql+http://..., rules:/path). */
  source: string;
  include: readonly string[];
  exclude: readonly string[];
  labels: Readonly<Record<string, string>>;
}

export interface SourceProgress {
  filesDone: number;
  bytesDone: number;
  currentPath: string;
}

export interface SourceWarning {
  path: string;
  message: string;
}

export interface BackupContext {
  repo: Repository;
  writer: BackupWriter;
  job: SourceJob;
  backupType: BackupKind;
  /** The parent snapshot chosen for this type (newest for incremental, newest full for differential). */
  parent: SnapshotManifest | undefined;
  /** Services a source may need (e.g. the NATS connection for kv: sources), by name. */
  services: Readonly<Record<string, unknown>>;
  signal: AbortSignal;
  onProgress(p: SourceProgress): void;
  onWarning(w: SourceWarning): void;
}

export interface BackupSourceResult {
  files: number;
  dirs: number;
  symlinks: number;
  bytes: number;
  warnings: number;
  /** Source-specific facts recorded in the snapshot manifest (LSNs, canonical hashes, ...). */
  metadata: Record<string, unknown>;
}

export interface RestoreContext {
  repo: Repository;
  snapshot: SnapshotManifest;
  /** An absolute directory, or a URL of the source's kind (postgres://..., kv:bucket, ...). */
  target: string;
  include: readonly string[];
  overwrite: boolean;
  verify: boolean;
  allowExternalSymlinks: boolean;
  /** Source-specific options (e.g. tables, create database, recovery target). */
  options: Readonly<Record<string, string>>;
  services: Readonly<Record<string, unknown>>;
  signal: AbortSignal;
  onProgress(p: SourceProgress): void;
}

export interface RestoreTargetResult {
  files: number;
  dirs: number;
  symlinks: number;
  bytes: number;
  verified: boolean;
  /** What the restore checked beyond checksums, for the result and the event (free form). */
  details: Record<string, unknown>;
}

export interface SourceAdapter {
  /** URL schemes this adapter handles, without the colon (e.g. ["fs"], ["postgres", "postgresql"]). */
  readonly schemes: readonly string[];
  /** Checks a source URL without touching the source (INVALID_ARGUMENT naming the problem). */
  validate(url: string): void;
  backup(ctx: BackupContext): Promise<BackupSourceResult>;
  restore(ctx: RestoreContext): Promise<RestoreTargetResult>;
  /**
   * Consistency groups: marks the source's recovery point after every member of a group was
   * captured, when the source can (PostgreSQL: a named restore point in its WAL). A group
   * restore brings this member back to exactly that point with the returned restore options.
   */
  recoveryPoint?(url: string, label: string, signal: AbortSignal): Promise<RecoveryPoint | undefined>;
}

export interface RecoveryPoint {
  /** Source-specific description (e.g. the LSN), recorded in every member's manifest. */
  description: Record<string, string>;
  /** Restore options that bring this member to the point (e.g. recovery_target_name). */
  restoreOptions: Record<string, string>;
}

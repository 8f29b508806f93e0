/**
 * What a PostgreSQL snapshot records about itself, under `metadata.postgres` of the manifest
 * (format 1). Restores, drills and WAL retention read it back with pgMetadataOf().
 */
import { IotvaultError } from "@iotvault/errors";
import type { SnapshotManifest } from "@iotvault/repo";
import type { PgMode, RowCheck } from "./url.js";

/** Per-table facts of a logical backup (and of a physical one with rowcheck). */
export interface TableRecord {
  schema: string;
  name: string;
  /** The tree node with the table's data dump (logical). */
  node?: string | undefined;
  /** Rows seen by the backup's snapshot (undefined when rowcheck is none). */
  rows?: number | undefined;
  /** Order-independent checksum of the rows' text (rowcheck checksum). */
  checksum?: string | undefined;
  /** Subsidiary objects, for a restore of chosen tables. */
  indexes: string[];
  sequences: string[];
  foreignKeys: { name: string; refSchema: string; refTable: string }[];
  /** User-defined types and domains its columns use (created by a table-level restore when missing). */
  types?: { schema: string; name: string }[] | undefined;
}

export interface DatabaseRecord {
  name: string;
  /** Tables with row counts/checksums (physical with rowcheck only). */
  tables?: TableRecord[] | undefined;
}

export interface PgSnapshotMetadata {
  format: 1;
  mode: PgMode;
  serverVersion: string;
  serverVersionNum: number;
  /** Decimal system identifier ("" when the role may not read it, logical only). */
  systemIdentifier: string;
  rowcheck: RowCheck;
  // ---- logical
  database?: string | undefined;
  encoding?: string | undefined;
  /** Tree node of pg_dump's archive of everything but the tables' data. */
  schemaNode?: string | undefined;
  /** Tree node of pg_dumpall --globals-only (roles, tablespaces; no passwords). */
  globalsNode?: string | undefined;
  tables?: TableRecord[] | undefined;
  // ---- physical
  walSegmentSize?: number | undefined;
  startLsn?: string | undefined;
  stopLsn?: string | undefined;
  timeline?: number | undefined;
  stopTimeline?: number | undefined;
  startTime?: string | undefined;
  stopTime?: string | undefined;
  backupLabel?: string | undefined;
  tablespaceMap?: string | undefined;
  /** WAL files start..stop the backup needs (all stored in the WAL archive). */
  walSegments?: string[] | undefined;
  dataDirectory?: string | undefined;
  dataDirOwner?: { uid: number; gid: number; mode: number } | undefined;
  /** Configuration files that live outside the data directory (not in the snapshot). */
  externalConfig?: string[] | undefined;
  databases?: DatabaseRecord[] | undefined;
  /** Row counts were taken with no transaction committing until the backup's end. */
  rowsExact?: boolean | undefined;
  fromStandby?: boolean | undefined;
  parentSnapshot?: string | undefined;
  filesRead?: number | undefined;
  filesUnchanged?: number | undefined;
}

/** The PostgreSQL metadata of a snapshot; FAILED_PRECONDITION when it is not a PostgreSQL one. */
export function pgMetadataOf(snapshot: SnapshotManifest): PgSnapshotMetadata {
  const pg = snapshot.metadata["postgres"] as Partial<PgSnapshotMetadata> | undefined;
  if (!pg || typeof pg !== "object" || (pg.mode !== "logical" && pg.mode !== "physical")) {
    throw new IotvaultError("FAILED_PRECONDITION", `snapshot ${snapshot.id.slice(0, 12)} is not a PostgreSQL backup`, {
      hint: "restore it with its own kind of target (a directory for fs: snapshots)",
    });
  }
  if (pg.format !== 1) {
    throw new IotvaultError(
      "FAILED_PRECONDITION",
      `snapshot ${snapshot.id.slice(0, 12)} has PostgreSQL metadata format ${String(pg.format)}`,
      {
        hint: "restore it with the iotvault version that made it or a newer one",
      },
    );
  }
  return pg as PgSnapshotMetadata;
}

/** True when the snapshot is a PostgreSQL backup (any mode). */
export function isPgSnapshot(snapshot: SnapshotManifest): boolean {
  const pg = snapshot.metadata["postgres"] as { mode?: unknown } | undefined;
  return pg?.mode === "logical" || pg?.mode === "physical";
}

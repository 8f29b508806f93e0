/**
 * Physical backup of a PostgreSQL cluster with the low-level backup API, on the database host:
 *
 *   pg_backup_start(label, fast) on a dedicated session
 *   -> copy the data directory (physical-walk.ts: file-level incremental against the parent)
 *   -> pg_backup_stop(wait_for_archive) -> backup_label and tablespace_map into the metadata
 *   -> every WAL segment from the start to the stop LSN stored in the WAL archive (already
 *      there when archive_command is iotvault wal-push; copied from pg_wal otherwise)
 *
 * so that the snapshot restores on its own (no other snapshot is needed; WAL after the stop
 * LSN only for point-in-time recovery). If the run dies, the session ends and PostgreSQL
 * aborts the backup by itself; nothing is committed.
 */
import { readFileSync, statSync } from "node:fs";
import { join, resolve } from "node:path";
import { IotvaultError } from "@iotvault/errors";
import type { BackupWriter, Repository, SnapshotManifest } from "@iotvault/repo";
import type pg from "pg";
import type { SourceProgress } from "../adapter.js";
import { classifyPgError, connectPg, withPg } from "./connection.js";
import { pgMetadataOf, type DatabaseRecord, type PgSnapshotMetadata } from "./metadata.js";
import { copyDataDirectory, type CopyResult } from "./physical-walk.js";
import { listTables, measureTables } from "./rowcheck.js";
import { describeConnection, type PgSourceUrl } from "./url.js";
import {
  parseLsn,
  segmentName,
  segmentNumber,
  systemIdFromPgControl,
  walKey,
  walPrefix,
  type WalRepository,
} from "./wal.js";

export interface PhysicalBackupOptions {
  source: PgSourceUrl;
  /** Snapshot id or run id, for the backup label. */
  label: string;
  parent?: SnapshotManifest | undefined;
  signal?: AbortSignal | undefined;
  onProgress?: ((p: SourceProgress) => void) | undefined;
  onWarning?: ((w: { path: string; message: string }) => void) | undefined;
  /**
   * Wait up to this long for archive_command to store the backup's last segment before copying
   * missing segments from pg_wal (default 0: copy at once; tests whose archive runs as another
   * OS user wait).
   */
  archiverWaitMs?: number | undefined;
}

export interface PhysicalBackupResult extends CopyResult {
  metadata: PgSnapshotMetadata;
}

interface ServerInfo {
  version: string;
  num: number;
  sysid: string;
  data_directory: string | null;
  wal_segment_size: string;
  standby: boolean;
  archive_mode: string;
  config_file: string | null;
  hba_file: string | null;
  ident_file: string | null;
  tablespaces: string;
}

const INFO_SQL = `
SELECT current_setting('server_version') AS version,
       current_setting('server_version_num')::int AS num,
       (SELECT system_identifier::text FROM pg_control_system()) AS sysid,
       current_setting('data_directory', true) AS data_directory,
       (SELECT setting FROM pg_settings WHERE name = 'wal_segment_size') AS wal_segment_size,
       pg_is_in_recovery() AS standby,
       current_setting('archive_mode') AS archive_mode,
       current_setting('config_file', true) AS config_file,
       current_setting('hba_file', true) AS hba_file,
       current_setting('ident_file', true) AS ident_file,
       (SELECT count(*) FROM pg_tablespace WHERE spcname NOT IN ('pg_default', 'pg_global'))::text AS tablespaces`;

/** Backs up the cluster into `writer` (the caller commits); returns the snapshot metadata. */
export async function backupPhysical(
  repo: Repository,
  writer: BackupWriter,
  options: PhysicalBackupOptions,
): Promise<PhysicalBackupResult> {
  const src = options.source;
  const where = describeConnection(src);
  const client = await connectPg(src, { signal: options.signal, applicationName: "iotvault physical backup" });
  const cancel = () => void cancelBackend(src, client);
  options.signal?.addEventListener("abort", cancel, { once: true });
  try {
    const info = await query1<ServerInfo>(client, INFO_SQL, [], `reading the settings of ${where}`);
    const pgdata = checkDataDirectory(options.source.pgdata ?? info.data_directory ?? undefined, info, where);
    if (info.standby) {
      throw new IotvaultError("FAILED_PRECONDITION", `${where} is a standby (in recovery)`, {
        hint: "physical backups from a standby are not supported yet: back up the primary",
      });
    }
    if (Number(info.tablespaces) > 0) {
      throw new IotvaultError("FAILED_PRECONDITION", `${where} has tablespaces outside its data directory`, {
        hint: "physical backups of clusters with tablespaces are not supported yet; use a logical backup (mode=logical)",
      });
    }
    const parent = usableParent(options.parent, info.sysid, options.onWarning);
    const startTime = new Date();
    const start = await startBackup(client, info.num, `iotvault ${options.label}`);
    const { timeline_id: timeline } = await query1<{ timeline_id: number }>(
      client,
      "SELECT timeline_id FROM pg_control_checkpoint()",
      [],
      "reading the timeline",
    );
    const copied = await copyDataDirectory(repo, writer, {
      root: pgdata,
      parent: parent?.snapshot,
      parentStartMs: parent?.startMs,
      signal: options.signal,
      onProgress: options.onProgress,
    });
    const rows = src.rowcheck === "none" ? undefined : await countRows(client, src, options.signal);
    const stop = await stopBackup(client, info.num);
    const rowsExact = rows ? (await currentSnapshot(client)) === rows.snapshotBefore : undefined;
    const segmentSize = Number(info.wal_segment_size) || 16 * 1024 * 1024;
    const segments = walSegmentsOf(timeline, parseLsn(start), parseLsn(stop.lsn), segmentSize);
    if (options.archiverWaitMs && info.archive_mode !== "off") {
      await waitForArchiver(client, segments.at(-1)!, options.archiverWaitMs, options.signal);
    }
    await storeBackupWal(repo, info.sysid, timeline, segments, pgdata, options.signal);
    const owner = statSync(pgdata);
    const metadata: PgSnapshotMetadata = {
      format: 1,
      mode: "physical",
      serverVersion: info.version,
      serverVersionNum: info.num,
      systemIdentifier: info.sysid,
      rowcheck: src.rowcheck,
      walSegmentSize: segmentSize,
      startLsn: start,
      stopLsn: stop.lsn,
      timeline,
      startTime: startTime.toISOString(),
      stopTime: new Date().toISOString(),
      backupLabel: stop.labelfile,
      tablespaceMap: stop.spcmapfile ?? "",
      walSegments: segments,
      dataDirectory: pgdata,
      dataDirOwner: { uid: owner.uid, gid: owner.gid, mode: owner.mode & 0o7777 },
      externalConfig: [info.config_file, info.hba_file, info.ident_file].filter(
        (f): f is string => !!f && !resolve(f).startsWith(resolve(pgdata) + "/"),
      ),
      databases: rows?.databases ?? (await databaseNames(client)).map((name) => ({ name })),
      ...(rowsExact !== undefined ? { rowsExact } : {}),
      fromStandby: info.standby,
      ...(parent ? { parentSnapshot: parent.snapshot.id } : {}),
      filesRead: copied.filesRead,
      filesUnchanged: copied.unchanged,
    };
    return { ...copied, metadata };
  } catch (err) {
    if (options.signal?.aborted)
      throw new IotvaultError("CANCELLED", "the physical backup was cancelled", { cause: err });
    throw classifyPgError(err, `physical backup of ${where}`);
  } finally {
    options.signal?.removeEventListener("abort", cancel);
    // Ending the session aborts a backup that was started and not stopped (non-exclusive mode).
    await client.end().catch(() => undefined);
  }
}

async function query1<T extends object>(client: pg.Client, sql: string, args: unknown[], what: string): Promise<T> {
  try {
    const { rows } = await client.query<T & pg.QueryResultRow>(sql, args);
    return rows[0]!;
  } catch (err) {
    throw classifyPgError(err, what);
  }
}

/** Cancels the session's running statement (a pg_backup_stop waiting for the archiver). */
async function cancelBackend(src: PgSourceUrl, client: pg.Client): Promise<void> {
  const pid = (client as unknown as { processID?: number }).processID;
  if (!pid) return;
  await withPg(src, (c) => c.query("SELECT pg_cancel_backend($1)", [pid])).catch(() => undefined);
}

function checkDataDirectory(given: string | undefined, info: ServerInfo, where: string): string {
  if (!given) {
    throw new IotvaultError("FAILED_PRECONDITION", `cannot tell the data directory of ${where}`, {
      hint: "add ?pgdata=/path/to/data to the source URL (the role may not read data_directory)",
    });
  }
  const local = systemIdFromPgControl(given);
  if (local === undefined) {
    throw new IotvaultError(
      "FAILED_PRECONDITION",
      `${given} is not a PostgreSQL data directory readable on this host`,
      {
        hint: "physical backups run on the database host: run the executor there, as root or the PostgreSQL OS user",
      },
    );
  }
  if (local !== info.sysid) {
    throw new IotvaultError(
      "FAILED_PRECONDITION",
      `${given} belongs to system ${local}, but ${where} is system ${info.sysid}`,
      {
        hint: "point pgdata= at the data directory of that server (is the executor on the database host?)",
      },
    );
  }
  return given;
}

/** The parent snapshot when it is a physical backup of the same cluster. */
function usableParent(
  parent: SnapshotManifest | undefined,
  sysid: string,
  warn: PhysicalBackupOptions["onWarning"],
): { snapshot: SnapshotManifest; startMs: number } | undefined {
  if (!parent) return undefined;
  try {
    const meta = pgMetadataOf(parent);
    if (meta.mode === "physical" && meta.systemIdentifier === sysid && meta.startTime) {
      return { snapshot: parent, startMs: Date.parse(meta.startTime) };
    }
  } catch {
    // not a PostgreSQL snapshot
  }
  warn?.({
    path: "(parent snapshot)",
    message: "the parent is not a physical backup of this cluster; every file is read",
  });
  return undefined;
}

async function startBackup(client: pg.Client, num: number, label: string): Promise<string> {
  const sql =
    num >= 150000
      ? "SELECT pg_backup_start($1, true)::text AS lsn"
      : "SELECT pg_start_backup($1, true, false)::text AS lsn";
  return (await query1<{ lsn: string }>(client, sql, [label], "starting the backup (pg_backup_start)")).lsn;
}

/**
 * pg_backup_stop without waiting for the archiver (PostgreSQL's wait polls once a second and
 * depends on archive_command's speed): storeBackupWal stores what the archive lacks itself.
 */
async function stopBackup(
  client: pg.Client,
  num: number,
): Promise<{ lsn: string; labelfile: string; spcmapfile: string | null }> {
  const sql =
    num >= 150000
      ? "SELECT lsn::text, labelfile, spcmapfile FROM pg_backup_stop(false)"
      : "SELECT lsn::text, labelfile, spcmapfile FROM pg_stop_backup(false, false)";
  return query1(client, sql, [], "ending the backup (pg_backup_stop)");
}

/** Waits (25 ms polls) until pg_stat_archiver reports `last` archived, at most `waitMs`. */
async function waitForArchiver(
  client: pg.Client,
  last: string,
  waitMs: number,
  signal: AbortSignal | undefined,
): Promise<void> {
  const deadline = Date.now() + waitMs;
  while (Date.now() < deadline) {
    signal?.throwIfAborted();
    const { a } = await query1<{ a: string | null }>(
      client,
      "SELECT last_archived_wal AS a FROM pg_stat_archiver",
      [],
      "reading pg_stat_archiver",
    );
    if (a && a.length >= 24 && a.slice(0, 24) >= last) return;
    await new Promise((r) => setTimeout(r, 25));
  }
}

/** The WAL files the backup needs: the segments of start .. stop - 1. */
export function walSegmentsOf(timeline: number, start: bigint, stop: bigint, segmentSize: number): string[] {
  const first = segmentNumber(start, segmentSize);
  const last = segmentNumber(stop > start ? stop - 1n : start, segmentSize);
  const out: string[] = [];
  for (let s = first; s <= last; s++) out.push(segmentName(timeline, s, segmentSize));
  return out;
}

/**
 * Makes sure the archive holds every segment the backup needs: those archive_command stored
 * already are left alone, the others are copied from pg_wal right away (they are complete after
 * pg_backup_stop's switch, and kept until archived). archive_command storing the same segment
 * later finds it there with the same content, which wal-push accepts. NOT_FOUND naming a
 * segment that is in neither place (archiving off and the segment recycled).
 */
async function storeBackupWal(
  repo: WalRepository,
  sysid: string,
  timeline: number,
  segments: readonly string[],
  pgdata: string,
  signal: AbortSignal | undefined,
): Promise<void> {
  const present = new Set<string>();
  const dir = `${walPrefix(sysid)}${timeline.toString(16).toUpperCase().padStart(8, "0")}/`;
  for await (const o of repo.listSealedObjects(dir)) present.add(o.key.slice(dir.length));
  for (const name of segments) {
    signal?.throwIfAborted();
    if (present.has(name)) continue;
    let data: Buffer;
    try {
      data = readFileSync(join(pgdata, "pg_wal", name));
    } catch {
      throw new IotvaultError(
        "NOT_FOUND",
        `WAL segment ${name}, needed by the backup, is neither in the archive nor in pg_wal`,
        {
          hint: "enable WAL archiving (archive_command = 'iotvault wal-push --repo <name> %p') or raise wal_keep_size, then back up again",
        },
      );
    }
    await repo.putSealedObject(walKey(sysid, name), data, signal ? { signal } : {});
  }
}

async function currentSnapshot(client: pg.Client): Promise<string> {
  return (
    await query1<{ s: string }>(
      client,
      "SELECT pg_current_snapshot()::text AS s",
      [],
      "reading the transaction snapshot",
    )
  ).s;
}

async function databaseNames(client: pg.Client): Promise<string[]> {
  const { rows } = await client.query<{ datname: string }>(
    "SELECT datname FROM pg_database WHERE datallowconn AND NOT datistemplate ORDER BY datname",
  );
  return rows.map((r) => r.datname);
}

/**
 * Row counts (and checksums) of every table of every database, for drills. Exact for the
 * backup's end only when no transaction id was assigned between the counts and pg_backup_stop
 * (the caller compares the transaction snapshot before and after).
 */
async function countRows(
  client: pg.Client,
  src: PgSourceUrl,
  signal: AbortSignal | undefined,
): Promise<{ databases: DatabaseRecord[]; snapshotBefore: string }> {
  const snapshotBefore = await currentSnapshot(client);
  const databases: DatabaseRecord[] = [];
  for (const name of await databaseNames(client)) {
    const tables = await withPg(src, (c) => listTables(c), { database: name, signal });
    const mode = src.rowcheck === "checksum" ? "checksum" : "count";
    const measured = await measureTables(src, tables, { mode, database: name, jobs: src.jobs, signal });
    databases.push({
      name,
      tables: tables.map((t, i) => ({ ...t, rows: measured[i]!.rows, checksum: measured[i]!.checksum })),
    });
  }
  return { databases, snapshotBefore };
}

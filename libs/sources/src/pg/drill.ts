/**
 * Restore drills of PostgreSQL snapshots: restore into a scratch cluster on a free port, check
 * that it answers and that its data match what the backup recorded, then remove it.
 *
 * - logical: initdb + CREATE DATABASE + pg_restore (no owners, no privileges: the scratch
 *   cluster has none of the roles), then every table's row count / checksum compared;
 * - physical: the data directory restored (every file's checksum checked), recovery to the
 *   end of the backup (recovery_target = immediate, WAL from the archive), promotion, then
 *   the system identifier, every database and every table read in full (row counts compared
 *   when the backup recorded exact ones).
 *
 * A check that fails makes the verdict false; an error stops the drill and is its last check.
 *
 * ```ts
 * const verdict = await drillPostgres(repo, snapshot, { restoreCommand: (loc, id) => ..., signal });
 * if (!verdict.ok) console.log(verdict.checks.filter((c) => !c.ok));
 * ```
 */
import { chmodSync, rmSync } from "node:fs";
import { mkdtemp } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { toIotvaultError } from "@iotvault/errors";
import type { Repository, SnapshotManifest } from "@iotvault/repo";
import type { SourceProgress } from "../adapter.js";
import { LocalCluster } from "./cluster.js";
import { withPg } from "./connection.js";
import { restoreLogical, verifyTables } from "./logical-restore.js";
import { pgMetadataOf, type PgSnapshotMetadata, type TableRecord } from "./metadata.js";
import { restorePhysical } from "./physical-restore.js";
import { listTables, measureTables } from "./rowcheck.js";
import { installedMajors } from "./tools.js";

export interface DrillCheckResult {
  name: string;
  ok: boolean;
  detail: string;
}

export interface PgDrillOptions {
  /** Parent directory of the scratch cluster (default the OS temp directory). */
  scratchRoot?: string | undefined;
  /** Keep the scratch cluster (stopped) for inspection. */
  keep?: boolean | undefined;
  /** OS user of the scratch server when this process is root (default postgres). */
  osUser?: string | undefined;
  /** restore_command for the repository (physical drills). */
  restoreCommand?: ((location: string, systemId: string) => string | undefined) | undefined;
  /** Sessions / pg_restore processes at once (default 2). */
  jobs?: number | undefined;
  signal?: AbortSignal | undefined;
  onProgress?: ((p: SourceProgress) => void) | undefined;
}

export interface PgDrillResult {
  kind: "postgres-logical" | "postgres-physical";
  ok: boolean;
  checks: DrillCheckResult[];
  scratch: string;
}

/** Most failing tables named one by one in the checks. */
const NAMED_FAILURES = 20;

/** Runs a drill of a PostgreSQL snapshot (see the module comment). */
export async function drillPostgres(
  repo: Repository,
  snapshot: SnapshotManifest,
  options: PgDrillOptions = {},
): Promise<PgDrillResult> {
  const meta = pgMetadataOf(snapshot);
  const kind = meta.mode === "physical" ? "postgres-physical" : "postgres-logical";
  const scratch = await mkdtemp(join(options.scratchRoot ?? tmpdir(), "iotvault-drill-"));
  chmodSync(scratch, 0o755);
  const checks: DrillCheckResult[] = [];
  let cluster: LocalCluster | undefined;
  try {
    cluster =
      meta.mode === "physical"
        ? await drillPhysical(repo, snapshot, meta, scratch, options, checks)
        : await drillLogical(repo, snapshot, meta, scratch, options, checks);
  } catch (err) {
    const e = toIotvaultError(err);
    checks.push({ name: checks.length === 0 ? "restore" : "drill", ok: false, detail: `${e.code}: ${e.message}` });
  } finally {
    await cluster?.stop().catch(() => undefined);
    if (!options.keep) rmSync(scratch, { recursive: true, force: true });
  }
  return { kind, ok: checks.length > 0 && checks.every((c) => c.ok), checks, scratch };
}

async function drillLogical(
  repo: Repository,
  snapshot: SnapshotManifest,
  meta: PgSnapshotMetadata,
  scratch: string,
  options: PgDrillOptions,
  checks: DrillCheckResult[],
): Promise<LocalCluster> {
  const source = Math.floor(meta.serverVersionNum / 10000);
  const major = installedMajors().find((m) => m >= source);
  const cluster = await LocalCluster.init(join(scratch, "data"), {
    osUser: options.osUser,
    major,
    runDir: join(scratch, "run"),
    signal: options.signal,
  });
  await cluster.start({ port: "free", signal: options.signal });
  const database = meta.database ?? "restored";
  const restored = await restoreLogical(repo, snapshot, meta, {
    target: cluster.url(database),
    options: { create_database: "true", no_owner: "true", no_privileges: "true", jobs: String(options.jobs ?? 2) },
    verify: false,
    signal: options.signal,
    onProgress: options.onProgress,
  });
  checks.push({
    name: "restore",
    ok: true,
    detail: `database ${database} restored into a scratch PostgreSQL ${major ?? ""} on port ${cluster.port}: ${restored.files} archives, ${restored.bytes} bytes`,
  });
  checks.push(await answers(cluster, database));
  const tables = meta.tables ?? [];
  if (meta.rowcheck === "none") {
    const read = await readAll(cluster, database, options);
    checks.push({
      name: "tables",
      ok: read.tables === tables.length,
      detail: `${read.tables} tables read in full (${read.rows} rows); the backup recorded ${tables.length} tables, no row counts`,
    });
  } else {
    checks.push(
      ...summarize(
        await verifyTables(cluster.connection(database), tables, meta.rowcheck, options.jobs ?? 2, options.signal),
        database,
      ),
    );
  }
  return cluster;
}

async function drillPhysical(
  repo: Repository,
  snapshot: SnapshotManifest,
  meta: PgSnapshotMetadata,
  scratch: string,
  options: PgDrillOptions,
  checks: DrillCheckResult[],
): Promise<LocalCluster | undefined> {
  const data = join(scratch, "data");
  const restored = await restorePhysical(repo, snapshot, meta, {
    target: data,
    options: {
      recovery_target: "immediate",
      recover: "true",
      keep_running: "true",
      ...(options.osUser ? { os_user: options.osUser } : {}),
    },
    restoreCommand: options.restoreCommand?.(repo.store.location, meta.systemIdentifier),
    verify: true,
    signal: options.signal,
    onProgress: options.onProgress,
  });
  const cluster = restored.cluster;
  checks.push({
    name: "restore",
    ok: restored.verified,
    detail: `${restored.files} files, ${restored.bytes} bytes restored${restored.verified ? ", every checksum verified" : ""}`,
  });
  const rec = restored.recovery;
  checks.push({
    name: "recovery",
    ok: !!rec?.promoted,
    detail: rec
      ? `consistent at the end of the backup (stop LSN ${meta.stopLsn}), promoted to timeline ${rec.timeline} in ${rec.durationMs} ms`
      : "the server did not run",
  });
  if (!cluster) return undefined;
  const sysid = await withPg(
    cluster.connection(),
    async (c) =>
      (await c.query<{ s: string }>("SELECT system_identifier::text AS s FROM pg_control_system()")).rows[0]!.s,
  );
  checks.push({
    name: "system identifier",
    ok: sysid === meta.systemIdentifier,
    detail:
      sysid === meta.systemIdentifier
        ? `${sysid}, as backed up`
        : `${sysid}, but the backup was of ${meta.systemIdentifier}`,
  });
  for (const db of meta.databases ?? []) {
    options.signal?.throwIfAborted();
    checks.push(await answers(cluster, db.name));
    if (db.tables && meta.rowsExact && meta.rowcheck !== "none") {
      const compared = await verifyTables(
        cluster.connection(db.name),
        db.tables,
        meta.rowcheck,
        options.jobs ?? 2,
        options.signal,
      );
      checks.push(...summarize(compared, db.name));
    } else {
      const read = await readAll(cluster, db.name, options);
      checks.push({
        name: `tables ${db.name}`,
        ok: true,
        detail: `${read.tables} tables read in full, ${read.rows} rows${db.tables ? " (row counts recorded during writes: not comparable)" : ""}`,
      });
    }
  }
  return cluster;
}

async function answers(cluster: LocalCluster, database: string): Promise<DrillCheckResult> {
  try {
    const v = await withPg(
      cluster.connection(database),
      async (c) => (await c.query<{ v: string }>("SELECT version() AS v")).rows[0]!.v,
    );
    return { name: `answers ${database}`, ok: true, detail: v.split(" on ")[0] ?? v };
  } catch (err) {
    return { name: `answers ${database}`, ok: false, detail: toIotvaultError(err).message };
  }
}

/** Every table of a database read in full (a count over every row, every column detoasted). */
async function readAll(
  cluster: LocalCluster,
  database: string,
  options: PgDrillOptions,
): Promise<{ tables: number; rows: number }> {
  const tables: TableRecord[] = await withPg(cluster.connection(database), (c) => listTables(c));
  const measured = await measureTables(cluster.connection(database), tables, {
    mode: "checksum",
    jobs: options.jobs ?? 2,
    signal: options.signal,
  });
  return { tables: tables.length, rows: measured.reduce((n, m) => n + m.rows, 0) };
}

function summarize(
  compared: readonly { table: string; ok: boolean; detail: string }[],
  database: string,
): DrillCheckResult[] {
  const failed = compared.filter((c) => !c.ok);
  const out: DrillCheckResult[] = [
    {
      name: `rows ${database}`,
      ok: failed.length === 0,
      detail: `${compared.length - failed.length} of ${compared.length} tables match the backup's row counts and checksums`,
    },
  ];
  for (const f of failed.slice(0, NAMED_FAILURES))
    out.push({ name: `rows ${database}.${f.table}`, ok: false, detail: f.detail });
  return out;
}

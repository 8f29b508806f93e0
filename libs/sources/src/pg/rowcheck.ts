/**
 * Per-table verification data: the tables of a database (with the objects a table-level
 * restore needs: indexes, owned sequences, foreign keys), and their row counts and checksums.
 *
 * The checksum is order-independent: the sum of hashtextextended(row::text, 0) over the rows
 * (a numeric, so it never overflows), computed by the server with fixed output settings
 * (UTC, ISO dates, shortest exact floats, hex bytea) so that the same rows give the same sum in
 * the source database and in a restored one. hashtextextended is the function hash
 * partitioning relies on, so it is stable across PostgreSQL versions (not across CPU byte
 * orders).
 */
import type pg from "pg";
import { IotvaultError } from "@iotvault/errors";
import { classifyPgError, connectPg, quoteIdent, quoteLiteral } from "./connection.js";
import type { TableRecord } from "./metadata.js";
import type { PgConnection, RowCheck } from "./url.js";

/** Session settings that make row text identical wherever it is computed. */
export const STABLE_OUTPUT_SQL = [
  "SET TimeZone = 'UTC'",
  "SET DateStyle = 'ISO, YMD'",
  "SET IntervalStyle = 'postgres'",
  "SET extra_float_digits = 1",
  "SET bytea_output = 'hex'",
  "SET lc_monetary = 'C'",
  "SET xmloption = content",
  "SET statement_timeout = 0",
].join("; ");

const TABLES_SQL = `
SELECT n.nspname AS schema, c.relname AS name,
  coalesce((SELECT array_agg(ic.relname::text ORDER BY ic.relname) FROM pg_index i
             JOIN pg_class ic ON ic.oid = i.indexrelid WHERE i.indrelid = c.oid), '{}') AS indexes,
  coalesce((SELECT array_agg(s.relname::text ORDER BY s.relname) FROM pg_depend d
             JOIN pg_class s ON s.oid = d.objid AND s.relkind = 'S'
             WHERE d.classid = 'pg_class'::regclass AND d.refclassid = 'pg_class'::regclass
               AND d.refobjid = c.oid AND d.deptype IN ('a', 'i')), '{}') AS sequences,
  coalesce((SELECT json_agg(json_build_object('name', con.conname, 'refSchema', rn.nspname, 'refTable', rc.relname)
                            ORDER BY con.conname)
             FROM pg_constraint con JOIN pg_class rc ON rc.oid = con.confrelid
             JOIN pg_namespace rn ON rn.oid = rc.relnamespace
             WHERE con.conrelid = c.oid AND con.contype = 'f'), '[]') AS foreign_keys,
  coalesce((SELECT json_agg(DISTINCT jsonb_build_object('schema', tn.nspname, 'name', ty.typname))
             FROM pg_attribute a JOIN pg_type at ON at.oid = a.atttypid
             JOIN pg_type ty ON ty.oid = CASE WHEN at.typelem <> 0 AND at.typlen = -1 THEN at.typelem ELSE at.oid END
             JOIN pg_namespace tn ON tn.oid = ty.typnamespace
             WHERE a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped
               AND tn.nspname NOT IN ('pg_catalog', 'information_schema') AND ty.typtype IN ('e', 'd', 'c', 'r')), '[]') AS types
FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE c.relkind = 'r' AND c.relpersistence <> 't'
  AND n.nspname NOT IN ('pg_catalog', 'information_schema')
  AND n.nspname NOT LIKE 'pg\\_toast%' AND n.nspname NOT LIKE 'pg\\_temp%'
  AND NOT EXISTS (SELECT 1 FROM pg_depend e WHERE e.classid = 'pg_class'::regclass AND e.objid = c.oid AND e.deptype = 'e')
ORDER BY 1, 2`;

interface TableRow {
  schema: string;
  name: string;
  indexes: string[];
  sequences: string[];
  foreign_keys: { name: string; refSchema: string; refTable: string }[];
  types: { schema: string; name: string }[];
}

/** The ordinary tables of the connected database (not catalogs, temporary or extension tables). */
export async function listTables(client: pg.ClientBase): Promise<TableRecord[]> {
  const { rows } = await client.query<TableRow>(TABLES_SQL);
  return rows.map((r) => ({
    schema: r.schema,
    name: r.name,
    indexes: r.indexes,
    sequences: r.sequences,
    foreignKeys: r.foreign_keys,
    types: r.types,
  }));
}

export const qualified = (t: { schema: string; name: string }): string =>
  `${quoteIdent(t.schema)}.${quoteIdent(t.name)}`;
export const displayName = (t: { schema: string; name: string }): string => `${t.schema}.${t.name}`;

/** Row count and, with "checksum", the checksum of one table (the session's settings apply). */
export async function measureTable(
  client: pg.ClientBase,
  table: { schema: string; name: string },
  mode: Exclude<RowCheck, "none">,
): Promise<{ rows: number; checksum?: string }> {
  const sql =
    mode === "checksum"
      ? `SELECT count(*)::int8 AS rows, coalesce(sum(hashtextextended(t::text, 0)), 0)::text AS checksum FROM ONLY ${qualified(table)} AS t`
      : `SELECT count(*)::int8 AS rows FROM ONLY ${qualified(table)}`;
  const { rows } = await client.query<{ rows: string; checksum?: string }>(sql);
  const row = rows[0]!;
  return mode === "checksum" ? { rows: Number(row.rows), checksum: row.checksum! } : { rows: Number(row.rows) };
}

export interface MeasureOptions {
  mode: Exclude<RowCheck, "none">;
  /** An exported snapshot every session imports (the backup's view of the data). */
  snapshot?: string | undefined;
  database?: string | undefined;
  /** Sessions measuring at once (default 2). */
  jobs?: number | undefined;
  signal?: AbortSignal | undefined;
}

/** Measures tables with a few sessions in parallel; results in the order of `tables`. */
export async function measureTables(
  c: PgConnection,
  tables: readonly { schema: string; name: string }[],
  options: MeasureOptions,
): Promise<{ rows: number; checksum?: string }[]> {
  const results: { rows: number; checksum?: string }[] = [];
  let next = 0;
  const worker = async (): Promise<void> => {
    const client = await connectPg(c, { database: options.database, signal: options.signal });
    // A cancelled run stops the statement in progress (a checksum of a large table), not only
    // the ones after it.
    const cancel = () => void cancelSession(c, options.database, client);
    options.signal?.addEventListener("abort", cancel, { once: true });
    try {
      await client.query(STABLE_OUTPUT_SQL);
      await client.query("BEGIN ISOLATION LEVEL REPEATABLE READ, READ ONLY");
      if (options.snapshot) await client.query(`SET TRANSACTION SNAPSHOT ${quoteLiteral(options.snapshot)}`);
      while (next < tables.length) {
        options.signal?.throwIfAborted();
        const i = next++;
        try {
          results[i] = await measureTable(client, tables[i]!, options.mode);
        } catch (err) {
          throw classifyPgError(err, `counting the rows of ${displayName(tables[i]!)}`);
        }
      }
      await client.query("COMMIT");
    } finally {
      options.signal?.removeEventListener("abort", cancel);
      await client.end().catch(() => undefined);
    }
  };
  const n = Math.max(1, Math.min(options.jobs ?? 2, tables.length));
  await Promise.all(Array.from({ length: n }, worker));
  return results;
}

/** pg_cancel_backend of a session's running statement, through a session of its own. */
export async function cancelSession(c: PgConnection, database: string | undefined, client: pg.Client): Promise<void> {
  const pid = (client as unknown as { processID?: number }).processID;
  if (!pid) return;
  try {
    const other = await connectPg(c, { database });
    try {
      await other.query("SELECT pg_cancel_backend($1)", [pid]);
    } finally {
      await other.end().catch(() => undefined);
    }
  } catch {
    // the session is gone already
  }
}

export interface TableComparison {
  table: string;
  ok: boolean;
  detail: string;
}

/** Compares measured tables with what the backup recorded. */
export function compareTables(
  recorded: readonly TableRecord[],
  measured: readonly { rows: number; checksum?: string | undefined }[],
): TableComparison[] {
  return recorded.map((t, i) => {
    const m = measured[i];
    const table = displayName(t);
    if (!m) return { table, ok: false, detail: "not measured" };
    if (t.rows !== undefined && m.rows !== t.rows) {
      return { table, ok: false, detail: `${m.rows} rows, the backup recorded ${t.rows}` };
    }
    if (t.checksum !== undefined && m.checksum !== undefined && m.checksum !== t.checksum) {
      return { table, ok: false, detail: `${m.rows} rows as recorded, but their checksum differs` };
    }
    const what = t.checksum !== undefined ? "rows and checksum match" : "row count matches";
    return { table, ok: true, detail: `${m.rows} rows, ${what}` };
  });
}

/** DATA_CORRUPT listing the tables that do not match (at most 10 named). */
export function mismatchError(failed: readonly TableComparison[], where: string): IotvaultError {
  const shown = failed.slice(0, 10).map((f) => `${f.table}: ${f.detail}`);
  return new IotvaultError(
    "DATA_CORRUPT",
    `${failed.length} table(s) of ${where} do not match the backup: ${shown.join("; ")}${failed.length > 10 ? "; ..." : ""}`,
    {
      hint: "the restored data differ from what the backup recorded; restore again into an empty database, and run `iotvault verify --read-data` on the snapshot",
    },
  );
}

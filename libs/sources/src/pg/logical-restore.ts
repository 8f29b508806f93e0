/**
 * Restore of a logical backup into a database named by a URL (postgres://.../newdb), whole or
 * only chosen schemas / tables, with pg_restore reading from a pipe that the repository feeds
 * (repo.readFile -> stdin): nothing is staged on disk.
 *
 *   [CREATE DATABASE]  -> pre-data of schema.dump -> table data (`jobs` pg_restore at once)
 *   -> the data entries of schema.dump (sequence values, large objects) -> post-data
 *   (indexes, constraints, triggers) -> verification: each restored table's row count and
 *   checksum compared with the values the backup recorded.
 *
 * Options: create_database=true, tables=s.t,s.u, schemas=a,b, no_owner=true,
 * no_privileges=true, jobs=N.
 */
import { rmSync, writeFileSync } from "node:fs";
import { mkdtemp } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { IotvaultError, isCode } from "@iotvault/errors";
import type { Repository, SnapshotManifest, TreeNode } from "@iotvault/repo";
import type { SourceProgress } from "../adapter.js";
import { classifyPgError, quoteIdent, quoteLiteral, withPg } from "./connection.js";
import type { PgSnapshotMetadata, TableRecord } from "./metadata.js";
import { compareTables, displayName, measureTables, mismatchError } from "./rowcheck.js";
import { feed } from "./streams.js";
import { parseToc, selectEntries, type Selection } from "./toc.js";
import { clientEnv, findPgProgram, startProgram } from "./tools.js";
import { describeConnection, parsePostgresUrl, type PgConnection } from "./url.js";

export const LOGICAL_OPTIONS = new Set(["create_database", "tables", "schemas", "no_owner", "no_privileges", "jobs"]);

export interface LogicalRestoreOptions {
  /** postgres://user@host:port/database of the target. */
  target: string;
  options: Readonly<Record<string, string>>;
  verify: boolean;
  signal?: AbortSignal | undefined;
  onProgress?: ((p: SourceProgress) => void) | undefined;
}

export interface LogicalRestoreResult {
  files: number;
  bytes: number;
  verified: boolean;
  details: Record<string, unknown>;
}

const yes = (v: string | undefined) => v === "true" || v === "yes" || v === "1";

/** "s.t" -> {schema, name} ("t" alone means public.t). */
function parseTableName(text: string): { schema: string; name: string } {
  const dot = text.indexOf(".");
  return dot < 0 ? { schema: "public", name: text } : { schema: text.slice(0, dot), name: text.slice(dot + 1) };
}

function parseSelection(options: Readonly<Record<string, string>>, meta: PgSnapshotMetadata): Selection | undefined {
  const list = (v: string | undefined) =>
    (v ?? "")
      .split(",")
      .map((s) => s.trim())
      .filter(Boolean);
  const tableNames = list(options["tables"]);
  const schemas = new Set(list(options["schemas"]));
  if (tableNames.length === 0 && schemas.size === 0) return undefined;
  const all = meta.tables ?? [];
  const tables = tableNames.map((n) => {
    const want = parseTableName(n);
    const found = all.find((t) => t.schema === want.schema && t.name === want.name);
    if (!found) {
      throw new IotvaultError("NOT_FOUND", `table ${want.schema}.${want.name} is not in the backup`, {
        hint: `tables in the backup: ${all.slice(0, 20).map(displayName).join(", ")}${all.length > 20 ? ", ..." : ""}`,
      });
    }
    return found;
  });
  return { schemas, tables };
}

/** Restores a logical snapshot into the database named by `options.target`. */
export async function restoreLogical(
  repo: Repository,
  snapshot: SnapshotManifest,
  meta: PgSnapshotMetadata,
  options: LogicalRestoreOptions,
): Promise<LogicalRestoreResult> {
  for (const k of Object.keys(options.options)) {
    if (!LOGICAL_OPTIONS.has(k)) {
      throw new IotvaultError("INVALID_ARGUMENT", `unknown option "${k}" for a logical PostgreSQL restore`, {
        hint: `known options: ${[...LOGICAL_OPTIONS].join(", ")}`,
      });
    }
  }
  const target = parsePostgresUrl(options.target);
  const selection = parseSelection(options.options, meta);
  const jobs = options.options["jobs"] ? Number(options.options["jobs"]) : target.jobs;
  if (!Number.isInteger(jobs) || jobs < 1 || jobs > 64)
    throw new IotvaultError("INVALID_ARGUMENT", "jobs must be 1..64");
  const nodes = await nodesOf(repo, snapshot, options.signal);
  const schemaNode = nodes.get(meta.schemaNode ?? "schema.dump");
  if (!schemaNode)
    throw new IotvaultError(
      "DATA_CORRUPT",
      `snapshot ${snapshot.id.slice(0, 12)} has no ${meta.schemaNode ?? "schema.dump"}`,
    );
  if (yes(options.options["create_database"])) await createDatabase(target, meta, options.signal);
  else await checkDatabase(target, options.signal);
  const restorer = new PgRestorer(repo, target, meta, options, selection);
  const tables = (meta.tables ?? []).filter(
    (t) => !selection || selection.schemas.has(t.schema) || selection.tables.includes(t),
  );
  try {
    await restorer.prepareList(schemaNode);
    if (selection) {
      const schemas = [
        ...tables.map((t) => t.schema),
        ...tables.flatMap((t) => (t.types ?? []).map((ty) => ty.schema)),
        ...selection.schemas,
      ];
      await createSchemas(target, new Set(schemas), options.signal);
    }
    await restorer.run(schemaNode, ["--section=pre-data"], "the schema (pre-data)");
    await runPool(tables, jobs, async (t) => {
      const node = t.node ? nodes.get(t.node) : undefined;
      if (!node) throw new IotvaultError("DATA_CORRUPT", `the snapshot has no data node for ${displayName(t)}`);
      await restorer.run(node, ["--data-only"], `the data of ${displayName(t)}`, false);
    });
    await restorer.run(schemaNode, ["--section=data"], "sequence values and large objects");
    await restorer.run(schemaNode, ["--section=post-data"], "indexes, constraints and triggers (post-data)");
  } finally {
    restorer.cleanup();
  }
  const details: Record<string, unknown> = {
    mode: "logical",
    database: target.database,
    tables: tables.length,
    ...(restorer.skippedForeignKeys.length ? { skippedForeignKeys: restorer.skippedForeignKeys } : {}),
  };
  let verified = false;
  if (options.verify && meta.rowcheck !== "none" && tables.length > 0) {
    const measured = await measureTables(target, tables, { mode: meta.rowcheck, jobs, signal: options.signal });
    const compared = compareTables(tables, measured);
    details["verification"] = compared;
    const failed = compared.filter((c) => !c.ok);
    if (failed.length) throw mismatchError(failed, `database ${target.database}`);
    verified = true;
  }
  return { files: restorer.filesRestored, bytes: restorer.bytesRead, verified, details };
}

/** The file nodes of a snapshot by path. */
async function nodesOf(
  repo: Repository,
  snapshot: SnapshotManifest,
  signal: AbortSignal | undefined,
): Promise<Map<string, TreeNode>> {
  const out = new Map<string, TreeNode>();
  for await (const n of repo.readTree(snapshot, signal)) if (n.type === "file") out.set(n.path, n);
  return out;
}

async function createDatabase(
  target: PgConnection,
  meta: PgSnapshotMetadata,
  signal: AbortSignal | undefined,
): Promise<void> {
  await withPg(
    target,
    async (c) => {
      const exists = await c.query("SELECT 1 FROM pg_database WHERE datname = $1", [target.database]);
      if (exists.rowCount) {
        throw new IotvaultError(
          "ALREADY_EXISTS",
          `database ${target.database} already exists on ${describeConnection(target, "postgres")}`,
          {
            hint: "restore into a new database name, or drop it first (or leave out create_database to restore into it as it is)",
          },
        );
      }
      const encoding = meta.encoding ? ` ENCODING ${quoteLiteral(meta.encoding)}` : "";
      try {
        await c.query(`CREATE DATABASE ${quoteIdent(target.database)} TEMPLATE template0${encoding}`);
      } catch (err) {
        throw classifyPgError(err, `creating database ${target.database}`);
      }
    },
    { database: "postgres", signal },
  );
}

/** NOT_FOUND with the right hint when the target database does not exist. */
async function checkDatabase(target: PgConnection, signal: AbortSignal | undefined): Promise<void> {
  try {
    await withPg(target, async () => undefined, { signal });
  } catch (err) {
    if (isCode(err, "NOT_FOUND")) {
      throw new IotvaultError(
        "NOT_FOUND",
        `database ${target.database} does not exist on ${describeConnection(target, "postgres")}`,
        {
          hint: "add --option create_database=true to create it, or name an existing database",
          cause: err,
        },
      );
    }
    throw err;
  }
}

async function createSchemas(
  target: PgConnection,
  schemas: Set<string>,
  signal: AbortSignal | undefined,
): Promise<void> {
  await withPg(
    target,
    async (c) => {
      for (const s of schemas) await c.query(`CREATE SCHEMA IF NOT EXISTS ${quoteIdent(s)}`);
    },
    { signal },
  );
}

/** Runs `fn` over items, `jobs` at a time; the first failure stops the rest. */
async function runPool<T>(items: readonly T[], jobs: number, fn: (item: T) => Promise<void>): Promise<void> {
  let next = 0;
  let failed = false;
  const worker = async () => {
    while (!failed && next < items.length) {
      const item = items[next++]!;
      try {
        await fn(item);
      } catch (err) {
        failed = true;
        throw err;
      }
    }
  };
  const results = await Promise.allSettled(Array.from({ length: Math.min(jobs, Math.max(1, items.length)) }, worker));
  const rejected = results.find((r): r is PromiseRejectedResult => r.status === "rejected");
  if (rejected) throw rejected.reason;
}

/** pg_restore processes fed from the repository. */
class PgRestorer {
  private readonly program: string;
  private readonly env: NodeJS.ProcessEnv;
  private listDir: string | undefined;
  private listFile: string | undefined;
  skippedForeignKeys: string[] = [];
  filesRestored = 0;
  bytesRead = 0;

  constructor(
    private readonly repo: Repository,
    private readonly target: PgConnection,
    private readonly meta: PgSnapshotMetadata,
    private readonly options: LogicalRestoreOptions,
    private readonly selection: Selection | undefined,
  ) {
    this.program = findPgProgram("pg_restore", { atLeast: Math.floor(meta.serverVersionNum / 10000) });
    this.env = clientEnv(target);
  }

  /** With a selection: the list file of the schema archive's entries to restore. */
  async prepareList(schemaNode: TreeNode): Promise<void> {
    if (!this.selection) return;
    const run = startProgram(this.program, ["-l"], {
      env: this.env,
      stdin: "pipe",
      stdout: "pipe",
      signal: this.options.signal,
      what: "pg_restore -l",
    });
    const out: Buffer[] = [];
    run.child.stdout?.on("data", (d: Buffer) => out.push(d));
    await feed(this.repo.readFile(schemaNode, this.options.signal), run.child.stdin!);
    await run.done;
    const existingTypes = await existingTypesOf(this.target, this.selection, this.options.signal);
    const { keep, skippedForeignKeys } = selectEntries(
      parseToc(Buffer.concat(out).toString("utf8")),
      { ...this.selection, existingTypes },
      this.meta.tables ?? [],
    );
    this.skippedForeignKeys = skippedForeignKeys;
    this.listDir = await mkdtemp(join(tmpdir(), "iotvault-pg-restore-"));
    this.listFile = join(this.listDir, "list");
    writeFileSync(this.listFile, keep.map((e) => e.line).join("\n") + "\n", { mode: 0o600 });
  }

  cleanup(): void {
    if (this.listDir) rmSync(this.listDir, { recursive: true, force: true });
  }

  /** pg_restore of one archive node into the target database. */
  async run(node: TreeNode, args: string[], what: string, useList = true): Promise<void> {
    const full = ["--exit-on-error", "-d", `dbname=${conninfoQuote(this.target.database)}`, ...args];
    if (yes(this.options.options["no_owner"])) full.push("--no-owner");
    if (yes(this.options.options["no_privileges"])) full.push("--no-privileges");
    if (useList && this.listFile) full.push("-L", this.listFile);
    const run = startProgram(this.program, full, {
      env: this.env,
      stdin: "pipe",
      signal: this.options.signal,
      what: `pg_restore of ${what} into ${describeConnection(this.target)}`,
    });
    let bytes = 0;
    const counted = async function* (source: AsyncIterable<Buffer>) {
      for await (const b of source) {
        bytes += b.length;
        yield b;
      }
    };
    try {
      await feed(counted(this.repo.readFile(node, this.options.signal)), run.child.stdin!);
    } catch (err) {
      run.child.kill("SIGTERM");
      await run.done.catch(() => undefined);
      throw err;
    }
    await run.done;
    this.filesRestored++;
    this.bytesRead += bytes;
    this.options.onProgress?.({ filesDone: this.filesRestored, bytesDone: this.bytesRead, currentPath: node.path });
  }
}

/** The types the chosen tables use that the target database has already. */
async function existingTypesOf(
  target: PgConnection,
  sel: Selection,
  signal: AbortSignal | undefined,
): Promise<Set<string>> {
  const wanted = sel.tables.flatMap((t) => t.types ?? []);
  if (wanted.length === 0) return new Set();
  return withPg(
    target,
    async (c) => {
      const { rows } = await c.query<{ t: string }>(
        `SELECT n.nspname || '.' || t.typname AS t FROM pg_type t JOIN pg_namespace n ON n.oid = t.typnamespace
          WHERE (n.nspname, t.typname) IN (SELECT * FROM unnest($1::text[], $2::text[]))`,
        [wanted.map((w) => w.schema), wanted.map((w) => w.name)],
      );
      return new Set(rows.map((r) => r.t));
    },
    { signal },
  );
}

/** A libpq connection-string value. */
function conninfoQuote(value: string): string {
  return `'${value.replace(/\\/g, "\\\\").replace(/'/g, "\\'")}'`;
}

/** Restored tables measured and compared (for drills). */
export async function verifyTables(
  target: PgConnection,
  tables: readonly TableRecord[],
  mode: "checksum" | "count",
  jobs: number,
  signal: AbortSignal | undefined,
): Promise<ReturnType<typeof compareTables>> {
  const measured = await measureTables(target, tables, { mode, jobs, signal });
  return compareTables(tables, measured);
}

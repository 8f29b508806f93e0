/**
 * Logical backup of one database, consistent and parallel, with no copy of the dump on disk:
 *
 * 1. one session opens a REPEATABLE READ transaction and exports its snapshot
 *    (pg_export_snapshot()), then lists the tables in it;
 * 2. pg_dump processes (`jobs` at once) all import that snapshot (--snapshot): one archive of
 *    everything but the tables' data (`schema.dump`: schema, sequence values, large objects),
 *    and one data-only archive per table (`tables/<schema>.<table>.dump`); their standard
 *    output is read ahead into bounded memory buffers and streamed into the repository's
 *    pipeline (chunking, dedup, zstd, encryption) as tree nodes, one after the other;
 * 3. meanwhile other sessions, in the same snapshot, count each table's rows and checksum them
 *    (rowcheck), recorded in the snapshot metadata for restore verification and drills;
 * 4. `globals.sql` (pg_dumpall --globals-only --no-role-passwords) is kept when the role may
 *    read it.
 *
 * The archives are uncompressed (-Z0): the pipeline compresses, and deduplicates what did not
 * change since the last dump.
 */
import { IotvaultError } from "@iotvault/errors";
import type { BackupWriter, TreeNode } from "@iotvault/repo";
import type pg from "pg";
import type { SourceProgress, SourceWarning } from "../adapter.js";
import { compileGlobs } from "../fs/globs.js";
import { classifyPgError, connectPg, quoteIdent } from "./connection.js";
import type { PgSnapshotMetadata, TableRecord } from "./metadata.js";
import { displayName, listTables, measureTables } from "./rowcheck.js";
import { ReadAhead } from "./streams.js";
import { clientEnv, findPgProgram, startProgram, type RunningProgram } from "./tools.js";
import { describeConnection, type PgSourceUrl } from "./url.js";

export interface LogicalBackupOptions {
  source: PgSourceUrl;
  /** Globs on "schema.table": the data of the tables matched (include) and not excluded is dumped. */
  include?: readonly string[] | undefined;
  exclude?: readonly string[] | undefined;
  signal?: AbortSignal | undefined;
  onProgress?: ((p: SourceProgress) => void) | undefined;
  onWarning?: ((w: SourceWarning) => void) | undefined;
}

export interface LogicalBackupResult {
  files: number;
  dirs: number;
  bytes: number;
  warnings: number;
  metadata: PgSnapshotMetadata;
}

export const SCHEMA_NODE = "schema.dump";
export const GLOBALS_NODE = "globals.sql";
export const TABLES_DIR = "tables";

/** A name as a node-name component: [A-Za-z0-9_-] kept, every other byte percent-encoded. */
export function encodeName(name: string): string {
  return [...Buffer.from(name, "utf8")]
    .map((b) => {
      const ch = String.fromCharCode(b);
      return /[A-Za-z0-9_-]/.test(ch) ? ch : `%${b.toString(16).toUpperCase().padStart(2, "0")}`;
    })
    .join("");
}

/** The tree node of a table's data dump. */
export function tableNode(t: { schema: string; name: string }): string {
  return `${TABLES_DIR}/${encodeName(t.schema)}.${encodeName(t.name)}.dump`;
}

/** A pg_dump/pg_restore name pattern that matches exactly one table. */
export function exactPattern(t: { schema: string; name: string }): string {
  return `${quoteIdent(t.schema)}.${quoteIdent(t.name)}`;
}

interface DumpItem {
  node: string;
  args: string[];
  what: string;
}

/** Backs up the database into `writer` (the caller commits); returns the snapshot metadata. */
export async function backupLogical(writer: BackupWriter, options: LogicalBackupOptions): Promise<LogicalBackupResult> {
  const src = options.source;
  const where = describeConnection(src);
  const main = await connectPg(src, { signal: options.signal, applicationName: "iotvault logical backup" });
  const runs: RunningProgram[] = [];
  const abort = new AbortController();
  let measureError: unknown;
  let settleMeasuring: Promise<unknown> = Promise.resolve();
  const onAbort = () => abort.abort();
  options.signal?.addEventListener("abort", onAbort, { once: true });
  try {
    await main.query("BEGIN ISOLATION LEVEL REPEATABLE READ, READ ONLY");
    const snapshot = (await main.query<{ s: string }>("SELECT pg_export_snapshot() AS s")).rows[0]!.s;
    const info = await serverInfo(main);
    const tables = selectTables(await listTables(main), options);
    const pgDump = findPgProgram("pg_dump", { atLeast: Math.floor(info.num / 10000) });
    const env = clientEnv(src);
    const result: LogicalBackupResult = { files: 0, dirs: 0, bytes: 0, warnings: 0, metadata: undefined as never };
    const now = BigInt(Date.now()) * 1_000_000n;
    const node = (path: string, type: "file" | "dir"): TreeNode => ({
      path,
      type,
      mode: type === "dir" ? 0o700 : 0o600,
      mtimeNs: now.toString(),
      uid: process.getuid?.() ?? 0,
      gid: process.getgid?.() ?? 0,
    });
    const measuring: Promise<{ rows: number; checksum?: string }[] | undefined> =
      src.rowcheck === "none"
        ? Promise.resolve(undefined)
        : measureTables(src, tables, { mode: src.rowcheck, snapshot, jobs: src.jobs, signal: abort.signal });
    settleMeasuring = measuring;
    measuring.catch((err: unknown) => {
      measureError ??= err;
      abort.abort();
    });

    const globals = await dumpGlobals(src, env, info.num, options.signal);
    if (globals !== undefined) {
      await writer.addFile(node(GLOBALS_NODE, "file"), one(globals));
      result.files++;
      result.bytes += globals.length;
    } else {
      result.warnings++;
      options.onWarning?.({
        path: GLOBALS_NODE,
        message: "roles and tablespaces not saved: the role may not run pg_dumpall --globals-only",
      });
    }
    const common = ["-Fc", "-Z0", "--no-sync", `--snapshot=${snapshot}`, "-d", src.database];
    const items: DumpItem[] = [
      {
        node: SCHEMA_NODE,
        args: [...common, ...tables.flatMap((t) => [`--exclude-table-data=${exactPattern(t)}`])],
        what: `pg_dump of the schema of ${src.database}`,
      },
      ...tables.map((t) => ({
        node: tableNode(t),
        args: [...common, "--data-only", "-t", exactPattern(t)],
        what: `pg_dump of table ${displayName(t)}`,
      })),
    ];
    const launcher = new Launcher(items.length, src.jobs, (i) => {
      const item = items[i]!;
      const run = startProgram(pgDump, item.args, { env, stdout: "pipe", signal: abort.signal, what: item.what });
      runs.push(run);
      return new ReadAhead(run.child.stdout!, run.done);
    });
    for (let i = 0; i < items.length; i++) {
      if (i === 1) {
        await writer.addNode(node(TABLES_DIR, "dir"));
        result.dirs++;
      }
      options.signal?.throwIfAborted();
      const stream = launcher.get(i);
      const added = await writer.addFile(node(items[i]!.node, "file"), stream);
      result.files++;
      result.bytes += added.size ?? 0;
      options.onProgress?.({ filesDone: result.files, bytesDone: result.bytes, currentPath: items[i]!.node });
    }
    if (tables.length === 0) {
      await writer.addNode(node(TABLES_DIR, "dir"));
      result.dirs++;
    }
    const measured = await measuring;
    await main.query("COMMIT");
    const records: TableRecord[] = tables.map((t, i) => ({
      ...t,
      node: tableNode(t),
      ...(measured ? { rows: measured[i]!.rows, checksum: measured[i]!.checksum } : {}),
    }));
    result.metadata = {
      format: 1,
      mode: "logical",
      serverVersion: info.version,
      serverVersionNum: info.num,
      systemIdentifier: info.sysid,
      rowcheck: src.rowcheck,
      database: src.database,
      encoding: info.encoding,
      schemaNode: SCHEMA_NODE,
      ...(globals !== undefined ? { globalsNode: GLOBALS_NODE } : {}),
      tables: records,
    };
    return result;
  } catch (err) {
    abort.abort();
    await Promise.allSettled([...runs.map((r) => r.done), settleMeasuring]);
    if (options.signal?.aborted)
      throw new IotvaultError("CANCELLED", "the logical backup was cancelled", { cause: err });
    throw classifyPgError(measureError ?? err, `logical backup of ${where}`);
  } finally {
    options.signal?.removeEventListener("abort", onAbort);
    await main.end().catch(() => undefined);
  }
}

async function* one(data: Buffer): AsyncGenerator<Buffer> {
  yield data;
}

/** Starts the dumps `jobs` at a time, in order; the i-th output is asked for after the one before was consumed. */
class Launcher<T> {
  private readonly started: (T | undefined)[] = [];
  private next = 0;
  private running = 0;

  constructor(
    private readonly count: number,
    private readonly jobs: number,
    private readonly start: (i: number) => T,
  ) {
    this.fill();
  }

  private fill(): void {
    while (this.running < this.jobs && this.next < this.count) {
      const i = this.next++;
      this.running++;
      this.started[i] = this.start(i);
    }
  }

  /** The i-th output; the one before it has been consumed (its program ended), so another starts. */
  get(i: number): T {
    if (i > 0) {
      this.running--;
      this.fill();
    }
    return this.started[i]!;
  }
}

interface Info {
  version: string;
  num: number;
  sysid: string;
  encoding: string;
}

async function serverInfo(client: pg.Client): Promise<Info> {
  const { rows } = await client.query<{ version: string; num: number; encoding: string }>(
    `SELECT current_setting('server_version') AS version, current_setting('server_version_num')::int AS num,
            pg_encoding_to_char(encoding) AS encoding FROM pg_database WHERE datname = current_database()`,
  );
  let sysid = "";
  try {
    await client.query("SAVEPOINT sysid");
    sysid = (await client.query<{ s: string }>("SELECT system_identifier::text AS s FROM pg_control_system()")).rows[0]!
      .s;
    await client.query("RELEASE SAVEPOINT sysid");
  } catch {
    await client.query("ROLLBACK TO SAVEPOINT sysid").catch(() => undefined);
  }
  return { ...rows[0]!, sysid };
}

/** The tables whose data is dumped: include/exclude globs on "schema.table". */
function selectTables(tables: TableRecord[], options: LogicalBackupOptions): TableRecord[] {
  const include = options.include?.length ? compileGlobs(options.include, "include") : undefined;
  const exclude = options.exclude?.length ? compileGlobs(options.exclude, "exclude") : undefined;
  return tables
    .filter((t) => (!include || include(displayName(t))) && !exclude?.(displayName(t)))
    .sort((a, b) => Buffer.compare(Buffer.from(tableNode(a)), Buffer.from(tableNode(b))));
}

/** pg_dumpall --globals-only without passwords; undefined when the role may not. */
async function dumpGlobals(
  src: PgSourceUrl,
  env: NodeJS.ProcessEnv,
  num: number,
  signal: AbortSignal | undefined,
): Promise<Buffer | undefined> {
  const program = findPgProgram("pg_dumpall", { atLeast: Math.floor(num / 10000) });
  const run = startProgram(program, ["--globals-only", "--no-role-passwords", "-l", src.database], {
    env,
    stdout: "pipe",
    signal,
    what: "pg_dumpall --globals-only",
  });
  const chunks: Buffer[] = [];
  run.child.stdout?.on("data", (d: Buffer) => chunks.push(d));
  try {
    await run.done;
    return Buffer.concat(chunks);
  } catch {
    if (signal?.aborted) throw new IotvaultError("CANCELLED", "the logical backup was cancelled");
    return undefined;
  }
}

/**
 * PostgreSQL source and target URLs:
 *
 *   postgres://user@host:port/database?mode=logical|physical&pgdata=/path&passfile=/path
 *     &jobs=N&rowcheck=checksum|count|none&sslmode=require&host=/socket/dir
 *
 * A password is never taken from the URL (URLs travel in job definitions, events and logs):
 * it comes from the environment of the process (PGPASSWORD, PGPASSFILE, ~/.pgpass) or from a
 * password file named by `passfile` (libpq's pgpass format, or a file holding the password).
 */
import { isAbsolute } from "node:path";
import { IotvaultError, redactUrl } from "@iotvault/errors";

export type PgMode = "logical" | "physical";
/** What a backup records per table for verification (restore and drills compare it). */
export type RowCheck = "checksum" | "count" | "none";

export interface PgConnection {
  /** TCP host name or address, or a Unix socket directory (from `?host=/dir`). */
  host: string;
  port: number;
  user: string;
  /** The database named in the path (logical: the one backed up; physical: the one to connect to). */
  database: string;
  /** A password file (pgpass format, or one line holding the password). */
  passfile: string | undefined;
  sslmode: string | undefined;
}

export interface PgSourceUrl extends PgConnection {
  mode: PgMode;
  /** Physical: the data directory on this host (else asked with SHOW data_directory). */
  pgdata: string | undefined;
  /** Logical: pg_dump processes at once (default 2). */
  jobs: number;
  /** Per-table verification data recorded at backup time (logical default checksum, physical none). */
  rowcheck: RowCheck;
}

const PARAMS = new Set(["mode", "pgdata", "passfile", "jobs", "rowcheck", "sslmode", "host"]);
const SSLMODES = new Set(["disable", "allow", "prefer", "require", "verify-ca", "verify-full"]);

function invalid(url: string, why: string): IotvaultError {
  return new IotvaultError("INVALID_ARGUMENT", `invalid PostgreSQL URL ${redactPostgresUrl(url)}: ${why}`, {
    hint: "write postgres://user@host:port/database?mode=logical|physical (see docs/postgresql.md)",
  });
}

/** True for postgres: and postgresql: URLs. */
export function isPostgresUrl(url: string): boolean {
  return /^postgres(ql)?:\/\//.test(url);
}

/**
 * Parses a PostgreSQL URL (source or restore target). INVALID_ARGUMENT naming the problem for
 * a password in the URL, an unknown parameter or a bad value.
 *
 * ```ts
 * const src = parsePostgresUrl("postgres://backup@db1:5432/iot?mode=physical&pgdata=/var/lib/postgresql/15/main");
 * ```
 */
export function parsePostgresUrl(url: string): PgSourceUrl {
  if (!isPostgresUrl(url)) throw invalid(url, "it must start with postgres:// or postgresql://");
  let u: URL;
  try {
    u = new URL(url);
  } catch {
    throw invalid(url, "it is not a URL");
  }
  if (u.password) {
    throw new IotvaultError("INVALID_ARGUMENT", `the PostgreSQL URL ${redactPostgresUrl(url)} contains a password`, {
      hint: "URLs are stored in jobs and events: give the password through PGPASSWORD or PGPASSFILE in the environment of the executor / restore service, or ?passfile=/path/to/file",
    });
  }
  for (const key of u.searchParams.keys()) {
    if (!PARAMS.has(key)) throw invalid(url, `unknown parameter "${key}" (known: ${[...PARAMS].join(", ")})`);
  }
  const q = (name: string): string | undefined => u.searchParams.get(name) ?? undefined;
  const mode = q("mode") ?? "logical";
  if (mode !== "logical" && mode !== "physical") throw invalid(url, `mode must be logical or physical, not "${mode}"`);
  const socketDir = q("host");
  if (socketDir !== undefined && !isAbsolute(socketDir))
    throw invalid(url, "host= must be an absolute socket directory");
  const host = socketDir ?? (decodeURIComponent(u.hostname).replace(/^\[|\]$/g, "") || "127.0.0.1");
  const port = u.port ? Number(u.port) : 5432;
  const database = decodeURIComponent(u.pathname.replace(/^\//, "")) || (mode === "physical" ? "postgres" : "");
  if (!database) throw invalid(url, "it names no database (postgres://user@host:port/database)");
  if (database.includes("/")) throw invalid(url, "the database name must not contain '/'");
  const pgdata = q("pgdata");
  if (pgdata !== undefined && !isAbsolute(pgdata)) throw invalid(url, "pgdata= must be an absolute path");
  if (pgdata !== undefined && mode !== "physical") throw invalid(url, "pgdata= is only used with mode=physical");
  const passfile = q("passfile");
  if (passfile !== undefined && !isAbsolute(passfile)) throw invalid(url, "passfile= must be an absolute path");
  const sslmode = q("sslmode");
  if (sslmode !== undefined && !SSLMODES.has(sslmode)) throw invalid(url, `unknown sslmode "${sslmode}"`);
  const jobsText = q("jobs") ?? "2";
  const jobs = Number(jobsText);
  if (!Number.isInteger(jobs) || jobs < 1 || jobs > 64) throw invalid(url, `jobs must be 1..64, not "${jobsText}"`);
  const rowcheck = q("rowcheck") ?? (mode === "logical" ? "checksum" : "none");
  if (rowcheck !== "checksum" && rowcheck !== "count" && rowcheck !== "none") {
    throw invalid(url, `rowcheck must be checksum, count or none, not "${rowcheck}"`);
  }
  return {
    mode,
    host,
    port,
    user: decodeURIComponent(u.username) || "postgres",
    database,
    pgdata,
    passfile,
    sslmode,
    jobs,
    rowcheck,
  };
}

/** The URL without a password (safe for messages and logs); "<invalid url>" when unparsable. */
export function redactPostgresUrl(url: string): string {
  return redactUrl(url, { unparsable: "<invalid url>" });
}

/** A short, password-free description of where a connection goes ("user@host:port/db"). */
export function describeConnection(c: PgConnection, database = c.database): string {
  const where = c.host.startsWith("/") ? `${c.host} (socket), port ${c.port}` : `${c.host}:${c.port}`;
  return `${c.user}@${where}/${database}`;
}

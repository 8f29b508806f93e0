/**
 * SQL sessions to a PostgreSQL server (node-postgres), with the password from the environment
 * or the URL's passfile, and errors classified once (unreachable, authentication, missing
 * database, privileges) with what to do about them.
 */
import { IotvaultError } from "@iotvault/errors";
import pg from "pg";
import { passwordFor } from "./tools.js";
import { describeConnection, type PgConnection } from "./url.js";

export type PgClient = pg.Client;

/** Opens a session; errors name the server (never a password) and say what to check. */
export async function connectPg(
  c: PgConnection,
  options: { database?: string | undefined; signal?: AbortSignal | undefined; applicationName?: string } = {},
): Promise<pg.Client> {
  const database = options.database ?? c.database;
  options.signal?.throwIfAborted();
  const password = passwordFor(c, database);
  const client = new pg.Client({
    host: c.host,
    port: c.port,
    user: c.user,
    database,
    ...(password !== undefined ? { password } : {}),
    application_name: options.applicationName ?? "iotvault",
    connectionTimeoutMillis: 15_000,
    ...(c.sslmode === "require" || c.sslmode === "prefer" || c.sslmode === "allow"
      ? { ssl: { rejectUnauthorized: false } }
      : c.sslmode === "verify-ca" || c.sslmode === "verify-full"
        ? { ssl: true }
        : {}),
  });
  client.on("error", () => {
    // a lost connection surfaces through the pending query
  });
  try {
    await client.connect();
  } catch (err) {
    await client.end().catch(() => undefined);
    throw classifyPgError(err, `cannot connect to PostgreSQL at ${describeConnection(c, database)}`);
  }
  return client;
}

/** Runs `fn` with a session that is closed afterwards, whatever happens. */
export async function withPg<T>(
  c: PgConnection,
  fn: (client: pg.Client) => Promise<T>,
  options: { database?: string | undefined; signal?: AbortSignal | undefined } = {},
): Promise<T> {
  const client = await connectPg(c, options);
  try {
    return await fn(client);
  } finally {
    await client.end().catch(() => undefined);
  }
}

const AUTH = new Set(["28P01", "28000"]);

/** One classification of node-postgres and server errors into IotvaultErrors. */
export function classifyPgError(err: unknown, context: string): IotvaultError {
  if (err instanceof IotvaultError) return err;
  const e = err as { code?: unknown; message?: unknown } | null;
  const code = typeof e?.code === "string" ? e.code : "";
  const message = typeof e?.message === "string" ? e.message : String(err);
  const text = `${context}: ${message}`;
  if (AUTH.has(code)) {
    return new IotvaultError("PERMISSION_DENIED", text, {
      cause: err,
      hint: "give the password through PGPASSWORD or PGPASSFILE in this service's environment, or ?passfile= in the URL; check pg_hba.conf",
    });
  }
  if (code === "3D000")
    return new IotvaultError("NOT_FOUND", text, { cause: err, hint: "check the database name in the URL" });
  if (code === "42501") {
    return new IotvaultError("PERMISSION_DENIED", text, {
      cause: err,
      hint: "physical backups need a superuser or a role granted pg_backup_start/pg_backup_stop; logical backups need SELECT on every table",
    });
  }
  if (
    ["ECONNREFUSED", "ECONNRESET", "ETIMEDOUT", "EHOSTUNREACH", "ENOTFOUND", "EAI_AGAIN", "ENOENT"].includes(code) ||
    /^(08|57P0[1-3]|53)/.test(code) ||
    /timeout|terminated unexpectedly|Connection terminated/i.test(message)
  ) {
    return new IotvaultError("UNAVAILABLE", text, { cause: err, hint: "check that PostgreSQL runs and listens there" });
  }
  if (code === "57014") return new IotvaultError("CANCELLED", text, { cause: err });
  return new IotvaultError("INTERNAL", code ? `${text} (SQLSTATE ${code})` : text, { cause: err });
}

/** Quotes an identifier for SQL. */
export function quoteIdent(name: string): string {
  return `"${name.replace(/"/g, '""')}"`;
}

/** Quotes a string literal for SQL and for postgresql.conf values. */
export function quoteLiteral(value: string): string {
  return `'${value.replace(/'/g, "''")}'`;
}

import { spawn, spawnSync } from "node:child_process";
import { randomBytes } from "node:crypto";
import { chownSync, existsSync, readFileSync, rmSync } from "node:fs";
import { mkdtemp } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import pg from "pg";
import { IotvaultError, redactUrl } from "@iotvault/errors";
import { findPostgresBin, findRunuser } from "./binaries.js";
import { onProcessExit } from "./exit-hooks.js";
import { OutputTail } from "./output-buffer.js";
import { freePort } from "./ports.js";

export interface CreateTestDatabaseOptions {
  /** Start of the database name (default "iotvault_test"); letters, digits and "_". */
  prefix?: string;
  /**
   * Admin connection URL (a role that may CREATE DATABASE). Default: the IOTVAULT_TEST_PG_URL
   * environment variable, else postgres://postgres@127.0.0.1:5432/postgres. When that server is
   * unreachable, a private throw-away cluster is started instead (once per process).
   */
  adminUrl?: string;
}

export interface TestDatabase {
  /** Connection URL of the new database (same server, role and options as the admin URL). */
  url: string;
  name: string;
  /** Drops the database, ending the sessions still connected to it. Safe to call twice. */
  drop(): Promise<void>;
}

const DEFAULT_ADMIN_URL = "postgres://postgres@127.0.0.1:5432/postgres";
const CONNECT_TIMEOUT_MS = 3000;
const UNREACHABLE = new Set([
  "ECONNREFUSED",
  "ENOTFOUND",
  "EHOSTUNREACH",
  "ENETUNREACH",
  "ETIMEDOUT",
  "EAI_AGAIN",
  "ENOENT",
]);

let counter = 0;
const adminUrls = new Map<string, Promise<string>>();
let privateCluster: Promise<string> | undefined;

/**
 * Creates a fresh, uniquely named PostgreSQL database for one test and returns its URL.
 *
 * ```ts
 * const db = await createTestDatabase({ prefix: "catalog" });
 * try { const client = new pg.Client(db.url); ... } finally { await db.drop(); }
 * ```
 */
export async function createTestDatabase(options: CreateTestDatabaseOptions = {}): Promise<TestDatabase> {
  const requested = options.adminUrl ?? process.env["IOTVAULT_TEST_PG_URL"] ?? DEFAULT_ADMIN_URL;
  let admin = adminUrls.get(requested);
  if (!admin) {
    admin = resolveAdminUrl(requested);
    adminUrls.set(requested, admin);
    admin.catch(() => adminUrls.delete(requested));
  }
  const adminUrl = await admin;
  const name = uniqueName(options.prefix ?? "iotvault_test");
  await withClient(adminUrl, (client) => client.query(`CREATE DATABASE ${quoteIdent(name)}`));
  const unregister =
    adminUrl === (await privateClusterUrlIfStarted()) ? () => {} : onProcessExit(() => dropAtExit(adminUrl, name));
  let dropped = false;
  return {
    url: withDatabase(adminUrl, name),
    name,
    async drop() {
      if (dropped) return;
      dropped = true;
      unregister();
      await withClient(adminUrl, async (client) => {
        await client.query(
          "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = $1 AND pid <> pg_backend_pid()",
          [name],
        );
        await client.query(`DROP DATABASE IF EXISTS ${quoteIdent(name)}`);
      });
    },
  };
}

async function privateClusterUrlIfStarted(): Promise<string | undefined> {
  return privateCluster ? privateCluster.catch(() => undefined) : undefined;
}

/** The admin URL to use: `requested` when it answers, else the private cluster's. */
async function resolveAdminUrl(requested: string): Promise<string> {
  try {
    await withClient(requested, (client) => client.query("SELECT 1"));
    return requested;
  } catch (err) {
    if (!isUnreachable(err)) {
      throw new IotvaultError(
        "FAILED_PRECONDITION",
        `cannot use PostgreSQL at ${redact(requested)} for test databases: ${messageOf(err)}`,
        {
          hint: "set IOTVAULT_TEST_PG_URL to the URL of a role that may CREATE DATABASE (trust auth or a password in the URL)",
          cause: err,
        },
      );
    }
  }
  privateCluster ??= startPrivateCluster();
  return privateCluster;
}

function isUnreachable(err: unknown): boolean {
  const code = (err as { code?: unknown } | null)?.code;
  if (typeof code === "string" && UNREACHABLE.has(code)) return true;
  return /timeout|terminated unexpectedly/i.test(messageOf(err));
}

async function withClient<T>(url: string, fn: (client: pg.Client) => Promise<T>): Promise<T> {
  const client = new pg.Client({ connectionString: url, connectionTimeoutMillis: CONNECT_TIMEOUT_MS });
  client.on("error", () => {
    // A server-side disconnect surfaces through the pending query; nothing to do here.
  });
  await client.connect();
  try {
    return await fn(client);
  } finally {
    await client.end().catch(() => undefined);
  }
}

function uniqueName(prefix: string): string {
  const clean = prefix
    .toLowerCase()
    .replace(/[^a-z0-9_]/g, "_")
    .replace(/^([^a-z_])/, "_$1");
  const suffix = `${process.pid.toString(36)}_${(counter++).toString(36)}_${randomBytes(3).toString("hex")}`;
  return `${clean.slice(0, 62 - suffix.length)}_${suffix}`;
}

function quoteIdent(name: string): string {
  return `"${name.replace(/"/g, '""')}"`;
}

function withDatabase(url: string, name: string): string {
  const parsed = new URL(url);
  parsed.pathname = `/${encodeURIComponent(name)}`;
  return parsed.toString();
}

function redact(url: string): string {
  return redactUrl(url, { unparsable: "<unparsable URL>" });
}

function messageOf(err: unknown): string {
  const message = err instanceof Error ? err.message : String(err);
  const code = (err as { code?: unknown } | null)?.code;
  return message || (typeof code === "string" ? code : "unknown error");
}

/** Synchronous best-effort drop at process exit (a test that never called drop()). */
function dropAtExit(adminUrl: string, name: string): void {
  const psql = findPostgresBin("psql");
  if (!psql) return;
  const sql = `SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = '${name}'; DROP DATABASE IF EXISTS ${quoteIdent(name)};`;
  spawnSync(psql, ["-X", "-q", "-d", adminUrl, "-c", sql], { stdio: "ignore", timeout: 5000 });
}

// ---------------------------------------------------------------------------------------------
// The private cluster: initdb + pg_ctl in a temp dir, trust auth, loopback only, stopped at exit.

interface PgTools {
  initdb: string;
  pgCtl: string;
  /** Prefix that runs a command as the postgres OS user (when we are root), else empty. */
  asUser: string[];
}

async function startPrivateCluster(): Promise<string> {
  const tools = findPgTools();
  const dir = await mkdtemp(join(tmpdir(), "iotvault-pg-"));
  const data = join(dir, "data");
  if (tools.asUser.length > 0) chownToPostgres(dir);
  const unregister = onProcessExit(() => stopCluster(tools, dir, data));
  try {
    await run(tools, dir, tools.initdb, [
      "-D",
      data,
      "-A",
      "trust",
      "-U",
      "postgres",
      "-E",
      "UTF8",
      "--locale=C",
      "--no-sync",
    ]);
    const port = await startServer(tools, dir, data);
    return `postgres://postgres@127.0.0.1:${port}/postgres`;
  } catch (err) {
    unregister();
    stopCluster(tools, dir, data);
    throw err;
  }
}

function findPgTools(): PgTools {
  const initdb = findPostgresBin("initdb");
  const pgCtl = findPostgresBin("pg_ctl");
  if (!initdb || !pgCtl) {
    throw new IotvaultError(
      "FAILED_PRECONDITION",
      "no PostgreSQL server is reachable and initdb/pg_ctl were not found to start one",
      {
        hint: "start PostgreSQL (or set IOTVAULT_TEST_PG_URL to a reachable server), or install the server (Debian: `apt-get install postgresql`)",
      },
    );
  }
  if (process.getuid?.() !== 0) return { initdb, pgCtl, asUser: [] };
  const runuser = findRunuser();
  if (!runuser) {
    throw new IotvaultError("FAILED_PRECONDITION", "initdb refuses to run as root and runuser was not found", {
      hint: "run the tests as a normal user, or install util-linux (runuser)",
    });
  }
  return { initdb, pgCtl, asUser: [runuser, "-u", "postgres", "--"] };
}

function chownToPostgres(dir: string): void {
  const uid = idOf("-u");
  const gid = idOf("-g");
  chownSync(dir, uid, gid);
}

function idOf(flag: "-u" | "-g"): number {
  const result = spawnSync("id", [flag, "postgres"], { encoding: "utf8" });
  const id = Number.parseInt(result.stdout, 10);
  if (result.status !== 0 || !Number.isInteger(id)) {
    throw new IotvaultError(
      "FAILED_PRECONDITION",
      "running as root, but there is no `postgres` OS user to run initdb as",
      {
        hint: "create the user (`useradd -r postgres`) or run the tests as a normal user",
      },
    );
  }
  return id;
}

async function startServer(tools: PgTools, dir: string, data: string): Promise<number> {
  const log = join(dir, "postgres.log");
  let lastError: unknown;
  for (let attempt = 0; attempt < 3; attempt++) {
    const port = await freePort();
    const serverOptions = `-p ${port} -k ${dir} -c listen_addresses=127.0.0.1 -c fsync=off -c full_page_writes=off -c synchronous_commit=off`;
    try {
      await run(tools, dir, tools.pgCtl, ["-D", data, "-l", log, "-w", "-t", "30", "-o", serverOptions, "start"]);
      return port;
    } catch (err) {
      lastError = err;
      if (!/already in use/i.test(readLog(log))) break;
    }
  }
  throw lastError;
}

function readLog(path: string): string {
  try {
    return readFileSync(path, "utf8").slice(-4000);
  } catch {
    return "";
  }
}

async function run(tools: PgTools, cwd: string, program: string, args: string[]): Promise<void> {
  const [command, ...rest] = commandLine(tools, program, args);
  const child = spawn(command, rest, { cwd, stdio: ["ignore", "pipe", "pipe"] });
  const output = new OutputTail();
  output.follow(child.stdout);
  output.follow(child.stderr);
  const code = await new Promise<number | null>((resolve, reject) => {
    child.once("error", reject);
    child.once("close", resolve);
  });
  if (code !== 0) {
    const log = readLog(join(cwd, "postgres.log"));
    throw new IotvaultError(
      "UNAVAILABLE",
      `${program} ${args.at(-1) ?? ""} failed (exit ${String(code)}):\n${output.value}${log ? `\nserver log:\n${log}` : ""}`,
      {
        hint: "read the output above; the private test cluster lives in a temp dir that is removed at exit",
      },
    );
  }
}

function commandLine(tools: PgTools, program: string, args: string[]): [string, ...string[]] {
  const [first, ...rest] = tools.asUser;
  return first === undefined ? [program, ...args] : [first, ...rest, program, ...args];
}

function stopCluster(tools: PgTools, dir: string, data: string): void {
  if (existsSync(join(data, "postmaster.pid"))) {
    const [command, ...rest] = commandLine(tools, tools.pgCtl, ["-D", data, "-m", "immediate", "-w", "stop"]);
    spawnSync(command, rest, { cwd: dir, stdio: "ignore", timeout: 15_000 });
  }
  rmSync(dir, { recursive: true, force: true });
}

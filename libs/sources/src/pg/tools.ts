/**
 * PostgreSQL programs (pg_dump, pg_restore, pg_dumpall, initdb, postgres, pg_ctl): finding
 * them, their environment (connection and credentials, never on the command line), and
 * running them with their standard error kept for messages.
 *
 * Decision: the PostgreSQL tools read their standard environment (PGPASSWORD, PGPASSFILE,
 * PGSSLROOTCERT, ...); this module is the one place of the package that reads process.env,
 * for those variables only, so that an executor's credentials reach the tools unchanged.
 */
import { spawn, type ChildProcess } from "node:child_process";
import { accessSync, constants, readdirSync, readFileSync, statSync } from "node:fs";
import { delimiter, join } from "node:path";
import { IotvaultError } from "@iotvault/errors";
import type { PgConnection } from "./url.js";

const PG_ROOT = "/usr/lib/postgresql";

function isExecutable(path: string): boolean {
  try {
    accessSync(path, constants.X_OK);
    return statSync(path).isFile();
  } catch {
    return false;
  }
}

/** Installed PostgreSQL major versions under /usr/lib/postgresql (Debian layout), highest first. */
export function installedMajors(): number[] {
  try {
    return readdirSync(PG_ROOT)
      .filter((v) => /^\d+$/.test(v))
      .map(Number)
      .sort((a, b) => b - a);
  } catch {
    return [];
  }
}

/**
 * A PostgreSQL program. With `major`, the binaries of exactly that version are preferred
 * (servers: a data directory only runs under its own major version); with `atLeast`, the
 * highest installed version not older (client tools such as pg_dump must not be older than the
 * server). Then PATH. FAILED_PRECONDITION naming the program when none is found.
 */
export function findPgProgram(name: string, want: { major?: number; atLeast?: number } = {}): string {
  const majors = installedMajors();
  const candidates: number[] = [];
  if (want.major !== undefined) candidates.push(want.major);
  else candidates.push(...majors.filter((m) => m >= (want.atLeast ?? 0)));
  for (const m of candidates) {
    const path = join(PG_ROOT, String(m), "bin", name);
    if (isExecutable(path)) return path;
  }
  if (want.major === undefined) {
    for (const dir of (process.env["PATH"] ?? "").split(delimiter)) {
      if (dir && isExecutable(join(dir, name))) return join(dir, name);
    }
  }
  const which = want.major !== undefined ? ` of PostgreSQL ${want.major}` : "";
  throw new IotvaultError(
    "FAILED_PRECONDITION",
    `the PostgreSQL program ${name}${which} is not installed on this host`,
    {
      hint:
        want.major !== undefined
          ? `install the server of that version (Debian: apt-get install postgresql-${want.major})`
          : "install the PostgreSQL client programs (Debian: apt-get install postgresql-client)",
    },
  );
}

/** util-linux runuser, to run server programs as their OS user when this process is root. */
export function findRunuser(): string | undefined {
  return ["/usr/sbin/runuser", "/sbin/runuser", "/usr/bin/runuser"].find(isExecutable);
}

export const IS_ROOT = typeof process.getuid === "function" && process.getuid() === 0;

/** The OS user PostgreSQL server programs run as when this process is root. */
export const DEFAULT_OS_USER = "postgres";

/**
 * The command line of a server program (initdb, postgres, pg_ctl): as `osUser` through
 * runuser when this process is root (they refuse to run as root), else as is.
 */
export function serverCommand(program: string, args: string[], osUser = DEFAULT_OS_USER): [string, string[]] {
  if (!IS_ROOT) return [program, args];
  const runuser = findRunuser();
  if (!runuser) {
    throw new IotvaultError(
      "FAILED_PRECONDITION",
      "PostgreSQL server programs refuse to run as root and runuser is missing",
      {
        hint: "run this service as the PostgreSQL OS user, or install util-linux (runuser)",
      },
    );
  }
  return [runuser, ["-u", osUser, "--", program, ...args]];
}

/** uid and gid of an OS user (from /etc/passwd); undefined when there is no such user. */
export function osUserIds(name: string): { uid: number; gid: number } | undefined {
  try {
    for (const line of readFileSync("/etc/passwd", "utf8").split("\n")) {
      const f = line.split(":");
      if (f[0] === name && f.length >= 4) return { uid: Number(f[2]), gid: Number(f[3]) };
    }
  } catch {
    return undefined;
  }
  return undefined;
}

/** The name of the OS user with this uid (from /etc/passwd). */
export function osUserName(uid: number): string | undefined {
  try {
    for (const line of readFileSync("/etc/passwd", "utf8").split("\n")) {
      const f = line.split(":");
      if (f.length >= 4 && Number(f[2]) === uid) return f[0];
    }
  } catch {
    return undefined;
  }
  return undefined;
}

const PG_ENV = /^PG[A-Z_]+$/;

/**
 * The environment of a client program for a connection: this process's environment with
 * every PG* variable replaced by the connection's (PGHOST, PGPORT, PGUSER, PGDATABASE,
 * PGSSLMODE) plus the caller's PGPASSWORD / PGPASSFILE (or the URL's passfile).
 */
export function clientEnv(c: PgConnection, database = c.database): NodeJS.ProcessEnv {
  const env: NodeJS.ProcessEnv = {};
  for (const [k, v] of Object.entries(process.env)) if (!PG_ENV.test(k)) env[k] = v;
  for (const k of ["PGPASSWORD", "PGPASSFILE", "PGSSLROOTCERT", "PGSSLCERT", "PGSSLKEY", "PGCONNECT_TIMEOUT"]) {
    const v = process.env[k];
    if (v) env[k] = v;
  }
  env["PGHOST"] = c.host;
  env["PGPORT"] = String(c.port);
  env["PGUSER"] = c.user;
  env["PGDATABASE"] = database;
  env["PGAPPNAME"] = "iotvault";
  if (c.sslmode) env["PGSSLMODE"] = c.sslmode;
  const password = c.passfile ? passwordFromFile(c.passfile, c, database) : undefined;
  if (password !== undefined) {
    delete env["PGPASSFILE"];
    env["PGPASSWORD"] = password;
  }
  return env;
}

/**
 * The password for a connection from the environment (PGPASSWORD, then the pgpass file named
 * by PGPASSFILE or ~/.pgpass) or from the URL's passfile; undefined when none applies.
 */
export function passwordFor(c: PgConnection, database = c.database): string | undefined {
  if (c.passfile) return passwordFromFile(c.passfile, c, database);
  if (process.env["PGPASSWORD"]) return process.env["PGPASSWORD"];
  const file = process.env["PGPASSFILE"] ?? (process.env["HOME"] ? join(process.env["HOME"], ".pgpass") : undefined);
  if (!file) return undefined;
  try {
    return matchPgpass(readFileSync(file, "utf8"), c, database);
  } catch {
    return undefined;
  }
}

/** A passfile= file: pgpass lines (host:port:db:user:password), or one line that is the password. */
function passwordFromFile(file: string, c: PgConnection, database: string): string | undefined {
  let text: string;
  try {
    if (statSync(file).size > 64 * 1024) throw new Error("larger than 64 KiB");
    text = readFileSync(file, "utf8");
  } catch (err) {
    throw new IotvaultError(
      "FAILED_PRECONDITION",
      `cannot read the PostgreSQL password file ${file}: ${(err as Error).message}`,
      {
        hint: "check the passfile= path of the URL and that this service's OS user may read it",
      },
    );
  }
  const lines = text.split(/\r?\n/).filter((l) => l !== "" && !l.startsWith("#"));
  if (lines.length === 1 && splitPgpass(lines[0]!).length !== 5) return lines[0];
  return matchPgpass(text, c, database);
}

function splitPgpass(line: string): string[] {
  const fields: string[] = [];
  let current = "";
  for (let i = 0; i < line.length; i++) {
    const ch = line[i]!;
    if (ch === "\\" && i + 1 < line.length) current += line[++i];
    else if (ch === ":") {
      fields.push(current);
      current = "";
    } else current += ch;
  }
  fields.push(current);
  return fields;
}

function matchPgpass(text: string, c: PgConnection, database: string): string | undefined {
  const host = c.host.startsWith("/") ? "localhost" : c.host;
  for (const line of text.split(/\r?\n/)) {
    if (line === "" || line.startsWith("#")) continue;
    const f = splitPgpass(line);
    if (f.length !== 5) continue;
    const ok = (pattern: string, value: string) => pattern === "*" || pattern === value;
    if (ok(f[0]!, host) && ok(f[1]!, String(c.port)) && ok(f[2]!, database) && ok(f[3]!, c.user)) return f[4];
  }
  return undefined;
}

/** Keeps the last bytes of a stream (a program's stderr) for error messages. */
export class OutputTail {
  private text = "";
  constructor(private readonly max = 4000) {}
  follow(stream: NodeJS.ReadableStream | null | undefined): void {
    stream?.on("data", (d: Buffer | string) => {
      this.text = (this.text + d.toString()).slice(-this.max);
    });
  }
  get value(): string {
    return this.text.trim();
  }
}

export interface RunningProgram {
  child: ChildProcess;
  /** Resolves when the program exits with status 0; rejects with its stderr otherwise. */
  done: Promise<void>;
  stderr: OutputTail;
}

export interface StartOptions {
  env?: NodeJS.ProcessEnv;
  cwd?: string;
  /** stdin: "pipe" to write into it, else ignored. */
  stdin?: "pipe" | "ignore";
  /** stdout: "pipe" to read it, else ignored. */
  stdout?: "pipe" | "ignore";
  signal?: AbortSignal | undefined;
  /** What the program does, for messages ("pg_dump of public.sensors"). */
  what: string;
}

/**
 * Starts a program without a shell. `done` rejects with UNAVAILABLE quoting the end of its
 * standard error when it fails, CANCELLED when the signal aborts it (the program is killed).
 */
export function startProgram(program: string, args: string[], options: StartOptions): RunningProgram {
  const child = spawn(program, args, {
    env: options.env ?? process.env,
    cwd: options.cwd,
    stdio: [options.stdin ?? "ignore", options.stdout ?? "ignore", "pipe"],
  });
  const stderr = new OutputTail();
  stderr.follow(child.stderr);
  const onAbort = () => child.kill("SIGTERM");
  options.signal?.addEventListener("abort", onAbort, { once: true });
  const done = new Promise<void>((resolve, reject) => {
    child.once("error", (err) => {
      options.signal?.removeEventListener("abort", onAbort);
      reject(
        new IotvaultError("UNAVAILABLE", `${options.what}: cannot run ${program}: ${err.message}`, { cause: err }),
      );
    });
    child.once("close", (code, sig) => {
      options.signal?.removeEventListener("abort", onAbort);
      if (options.signal?.aborted) {
        reject(new IotvaultError("CANCELLED", `${options.what} was cancelled`));
      } else if (code === 0) resolve();
      else {
        const why = code === null ? `was killed by ${sig}` : `failed (exit ${code})`;
        const tail = stderr.value;
        reject(
          new IotvaultError("UNAVAILABLE", `${options.what} ${why}${tail ? `: ${tail}` : ""}`, {
            retryable: false,
            hint: "read the PostgreSQL message above; check the connection, the role's privileges and the server log",
          }),
        );
      }
    });
  });
  done.catch(() => undefined); // observed by the caller; never an unhandled rejection
  return { child, done, stderr };
}

/** Runs a program to completion and returns its standard output (for small outputs). */
export async function runProgram(program: string, args: string[], options: StartOptions): Promise<string> {
  const run = startProgram(program, args, { ...options, stdout: "pipe" });
  const chunks: Buffer[] = [];
  run.child.stdout?.on("data", (d: Buffer) => chunks.push(d));
  await run.done;
  return Buffer.concat(chunks).toString("utf8");
}

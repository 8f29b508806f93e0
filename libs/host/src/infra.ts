/**
 * The single-node infrastructure `iotvault stack up` may start when none is reachable: a
 * nats-server with JetStream and a private PostgreSQL cluster, both under IOTVAULT_HOME, both
 * listening on loopback only. Nothing else on the machine is started or reconfigured.
 */
import { spawnSync } from "node:child_process";
import { chownSync, copyFileSync, existsSync, mkdirSync, rmSync } from "node:fs";
import { dirname, join } from "node:path";
import { IotvaultError } from "@iotvault/errors";
import { findNatsServer, findPostgresBin, findRunuser } from "./binaries.js";
import { isAlive, readPidFile, runSync, startDetached, waitForPort } from "./processes.js";

export interface Endpoint {
  host: string;
  port: number;
}

export function isLoopback(host: string): boolean {
  return host === "localhost" || host === "::1" || host === "[::1]" || /^127\./.test(host);
}

/** Starts nats-server -js on host:port with its store under storeDir. Returns its pid. */
export async function startNatsServer(
  options: Endpoint & { storeDir: string; logFile: string; pidFile: string },
): Promise<number> {
  const binary = findNatsServer();
  if (!binary) {
    throw new IotvaultError("FAILED_PRECONDITION", "no NATS server is reachable and nats-server is not installed", {
      hint: "install it (Debian: `apt-get install nats-server`; `npm run bootstrap` does it), or set IOTVAULT_NATS_URL",
    });
  }
  mkdirSync(options.storeDir, { recursive: true, mode: 0o700 });
  const pid = startDetached({
    command: binary,
    args: ["-a", options.host, "-p", String(options.port), "-js", "-sd", options.storeDir],
    logFile: options.logFile,
    pidFile: options.pidFile,
  });
  if (!(await waitForPort(options.host, options.port, 15_000))) {
    throw new IotvaultError("UNAVAILABLE", `nats-server did not start listening on ${options.host}:${options.port}`, {
      hint: `read ${options.logFile}`,
    });
  }
  return pid;
}

interface PgTools {
  initdb: string;
  pgCtl: string;
  asUser: string[];
}

function pgTools(): PgTools {
  const initdb = findPostgresBin("initdb");
  const pgCtl = findPostgresBin("pg_ctl");
  if (!initdb || !pgCtl) {
    throw new IotvaultError(
      "FAILED_PRECONDITION",
      "no PostgreSQL server is reachable and the PostgreSQL server programs are not installed",
      {
        hint: "install them (Debian: `apt-get install postgresql`; `npm run bootstrap` does it), or set IOTVAULT_DATABASE_URL",
      },
    );
  }
  if (process.getuid?.() !== 0) return { initdb, pgCtl, asUser: [] };
  const runuser = findRunuser();
  if (!runuser) {
    throw new IotvaultError("FAILED_PRECONDITION", "PostgreSQL refuses to run as root and runuser was not found", {
      hint: "install util-linux, or run iotvault as a normal user",
    });
  }
  return { initdb, pgCtl, asUser: [runuser, "-u", "postgres", "--"] };
}

function asUser(tools: PgTools, program: string, args: string[]): [string, string[]] {
  const [first, ...rest] = tools.asUser;
  return first === undefined ? [program, args] : [first, [...rest, program, ...args]];
}

function postgresIds(): { uid: number; gid: number } {
  const uid = Number.parseInt(spawnSync("id", ["-u", "postgres"], { encoding: "utf8" }).stdout, 10);
  const gid = Number.parseInt(spawnSync("id", ["-g", "postgres"], { encoding: "utf8" }).stdout, 10);
  if (!Number.isInteger(uid) || !Number.isInteger(gid)) {
    throw new IotvaultError(
      "FAILED_PRECONDITION",
      "running as root, but there is no `postgres` OS user to run PostgreSQL as",
      {
        hint: "install the postgresql package (it creates the user) or run iotvault as a normal user",
      },
    );
  }
  return { uid, gid };
}

/**
 * Starts (creating it first when needed) a private PostgreSQL cluster in `dir` on host:port,
 * listening on loopback only. The `postgres` role gets the password in `passwordFile` and TCP
 * connections need it (scram-sha-256); local socket connections use peer authentication.
 * Returns the postmaster pid.
 */
export async function startPrivatePostgres(options: Endpoint & { dir: string; passwordFile: string }): Promise<number> {
  const tools = pgTools();
  const data = join(options.dir, "data");
  // The parents must be traversable by the server's OS user; the cluster directory is its own.
  mkdirSync(dirname(options.dir), { recursive: true, mode: 0o755 });
  mkdirSync(options.dir, { recursive: true, mode: 0o700 });
  if (tools.asUser.length > 0) {
    const { uid, gid } = postgresIds();
    chownSync(options.dir, uid, gid);
  }
  if (!existsSync(join(data, "PG_VERSION"))) {
    // initdb reads the password from a file the server's OS user can read: a short-lived copy.
    const pwfile = join(options.dir, ".pwfile");
    copyFileSync(options.passwordFile, pwfile);
    if (tools.asUser.length > 0) {
      const { uid, gid } = postgresIds();
      chownSync(pwfile, uid, gid);
    }
    try {
      const [cmd, args] = asUser(tools, tools.initdb, [
        "-D",
        data,
        "--auth-host=scram-sha-256",
        "--auth-local=peer",
        `--pwfile=${pwfile}`,
        "-U",
        "postgres",
        "-E",
        "UTF8",
        "--locale=C",
      ]);
      runSync(cmd, args, { cwd: options.dir, timeoutMs: 120_000 });
    } finally {
      rmSync(pwfile, { force: true });
    }
  }
  const serverOptions = `-p ${options.port} -k ${options.dir} -c listen_addresses=${options.host}`;
  const log = join(options.dir, "postgres.log");
  const [cmd, args] = asUser(tools, tools.pgCtl, [
    "-D",
    data,
    "-l",
    log,
    "-w",
    "-t",
    "60",
    "-o",
    serverOptions,
    "start",
  ]);
  runSync(cmd, args, { cwd: options.dir, timeoutMs: 90_000 });
  const pid = readPidFile(join(data, "postmaster.pid"));
  if (!pid) throw new IotvaultError("UNAVAILABLE", `PostgreSQL did not start; read ${log}`);
  return pid;
}

/** Stops a private cluster started by startPrivatePostgres (fast shutdown) and waits for its exit. */
export async function stopPrivatePostgres(dir: string): Promise<boolean> {
  const data = join(dir, "data");
  const pid = readPidFile(join(data, "postmaster.pid"));
  if (pid === undefined) return false;
  const tools = pgTools();
  const [cmd, args] = asUser(tools, tools.pgCtl, ["-D", data, "-m", "fast", "-w", "-t", "60", "stop"]);
  runSync(cmd, args, { cwd: dir, timeoutMs: 90_000 });
  // pg_ctl returns once the pid file is gone; the postmaster exits a moment later.
  const deadline = Date.now() + 10_000;
  while (isAlive(pid) && Date.now() < deadline) await new Promise((r) => setTimeout(r, 50));
  return true;
}

/**
 * A PostgreSQL cluster on this host that iotvault starts itself: the scratch cluster of a
 * restore drill, a restored data directory brought up to check it, and the test clusters.
 * It runs on loopback only, on a port of its own, with its socket in a private directory;
 * when this process is root the server runs as the PostgreSQL OS user (runuser).
 *
 * ```ts
 * const cluster = await LocalCluster.init("/tmp/drill/data");
 * await cluster.start({ port: await freeLoopbackPort() });
 * await withPg(cluster.connection("postgres"), (c) => c.query("SELECT 1"));
 * await cluster.stop();
 * ```
 */
import { spawn } from "node:child_process";
import { chownSync, closeSync, existsSync, mkdirSync, openSync, readFileSync } from "node:fs";
import { createServer } from "node:net";
import { join } from "node:path";
import { setTimeout as sleep } from "node:timers/promises";
import { IotvaultError } from "@iotvault/errors";
import { connectPg } from "./connection.js";
import { DEFAULT_OS_USER, IS_ROOT, findPgProgram, osUserIds, runProgram, serverCommand } from "./tools.js";
import type { PgConnection } from "./url.js";

export interface ClusterOptions {
  /** OS user the server runs as when this process is root (default "postgres"). */
  osUser?: string | undefined;
  /** PostgreSQL major version of the binaries (default: the highest installed). */
  major?: number | undefined;
  /** Directory for the socket and the server log (default: the data directory's parent). */
  runDir?: string | undefined;
}

export interface StartOptions {
  /**
   * The TCP port on 127.0.0.1, or "free": a port that is free when the server starts; when
   * another process takes it before the server binds it, the server starts again on another
   * (three tries).
   */
  port: number | "free";
  /** Where "free" ports come from (default freeLoopbackPort). */
  pickPort?: (() => Promise<number>) | undefined;
  /** Server settings passed as -c name=value (they win over the configuration files). */
  settings?: Readonly<Record<string, string>> | undefined;
  /** Give up after this long (default 60 s). */
  timeoutMs?: number | undefined;
  signal?: AbortSignal | undefined;
  /**
   * "accepting" (default): return once the server accepts connections (a server in archive
   * recovery accepts them once consistent, as a hot standby).
   */
  until?: "accepting" | undefined;
}

/** A TCP port on 127.0.0.1 that was free a moment ago. */
export function freeLoopbackPort(): Promise<number> {
  return new Promise<number>((resolve, reject) => {
    const server = createServer();
    server.unref();
    server.once("error", reject);
    server.listen({ host: "127.0.0.1", port: 0, exclusive: true }, () => {
      const address = server.address();
      const port = typeof address === "object" && address !== null ? address.port : 0;
      server.close(() => (port > 0 ? resolve(port) : reject(new Error("no port bound"))));
    });
  });
}

/**
 * The environment of a server started here: this process's, without its iotvault settings and
 * secrets (IOTVAULT_*) and PostgreSQL client variables, so that a restore_command sees only
 * what postgresql.auto.conf gives it.
 */
function serverEnv(): NodeJS.ProcessEnv {
  const env: NodeJS.ProcessEnv = {};
  for (const [k, v] of Object.entries(process.env)) if (!/^(IOTVAULT_|PG)/.test(k)) env[k] = v;
  return env;
}

export class LocalCluster {
  private portNumber = 0;
  readonly osUser: string;
  readonly runDir: string;

  private constructor(
    readonly dataDir: string,
    private readonly options: ClusterOptions,
  ) {
    this.osUser = options.osUser ?? DEFAULT_OS_USER;
    this.runDir = options.runDir ?? join(dataDir, "..");
  }

  /** Creates a new cluster with initdb (trust authentication, UTF8, C locale). */
  static async init(
    dataDir: string,
    options: ClusterOptions & { signal?: AbortSignal | undefined } = {},
  ): Promise<LocalCluster> {
    const cluster = new LocalCluster(dataDir, options);
    mkdirSync(cluster.runDir, { recursive: true });
    cluster.chownToServer(cluster.runDir);
    mkdirSync(dataDir, { recursive: true, mode: 0o700 });
    cluster.chownToServer(dataDir);
    const initdb = findPgProgram("initdb", options.major !== undefined ? { major: options.major } : {});
    const [cmd, args] = serverCommand(
      initdb,
      ["-D", dataDir, "-A", "trust", "-U", "postgres", "-E", "UTF8", "--locale=C", "--no-sync"],
      cluster.osUser,
    );
    await runProgram(cmd, args, { what: `initdb of ${dataDir}`, signal: options.signal, cwd: cluster.runDir });
    return cluster;
  }

  /** A cluster whose data directory exists already (e.g. just restored). */
  static attach(dataDir: string, options: ClusterOptions = {}): LocalCluster {
    const cluster = new LocalCluster(dataDir, options);
    mkdirSync(cluster.runDir, { recursive: true });
    cluster.chownToServer(cluster.runDir);
    return cluster;
  }

  get port(): number {
    return this.portNumber;
  }

  get logFile(): string {
    return join(this.runDir, `postgres-${this.portNumber}.log`);
  }

  /** A connection to one of its databases as the bootstrap superuser. */
  connection(database = "postgres"): PgConnection {
    return {
      host: "127.0.0.1",
      port: this.portNumber,
      user: "postgres",
      database,
      passfile: undefined,
      sslmode: undefined,
    };
  }

  url(database = "postgres"): string {
    return `postgres://postgres@127.0.0.1:${this.portNumber}/${encodeURIComponent(database)}`;
  }

  /** Gives a path to the server's OS user (when this process is root). */
  chownToServer(path: string): void {
    if (!IS_ROOT) return;
    const ids = osUserIds(this.osUser);
    if (!ids) {
      throw new IotvaultError("FAILED_PRECONDITION", `there is no OS user "${this.osUser}" to run PostgreSQL as`, {
        hint: "create it (Debian: the postgresql package does) or name another with os_user",
      });
    }
    chownSync(path, ids.uid, ids.gid);
  }

  /**
   * Starts the server and waits until it accepts connections. UNAVAILABLE with the end of the
   * server log when it exits or does not come up in time.
   */
  async start(options: StartOptions): Promise<void> {
    if (options.port !== "free") return this.startOn(options.port, options);
    for (let attempt = 1; ; attempt++) {
      const port = await (options.pickPort ?? freeLoopbackPort)();
      try {
        await this.startOn(port, options);
        return;
      } catch (err) {
        // The server exits at once when it cannot bind its port (nothing of the data directory
        // has been touched yet): try another.
        if (attempt >= 3 || !/could not bind .*Address already in use/.test(this.logTail())) throw err;
      }
    }
  }

  private async startOn(port: number, options: StartOptions): Promise<void> {
    this.portNumber = port;
    const postgres = findPgProgram("postgres", this.options.major !== undefined ? { major: this.options.major } : {});
    const settings: Record<string, string> = {
      listen_addresses: "127.0.0.1",
      unix_socket_directories: this.runDir,
      logging_collector: "off",
      ...options.settings,
    };
    const args = ["-D", this.dataDir, "-p", String(port)];
    for (const [k, v] of Object.entries(settings)) args.push("-c", `${k}=${v}`);
    const [cmd, cmdArgs] = serverCommand(postgres, args, this.osUser);
    const log = openSync(this.logFile, "a", 0o644);
    let exited: { code: number | null } | undefined;
    try {
      const child = spawn(cmd, cmdArgs, {
        detached: true,
        stdio: ["ignore", log, log],
        cwd: this.runDir,
        env: serverEnv(),
      });
      child.once("exit", (code) => (exited = { code }));
      child.once("error", () => (exited = { code: -1 }));
      child.unref();
    } finally {
      closeSync(log);
    }
    const deadline = Date.now() + (options.timeoutMs ?? 60_000);
    for (;;) {
      options.signal?.throwIfAborted();
      if (exited) {
        throw new IotvaultError(
          "UNAVAILABLE",
          `PostgreSQL on ${this.dataDir} exited during start-up (exit ${String(exited.code)})`,
          {
            hint: `the server log says:\n${this.logTail()}`,
            details: { log: this.logFile },
          },
        );
      }
      if (await this.accepting()) return;
      if (Date.now() > deadline) {
        await this.stop({ mode: "immediate" }).catch(() => undefined);
        throw new IotvaultError(
          "DEADLINE_EXCEEDED",
          `PostgreSQL on ${this.dataDir} did not accept connections in time`,
          {
            hint: `the server log says:\n${this.logTail()}`,
          },
        );
      }
      await sleep(100);
    }
  }

  /** True when a session can be opened. */
  async accepting(): Promise<boolean> {
    const status = this.pidFileLine(8)?.trim();
    if (status !== "ready" && status !== "standby") return false;
    try {
      const client = await connectPg(this.connection());
      await client.end();
      return true;
    } catch {
      return false;
    }
  }

  /** The postmaster's pid, from postmaster.pid; undefined when it is not running. */
  pid(): number | undefined {
    const pid = Number.parseInt(this.pidFileLine(1) ?? "", 10);
    if (!Number.isInteger(pid) || pid <= 0) return undefined;
    try {
      process.kill(pid, 0);
      return pid;
    } catch {
      return undefined;
    }
  }

  private pidFileLine(n: number): string | undefined {
    try {
      return readFileSync(join(this.dataDir, "postmaster.pid"), "utf8").split("\n")[n - 1];
    } catch {
      return undefined;
    }
  }

  /** Stops the server (fast: SIGINT, immediate: SIGQUIT) and waits until it is gone. */
  async stop(options: { mode?: "fast" | "immediate"; timeoutMs?: number } = {}): Promise<void> {
    const pid = this.pid();
    if (pid === undefined) return;
    process.kill(pid, options.mode === "immediate" ? "SIGQUIT" : "SIGINT");
    const deadline = Date.now() + (options.timeoutMs ?? 30_000);
    while (this.alive(pid)) {
      if (Date.now() > deadline) {
        process.kill(pid, "SIGKILL");
        await sleep(200);
        break;
      }
      await sleep(50);
    }
  }

  private alive(pid: number): boolean {
    try {
      process.kill(pid, 0);
      return true;
    } catch {
      return false;
    }
  }

  /** The last lines of the server log. */
  logTail(lines = 30): string {
    try {
      return readFileSync(this.logFile, "utf8").trimEnd().split("\n").slice(-lines).join("\n");
    } catch {
      return "(no server log)";
    }
  }

  /** The whole server log (for recovery analysis). */
  log(): string {
    try {
      return readFileSync(this.logFile, "utf8");
    } catch {
      return "";
    }
  }

  exists(): boolean {
    return existsSync(join(this.dataDir, "PG_VERSION"));
  }
}

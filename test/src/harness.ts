/**
 * A whole iotvault on this host for end-to-end tests: a private nats-server, a fresh catalog
 * database, a temp IOTVAULT_HOME, the five services as real child processes on free ports, and
 * the real CLI. Everything is torn down by stop().
 */
import { spawn, type ChildProcess } from "node:child_process";
import { once } from "node:events";
import { createWriteStream, mkdirSync } from "node:fs";
import { readFile, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { serviceNodeFlags } from "@iotvault/host";
import { checkHealth, healthName } from "@iotvault/rpc";
import {
  createTestDatabase,
  freePort,
  startNats,
  tempDir,
  waitFor,
  type NatsServerHandle,
  type TempDir,
  type TestDatabase,
} from "@iotvault/testing";

export const SERVICES = ["storage-gateway", "catalog", "scheduler", "executor", "restore"] as const;
export type Service = (typeof SERVICES)[number];

const repoRoot = fileURLToPath(new URL("../../", import.meta.url));
const entry = (s: Service) => join(repoRoot, "services", s, "dist", "main.js");
export const CLI = join(repoRoot, "cli", "bin", "iotvault.js");

export interface CliResult {
  code: number;
  stdout: string;
  stderr: string;
}

export class TestStack {
  readonly processes = new Map<Service, ChildProcess>();
  readonly ports = new Map<Service, number>();
  env: NodeJS.ProcessEnv = {};

  private constructor(
    readonly home: TempDir,
    readonly nats: NatsServerHandle,
    readonly db: TestDatabase,
  ) {}

  static async start(
    options: { ackWaitMs?: number; maxDeliver?: number; extraEnv?: NodeJS.ProcessEnv } = {},
  ): Promise<TestStack> {
    const [home, nats, db] = await Promise.all([
      tempDir("iotvault-e2e-"),
      startNats(),
      createTestDatabase({ prefix: "e2e" }),
    ]);
    const stack = new TestStack(home, nats, db);
    const passFile = join(home.path, "repository.pass");
    await writeFile(passFile, `e2e-${Math.random().toString(36).slice(2)}-passphrase\n`, { mode: 0o600 });
    const env: NodeJS.ProcessEnv = {
      PATH: process.env["PATH"],
      HOME: home.path,
      IOTVAULT_HOME: join(home.path, "home"),
      IOTVAULT_NATS_URL: nats.url,
      IOTVAULT_DATABASE_URL: db.url,
      IOTVAULT_PASSWORD_FILE: passFile,
      IOTVAULT_SCRYPT_LOGN: "14",
      IOTVAULT_ACK_WAIT_MS: String(options.ackWaitMs ?? 4000),
      IOTVAULT_MAX_DELIVER: String(options.maxDeliver ?? 4),
      IOTVAULT_LOG_LEVEL: "debug",
      // The tests keep their repositories in temp directories (the default roots are the home
      // and /var/lib/iotvault).
      IOTVAULT_STORAGE_ROOTS: tmpdir(),
      ...options.extraEnv,
    };
    stack.env = env;
    mkdirSync(join(home.path, "logs"), { recursive: true });
    // A port found free may be taken by another test's server before our service binds it
    // (test files run in parallel): then the whole set starts again on new ports.
    for (let attempt = 1; ; attempt++) {
      for (const s of SERVICES) {
        const port = await freePort();
        stack.ports.set(s, port);
        env[`IOTVAULT_${s.toUpperCase().replace("-", "_")}_LISTEN`] = `127.0.0.1:${port}`;
      }
      try {
        for (const s of SERVICES) await stack.startService(s);
        return stack;
      } catch (err) {
        await stack.stopServices();
        if (!(err instanceof PortTaken) || attempt === 3) {
          await stack.stop();
          throw err;
        }
      }
    }
  }

  address(s: Service): string {
    return `127.0.0.1:${this.ports.get(s)!}`;
  }

  logFile(s: Service): string {
    return join(this.home.path, "logs", `${s}.log`);
  }

  /**
   * Starts one service and waits until it is up: the child itself logged that it is ready (so
   * it, and not some other test's server, holds the port) and answers health as that service.
   */
  async startService(s: Service): Promise<void> {
    const log = createWriteStream(this.logFile(s), { flags: "a" });
    const child = spawn(process.execPath, [...serviceNodeFlags(s), entry(s)], {
      env: this.env,
      stdio: ["ignore", "pipe", "pipe"],
    });
    let ready = false;
    let pending = "";
    // Services log to stderr.
    child.stderr.on("data", (d: Buffer) => {
      const lines = (pending + d.toString()).split("\n");
      pending = lines.pop() ?? "";
      if (lines.some(isReadyLine)) ready = true;
    });
    child.stdout.pipe(log);
    child.stderr.pipe(log);
    this.processes.set(s, child);
    const outcome = await waitFor(
      async () => {
        if (child.exitCode !== null) return "exited";
        if (!ready) return undefined;
        const health = await checkHealth(this.address(s), { service: healthName(s), deadlineMs: 500 });
        return health === "SERVING" ? "up" : undefined;
      },
      { timeoutMs: 30_000, intervalMs: 100, what: `${s} to be healthy` },
    );
    if (outcome === "exited") {
      const tail = await this.tail(s);
      if (/cannot listen for gRPC/.test(tail)) throw new PortTaken(`${s}: ${this.address(s)} is taken`);
      throw new Error(`${s} exited with ${child.exitCode}:\n${tail}`);
    }
  }

  /** SIGKILL: the process gets no chance to clean up or ack. */
  async kill(s: Service): Promise<void> {
    const child = this.processes.get(s);
    if (!child || child.exitCode !== null || child.signalCode !== null) return;
    child.kill("SIGKILL");
    await once(child, "exit");
  }

  async tail(s: Service, lines = 40): Promise<string> {
    try {
      return (await readFile(this.logFile(s), "utf8")).split("\n").slice(-lines).join("\n");
    } catch {
      return "";
    }
  }

  /** Runs the real CLI with the stack's environment. */
  async cli(args: string[], extraEnv: NodeJS.ProcessEnv = {}): Promise<CliResult> {
    const child = spawn(process.execPath, [CLI, ...args], {
      env: { ...this.env, ...extraEnv },
      stdio: ["ignore", "pipe", "pipe"],
    });
    let stdout = "";
    let stderr = "";
    child.stdout.on("data", (d: Buffer) => (stdout += d.toString()));
    child.stderr.on("data", (d: Buffer) => (stderr += d.toString()));
    const [code] = (await once(child, "exit")) as [number | null];
    return { code: code ?? -1, stdout, stderr };
  }

  /** Runs the CLI with --json, fails with its output when it exits non-zero, returns the parsed JSON. */
  async cliJson<T = any>(args: string[], extraEnv: NodeJS.ProcessEnv = {}): Promise<T> {
    const r = await this.cli([...args, "--json"], extraEnv);
    if (r.code !== 0)
      throw new Error(`iotvault ${args.join(" ")} exited ${r.code}\nstdout: ${r.stdout}\nstderr: ${r.stderr}`);
    return JSON.parse(r.stdout) as T;
  }

  async stop(): Promise<void> {
    await this.stopServices();
    await Promise.allSettled([this.nats.stop(), this.db.drop()]);
    await this.home.cleanup();
  }

  private async stopServices(): Promise<void> {
    for (const s of [...SERVICES].reverse()) {
      const child = this.processes.get(s);
      if (child && child.exitCode === null && child.signalCode === null) {
        child.kill("SIGTERM");
        const exited = once(child, "exit");
        const timer = setTimeout(() => child.kill("SIGKILL"), 8000);
        await exited;
        clearTimeout(timer);
      }
    }
  }
}

/** A service could not bind its port: another process took it after it was found free. */
class PortTaken extends Error {}

/** The line each service logs once its gRPC server is bound ("catalog ready", "storage-gateway serving"). */
function isReadyLine(line: string): boolean {
  try {
    const msg = (JSON.parse(line) as { msg?: unknown }).msg;
    return typeof msg === "string" && /\b(ready|serving)$/.test(msg);
  } catch {
    return false;
  }
}

/**
 * The five iotvault services as real processes for the benchmark, the way the end-to-end tests
 * start them: a private nats-server, a fresh catalog database, a home directory under the
 * bench's work directory, free loopback ports. Adds what a benchmark needs: the process ids,
 * their CPU time and peak RSS from /proc, and a timed CLI.
 */
import { spawn, type ChildProcess } from "node:child_process";
import { once } from "node:events";
import { createWriteStream, mkdirSync, readFileSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { serviceNodeFlags } from "@iotvault/host";
import { checkHealth, healthName } from "@iotvault/rpc";
import {
  createTestDatabase,
  freePort,
  startNats,
  waitFor,
  type NatsServerHandle,
  type TestDatabase,
} from "@iotvault/testing";
import { run, type Timed } from "./measure.js";

export const SERVICES = ["storage-gateway", "catalog", "scheduler", "executor", "restore"] as const;
export type Service = (typeof SERVICES)[number];

export const REPO_ROOT = fileURLToPath(new URL("../../", import.meta.url));
const CLI = join(REPO_ROOT, "cli", "bin", "iotvault.js");
const CLOCK_TICKS_PER_S = 100;

/** CPU time (user + system) of a live process, in ms; undefined once it is gone. */
export function processCpuMs(pid: number): number | undefined {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, "utf8");
    const fields = stat.slice(stat.lastIndexOf(")") + 2).split(" ");
    return ((Number(fields[11]) + Number(fields[12])) * 1000) / CLOCK_TICKS_PER_S;
  } catch {
    return undefined;
  }
}

/** Peak resident set size (VmHWM) of a live process, in bytes. */
export function peakRssBytes(pid: number): number | undefined {
  try {
    const m = /VmHWM:\s+(\d+) kB/.exec(readFileSync(`/proc/${pid}/status`, "utf8"));
    return m ? Number(m[1]) * 1024 : undefined;
  } catch {
    return undefined;
  }
}

/** Resets VmHWM to the current RSS (Linux >= 4.0, needs write access to /proc/<pid>/clear_refs). */
export function resetPeakRss(pid: number): boolean {
  try {
    writeFileSync(`/proc/${pid}/clear_refs`, "5");
    return true;
  } catch {
    return false;
  }
}

export class BenchStack {
  readonly processes = new Map<Service, ChildProcess>();
  readonly ports = new Map<Service, number>();
  env: NodeJS.ProcessEnv = {};

  private constructor(
    readonly home: string,
    readonly nats: NatsServerHandle,
    readonly db: TestDatabase,
    private readonly nodeArgs: string[],
  ) {}

  /**
   * Starts NATS, a catalog database and the five services; `env` adds IOTVAULT_* settings,
   * `nodeArgs` node options for the services (e.g. --cpu-prof).
   */
  static async start(home: string, env: NodeJS.ProcessEnv = {}, nodeArgs: string[] = []): Promise<BenchStack> {
    mkdirSync(join(home, "logs"), { recursive: true });
    const [nats, db] = await Promise.all([startNats(), createTestDatabase({ prefix: "bench" })]);
    const stack = new BenchStack(home, nats, db, nodeArgs);
    const passFile = join(home, "repository.pass");
    writeFileSync(passFile, `bench-${Math.random().toString(36).slice(2)}-passphrase\n`, { mode: 0o600 });
    stack.env = {
      PATH: process.env["PATH"],
      HOME: home,
      IOTVAULT_HOME: join(home, "iotvault"),
      IOTVAULT_NATS_URL: nats.url,
      IOTVAULT_DATABASE_URL: db.url,
      IOTVAULT_PASSWORD_FILE: passFile,
      IOTVAULT_LOG_LEVEL: "info",
      ...env,
    };
    for (const s of SERVICES) {
      const port = await freePort();
      stack.ports.set(s, port);
      stack.env[`IOTVAULT_${s.toUpperCase().replace("-", "_")}_LISTEN`] = `127.0.0.1:${port}`;
    }
    try {
      for (const s of SERVICES) await stack.startService(s);
    } catch (err) {
      await stack.stop();
      throw err;
    }
    // For tools that watch the services while the bench runs (perf, smaps).
    writeFileSync(join(home, "pids.json"), JSON.stringify(Object.fromEntries(SERVICES.map((s) => [s, stack.pid(s)]))));
    return stack;
  }

  get passwordFile(): string {
    return this.env["IOTVAULT_PASSWORD_FILE"]!;
  }

  address(s: Service): string {
    return `127.0.0.1:${this.ports.get(s)!}`;
  }

  pid(s: Service): number {
    const pid = this.processes.get(s)?.pid;
    if (pid === undefined) throw new Error(`${s} is not running`);
    return pid;
  }

  /** CPU ms of every service, now. */
  cpu(): Record<Service, number> {
    return Object.fromEntries(SERVICES.map((s) => [s, processCpuMs(this.pid(s)) ?? 0])) as Record<Service, number>;
  }

  /** Peak RSS of every service since the last resetPeaks(). */
  peaks(): Record<Service, number> {
    return Object.fromEntries(SERVICES.map((s) => [s, peakRssBytes(this.pid(s)) ?? 0])) as Record<Service, number>;
  }

  /** Resets every service's VmHWM; false when the kernel refuses (then peaks are since start). */
  resetPeaks(): boolean {
    return SERVICES.map((s) => resetPeakRss(this.pid(s))).every(Boolean);
  }

  private async startService(s: Service): Promise<void> {
    const log = createWriteStream(join(this.home, "logs", `${s}.log`), { flags: "a" });
    const child = spawn(
      process.execPath,
      [...serviceNodeFlags(s), ...this.nodeArgs, join(REPO_ROOT, "services", s, "dist", "main.js")],
      {
        env: this.env,
        stdio: ["ignore", "pipe", "pipe"],
      },
    );
    child.stdout.pipe(log);
    child.stderr.pipe(log);
    this.processes.set(s, child);
    await waitFor(
      async () => {
        if (child.exitCode !== null) throw new Error(`${s} exited with ${child.exitCode}; see ${this.home}/logs`);
        return (
          (await checkHealth(this.address(s), { service: healthName(s), deadlineMs: 500 })) === "SERVING" || undefined
        );
      },
      { timeoutMs: 30_000, intervalMs: 100, what: `${s} to be healthy` },
    );
  }

  /** Runs the real CLI (timed); throws with its output when it fails. */
  async cli(args: string[]): Promise<Timed & { json: any }> {
    const r = await run(process.execPath, [CLI, ...args, "--json"], { env: this.env });
    if (r.code !== 0) {
      throw new Error(`iotvault ${args.join(" ")} exited ${r.code}\nstdout: ${r.stdout}\nstderr: ${r.stderr}`);
    }
    return { ...r, json: JSON.parse(r.stdout) };
  }

  async stop(): Promise<void> {
    for (const s of [...SERVICES].reverse()) {
      const child = this.processes.get(s);
      if (child && child.exitCode === null && child.signalCode === null) {
        const exited = once(child, "exit");
        child.kill("SIGTERM");
        const timer = setTimeout(() => child.kill("SIGKILL"), 8000);
        await exited;
        clearTimeout(timer);
      }
    }
    await Promise.allSettled([this.nats.stop(), this.db.drop()]);
  }
}

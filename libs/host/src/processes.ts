import { spawn, spawnSync } from "node:child_process";
import { closeSync, existsSync, mkdirSync, openSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { connect } from "node:net";
import { dirname } from "node:path";
import { IotvaultError } from "@iotvault/errors";

/**
 * The Node options of an iotvault service, wherever it is started: `iotvault stack up`, deploy/
 * (the Dockerfile's entrypoint and compose.yaml: no IOTVAULT_DEBUG there), the test and bench
 * stacks. `env` decides the debug options (IOTVAULT_DEBUG: source maps, below).
 *
 * The storage-gateway, the executor and the restore service also run with
 * --initial-heap-size=128 (MB): V8 sets a heap's first old-generation limit from it. They hold a
 * small heap (~20-35 MB live) while hundreds of megabytes pass through their buffers; with the
 * default limit V8 started a major GC every few MiB: the gateway ~60 in one restore of a 1 GiB
 * corpus (a third of its CPU; with 128 MB a handful, its CPU per restore fell from ~2.9 to
 * ~1.1 s), the executor ~100 in one physical backup of a pgbench -s 50 cluster (its main thread
 * spent half its time in GC and held the workers back; with 128 MB ~20, and the backups took
 * 0.6-1 s less), the restore service's main thread ~0.46 s of a 3.5 s restore of that corpus
 * (with 128 MB its restores were 5-7 % faster, ~0.2-0.3 CPU-s less). The price is garbage kept
 * longer: 20-40 MiB more resident memory per process. docs/performance.md.
 */
export function serviceNodeFlags(service: string, env: NodeJS.ProcessEnv = process.env): readonly string[] {
  const base = env["IOTVAULT_DEBUG"] ? DEBUG_NODE_FLAGS : [];
  return LARGER_FIRST_HEAP.has(service) ? [...base, "--initial-heap-size=128"] : base;
}

const LARGER_FIRST_HEAP = new Set(["storage-gateway", "executor", "restore"]);
/**
 * With IOTVAULT_DEBUG set (as for the CLI), stack traces in the services' logs name the
 * TypeScript sources. Not by default: Node then reads and keeps the source map of every module
 * it loads, in every thread: 8-19 MiB more resident memory per idle service (the executor and
 * the restore service the most) and ~0.1 s more to start. NODE_OPTIONS=--enable-source-maps
 * does the same where the services are started otherwise (the image).
 */
const DEBUG_NODE_FLAGS: readonly string[] = ["--enable-source-maps"];

/** True when something accepts TCP connections at host:port within the timeout. */
export function isPortOpen(host: string, port: number, timeoutMs = 1000): Promise<boolean> {
  return new Promise((resolve) => {
    const socket = connect({ host, port });
    const done = (open: boolean) => {
      socket.destroy();
      resolve(open);
    };
    socket.setTimeout(timeoutMs, () => done(false));
    socket.once("connect", () => done(true));
    socket.once("error", () => done(false));
  });
}

export async function waitForPort(host: string, port: number, timeoutMs: number): Promise<boolean> {
  const deadline = Date.now() + timeoutMs;
  while (Date.now() < deadline) {
    if (await isPortOpen(host, port, 500)) return true;
    await new Promise((r) => setTimeout(r, 100));
  }
  return false;
}

export function isAlive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (err) {
    return (err as { code?: string }).code === "EPERM";
  }
}

export function readPidFile(path: string): number | undefined {
  try {
    const pid = Number.parseInt(readFileSync(path, "utf8").trim().split("\n")[0] ?? "", 10);
    return Number.isInteger(pid) && pid > 0 ? pid : undefined;
  } catch {
    return undefined;
  }
}

export interface DetachedProcess {
  command: string;
  args: string[];
  env?: NodeJS.ProcessEnv;
  cwd?: string;
  /** stdout and stderr are appended here. */
  logFile: string;
  pidFile: string;
}

/** Starts a process that outlives this one (own session, output to a log file), records its pid. */
export function startDetached(p: DetachedProcess): number {
  mkdirSync(dirname(p.logFile), { recursive: true });
  mkdirSync(dirname(p.pidFile), { recursive: true });
  const log = openSync(p.logFile, "a", 0o600);
  try {
    const child = spawn(p.command, p.args, {
      detached: true,
      stdio: ["ignore", log, log],
      env: p.env ?? process.env,
      cwd: p.cwd,
    });
    if (child.pid === undefined) {
      throw new IotvaultError("INTERNAL", `could not start ${p.command}`);
    }
    child.unref();
    writeFileSync(p.pidFile, `${child.pid}\n`, { mode: 0o600 });
    return child.pid;
  } finally {
    closeSync(log);
  }
}

/**
 * Whether the process runs a command line that contains `expected` (e.g. the entry script):
 * a pid file left from before a reboot may name an unrelated process now.
 */
export function runsCommand(pid: number, expected: string): boolean {
  try {
    return readFileSync(`/proc/${pid}/cmdline`, "utf8").split("\0").join(" ").includes(expected);
  } catch {
    return false;
  }
}

/**
 * SIGTERM, wait up to graceMs, then SIGKILL. Returns false when the process was not running,
 * or (with `expected`) when the pid now belongs to another program, which is left alone.
 */
export async function stopPid(pid: number, graceMs = 10_000, expected?: string): Promise<boolean> {
  if (!isAlive(pid)) return false;
  if (expected !== undefined && !runsCommand(pid, expected)) return false;
  try {
    process.kill(pid, "SIGTERM");
  } catch {
    return false;
  }
  const deadline = Date.now() + graceMs;
  while (Date.now() < deadline) {
    if (!isAlive(pid)) return true;
    await new Promise((r) => setTimeout(r, 100));
  }
  try {
    process.kill(pid, "SIGKILL");
  } catch {
    // gone in the meantime
  }
  return true;
}

export function removeFile(path: string): void {
  rmSync(path, { force: true });
}

export function fileExists(path: string): boolean {
  return existsSync(path);
}

/** Runs a command to completion; throws with its output on failure. */
export function runSync(command: string, args: string[], options: { cwd?: string; timeoutMs?: number } = {}): string {
  const result = spawnSync(command, args, {
    cwd: options.cwd,
    encoding: "utf8",
    timeout: options.timeoutMs ?? 60_000,
  });
  if (result.status !== 0) {
    const output = `${result.stdout ?? ""}${result.stderr ?? ""}`.trim().slice(-2000);
    throw new IotvaultError(
      "UNAVAILABLE",
      `${command} ${args.join(" ")} failed (exit ${String(result.status)}): ${output}`,
    );
  }
  return result.stdout;
}

import { spawn, type ChildProcess } from "node:child_process";
import { once } from "node:events";
import { rmSync } from "node:fs";
import { rm } from "node:fs/promises";
import { connect } from "node:net";
import { setTimeout as sleep } from "node:timers/promises";
import { IotvaultError } from "@iotvault/errors";
import { findNatsServer } from "./binaries.js";
import { onProcessExit } from "./exit-hooks.js";
import { OutputTail } from "./output-buffer.js";
import { freePort } from "./ports.js";
import { tempDir } from "./temp.js";

export interface StartNatsOptions {
  /** Enable JetStream (default true), with its store in a fresh temp dir. */
  jetstream?: boolean;
  /** Extra nats-server arguments (e.g. ["-c", configFile] or ["--user", "u", "--pass", "p"]). */
  args?: string[];
  /** How long to wait for the server to accept connections (default 10000 ms). */
  readyTimeoutMs?: number;
}

/** A nats-server child process on a loopback port, owned by the test that started it. */
export interface NatsServerHandle {
  /** nats://127.0.0.1:<port> */
  readonly url: string;
  readonly port: number;
  /** JetStream store directory (kept by kill() and restart(), removed by stop()). */
  readonly storeDir: string;
  /** Process id of the current server process (changes on restart). */
  readonly pid: number;
  /** SIGTERM, wait for the exit, remove the store dir. Safe to call twice. */
  stop(): Promise<void>;
  /** SIGKILL, wait for the exit; keeps the store dir so that restart() recovers the streams. */
  kill(): Promise<void>;
  /** Stops the server if it runs (SIGTERM), then starts it again on the same port and store dir. */
  restart(): Promise<void>;
}

const HOST = "127.0.0.1";
const PORT_ATTEMPTS = 3;

/**
 * Starts a nats-server (with JetStream unless `jetstream: false`) on a free loopback port and
 * waits until it answers with its INFO line. The server is killed at process exit if the test
 * does not stop it.
 *
 * ```ts
 * const nats = await startNats();
 * try { const nc = await connect({ servers: nats.url }); ... } finally { await nats.stop(); }
 * ```
 */
export async function startNats(options: StartNatsOptions = {}): Promise<NatsServerHandle> {
  const binary = findNatsServer();
  if (!binary) {
    throw new IotvaultError(
      "FAILED_PRECONDITION",
      "nats-server was not found on PATH, in /usr/sbin or /usr/local/bin",
      {
        hint: "install it (Debian: `apt-get install nats-server`) or put the nats-server binary on PATH",
      },
    );
  }
  const store = await tempDir("iotvault-nats-");
  let lastError: unknown;
  for (let attempt = 0; attempt < PORT_ATTEMPTS; attempt++) {
    const server = new NatsServer(binary, await freePort(HOST), store.path, options);
    try {
      await server.start();
      return server;
    } catch (err) {
      lastError = err;
      await server.discard();
      if (!(err instanceof PortInUseError)) break;
    }
  }
  await store.cleanup();
  throw lastError;
}

class PortInUseError extends IotvaultError {}

class NatsServer implements NatsServerHandle {
  readonly url: string;
  private child: ChildProcess | undefined;
  private readonly output = new OutputTail();
  private unregisterExitHook: (() => void) | undefined;
  private removed = false;

  constructor(
    private readonly binary: string,
    readonly port: number,
    readonly storeDir: string,
    private readonly options: StartNatsOptions,
  ) {
    this.url = `nats://${HOST}:${port}`;
  }

  get pid(): number {
    return this.child?.pid ?? -1;
  }

  async start(): Promise<void> {
    this.output.clear();
    const args = ["-a", HOST, "-p", String(this.port)];
    if (this.options.jetstream !== false) args.push("-js", "-sd", this.storeDir);
    args.push(...(this.options.args ?? []));
    const child = spawn(this.binary, args, { stdio: ["ignore", "pipe", "pipe"] });
    this.child = child;
    child.unref();
    this.output.follow(child.stdout);
    this.output.follow(child.stderr);
    this.unregisterExitHook ??= onProcessExit(() => this.killAtExit());
    await this.waitReady(child);
  }

  async stop(): Promise<void> {
    await this.terminate("SIGTERM");
    this.unregisterExitHook?.();
    this.unregisterExitHook = undefined;
    if (!this.removed) {
      this.removed = true;
      await rm(this.storeDir, { recursive: true, force: true, maxRetries: 3 });
    }
  }

  async kill(): Promise<void> {
    await this.terminate("SIGKILL");
  }

  /** Kills a server that failed to start, keeping the store dir for another attempt. */
  async discard(): Promise<void> {
    await this.terminate("SIGKILL");
    this.unregisterExitHook?.();
    this.unregisterExitHook = undefined;
  }

  async restart(): Promise<void> {
    if (this.removed) {
      throw new IotvaultError("FAILED_PRECONDITION", "cannot restart a nats-server after stop() removed its store", {
        hint: "use kill() (or restart() directly) when the test needs the server back",
      });
    }
    await this.terminate("SIGTERM");
    await this.start();
  }

  private async terminate(signal: "SIGTERM" | "SIGKILL"): Promise<void> {
    const child = this.child;
    if (!child || !isRunning(child)) return;
    const exited = once(child, "exit");
    child.kill(signal);
    const timer = new AbortController();
    const timeout = sleep(10_000, "timeout" as const, { signal: timer.signal }).catch(() => "cancelled" as const);
    const first = await Promise.race([exited.then(() => "exited" as const), timeout]);
    timer.abort();
    if (first === "timeout") {
      child.kill("SIGKILL");
      await exited;
    }
  }

  private killAtExit(): void {
    if (this.child && isRunning(this.child)) this.child.kill("SIGKILL");
    if (!this.removed) rmSync(this.storeDir, { recursive: true, force: true });
  }

  private async waitReady(child: ChildProcess): Promise<void> {
    const timeoutMs = this.options.readyTimeoutMs ?? 10_000;
    const deadline = Date.now() + timeoutMs;
    while (Date.now() < deadline) {
      if (!isRunning(child)) break;
      const info = await readInfoLine(HOST, this.port, 1000);
      if (info !== undefined) return this.checkInfo(info);
      await sleep(25);
    }
    const output = this.output.value;
    if (/address already in use/i.test(output)) {
      throw new PortInUseError("UNAVAILABLE", `port ${this.port} was taken before nats-server could bind it`);
    }
    const what = isRunning(child) ? `did not accept connections within ${timeoutMs} ms` : `exited (${exitText(child)})`;
    throw new IotvaultError("UNAVAILABLE", `nats-server on ${HOST}:${this.port} ${what}; its output:\n${output}`, {
      hint: "read the server output above (bad arguments, store dir permissions)",
    });
  }

  private checkInfo(info: string): void {
    if (this.options.jetstream === false) return;
    if (!/"jetstream"\s*:\s*true/.test(info)) {
      throw new IotvaultError("FAILED_PRECONDITION", `nats-server on ${HOST}:${this.port} started without JetStream`, {
        hint: "remove arguments that disable JetStream, or pass jetstream: false when the test does not need it",
      });
    }
  }
}

function isRunning(child: ChildProcess): boolean {
  return child.exitCode === null && child.signalCode === null;
}

function exitText(child: ChildProcess): string {
  return child.signalCode ? `signal ${child.signalCode}` : `exit code ${String(child.exitCode)}`;
}

/** Connects, reads the server's first protocol line ("INFO {...}") and disconnects. */
async function readInfoLine(host: string, port: number, timeoutMs: number): Promise<string | undefined> {
  return new Promise((resolve) => {
    let text = "";
    const socket = connect({ host, port });
    const done = (value: string | undefined): void => {
      socket.destroy();
      resolve(value);
    };
    socket.setTimeout(timeoutMs, () => done(undefined));
    socket.setEncoding("utf8");
    socket.on("data", (chunk: string) => {
      text += chunk;
      const end = text.indexOf("\r\n");
      if (end >= 0) done(text.startsWith("INFO ") ? text.slice(0, end) : undefined);
    });
    socket.on("error", () => done(undefined));
    socket.on("close", () => done(undefined));
  });
}

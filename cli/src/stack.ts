/**
 * `iotvault stack up | down | status`: the five services on this host, plus a NATS server and a
 * private PostgreSQL cluster when none is reachable at the configured URLs. Everything it starts
 * is recorded under <IOTVAULT_HOME>/run (pid files) with logs under <IOTVAULT_HOME>/logs, and
 * `stack down` stops exactly that, nothing else.
 */
import { randomBytes } from "node:crypto";
import { mkdirSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { SERVICE_NAMES, type IotvaultConfig, type ServiceName } from "@iotvault/config";
import { IotvaultError } from "@iotvault/errors";
import {
  fileExists,
  isAlive,
  isLoopback,
  isPortOpen,
  readPidFile,
  removeFile,
  runsCommand,
  serviceNodeFlags,
  startDetached,
  startNatsServer,
  startPrivatePostgres,
  stopPid,
  stopPrivatePostgres,
} from "@iotvault/host";
import { checkHealth, healthName } from "@iotvault/rpc";

/** Start order: storage first, then the catalog that records events, then the producers. */
const START_ORDER: readonly ServiceName[] = ["storage-gateway", "catalog", "scheduler", "executor", "restore"];

/** Only these services open repositories: the others never see the repository secret. */
const NEEDS_REPOSITORY_SECRET: ReadonlySet<ServiceName> = new Set(["executor", "restore"]);
const SECRET_VARIABLES = ["IOTVAULT_PASSWORD", "IOTVAULT_PASSWORD_FILE", "IOTVAULT_KEY_FILE"];
/** Storage credentials: the storage-gateway's alone. */
const STORAGE_SECRET = /^IOTVAULT_(S3|SFTP)_/;

/** The environment a service is started with. */
function serviceEnv(config: IotvaultConfig, name: ServiceName, env: NodeJS.ProcessEnv): NodeJS.ProcessEnv {
  const out: NodeJS.ProcessEnv = { ...env, IOTVAULT_HOME: config.home };
  if (!NEEDS_REPOSITORY_SECRET.has(name)) for (const v of SECRET_VARIABLES) delete out[v];
  if (name !== "storage-gateway") for (const v of Object.keys(out)) if (STORAGE_SECRET.test(v)) delete out[v];
  const pgPassword = join(config.paths.secrets, "postgres.pass");
  if (name === "catalog" && fileExists(pgPassword) && !env["IOTVAULT_DATABASE_PASSWORD_FILE"]) {
    out["IOTVAULT_DATABASE_PASSWORD_FILE"] = pgPassword;
  }
  return out;
}

export interface ComponentStatus {
  name: string;
  kind: "service" | "nats" | "postgres";
  address: string;
  state: "running" | "stopped" | "unhealthy" | "external";
  pid: number | undefined;
  managed: boolean;
}

function hostPort(url: string, defaultPort: number): { host: string; port: number } {
  // A NATS URL may list several servers ("nats://a:4222,nats://b:4222"): the first is local.
  const first = url.split(",")[0]!.trim();
  const u = new URL(first.includes("://") ? first : `nats://${first}`);
  return { host: u.hostname.replace(/^\[|\]$/g, ""), port: u.port ? Number(u.port) : defaultPort };
}

function serviceEntry(name: ServiceName): string {
  return fileURLToPath(new URL(`../../services/${name}/dist/main.js`, import.meta.url));
}

/**
 * Where a private PostgreSQL cluster lives: under IOTVAULT_HOME, except as root, where the
 * server runs as the `postgres` user and could not reach a home such as /root/.iotvault: then
 * /var/lib/iotvault/postgres-<port>.
 */
function pgDir(config: IotvaultConfig): string {
  if (process.getuid?.() !== 0) return join(config.home, "postgres");
  return join("/var/lib/iotvault", `postgres-${hostPort(config.database.url, 5432).port}`);
}

function pidFile(config: IotvaultConfig, name: string): string {
  return join(config.paths.run, `${name}.pid`);
}

export async function stackUp(
  config: IotvaultConfig,
  env: NodeJS.ProcessEnv,
  log: (line: string) => void,
): Promise<ComponentStatus[]> {
  for (const dir of [config.home, config.paths.run, config.paths.logs, config.paths.traces]) {
    mkdirSync(dir, { recursive: true, mode: 0o700 });
  }
  await ensureNats(config, log);
  await ensurePostgres(config, log);
  for (const name of START_ORDER) {
    const address = config.addressOf(name);
    const health = await checkHealth(address, { service: healthName(name), deadlineMs: 1500 });
    if (health === "SERVING") continue;
    if (health === "SERVICE_UNKNOWN" || health === "UNKNOWN") {
      // Some other gRPC server (or another iotvault service) holds the port: starting ours
      // would fail to bind, and counting the other one as ours would send our calls to it.
      throw new IotvaultError("FAILED_PRECONDITION", `another server answers on ${address}, not the ${name} service`, {
        hint: `stop it, or give the ${name} service another address (services.${name}.listen in the configuration)`,
      });
    }
    const entry = serviceEntry(name);
    const pid = readPidFile(pidFile(config, name));
    if (pid && isAlive(pid)) await stopPid(pid, 5000, entry); // ours, alive but not answering: restart it
    if (!fileExists(entry)) {
      throw new IotvaultError("FAILED_PRECONDITION", `the ${name} service is not built (${entry} is missing)`, {
        hint: "run `npm run bootstrap` in the iotvault checkout",
      });
    }
    log(`starting ${name} on ${address}`);
    startDetached({
      command: process.execPath,
      args: [...serviceNodeFlags(name, env), entry],
      env: serviceEnv(config, name, env),
      logFile: join(config.paths.logs, `${name}.log`),
      pidFile: pidFile(config, name),
    });
  }
  await waitHealthy(config, 60_000);
  return stackStatus(config);
}

async function ensureNats(config: IotvaultConfig, log: (line: string) => void): Promise<void> {
  const { host, port } = hostPort(config.nats.url, 4222);
  if (await isPortOpen(host, port)) return;
  if (!isLoopback(host)) {
    throw new IotvaultError("UNAVAILABLE", `cannot reach NATS at ${config.nats.url}`, {
      hint: "start it, or point IOTVAULT_NATS_URL at a reachable server (a local one is started only for loopback URLs)",
    });
  }
  log(`starting nats-server (JetStream) on ${host}:${port}`);
  await startNatsServer({
    host,
    port,
    storeDir: join(config.home, "nats"),
    logFile: join(config.paths.logs, "nats.log"),
    pidFile: pidFile(config, "nats"),
  });
}

async function ensurePostgres(config: IotvaultConfig, log: (line: string) => void): Promise<void> {
  const { host, port } = hostPort(config.database.url, 5432);
  if (await isPortOpen(host, port)) return;
  if (!isLoopback(host)) {
    throw new IotvaultError("UNAVAILABLE", `cannot reach PostgreSQL at ${host}:${port}`, {
      hint: "start it, or set IOTVAULT_DATABASE_URL (a local cluster is started only for loopback URLs)",
    });
  }
  const dir = pgDir(config);
  log(`starting a private PostgreSQL cluster on ${host}:${port} (${dir})`);
  // The cluster's password (scram over TCP) is generated once and kept with the other secrets;
  // the catalog reads it from there (IOTVAULT_DATABASE_PASSWORD_FILE).
  mkdirSync(config.paths.secrets, { recursive: true, mode: 0o700 });
  const passwordFile = join(config.paths.secrets, "postgres.pass");
  if (!fileExists(passwordFile)) {
    const password = randomBytes(24).toString("base64url");
    writeFileSync(passwordFile, `${password}\n`, { mode: 0o600 });
  }
  await startPrivatePostgres({ host, port, dir, passwordFile });
  // Marker: this cluster belongs to the stack and `stack down` stops it (the postmaster's own
  // pid file stays authoritative for its state).
  const pid = readPidFile(join(dir, "data", "postmaster.pid"));
  writeFileSync(pidFile(config, "postgres"), `${pid ?? ""}\n`, { mode: 0o600 });
}

async function waitHealthy(config: IotvaultConfig, timeoutMs: number): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  let pending: ServiceName[] = [...SERVICE_NAMES];
  while (Date.now() < deadline) {
    const states = await Promise.all(
      pending.map((s) => checkHealth(config.addressOf(s), { service: healthName(s), deadlineMs: 1000 })),
    );
    pending = pending.filter((_, i) => states[i] !== "SERVING");
    if (pending.length === 0) return;
    for (const s of pending) {
      const pid = readPidFile(pidFile(config, s));
      if (pid && !isAlive(pid)) {
        throw new IotvaultError("UNAVAILABLE", `the ${s} service exited during start-up`, {
          hint: `read ${join(config.paths.logs, `${s}.log`)}`,
        });
      }
    }
    await new Promise((r) => setTimeout(r, 250));
  }
  throw new IotvaultError(
    "DEADLINE_EXCEEDED",
    `services not healthy after ${timeoutMs / 1000} s: ${pending.join(", ")}`,
    {
      hint: `read the logs in ${config.paths.logs}`,
    },
  );
}

export async function stackDown(config: IotvaultConfig, log: (line: string) => void): Promise<string[]> {
  const stopped: string[] = [];
  for (const name of [...START_ORDER].reverse()) {
    const file = pidFile(config, name);
    const pid = readPidFile(file);
    if (pid && (await stopPid(pid, 15_000, serviceEntry(name)))) {
      log(`stopped ${name} (pid ${pid})`);
      stopped.push(name);
    }
    removeFile(file);
  }
  const natsPid = readPidFile(pidFile(config, "nats"));
  if (natsPid && (await stopPid(natsPid, 10_000, "nats-server"))) {
    log(`stopped nats-server (pid ${natsPid})`);
    stopped.push("nats");
  }
  removeFile(pidFile(config, "nats"));
  if (fileExists(pidFile(config, "postgres"))) {
    if (await stopPrivatePostgres(pgDir(config))) {
      log("stopped the private PostgreSQL cluster");
      stopped.push("postgres");
    }
    removeFile(pidFile(config, "postgres"));
  }
  return stopped;
}

export async function stackStatus(config: IotvaultConfig): Promise<ComponentStatus[]> {
  const out: ComponentStatus[] = [];
  for (const name of START_ORDER) {
    const address = config.addressOf(name);
    const pid = readPidFile(pidFile(config, name));
    const health = await checkHealth(address, { service: healthName(name), deadlineMs: 1500 });
    const managed = pid !== undefined && isAlive(pid) && runsCommand(pid, serviceEntry(name));
    out.push({
      name,
      kind: "service",
      address,
      state: health === "SERVING" ? "running" : health === "UNREACHABLE" ? "stopped" : "unhealthy",
      pid: managed ? pid : undefined,
      managed,
    });
  }
  for (const [name, kind, url, port] of [
    ["nats", "nats", config.nats.url, 4222],
    ["postgres", "postgres", config.database.url, 5432],
  ] as const) {
    const hp = hostPort(url, port);
    const pid = readPidFile(pidFile(config, name));
    const managed =
      pid !== undefined &&
      (kind === "postgres" ? fileExists(join(pgDir(config), "data", "postmaster.pid")) : isAlive(pid));
    const open = await isPortOpen(hp.host, hp.port);
    out.push({
      name,
      kind,
      address: `${hp.host}:${hp.port}`,
      state: open ? (managed ? "running" : "external") : "stopped",
      pid: managed ? pid : undefined,
      managed,
    });
  }
  return out;
}

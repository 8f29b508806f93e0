import { existsSync, readFileSync } from "node:fs";
import { homedir } from "node:os";
import { isAbsolute, join, resolve } from "node:path";
import { IotvaultError } from "@iotvault/errors";
import { parse as parseYaml } from "yaml";
import * as v from "valibot";

export const SERVICE_NAMES = ["scheduler", "executor", "storage-gateway", "catalog", "restore"] as const;
export type ServiceName = (typeof SERVICE_NAMES)[number];

/*
 * Decision: the schema is written with valibot rather than zod: every CLI process (and every
 * PostgreSQL archive_command, `iotvault wal-push`) loads it, and importing zod took 80-110 ms
 * here against ~12 ms (docs/performance.md).
 */
const NAME = /^[a-z0-9][a-z0-9._-]{0,62}$/;
const hostPort = v.pipe(
  v.string(),
  v.regex(/^(\[[0-9a-fA-F:]+\]|[A-Za-z0-9.-]+):\d{1,5}$/, "expected host:port, e.g. 127.0.0.1:7601"),
);
const int = (min: number, max: number, fallback: number) =>
  v.optional(
    v.pipe(
      v.number("expected a number"),
      v.integer("expected an integer"),
      v.minValue(min, `expected at least ${min}`),
      v.maxValue(max, `expected at most ${max}`),
    ),
    fallback,
  );
/** A mapping whose keys are all known (an unknown one is a misspelt setting). */
const mapping = <T extends v.ObjectEntries>(entries: T) =>
  v.strictObject(entries, (issue: v.StrictObjectIssue) =>
    issue.expected === "never"
      ? `unknown setting ${issue.received} (docs/configuration.md lists them)`
      : issue.expected === "Object"
        ? `expected a mapping of settings, got ${issue.received}`
        : "required",
  );
/** A section: every field optional, unknown keys refused, absent = all defaults. */
const section = <T extends v.ObjectEntries>(entries: T) =>
  v.optional(mapping(entries), {} as v.InferInput<ReturnType<typeof mapping<T>>>);

const service = (port: number) =>
  section({
    /** Address the service's gRPC server binds to. */
    listen: v.optional(hostPort, `127.0.0.1:${port}`),
    /** Address other processes use to reach it (defaults to listen). */
    address: v.optional(hostPort),
  });

const urlWith = (protocols: string[]) =>
  v.pipe(
    v.string(),
    v.check(
      (s) => {
        try {
          return protocols.includes(new URL(s).protocol);
        } catch {
          return false;
        }
      },
      `expected a URL with scheme ${protocols.map((p) => p.replace(/:$/, "://")).join(" or ")}`,
    ),
  );

const schema = mapping({
  /** The site this process serves: executors take work from iotvault.work.backup.<site>. */
  site: v.optional(v.pipe(v.string(), v.regex(NAME, "expected a lower-case name ([a-z0-9][a-z0-9._-]*)")), "default"),
  nats: section({
    url: v.optional(v.pipe(v.string(), v.minLength(1, "expected a URL")), "nats://127.0.0.1:4222"),
    /** A NATS credentials (.creds) file. */
    credsFile: v.optional(v.string()),
  }),
  database: section({
    /** The catalog's PostgreSQL database (created when missing). */
    url: v.optional(urlWith(["postgres:", "postgresql:"]), "postgres://postgres@127.0.0.1:5432/iotvault"),
    /** A file holding the database password (kept out of the URL and of the config file). */
    passwordFile: v.optional(v.string()),
  }),
  services: section({
    scheduler: service(7601),
    executor: service(7602),
    storageGateway: service(7603),
    catalog: service(7604),
    restore: service(7605),
  }),
  storage: section({
    /** Repositories defined in the file (more are added with `iotvault repo init`). */
    repositories: v.optional(
      v.record(
        v.pipe(v.string(), v.regex(NAME, "repository names are lower-case")),
        mapping({
          url: v.string("expected a URL"),
          /**
           * More targets holding a full copy (file://, s3://, sftp://): every write goes to
           * all of them; the storage-gateway copies what a target missed while it was down.
           */
          replicas: v.optional(v.array(v.pipe(v.string(), v.minLength(1, "expected a URL"))), () => []),
          /** NAME=value lines with this repository's storage credentials (gateway only). */
          credentialsFile: v.optional(v.string()),
        }),
      ),
      () => ({}),
    ),
    /**
     * Directories under which `iotvault repo init` may create file:// repositories (the
     * gateway refuses any other path). Default: IOTVAULT_HOME and /var/lib/iotvault.
     */
    allowedRoots: v.optional(
      v.array(
        v.pipe(
          v.string(),
          v.check((p) => p.startsWith("/"), "expected an absolute path"),
        ),
      ),
    ),
  }),
  repository: section({
    /** Read the repository passphrase from this file (overridden by IOTVAULT_PASSWORD_FILE). */
    passwordFile: v.optional(v.string()),
    /** Open repositories with this key file instead (overridden by IOTVAULT_KEY_FILE). */
    keyFile: v.optional(v.string()),
    /** Target size of a pack in MiB. */
    packSizeMiB: int(1, 128, 16),
    /** zstd level for chunks (1 fastest .. 19 smallest). */
    compressionLevel: int(1, 19, 3),
    /** scrypt cost as log2(N) for new key slots; 17 = 128 MiB of memory per derivation. */
    scryptLogN: int(10, 22, 17),
    /** Worker threads for chunk hashing, compression and encryption (0 = one per core). */
    workers: int(0, 64, 0),
  }),
  bus: section({
    /** Time a worker has to ack or signal progress before a work item is redelivered. */
    ackWaitMs: int(1000, Number.MAX_SAFE_INTEGER, 30_000),
    /** Deliveries of one work item before it goes to the dead-letter subject. */
    maxDeliver: int(1, 100, 5),
    /**
     * Deliveries of one event to the catalog before it is dead-lettered: high, so that a
     * database outage of hours (retries back off to 30 s) loses no event.
     */
    eventsMaxDeliver: int(1, 100_000, 2000),
    /** JetStream duplicate window (message-id dedup of work items). */
    duplicateWindowMs: int(1000, Number.MAX_SAFE_INTEGER, 2 * 3600_000),
    /** Minimum interval between progress events of one run. */
    progressIntervalMs: int(100, Number.MAX_SAFE_INTEGER, 1000),
    /** Age after which events are dropped from IOTVAULT_EVENTS. */
    eventsMaxAgeDays: int(1, Number.MAX_SAFE_INTEGER, 30),
  }),
  telemetry: section({
    /** OTLP/HTTP endpoint for traces; when empty, spans are only kept locally. */
    otlpEndpoint: v.optional(v.string()),
    /** Keep finished spans as JSON lines under <home>/traces (for `iotvault trace`). */
    keepSpans: v.optional(v.boolean("expected true or false"), true),
  }),
  log: section({
    level: v.optional(v.picklist(["debug", "info", "warn", "error"], "expected debug, info, warn or error"), "info"),
  }),
});

/** What a user writes in the configuration file (every field optional). */
export type UserConfig = v.InferInput<typeof schema>;
type WithDefaults = v.InferOutput<typeof schema>;

/** The compiled configuration every process receives. */
export interface IotvaultConfig extends WithDefaults {
  /** Absolute IOTVAULT_HOME: configuration, pids, logs, kept spans. */
  readonly home: string;
  /** The file the configuration was read from, if any. */
  readonly configFile: string | undefined;
  readonly paths: {
    readonly run: string;
    readonly logs: string;
    readonly traces: string;
    readonly gatewayState: string;
    readonly secrets: string;
  };
  /** Address a client uses to reach a service. */
  addressOf(service: ServiceName): string;
}

/**
 * The repository settings every process that opens a repository passes on (`Repository.open`
 * options): the executor, the restore service and the CLI's own commands (wal-push, forget,
 * prune) store and repack alike.
 */
export function repositoryOptionsOf(config: IotvaultConfig): {
  scryptLogN: number;
  packSizeBytes: number;
  compressionLevel: number;
  workers: number;
} {
  const r = config.repository;
  return {
    scryptLogN: r.scryptLogN,
    packSizeBytes: r.packSizeMiB << 20,
    compressionLevel: r.compressionLevel,
    workers: r.workers,
  };
}

/** Environment variables that override a configuration field (docs/configuration.md lists them). */
export const ENV_OVERRIDES: Readonly<
  Record<string, { path: readonly string[]; type: "string" | "number" | "path-list" }>
> = {
  IOTVAULT_SITE: { path: ["site"], type: "string" },
  IOTVAULT_NATS_URL: { path: ["nats", "url"], type: "string" },
  IOTVAULT_NATS_CREDS: { path: ["nats", "credsFile"], type: "string" },
  IOTVAULT_DATABASE_URL: { path: ["database", "url"], type: "string" },
  IOTVAULT_DATABASE_PASSWORD_FILE: { path: ["database", "passwordFile"], type: "string" },
  IOTVAULT_SCHEDULER_LISTEN: { path: ["services", "scheduler", "listen"], type: "string" },
  IOTVAULT_EXECUTOR_LISTEN: { path: ["services", "executor", "listen"], type: "string" },
  IOTVAULT_STORAGE_GATEWAY_LISTEN: { path: ["services", "storageGateway", "listen"], type: "string" },
  IOTVAULT_CATALOG_LISTEN: { path: ["services", "catalog", "listen"], type: "string" },
  IOTVAULT_RESTORE_LISTEN: { path: ["services", "restore", "listen"], type: "string" },
  IOTVAULT_STORAGE_GATEWAY_ADDRESS: { path: ["services", "storageGateway", "address"], type: "string" },
  IOTVAULT_SCRYPT_LOGN: { path: ["repository", "scryptLogN"], type: "number" },
  IOTVAULT_STORAGE_ROOTS: { path: ["storage", "allowedRoots"], type: "path-list" },
  IOTVAULT_WORKERS: { path: ["repository", "workers"], type: "number" },
  IOTVAULT_ACK_WAIT_MS: { path: ["bus", "ackWaitMs"], type: "number" },
  IOTVAULT_MAX_DELIVER: { path: ["bus", "maxDeliver"], type: "number" },
  IOTVAULT_LOG_LEVEL: { path: ["log", "level"], type: "string" },
  OTEL_EXPORTER_OTLP_ENDPOINT: { path: ["telemetry", "otlpEndpoint"], type: "string" },
};

type Env = Readonly<Record<string, string | undefined>>;

export function defaultHome(env: Env): string {
  return env["IOTVAULT_HOME"] ? resolve(env["IOTVAULT_HOME"]) : join(env["HOME"] ?? homedir(), ".iotvault");
}

/** IOTVAULT_CONFIG, else <home>/config.yaml when it exists. */
export function configFilePath(env: Env): string | undefined {
  if (env["IOTVAULT_CONFIG"]) return resolve(env["IOTVAULT_CONFIG"]);
  const candidate = join(defaultHome(env), "config.yaml");
  return existsSync(candidate) ? candidate : undefined;
}

/** Reads the configuration file (if any), applies environment overrides, validates. */
export function loadConfig(env: Env): IotvaultConfig {
  const file = configFilePath(env);
  let raw: unknown = {};
  if (file) {
    let text: string;
    try {
      text = readFileSync(file, "utf8");
    } catch (err) {
      throw new IotvaultError("CONFIG_INVALID", `cannot read configuration file ${file}: ${(err as Error).message}`, {
        hint: "set IOTVAULT_CONFIG to a readable file, or unset it to use the defaults",
      });
    }
    try {
      raw = parseYaml(text) ?? {};
    } catch (err) {
      throw new IotvaultError(
        "CONFIG_INVALID",
        `configuration file ${file} is not valid YAML: ${(err as Error).message}`,
      );
    }
  }
  return parseConfig(raw, { env, file });
}

/** Validates a configuration object; `env` overrides fields as listed in ENV_OVERRIDES. */
export function parseConfig(raw: unknown, opts: { env?: Env; file?: string | undefined } = {}): IotvaultConfig {
  const env = opts.env ?? {};
  const where = opts.file ? `configuration file ${opts.file}` : "configuration";
  if (raw === null || typeof raw !== "object" || Array.isArray(raw)) {
    throw new IotvaultError("CONFIG_INVALID", `${where}: expected a mapping of settings at the top level`);
  }
  const merged = structuredClone(raw) as Record<string, unknown>;
  const fromEnv = new Map<string, string>();
  for (const [name, { path, type }] of Object.entries(ENV_OVERRIDES)) {
    const value = env[name];
    if (value === undefined || value === "") continue;
    let parsed: unknown = value;
    if (type === "path-list") parsed = value.split(":").filter(Boolean);
    if (type === "number") {
      parsed = Number(value);
      if (!Number.isFinite(parsed)) {
        throw new IotvaultError("CONFIG_INVALID", `${name}: expected a number, got "${value}"`);
      }
    }
    setPath(merged, path, parsed);
    fromEnv.set(path.join("."), name);
  }
  const result = v.safeParse(schema, merged);
  if (!result.success) {
    const lines = result.issues.map((issue) => {
      const field = (issue.path ?? []).map((item) => String(item.key)).join(".");
      const source = fromEnv.get(field);
      return `  ${field || "(top level)"}${source ? ` (from ${source})` : ""}: ${issue.message}`;
    });
    throw new IotvaultError("CONFIG_INVALID", `invalid ${where}:\n${lines.join("\n")}`, {
      hint: "fix the named fields; docs/configuration.md lists every setting",
    });
  }
  const home = defaultHome(env);
  const data = result.output;
  const addresses: Record<ServiceName, string> = {
    scheduler: data.services.scheduler.address ?? data.services.scheduler.listen,
    executor: data.services.executor.address ?? data.services.executor.listen,
    "storage-gateway": data.services.storageGateway.address ?? data.services.storageGateway.listen,
    catalog: data.services.catalog.address ?? data.services.catalog.listen,
    restore: data.services.restore.address ?? data.services.restore.listen,
  };
  const abs = (p: string) => (isAbsolute(p) ? p : resolve(home, p));
  return {
    ...data,
    repository: {
      ...data.repository,
      ...(data.repository.passwordFile ? { passwordFile: abs(data.repository.passwordFile) } : {}),
      ...(data.repository.keyFile ? { keyFile: abs(data.repository.keyFile) } : {}),
    },
    storage: {
      ...data.storage,
      allowedRoots: (data.storage.allowedRoots ?? [home, "/var/lib/iotvault"]).map((p) => resolve(p)),
    },
    database: {
      ...data.database,
      ...(data.database.passwordFile ? { passwordFile: abs(data.database.passwordFile) } : {}),
    },
    home,
    configFile: opts.file,
    paths: {
      run: join(home, "run"),
      logs: join(home, "logs"),
      traces: join(home, "traces"),
      gatewayState: join(home, "gateway"),
      secrets: join(home, "secrets"),
    },
    addressOf: (service) => addresses[service],
  };
}

function setPath(target: Record<string, unknown>, path: readonly string[], value: unknown): void {
  let node = target;
  for (const key of path.slice(0, -1)) {
    const next = node[key];
    if (next === null || typeof next !== "object" || Array.isArray(next)) node[key] = {};
    node = node[key] as Record<string, unknown>;
  }
  node[path[path.length - 1]!] = value;
}

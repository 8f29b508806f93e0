import { existsSync, readFileSync } from "node:fs";
import { homedir } from "node:os";
import { isAbsolute, join, resolve } from "node:path";
import { IotvaultError } from "@iotvault/errors";
import { parse as parseYaml } from "yaml";
import { z } from "zod";

export const SERVICE_NAMES = ["scheduler", "executor", "storage-gateway", "catalog", "restore"] as const;
export type ServiceName = (typeof SERVICE_NAMES)[number];

const NAME = /^[a-z0-9][a-z0-9._-]{0,62}$/;
const hostPort = z
  .string()
  .regex(/^(\[[0-9a-fA-F:]+\]|[A-Za-z0-9.-]+):\d{1,5}$/, "expected host:port, e.g. 127.0.0.1:7601");

const service = (port: number) =>
  z
    .object({
      /** Address the service's gRPC server binds to. */
      listen: hostPort.default(`127.0.0.1:${port}`),
      /** Address other processes use to reach it (defaults to listen). */
      address: hostPort.optional(),
    })
    .strict()
    .prefault({});

const urlWith = (protocols: string[]) =>
  z.string().refine(
    (s) => {
      try {
        return protocols.includes(new URL(s).protocol);
      } catch {
        return false;
      }
    },
    { message: `expected a URL with scheme ${protocols.map((p) => p.replace(/:$/, "://")).join(" or ")}` },
  );

const schema = z
  .object({
    /** The site this process serves: executors take work from iotvault.work.backup.<site>. */
    site: z.string().regex(NAME, "expected a lower-case name ([a-z0-9][a-z0-9._-]*)").default("default"),
    nats: z
      .object({
        url: z.string().min(1).default("nats://127.0.0.1:4222"),
        /** A NATS credentials (.creds) file. */
        credsFile: z.string().optional(),
      })
      .strict()
      .prefault({}),
    database: z
      .object({
        /** The catalog's PostgreSQL database (created when missing). */
        url: urlWith(["postgres:", "postgresql:"]).default("postgres://postgres@127.0.0.1:5432/iotvault"),
        /** A file holding the database password (kept out of the URL and of the config file). */
        passwordFile: z.string().optional(),
      })
      .strict()
      .prefault({}),
    services: z
      .object({
        scheduler: service(7601),
        executor: service(7602),
        storageGateway: service(7603),
        catalog: service(7604),
        restore: service(7605),
      })
      .strict()
      .prefault({}),
    storage: z
      .object({
        /** Repositories defined in the file (more are added with `iotvault repo init`). */
        repositories: z
          .record(
            z.string().regex(NAME, "repository names are lower-case"),
            z
              .object({
                url: z.string(),
                /**
                 * More targets holding a full copy (file://, s3://, sftp://): every write goes to
                 * all of them; the storage-gateway copies what a target missed while it was down.
                 */
                replicas: z.array(z.string().min(1)).default([]),
                /** NAME=value lines with this repository's storage credentials (gateway only). */
                credentialsFile: z.string().optional(),
              })
              .strict(),
          )
          .default({}),
        /**
         * Directories under which `iotvault repo init` may create file:// repositories (the
         * gateway refuses any other path). Default: IOTVAULT_HOME and /var/lib/iotvault.
         */
        allowedRoots: z.array(z.string().refine((p) => p.startsWith("/"), "expected an absolute path")).optional(),
      })
      .strict()
      .prefault({}),
    repository: z
      .object({
        /** Read the repository passphrase from this file (overridden by IOTVAULT_PASSWORD_FILE). */
        passwordFile: z.string().optional(),
        /** Open repositories with this key file instead (overridden by IOTVAULT_KEY_FILE). */
        keyFile: z.string().optional(),
        /** Target size of a pack in MiB. */
        packSizeMiB: z.number().int().min(1).max(128).default(16),
        /** zstd level for chunks (1 fastest .. 19 smallest). */
        compressionLevel: z.number().int().min(1).max(19).default(3),
        /** scrypt cost as log2(N) for new key slots; 17 = 128 MiB of memory per derivation. */
        scryptLogN: z.number().int().min(10).max(22).default(17),
        /** Worker threads for chunk hashing, compression and encryption (0 = one per core). */
        workers: z.number().int().min(0).max(64).default(0),
      })
      .strict()
      .prefault({}),
    bus: z
      .object({
        /** Time a worker has to ack or signal progress before a work item is redelivered. */
        ackWaitMs: z.number().int().min(1000).default(30_000),
        /** Deliveries of one work item before it goes to the dead-letter subject. */
        maxDeliver: z.number().int().min(1).max(100).default(5),
        /**
         * Deliveries of one event to the catalog before it is dead-lettered: high, so that a
         * database outage of hours (retries back off to 30 s) loses no event.
         */
        eventsMaxDeliver: z.number().int().min(1).max(100_000).default(2000),
        /** JetStream duplicate window (message-id dedup of work items). */
        duplicateWindowMs: z
          .number()
          .int()
          .min(1000)
          .default(2 * 3600_000),
        /** Minimum interval between progress events of one run. */
        progressIntervalMs: z.number().int().min(100).default(1000),
        /** Age after which events are dropped from IOTVAULT_EVENTS. */
        eventsMaxAgeDays: z.number().int().min(1).default(30),
      })
      .strict()
      .prefault({}),
    telemetry: z
      .object({
        /** OTLP/HTTP endpoint for traces; when empty, spans are only kept locally. */
        otlpEndpoint: z.string().optional(),
        /** Keep finished spans as JSON lines under <home>/traces (for `iotvault trace`). */
        keepSpans: z.boolean().default(true),
      })
      .strict()
      .prefault({}),
    log: z
      .object({ level: z.enum(["debug", "info", "warn", "error"]).default("info") })
      .strict()
      .prefault({}),
  })
  .strict();

/** What a user writes in the configuration file (every field optional). */
export type UserConfig = z.input<typeof schema>;
type WithDefaults = z.output<typeof schema>;

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
  const result = schema.safeParse(merged);
  if (!result.success) {
    const lines = result.error.issues.map((issue) => {
      const field = issue.path.map(String).join(".");
      const source = fromEnv.get(field);
      return `  ${field || "(top level)"}${source ? ` (from ${source})` : ""}: ${issue.message}`;
    });
    throw new IotvaultError("CONFIG_INVALID", `invalid ${where}:\n${lines.join("\n")}`, {
      hint: "fix the named fields; docs/configuration.md lists every setting",
    });
  }
  const home = defaultHome(env);
  const data = result.data;
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

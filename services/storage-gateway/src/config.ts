import { IotvaultError } from "@iotvault/errors";

/** Gateway settings beyond the shared configuration (limits and timings). */
export interface GatewayOptions {
  /**
   * Largest object PutObject accepts (RESOURCE_EXHAUSTED above it, checked against the header
   * before any byte is stored). Uploads stream to disk, so this bounds disk use per object,
   * not memory.
   */
  maxObjectBytes: number;
  /** Largest data message of GetObject (gRPC's default message limit is 4 MiB). */
  getChunkBytes: number;
  /** Objects per ListObjects message. */
  listBatchSize: number;
  /** On SIGTERM, how long in-flight calls may run before they are cancelled. */
  drainGraceMs: number;
  /**
   * How often the self-heal task looks at the copy journals of replicated repositories, and
   * its first delay after a pass that left work (a target still down).
   */
  healIntervalMs: number;
  /** The longest delay between two passes while a target stays down (the delay doubles up to it). */
  healMaxIntervalMs: number;
}

export const DEFAULT_GATEWAY_OPTIONS: Readonly<GatewayOptions> = {
  // Packs are at most 128 MiB (repository.packSizeMiB); twice that leaves room for indexes.
  maxObjectBytes: 256 * 1024 * 1024,
  getChunkBytes: 1024 * 1024,
  listBatchSize: 1000,
  drainGraceMs: 30_000,
  healIntervalMs: 2000,
  healMaxIntervalMs: 60_000,
};

/** Environment variables that tune the gateway (read by main.ts only). */
export const GATEWAY_ENV = {
  IOTVAULT_GATEWAY_MAX_OBJECT_MIB: "maxObjectBytes",
  IOTVAULT_GATEWAY_DRAIN_MS: "drainGraceMs",
  IOTVAULT_GATEWAY_HEAL_INTERVAL_MS: "healIntervalMs",
  IOTVAULT_GATEWAY_HEAL_MAX_INTERVAL_MS: "healMaxIntervalMs",
} as const;

/**
 * Environment variables with the storage credentials of s3:// and sftp:// repositories, read
 * by the repository registry (repositories.ts). Credentials never go in repository URLs and
 * are never logged. A repository's credentials file (KEY=VALUE lines with these names)
 * overrides them for that repository.
 */
export const STORAGE_CREDENTIAL_ENV = {
  IOTVAULT_S3_ACCESS_KEY: "S3 access key id (or IOTVAULT_S3_ACCESS_KEY_FILE, a file holding it)",
  IOTVAULT_S3_SECRET_KEY: "S3 secret key (or IOTVAULT_S3_SECRET_KEY_FILE)",
  IOTVAULT_SFTP_KEY_FILE: "the SSH private key file of sftp:// repositories",
  IOTVAULT_SFTP_KEY_PASSPHRASE: "the passphrase of that key, if it has one (or IOTVAULT_SFTP_KEY_PASSPHRASE_FILE)",
  IOTVAULT_SFTP_KNOWN_HOSTS:
    "the known_hosts file that SFTP host keys are checked against (default ~/.ssh/known_hosts)",
} as const;

/** The gateway's options from its environment; CONFIG_INVALID names a bad variable. */
export function gatewayOptionsFromEnv(env: Readonly<Record<string, string | undefined>>): GatewayOptions {
  const options = { ...DEFAULT_GATEWAY_OPTIONS };
  const maxMiB = positiveInteger(env, "IOTVAULT_GATEWAY_MAX_OBJECT_MIB");
  if (maxMiB !== undefined) options.maxObjectBytes = maxMiB * 1024 * 1024;
  const drainMs = positiveInteger(env, "IOTVAULT_GATEWAY_DRAIN_MS");
  if (drainMs !== undefined) options.drainGraceMs = drainMs;
  const healMs = positiveInteger(env, "IOTVAULT_GATEWAY_HEAL_INTERVAL_MS");
  if (healMs !== undefined) options.healIntervalMs = healMs;
  const healMaxMs = positiveInteger(env, "IOTVAULT_GATEWAY_HEAL_MAX_INTERVAL_MS");
  if (healMaxMs !== undefined) options.healMaxIntervalMs = healMaxMs;
  options.healMaxIntervalMs = Math.max(options.healMaxIntervalMs, options.healIntervalMs);
  return options;
}

function positiveInteger(env: Readonly<Record<string, string | undefined>>, name: string): number | undefined {
  const text = env[name];
  if (text === undefined || text === "") return undefined;
  const value = Number(text);
  if (!Number.isSafeInteger(value) || value <= 0) {
    throw new IotvaultError("CONFIG_INVALID", `${name}: expected a positive integer, got ${JSON.stringify(text)}`, {
      hint: `unset ${name} to use the default, or set it to a whole number`,
    });
  }
  return value;
}

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
}

export const DEFAULT_GATEWAY_OPTIONS: Readonly<GatewayOptions> = {
  // Packs are at most 128 MiB (repository.packSizeMiB); twice that leaves room for indexes.
  maxObjectBytes: 256 * 1024 * 1024,
  getChunkBytes: 1024 * 1024,
  listBatchSize: 1000,
  drainGraceMs: 30_000,
};

/** Environment variables that tune the gateway (read by main.ts only). */
export const GATEWAY_ENV = {
  IOTVAULT_GATEWAY_MAX_OBJECT_MIB: "maxObjectBytes",
  IOTVAULT_GATEWAY_DRAIN_MS: "drainGraceMs",
} as const;

/** The gateway's options from its environment; CONFIG_INVALID names a bad variable. */
export function gatewayOptionsFromEnv(env: Readonly<Record<string, string | undefined>>): GatewayOptions {
  const options = { ...DEFAULT_GATEWAY_OPTIONS };
  const maxMiB = positiveInteger(env, "IOTVAULT_GATEWAY_MAX_OBJECT_MIB");
  if (maxMiB !== undefined) options.maxObjectBytes = maxMiB * 1024 * 1024;
  const drainMs = positiveInteger(env, "IOTVAULT_GATEWAY_DRAIN_MS");
  if (drainMs !== undefined) options.drainGraceMs = drainMs;
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

/**
 * The repository config object (`config`): plain-text JSON, authenticated with a MAC derived
 * from the master key. Its `version` is readable without a key so that a newer repository is
 * refused with a clear message before any passphrase is tried.
 */
import { createHmac, randomBytes, timingSafeEqual } from "node:crypto";
import { IotvaultError } from "@iotvault/errors";
import { DEFAULT_CHUNKER, FORMAT_VERSION, corrupt, isId, parseJsonObject } from "./format.js";
import { newerOrCorrupt } from "./keys.js";

export interface ChunkerParams {
  algorithm: "fastcdc-gear";
  /** Normalization level (bits added/removed from the mask around the average). */
  normalization: 2;
  minSize: number;
  avgSize: number;
  maxSize: number;
}

export interface RepositoryConfig {
  version: 1;
  id: string;
  createdAt: string;
  chunker: ChunkerParams;
}

export const CHUNK_SIZE_LIMITS = { min: 64, max: 64 * 1024 * 1024 } as const;

export function newConfig(
  chunker: Partial<Pick<ChunkerParams, "minSize" | "avgSize" | "maxSize">> = {},
): RepositoryConfig {
  const params: ChunkerParams = {
    algorithm: "fastcdc-gear",
    normalization: 2,
    minSize: chunker.minSize ?? DEFAULT_CHUNKER.minSize,
    avgSize: chunker.avgSize ?? DEFAULT_CHUNKER.avgSize,
    maxSize: chunker.maxSize ?? DEFAULT_CHUNKER.maxSize,
  };
  const problem = chunkerProblem(params);
  if (problem) throw new IotvaultError("INVALID_ARGUMENT", `invalid chunker parameters: ${problem}`);
  return {
    version: FORMAT_VERSION,
    id: randomBytes(32).toString("hex"),
    createdAt: new Date().toISOString(),
    chunker: params,
  };
}

function chunkerProblem(c: ChunkerParams): string | undefined {
  const ints = [c.minSize, c.avgSize, c.maxSize].every((n) => Number.isInteger(n));
  if (!ints) return "sizes must be integers";
  if (c.minSize < CHUNK_SIZE_LIMITS.min || c.maxSize > CHUNK_SIZE_LIMITS.max) {
    return `sizes must be within ${CHUNK_SIZE_LIMITS.min}..${CHUNK_SIZE_LIMITS.max} bytes`;
  }
  if (!(c.minSize < c.avgSize && c.avgSize < c.maxSize)) return "need minSize < avgSize < maxSize";
  if (!Number.isInteger(Math.log2(c.avgSize)) || Math.log2(c.avgSize) < 8)
    return "avgSize must be a power of two >= 256";
  return undefined;
}

/** The exact bytes the config MAC covers: members in this order, no whitespace. */
function canonical(config: RepositoryConfig): Buffer {
  const c = config.chunker;
  return Buffer.from(
    JSON.stringify({
      version: config.version,
      id: config.id,
      createdAt: config.createdAt,
      chunker: {
        algorithm: c.algorithm,
        normalization: c.normalization,
        minSize: c.minSize,
        avgSize: c.avgSize,
        maxSize: c.maxSize,
      },
    }),
    "utf8",
  );
}

function mac(config: RepositoryConfig, macKey: Uint8Array): Buffer {
  return createHmac("sha256", macKey).update(canonical(config)).digest();
}

export function encodeConfig(config: RepositoryConfig, macKey: Uint8Array): Buffer {
  const body = JSON.parse(canonical(config).toString("utf8")) as Record<string, unknown>;
  return Buffer.from(JSON.stringify({ ...body, mac: mac(config, macKey).toString("hex") }, null, 2) + "\n", "utf8");
}

/** Parses the config and checks its version; the MAC is checked later by `verifyConfigMac`. */
export function decodeConfig(bytes: Uint8Array): { config: RepositoryConfig; mac: string } {
  const obj = parseJsonObject(bytes, "the repository config");
  if (obj["version"] !== FORMAT_VERSION) throw newerOrCorrupt("the repository", obj["version"]);
  const c = obj["chunker"] as Record<string, unknown> | undefined;
  const chunker = {
    algorithm: c?.["algorithm"],
    normalization: c?.["normalization"],
    minSize: c?.["minSize"],
    avgSize: c?.["avgSize"],
    maxSize: c?.["maxSize"],
  } as ChunkerParams;
  if (chunker.algorithm !== "fastcdc-gear" || chunker.normalization !== 2) {
    throw corrupt("the repository config names an unknown chunker");
  }
  const problem = chunkerProblem(chunker);
  if (problem) throw corrupt(`the repository config has invalid chunker parameters: ${problem}`);
  if (!isId(obj["id"]) || typeof obj["createdAt"] !== "string" || typeof obj["mac"] !== "string") {
    throw corrupt("the repository config is missing its id, createdAt or mac");
  }
  return {
    config: { version: FORMAT_VERSION, id: obj["id"], createdAt: obj["createdAt"], chunker },
    mac: obj["mac"],
  };
}

export function verifyConfigMac(config: RepositoryConfig, storedMac: string, macKey: Uint8Array): void {
  const expected = mac(config, macKey);
  const stored = Buffer.from(storedMac, "hex");
  if (stored.length !== expected.length || !timingSafeEqual(stored, expected)) {
    throw corrupt("the repository config failed authentication (it was changed or belongs to another repository)");
  }
}

/**
 * Constants and small helpers of repository format v1 (see docs/repository-format.md).
 * Everything that ends up in stored bytes is named here once.
 */
import { IotvaultError } from "@iotvault/errors";

/** The repository format version this code writes and reads. */
export const FORMAT_VERSION = 1;

/** Object keys of the repository. */
export const KEYS = {
  config: "config",
  keyring: "keyring",
  keySlotPrefix: "keys/",
  dataPrefix: "data/",
  indexPrefix: "index/",
  snapshotPrefix: "snapshots/",
  lockPrefix: "locks/",
  holdPrefix: "holds/",
} as const;

export const packKey = (packId: string): string => `data/${packId.slice(0, 2)}/${packId}`;
export const indexKey = (indexId: string): string => `index/${indexId}`;
export const snapshotKey = (snapshotId: string): string => `snapshots/${snapshotId}`;
export const keySlotKey = (slotId: string): string => `keys/${slotId}`;
export const lockKey = (lockId: string): string => `locks/${lockId}`;
export const holdKey = (snapshotId: string): string => `holds/${snapshotId}`;

/** Blob types inside packs. */
export const BlobType = { data: 0, tree: 1 } as const;
export type BlobTypeName = keyof typeof BlobType;
export const blobTypeName = (code: number): BlobTypeName | undefined =>
  code === 0 ? "data" : code === 1 ? "tree" : undefined;

/** Blob flags (a bit set). */
export const BLOB_FLAG_ZSTD = 0x01;

/** Ids are lowercase hex of 32 bytes (64 characters). */
export const ID_BYTES = 32;
const ID_PATTERN = /^[0-9a-f]{64}$/;
export const isId = (value: unknown): value is string => typeof value === "string" && ID_PATTERN.test(value);

/** Default chunker parameters (bytes). */
export const DEFAULT_CHUNKER = { minSize: 512 * 1024, avgSize: 1024 * 1024, maxSize: 8 * 1024 * 1024 } as const;

export const DEFAULT_PACK_SIZE = 16 * 1024 * 1024;
export const DEFAULT_COMPRESSION_LEVEL = 3;
export const DEFAULT_SCRYPT_LOG_N = 17;

/** Bounds a reader accepts for scrypt parameters (refuse absurd values before spending memory). */
/**
 * Bounds on the scrypt parameters a reader accepts from a key slot, so that a crafted slot cannot
 * exhaust memory or time: memory is 128·N·r bytes (at most 1 GiB), work grows with N·r·p (at
 * most 64 times the default 2^17·8·1).
 */
export const SCRYPT_LIMITS = {
  minLogN: 10,
  maxLogN: 22,
  maxR: 32,
  maxP: 16,
  maxMemoryBytes: 2 ** 30,
  maxWork: 2 ** 26,
} as const;

export function corrupt(message: string, hint?: string, details?: Record<string, string>): IotvaultError {
  return new IotvaultError("DATA_CORRUPT", message, {
    hint: hint ?? "run `iotvault verify --read-data` to see what is damaged; restore from another replica",
    ...(details ? { details } : {}),
  });
}

/** Parses JSON or throws DATA_CORRUPT naming the object. */
export function parseJsonObject(bytes: Uint8Array, what: string): Record<string, unknown> {
  let value: unknown;
  try {
    value = JSON.parse(Buffer.from(bytes).toString("utf8"));
  } catch {
    throw corrupt(`${what} is not valid JSON`);
  }
  if (typeof value !== "object" || value === null || Array.isArray(value)) {
    throw corrupt(`${what} is not a JSON object`);
  }
  return value as Record<string, unknown>;
}

/**
 * Sealed objects: small-to-medium items stored whole, outside packs and the index — PostgreSQL
 * WAL segments, per-source sidecar data. Each object is zstd-compressed (when that helps) and
 * encrypted in one envelope bound to its key, with a short header that carries the plaintext's
 * SHA-256, so that "the same content again" can be told from "different content under the same
 * name" without trusting the storage.
 *
 * Layout of the plaintext inside the envelope:
 *   magic "IVSO" | version u8 (1) | flags u8 (bit 0: zstd) | sha256 of the original (32) | body
 * Keys live under these prefixes only: `wal/`, `sidecar/`.
 */
import { createHash } from "node:crypto";
import { IotvaultError } from "@iotvault/errors";
import { compress as zstdCompress, decompress } from "zstd-napi";

const compress = (data: Uint8Array, level: number): Buffer => zstdCompress(data, { compressionLevel: level });
import { storeError, type RepoCore } from "./core.js";
import { corrupt } from "./format.js";

export const SEALED_PREFIXES = ["wal/", "sidecar/"] as const;
const MAGIC = Buffer.from("IVSO", "ascii");
const HEADER = MAGIC.length + 2 + 32;

export interface SealedPutResult {
  /** True when an object with the same content was already there (nothing written). */
  existed: boolean;
  sha256: string;
  storedBytes: number;
}

function checkKey(key: string): void {
  if (!SEALED_PREFIXES.some((p) => key.startsWith(p)) || key.includes("..")) {
    throw new IotvaultError(
      "INVALID_ARGUMENT",
      `sealed objects live under ${SEALED_PREFIXES.join(" or ")}; got ${key}`,
    );
  }
}

export async function putSealedObject(
  core: RepoCore,
  key: string,
  data: Uint8Array,
  options: { signal?: AbortSignal | undefined; compressionLevel?: number | undefined } = {},
): Promise<SealedPutResult> {
  checkKey(key);
  const sha256 = createHash("sha256").update(data).digest();
  const packed = compress(data, options.compressionLevel ?? 3);
  const useZstd = packed.length < data.length;
  const header = Buffer.alloc(HEADER);
  MAGIC.copy(header, 0);
  header.writeUInt8(1, 4);
  header.writeUInt8(useZstd ? 1 : 0, 5);
  sha256.copy(header, 6);
  const sealed = core.sealObject(key, Buffer.concat([header, useZstd ? packed : Buffer.from(data)]));
  let existed: boolean;
  try {
    ({ existed } = await core.store.put(key, sealed, { ifAbsent: true, signal: options.signal }));
  } catch (err) {
    throw storeError(err, `storing ${key}`);
  }
  if (existed) {
    const current = await readSealed(core, key);
    if (!current.sha256.equals(sha256)) {
      throw new IotvaultError("ALREADY_EXISTS", `${key} already exists with different content`, {
        hint: "two different objects claim the same name; check the source (e.g. two clusters archiving into one repository with the same system id)",
        retryable: false,
      });
    }
  }
  return { existed, sha256: sha256.toString("hex"), storedBytes: existed ? 0 : sealed.length };
}

async function readSealed(core: RepoCore, key: string): Promise<{ sha256: Buffer; body: Buffer }> {
  let bytes: Buffer;
  try {
    bytes = await core.store.get(key);
  } catch (err) {
    throw storeError(err, `reading ${key}`);
  }
  const plain = await core.openObject(key, bytes, key);
  if (plain.length < HEADER || !plain.subarray(0, 4).equals(MAGIC) || plain.readUInt8(4) !== 1) {
    throw corrupt(`${key} is not a sealed object of a version this iotvault reads`);
  }
  const sha256 = Buffer.from(plain.subarray(6, HEADER));
  const stored = plain.subarray(HEADER);
  const body = plain.readUInt8(5) & 1 ? decompress(stored) : Buffer.from(stored);
  if (!createHash("sha256").update(body).digest().equals(sha256)) {
    throw corrupt(`${key} does not match its recorded checksum`);
  }
  return { sha256, body };
}

/** The original bytes; NOT_FOUND when missing, DATA_CORRUPT when damaged. */
export async function getSealedObject(core: RepoCore, key: string): Promise<Buffer> {
  checkKey(key);
  return (await readSealed(core, key)).body;
}

export async function* listSealedObjects(
  core: RepoCore,
  prefix: string,
): AsyncGenerator<{ key: string; size: number }> {
  checkKey(prefix.endsWith("/") ? prefix : `${prefix}/`);
  try {
    for await (const o of core.store.list(prefix)) yield { key: o.key, size: o.size };
  } catch (err) {
    throw storeError(err, `listing ${prefix}`);
  }
}

export async function deleteSealedObject(core: RepoCore, key: string): Promise<boolean> {
  checkKey(key);
  try {
    return await core.store.delete(key);
  } catch (err) {
    throw storeError(err, `deleting ${key}`);
  }
}

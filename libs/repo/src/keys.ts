/**
 * The key hierarchy of format v1:
 *
 *   passphrase --scrypt(N, r, p, salt)--> slot key --unwraps--> master key (keys/<slot id>)
 *   master key --decrypts--> keyring (object `keyring`)
 *   keyring = { encryption keys by id (one current), MAC key (chunk ids), chunker secret (gear table) }
 *
 * Several slots wrap the same master key, so adding or removing a passphrase never touches
 * the keyring or data; rotating adds an encryption key to the keyring and makes it current
 * (old blobs stay readable with their key id). No key material ever appears in a message.
 */
import { createHmac, hkdfSync, randomBytes, scrypt as scryptCallback, type ScryptOptions } from "node:crypto";
import { IotvaultError } from "@iotvault/errors";
import { context, describeOpenFailure, open, seal } from "./envelope.js";
import { FORMAT_VERSION, SCRYPT_LIMITS, corrupt, isId, keySlotKey, parseJsonObject } from "./format.js";

export const KEY_BYTES = 32;

export interface EncryptionKey {
  /** Non-zero uint32 stored in every envelope made with this key. */
  id: number;
  key: Buffer;
  createdAt: string;
}

export interface Keyring {
  repositoryId: string;
  /** Id of the encryption key used for new data. */
  current: number;
  encryptionKeys: EncryptionKey[];
  /** Key of HMAC-SHA256 chunk ids and snapshot ids. */
  macKey: Buffer;
  /** Secret the chunker's gear table is derived from. */
  chunkerSecret: Buffer;
}

export function generateKeyring(repositoryId: string): Keyring {
  const id = randomKeyId();
  return {
    repositoryId,
    current: id,
    encryptionKeys: [{ id, key: randomBytes(KEY_BYTES), createdAt: new Date().toISOString() }],
    macKey: randomBytes(KEY_BYTES),
    chunkerSecret: randomBytes(KEY_BYTES),
  };
}

function randomKeyId(): number {
  for (;;) {
    const id = randomBytes(4).readUInt32BE(0);
    if (id !== 0) return id;
  }
}

export function encodeKeyring(keyring: Keyring): Buffer {
  return Buffer.from(
    JSON.stringify({
      version: FORMAT_VERSION,
      repositoryId: keyring.repositoryId,
      current: keyring.current,
      encryptionKeys: keyring.encryptionKeys.map((k) => ({
        id: k.id,
        key: k.key.toString("base64"),
        createdAt: k.createdAt,
      })),
      macKey: keyring.macKey.toString("base64"),
      chunkerSecret: keyring.chunkerSecret.toString("base64"),
    }),
    "utf8",
  );
}

function decodeKey(value: unknown, what: string): Buffer {
  const key = typeof value === "string" ? Buffer.from(value, "base64") : Buffer.alloc(0);
  if (key.length !== KEY_BYTES) throw corrupt(`keyring: ${what} is malformed`);
  return key;
}

export function decodeKeyring(plain: Uint8Array): Keyring {
  const obj = parseJsonObject(plain, "keyring");
  if (obj["version"] !== FORMAT_VERSION) throw newerOrCorrupt("keyring", obj["version"]);
  const list = obj["encryptionKeys"];
  if (!isId(obj["repositoryId"]) || !Array.isArray(list) || list.length === 0) throw corrupt("keyring is malformed");
  const encryptionKeys = list.map((entry: unknown): EncryptionKey => {
    const e = entry as Record<string, unknown>;
    const id = e["id"];
    if (typeof id !== "number" || !Number.isInteger(id) || id <= 0 || id > 0xffffffff) {
      throw corrupt("keyring: an encryption key id is malformed");
    }
    return {
      id,
      key: decodeKey(e["key"], "an encryption key"),
      createdAt: typeof e["createdAt"] === "string" ? e["createdAt"] : "",
    };
  });
  const current = obj["current"];
  if (!encryptionKeys.some((k) => k.id === current)) throw corrupt("keyring: the current key id is not in the keyring");
  return {
    repositoryId: obj["repositoryId"],
    current: current as number,
    encryptionKeys,
    macKey: decodeKey(obj["macKey"], "the MAC key"),
    chunkerSecret: decodeKey(obj["chunkerSecret"], "the chunker secret"),
  };
}

/** Overwrites the key bytes in memory (best effort; called on close). */
export function wipeKeyring(keyring: Keyring): void {
  for (const k of keyring.encryptionKeys) k.key.fill(0);
  keyring.macKey.fill(0);
  keyring.chunkerSecret.fill(0);
}

/** Seals the keyring with the master key (envelope key id 0, bound to the object key `keyring`). */
export function sealKeyring(masterKey: Uint8Array, keyring: Keyring): Buffer {
  return seal(masterKey, 0, context.object("keyring"), encodeKeyring(keyring));
}

/** Opens the keyring object; undefined when the master key does not authenticate it. */
export function openKeyring(masterKey: Uint8Array, bytes: Uint8Array): Keyring | undefined {
  const result = open(bytes, context.object("keyring"), (id) => (id === 0 ? masterKey : undefined));
  if (!result.ok) {
    if (result.reason === "auth") return undefined;
    throw corrupt(`the keyring object ${describeOpenFailure(result.reason, result.keyId)}`);
  }
  return decodeKeyring(result.plain);
}

/**
 * The key that authenticates the (plain-text) config object, derived from the keyring's MAC
 * key, which never changes: rotating the master key does not rewrite the config.
 */
export function configMacKey(keyringMacKey: Uint8Array): Buffer {
  return createHmac("sha256", keyringMacKey).update("iotvault.v1.config-mac").digest();
}

// ---- key slots -------------------------------------------------------------------------------

export interface ScryptParams {
  N: number;
  r: number;
  p: number;
  salt: Buffer;
}

export type KeySlot =
  | {
      id: string;
      type: "passphrase";
      createdAt: string;
      kdf: ScryptParams;
      /** Envelope of the master key, sealed with the slot key, bound to `keys/<id>`. */
      wrapped: Buffer;
    }
  | {
      id: string;
      type: "keyfile";
      createdAt: string;
      /** HKDF-SHA256 salt; the key file holds >= 32 random bytes, so no slow KDF is needed. */
      salt: Buffer;
      wrapped: Buffer;
    };

/** What opens a repository: a passphrase, or the bytes of a key file. */
export type RepositorySecret = Uint8Array | { keyFile: Uint8Array };

/** Key files must carry at least this many bytes (of randomness: `iotvault key add --new-key-file` writes 64). */
export const MIN_KEY_FILE_BYTES = 32;

export function isKeyFileSecret(secret: RepositorySecret): secret is { keyFile: Uint8Array } {
  return !(secret instanceof Uint8Array);
}

function keyFileSlotKey(keyFile: Uint8Array, salt: Uint8Array): Buffer {
  return Buffer.from(hkdfSync("sha256", keyFile, salt, "iotvault.v1.keyfile-slot", KEY_BYTES));
}

/** Makes a key-file slot that wraps `masterKey`. */
export function createKeyFileSlot(keyFile: Uint8Array, masterKey: Uint8Array): KeySlot {
  if (keyFile.length < MIN_KEY_FILE_BYTES) {
    throw new IotvaultError("INVALID_ARGUMENT", `a key file must hold at least ${MIN_KEY_FILE_BYTES} bytes`, {
      hint: "create one with `iotvault key add --new-key-file PATH`",
    });
  }
  const id = randomBytes(32).toString("hex");
  const salt = randomBytes(32);
  const slotKey = keyFileSlotKey(keyFile, salt);
  try {
    const wrapped = seal(slotKey, 0, context.object(keySlotKey(id)), masterKey);
    return { id, type: "keyfile", createdAt: new Date().toISOString(), salt, wrapped };
  } finally {
    slotKey.fill(0);
  }
}

/** A new slot of the secret's kind that wraps `masterKey`. */
export async function createSlot(secret: RepositorySecret, masterKey: Uint8Array, logN: number): Promise<KeySlot> {
  return isKeyFileSecret(secret)
    ? createKeyFileSlot(secret.keyFile, masterKey)
    : createPassphraseSlot(secret, masterKey, logN);
}

/**
 * Slot keys derived in this process, by HMAC(process-random key, salt, parameters, passphrase).
 * The services open a repository for every run: without this each open would pay scrypt again
 * (by design about 0.3-0.8 s and 128 MiB at the default N = 2^17). The process holds the
 * passphrase itself anyway; the cache holds at most DERIVED_MAX keys and never the passphrase.
 */
const derivedKeys = new Map<string, Buffer>();
const deriving = new Map<string, Promise<Buffer>>();
const DERIVED_MAX = 64;
const derivedKeyId = randomBytes(32);

/** Wipes and drops every cached slot key: the next open of each repository derives it again. */
export function forgetDerivedKeys(): void {
  for (const key of derivedKeys.values()) key.fill(0);
  derivedKeys.clear();
}

/** How many scrypt derivations this process ran (for tests of the cache). */
export let scryptDerivations = 0;

async function scrypt(password: Uint8Array, params: ScryptParams): Promise<Buffer> {
  const id = createHmac("sha256", derivedKeyId)
    .update(params.salt)
    .update(`:${params.N}:${params.r}:${params.p}:`)
    .update(password)
    .digest("hex");
  const cached = derivedKeys.get(id);
  if (cached) return Buffer.from(cached); // callers wipe their copy
  // Two opens of one repository at once (a service preparing keys while a request comes in)
  // share one derivation.
  let running = deriving.get(id);
  if (!running) {
    const options: ScryptOptions = { N: params.N, r: params.r, p: params.p, maxmem: 256 * params.N * params.r + 1024 };
    running = new Promise<Buffer>((resolve, reject) => {
      scryptCallback(password, params.salt, KEY_BYTES, options, (err, k) => (err ? reject(err) : resolve(k)));
    })
      .then((key) => {
        scryptDerivations++;
        if (derivedKeys.size >= DERIVED_MAX) {
          const oldest = derivedKeys.keys().next().value as string;
          derivedKeys.get(oldest)?.fill(0);
          derivedKeys.delete(oldest);
        }
        derivedKeys.set(id, key);
        return key;
      })
      .finally(() => deriving.delete(id));
    deriving.set(id, running);
  }
  return Buffer.from(await running); // callers wipe their copy, never the cached key
}

export function checkScryptLogN(logN: number): void {
  if (!Number.isInteger(logN) || logN < SCRYPT_LIMITS.minLogN || logN > SCRYPT_LIMITS.maxLogN) {
    throw new IotvaultError(
      "INVALID_ARGUMENT",
      `scryptLogN must be an integer from ${SCRYPT_LIMITS.minLogN} to ${SCRYPT_LIMITS.maxLogN}, got ${logN}`,
      { hint: "use the default (17) unless the machine is very small" },
    );
  }
}

/** Makes a passphrase slot that wraps `masterKey`. */
export async function createPassphraseSlot(
  password: Uint8Array,
  masterKey: Uint8Array,
  logN: number,
): Promise<KeySlot> {
  checkScryptLogN(logN);
  if (password.length === 0) {
    throw new IotvaultError("INVALID_ARGUMENT", "the repository passphrase is empty", {
      hint: "set IOTVAULT_PASSWORD or IOTVAULT_PASSWORD_FILE to a non-empty passphrase",
    });
  }
  const id = randomBytes(32).toString("hex");
  const kdf: ScryptParams = { N: 2 ** logN, r: 8, p: 1, salt: randomBytes(32) };
  const slotKey = await scrypt(password, kdf);
  try {
    const wrapped = seal(slotKey, 0, context.object(keySlotKey(id)), masterKey);
    return { id, type: "passphrase", createdAt: new Date().toISOString(), kdf, wrapped };
  } finally {
    slotKey.fill(0);
  }
}

export function encodeSlot(slot: KeySlot): Buffer {
  if (slot.type === "keyfile") {
    return Buffer.from(
      JSON.stringify({
        version: FORMAT_VERSION,
        id: slot.id,
        type: slot.type,
        createdAt: slot.createdAt,
        kdf: { algorithm: "hkdf-sha256", salt: slot.salt.toString("base64") },
        masterKey: slot.wrapped.toString("base64"),
      }),
      "utf8",
    );
  }
  return Buffer.from(
    JSON.stringify({
      version: FORMAT_VERSION,
      id: slot.id,
      type: slot.type,
      createdAt: slot.createdAt,
      kdf: { algorithm: "scrypt", N: slot.kdf.N, r: slot.kdf.r, p: slot.kdf.p, salt: slot.kdf.salt.toString("base64") },
      masterKey: slot.wrapped.toString("base64"),
    }),
    "utf8",
  );
}

/** Parses a slot object; returns undefined for a slot type this version cannot use. */
export function decodeSlot(bytes: Uint8Array, id: string): KeySlot | undefined {
  const what = `key slot ${id}`;
  const obj = parseJsonObject(bytes, what);
  if (obj["version"] !== FORMAT_VERSION) throw newerOrCorrupt(what, obj["version"]);
  if (obj["id"] !== id) throw corrupt(`${what} names another slot id`);
  const createdAt = typeof obj["createdAt"] === "string" ? obj["createdAt"] : "";
  const wrappedKey = typeof obj["masterKey"] === "string" ? Buffer.from(obj["masterKey"], "base64") : Buffer.alloc(0);
  if (obj["type"] === "keyfile") {
    const k = obj["kdf"] as Record<string, unknown> | undefined;
    const keySalt = typeof k?.["salt"] === "string" ? Buffer.from(k["salt"], "base64") : Buffer.alloc(0);
    if (k?.["algorithm"] !== "hkdf-sha256" || keySalt.length < 16)
      throw corrupt(`${what} has a malformed key-file KDF`);
    return { id, type: "keyfile", createdAt, salt: keySalt, wrapped: wrappedKey };
  }
  if (obj["type"] !== "passphrase") return undefined;
  const kdf = obj["kdf"] as Record<string, unknown> | undefined;
  const N = kdf?.["N"];
  const r = kdf?.["r"];
  const p = kdf?.["p"];
  const salt = typeof kdf?.["salt"] === "string" ? Buffer.from(kdf["salt"], "base64") : Buffer.alloc(0);
  const logN = typeof N === "number" ? Math.log2(N) : NaN;
  const validKdf =
    kdf?.["algorithm"] === "scrypt" &&
    typeof N === "number" &&
    Number.isInteger(logN) &&
    logN >= SCRYPT_LIMITS.minLogN &&
    logN <= SCRYPT_LIMITS.maxLogN &&
    typeof r === "number" &&
    Number.isInteger(r) &&
    r >= 1 &&
    r <= SCRYPT_LIMITS.maxR &&
    typeof p === "number" &&
    Number.isInteger(p) &&
    p >= 1 &&
    p <= SCRYPT_LIMITS.maxP &&
    128 * N * r <= SCRYPT_LIMITS.maxMemoryBytes &&
    N * r * p <= SCRYPT_LIMITS.maxWork &&
    salt.length >= 16;
  if (!validKdf) throw corrupt(`${what} has missing or out-of-range scrypt parameters`);
  return { id, type: "passphrase", createdAt, kdf: { N, r, p, salt }, wrapped: wrappedKey };
}

/** The master key, or undefined when the secret does not open this slot (or is of another kind). */
export async function unlockSlot(slot: KeySlot, secret: RepositorySecret): Promise<Buffer | undefined> {
  let slotKey: Buffer;
  if (slot.type === "keyfile") {
    if (!isKeyFileSecret(secret)) return undefined;
    slotKey = keyFileSlotKey(secret.keyFile, slot.salt);
  } else {
    if (isKeyFileSecret(secret)) return undefined;
    slotKey = await scrypt(secret, slot.kdf);
  }
  try {
    const result = open(slot.wrapped, context.object(keySlotKey(slot.id)), (id) => (id === 0 ? slotKey : undefined));
    if (!result.ok) return undefined;
    if (result.plain.length !== KEY_BYTES) throw corrupt(`key slot ${slot.id} wraps a key of the wrong size`);
    return result.plain;
  } finally {
    slotKey.fill(0);
  }
}

export function newerOrCorrupt(what: string, version: unknown): IotvaultError {
  if (typeof version === "number" && Number.isInteger(version) && version > FORMAT_VERSION) {
    return new IotvaultError(
      "FAILED_PRECONDITION",
      `${what} has format version ${version}, newer than this iotvault supports (${FORMAT_VERSION})`,
      { hint: "upgrade iotvault to read this repository" },
    );
  }
  return corrupt(`${what} has a missing or invalid format version`);
}

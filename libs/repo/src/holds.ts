/**
 * Holds (`holds/<snapshot id>`): a held snapshot is never forgotten, whatever the retention
 * policy (legal hold, an incident under investigation). A hold is an encrypted JSON object
 * bound to its key:
 *
 * ```json
 * { "version": 1, "snapshotId": "<64 hex>", "reason": "legal", "createdAt": "2026-11-25T10:00:00.000Z",
 *   "createdBy": "alice" }
 * ```
 *
 * The presence of the object is what holds the snapshot: a hold that cannot be read still
 * keeps its snapshot (its reason is then shown as unreadable).
 *
 * ```ts
 * await repo.hold("9f86d0", "legal", "alice");
 * await repo.releaseHold("9f86d0");
 * ```
 */
import { IotvaultError, isNotFound } from "@iotvault/errors";
import { storeError, type RepoCore } from "./core.js";
import { KEYS, corrupt, holdKey, parseJsonObject } from "./format.js";
import { listIds } from "./manifests.js";

export const HOLD_VERSION = 1;
const MAX_REASON = 1000;

export interface Hold {
  snapshotId: string;
  reason: string;
  /** ISO 8601 UTC. */
  createdAt: string;
  createdBy?: string;
}

export function encodeHold(hold: Hold): Buffer {
  return Buffer.from(JSON.stringify({ version: HOLD_VERSION, ...hold }), "utf8");
}

export function decodeHold(plain: Uint8Array, snapshotId: string): Hold {
  const what = `hold ${snapshotId}`;
  const o = parseJsonObject(plain, what);
  if (o["version"] !== HOLD_VERSION) throw corrupt(`${what} has an unknown version`);
  const { reason, createdAt, createdBy } = o;
  if (o["snapshotId"] !== snapshotId) throw corrupt(`${what} names another snapshot`);
  if (typeof reason !== "string" || typeof createdAt !== "string") throw corrupt(`${what} has invalid fields`);
  if (createdBy !== undefined && typeof createdBy !== "string") throw corrupt(`${what} has an invalid createdBy`);
  return { snapshotId, reason, createdAt, ...(createdBy !== undefined ? { createdBy } : {}) };
}

/** Checks a hold's reason (a person reads it: one line, not empty). */
export function checkReason(reason: string): string {
  const trimmed = reason.trim();
  if (trimmed === "" || trimmed.length > MAX_REASON || /[\r\n]/.test(trimmed)) {
    throw new IotvaultError("INVALID_ARGUMENT", `a hold needs a one-line reason of 1 to ${MAX_REASON} characters`, {
      hint: 'say why the snapshot must be kept, e.g. "legal hold, case 42"',
    });
  }
  return trimmed;
}

export async function writeHold(core: RepoCore, hold: Hold): Promise<void> {
  const key = holdKey(hold.snapshotId);
  try {
    await core.store.put(key, core.sealObject(key, encodeHold(hold)));
  } catch (err) {
    throw storeError(err, `storing the hold of snapshot ${hold.snapshotId}`);
  }
}

/** The hold of a snapshot, undefined when there is none; an unreadable hold is still a hold. */
export async function readHold(core: RepoCore, snapshotId: string, signal?: AbortSignal): Promise<Hold | undefined> {
  const key = holdKey(snapshotId);
  let bytes: Buffer;
  try {
    bytes = await core.store.get(key, undefined, signal);
  } catch (err) {
    if (isNotFound(err)) return undefined;
    throw storeError(err, `reading the hold of snapshot ${snapshotId}`);
  }
  try {
    return decodeHold(await core.openObject(key, bytes, `hold ${snapshotId}`), snapshotId);
  } catch (err) {
    const message = err instanceof Error ? err.message : String(err);
    return { snapshotId, reason: `(unreadable hold: ${message})`, createdAt: "" };
  }
}

/** Every hold, oldest first. */
export async function readHolds(core: RepoCore, signal?: AbortSignal): Promise<Hold[]> {
  const holds: Hold[] = [];
  for (const id of await listIds(core.store, KEYS.holdPrefix, signal)) {
    const hold = await readHold(core, id, signal);
    if (hold) holds.push(hold);
  }
  return holds.sort((a, b) => a.createdAt.localeCompare(b.createdAt) || a.snapshotId.localeCompare(b.snapshotId));
}

/** Deletes the hold of a snapshot (full id); false when there was none. */
export async function deleteHold(core: RepoCore, snapshotId: string): Promise<boolean> {
  try {
    return await core.store.delete(holdKey(snapshotId));
  } catch (err) {
    throw storeError(err, `removing the hold of snapshot ${snapshotId}`);
  }
}

/** The full snapshot id of a hold given by id or unique prefix (>= 6 hex); undefined when none matches. */
export async function resolveHoldId(core: RepoCore, idOrPrefix: string): Promise<string | undefined> {
  const prefix = idOrPrefix.toLowerCase();
  if (!/^[0-9a-f]{6,64}$/.test(prefix)) {
    throw new IotvaultError("INVALID_ARGUMENT", `${JSON.stringify(idOrPrefix)} is not a snapshot id or prefix`, {
      hint: "give at least 6 hex characters of the snapshot id",
    });
  }
  const matches = (await listIds(core.store, KEYS.holdPrefix)).filter((id) => id.startsWith(prefix));
  if (matches.length > 1) {
    throw new IotvaultError("INVALID_ARGUMENT", `hold prefix ${prefix} is ambiguous (${matches.length} match)`, {
      hint: "give more characters of the snapshot id",
    });
  }
  return matches[0];
}

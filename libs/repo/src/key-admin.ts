/**
 * Key management (`iotvault key add | list | remove | rotate`).
 *
 * - add: a new slot wrapping the current master key; nothing else changes.
 * - remove: deletes a slot; the last slot and the slot this process opened with are refused
 *   (so nobody locks themselves out by mistake).
 * - rotate: a new data-encryption key becomes current (new blobs are sealed with it; old blobs
 *   keep naming their key id, so old snapshots stay readable without rewriting a pack), and a
 *   new master key re-seals the keyring. Every slot must be re-wrapped under the new master
 *   key, which needs its secret: the slot used to open, plus the secrets given in `keep`. Other
 *   slots are refused unless `dropOtherSlots` (they would no longer open the keyring).
 *   Crash safety — writes in this order: new slots, then the keyring sealed with the new master
 *   key, then the old slots are deleted. Opening tries every slot until one opens the keyring,
 *   so a crash at any point leaves a repository that the old or the new slots open.
 */
import { randomBytes } from "node:crypto";
import { IotvaultError } from "@iotvault/errors";
import { storeError, type RepoCore } from "./core.js";
import { KEYS, keySlotKey } from "./format.js";
import {
  createSlot,
  decodeSlot,
  encodeSlot,
  sealKeyring,
  unlockSlot,
  type Keyring,
  type RepositorySecret,
} from "./keys.js";
import { listIds } from "./manifests.js";

export interface KeyListing {
  slots: { id: string; type: "passphrase" | "keyfile" | "unknown"; createdAt: string; inUse: boolean }[];
  dataKeys: { id: number; createdAt: string; current: boolean }[];
}

export interface RotateOptions {
  /** The secret this repository was opened with (its slot is re-made under the new master key). */
  current: RepositorySecret;
  /** Secrets of other slots to keep (re-wrapped under the new master key). */
  keep?: RepositorySecret[] | undefined;
  /** Delete slots whose secret was not given instead of refusing. */
  dropOtherSlots?: boolean | undefined;
}

export interface RotateResult {
  dataKeyId: number;
  /** Ids of the new slots (the one opened with first). */
  slots: string[];
  removedSlots: string[];
}

async function readSlots(core: RepoCore) {
  const ids = await listIds(core.store, KEYS.keySlotPrefix);
  const slots = [];
  for (const id of ids) {
    try {
      slots.push({ id, slot: decodeSlot(await core.store.get(keySlotKey(id)), id) });
    } catch (err) {
      throw storeError(err, `reading key slot ${id}`);
    }
  }
  return slots;
}

export async function listKeys(core: RepoCore): Promise<KeyListing> {
  const { keyring } = core.secretKeys();
  const slots = (await readSlots(core)).map(({ id, slot }) => ({
    id,
    type: slot?.type ?? ("unknown" as const),
    createdAt: slot?.createdAt ?? "",
    inUse: id === core.openedSlot,
  }));
  return {
    slots: slots.sort((a, b) => a.createdAt.localeCompare(b.createdAt)),
    dataKeys: keyring.encryptionKeys.map((k) => ({
      id: k.id,
      createdAt: k.createdAt,
      current: k.id === keyring.current,
    })),
  };
}

export async function addKey(core: RepoCore, secret: RepositorySecret): Promise<string> {
  const { masterKey } = core.secretKeys();
  const slot = await createSlot(secret, masterKey, core.options.scryptLogN);
  try {
    await core.store.put(keySlotKey(slot.id), encodeSlot(slot), { ifAbsent: true });
  } catch (err) {
    throw storeError(err, "storing the new key slot");
  }
  return slot.id;
}

export async function removeKey(core: RepoCore, slotId: string): Promise<void> {
  const ids = await listIds(core.store, KEYS.keySlotPrefix);
  const match = ids.filter((id) => id.startsWith(slotId));
  if (slotId.length < 6 || match.length !== 1) {
    throw new IotvaultError(
      match.length > 1 ? "INVALID_ARGUMENT" : "NOT_FOUND",
      `no single key slot matches "${slotId}"`,
      {
        hint: "list the slots with `iotvault key list` and give at least 6 characters of an id",
      },
    );
  }
  const id = match[0]!;
  if (ids.length === 1) {
    throw new IotvaultError(
      "FAILED_PRECONDITION",
      "refusing to remove the last key slot: nothing could open the repository",
      {
        hint: "add another key first (`iotvault key add`)",
      },
    );
  }
  if (id === core.openedSlot) {
    throw new IotvaultError(
      "FAILED_PRECONDITION",
      `refusing to remove key slot ${id.slice(0, 12)}: it is the one in use`,
      {
        hint: "open the repository with another key (passphrase or key file) to remove this one",
      },
    );
  }
  try {
    await core.store.delete(keySlotKey(id));
  } catch (err) {
    throw storeError(err, `removing key slot ${id}`);
  }
}

export async function rotateKeys(core: RepoCore, options: RotateOptions): Promise<RotateResult> {
  const { masterKey: oldMaster, keyring: old } = core.secretKeys();
  const existing = await readSlots(core);
  const inUse = existing.find(({ id }) => id === core.openedSlot)?.slot;
  const check = inUse ? await unlockSlot(inUse, options.current) : undefined;
  if (!check?.equals(oldMaster)) {
    check?.fill(0);
    throw new IotvaultError(
      "WRONG_KEY",
      "the secret given for rotation is not the one this repository was opened with",
    );
  }
  check.fill(0);
  // Which other slots do the given secrets open?
  const kept = new Set<string>([core.openedSlot]);
  const secrets: RepositorySecret[] = [options.current];
  for (const secret of options.keep ?? []) {
    let opened: string | undefined;
    for (const { id, slot } of existing) {
      if (!slot || kept.has(id)) continue;
      const mk = await unlockSlot(slot, secret);
      const match = mk?.equals(oldMaster) === true;
      mk?.fill(0);
      if (match) {
        opened = id;
        break;
      }
    }
    if (!opened) {
      throw new IotvaultError(
        "WRONG_KEY",
        "a secret given to keep does not open any other key slot of this repository",
        {
          hint: "check the passphrase or key file given with --keep-passphrase-file / --keep-key-file",
        },
      );
    }
    kept.add(opened);
    secrets.push(secret);
  }
  const others = existing.filter(({ id }) => !kept.has(id)).map(({ id }) => id);
  if (others.length > 0 && !options.dropOtherSlots) {
    throw new IotvaultError(
      "FAILED_PRECONDITION",
      `rotation would invalidate ${others.length} other key slot(s): ${others.map((id) => id.slice(0, 12)).join(", ")}`,
      { hint: "give their secrets with --keep-passphrase-file / --keep-key-file, or pass --drop-other-slots" },
    );
  }

  const newMaster = randomBytes(32);
  const keyring = newDataKey(old);
  const newSlots = [];
  for (const secret of secrets) newSlots.push(await createSlot(secret, newMaster, core.options.scryptLogN));
  try {
    // 1. new slots (they wrap the new master key, which opens nothing yet)
    for (const slot of newSlots) await core.store.put(keySlotKey(slot.id), encodeSlot(slot), { ifAbsent: true });
    // 2. the keyring, with the new data key, sealed with the new master key: from here the new
    //    slots open the repository and the old ones no longer do
    await core.store.put(KEYS.keyring, sealKeyring(newMaster, keyring));
    // 3. the old slots
    for (const { id } of existing) await core.store.delete(keySlotKey(id));
  } catch (err) {
    newMaster.fill(0);
    throw storeError(err, "rotating the repository keys");
  }
  core.replaceKeys(newMaster, keyring, newSlots[0]!.id);
  return { dataKeyId: keyring.current, slots: newSlots.map((s) => s.id), removedSlots: existing.map(({ id }) => id) };
}

export function newDataKey(keyring: Keyring): Keyring {
  let id = 0;
  while (id === 0 || keyring.encryptionKeys.some((k) => k.id === id)) id = randomBytes(4).readUInt32BE(0);
  return {
    ...keyring,
    current: id,
    encryptionKeys: [...keyring.encryptionKeys, { id, key: randomBytes(32), createdAt: new Date().toISOString() }],
  };
}

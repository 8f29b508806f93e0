/**
 * The WAL archive of a repository: PostgreSQL WAL segments (and timeline history and backup
 * history files) stored whole as sealed objects (compressed, encrypted, outside packs) at
 * `wal/<system identifier>/<timeline, 8 hex>/<file name>`.
 *
 * - walPush: archive_command. Idempotent: the same content again is fine; different content
 *   under the same name is refused (ALREADY_EXISTS), as PostgreSQL's docs require.
 * - walFetch: restore_command. False when the file is not in the archive.
 * - walPrune: removes segments older than the oldest kept physical backup's start.
 *
 * ```ts
 * const repo = await Repository.open(store, { keyFile }, { loadIndex: false, workers: 1 });
 * const pushed = await walPush(repo, "pg_wal/000000010000000000000003", { pgdata: process.cwd() });
 * const found = await walFetch(repo, "000000010000000000000003", "pg_wal/RECOVERYXLOG", { systemId });
 * ```
 */
import { randomBytes } from "node:crypto";
import { endianness } from "node:os";
import { readFileSync, renameSync, rmSync, statSync, writeFileSync } from "node:fs";
import { open } from "node:fs/promises";
import { basename, dirname, join } from "node:path";
import { IotvaultError, isNotFound } from "@iotvault/errors";
import type { Repository, SealedPutResult, SnapshotManifest } from "@iotvault/repo";

/** What the WAL functions need of a Repository (a repository opened with loadIndex: false will do). */
export type WalRepository = Pick<
  Repository,
  "putSealedObject" | "getSealedObject" | "listSealedObjects" | "deleteSealedObject"
>;

export const DEFAULT_WAL_SEGMENT_SIZE = 16 * 1024 * 1024;

const SEGMENT = /^[0-9A-F]{24}$/;
const PARTIAL = /^[0-9A-F]{24}\.partial$/;
const BACKUP_HISTORY = /^[0-9A-F]{24}\.[0-9A-F]{8}\.backup$/;
const TIMELINE_HISTORY = /^[0-9A-F]{8}\.history$/;

export type WalFileKind = "segment" | "partial" | "backup" | "history";

/** The kind of a WAL archive file name; undefined for a name PostgreSQL never archives. */
export function walFileKind(name: string): WalFileKind | undefined {
  if (SEGMENT.test(name)) return "segment";
  if (PARTIAL.test(name)) return "partial";
  if (BACKUP_HISTORY.test(name)) return "backup";
  if (TIMELINE_HISTORY.test(name)) return "history";
  return undefined;
}

function checkName(name: string): WalFileKind {
  const kind = walFileKind(name);
  if (!kind) {
    throw new IotvaultError("INVALID_ARGUMENT", `"${name}" is not the name of a WAL file`, {
      hint: "archive_command passes %p (a path ending in a 24-hex segment name, a .partial, .backup or .history file)",
    });
  }
  return kind;
}

/** The timeline a WAL file name belongs to (its first 8 hex digits). */
export function timelineOf(name: string): number {
  return Number.parseInt(name.slice(0, 8), 16);
}

const SYSID = /^[1-9][0-9]{0,19}$/;

function checkSystemId(systemId: string): string {
  if (!SYSID.test(systemId)) {
    throw new IotvaultError("INVALID_ARGUMENT", `"${systemId}" is not a PostgreSQL system identifier`, {
      hint: "give the decimal number SELECT system_identifier FROM pg_control_system() shows",
    });
  }
  return systemId;
}

/** The archive key of a WAL file of a cluster. */
export function walKey(systemId: string, name: string): string {
  checkName(name);
  return `${walPrefix(systemId)}${hex8(timelineOf(name))}/${name}`;
}

/** The key prefix of a cluster's archive ("wal/<system id>/"). */
export function walPrefix(systemId: string): string {
  return `wal/${checkSystemId(systemId)}/`;
}

const hex8 = (n: number) => n.toString(16).toUpperCase().padStart(8, "0");

// ------------------------------------------------------------------------------------------- LSNs

/** Parses an LSN ("16/B374D848") into a 64-bit number. */
export function parseLsn(text: string): bigint {
  const m = /^([0-9A-Fa-f]{1,8})\/([0-9A-Fa-f]{1,8})$/.exec(text.trim());
  if (!m) {
    throw new IotvaultError("INVALID_ARGUMENT", `"${text}" is not an LSN`, {
      hint: "write an LSN as two hex numbers, e.g. 0/3000060",
    });
  }
  return (BigInt(`0x${m[1]}`) << 32n) | BigInt(`0x${m[2]}`);
}

export function formatLsn(lsn: bigint): string {
  return `${(lsn >> 32n).toString(16).toUpperCase()}/${(lsn & 0xffffffffn).toString(16).toUpperCase()}`;
}

/** The segment number holding an LSN. */
export function segmentNumber(lsn: bigint, segmentSize = DEFAULT_WAL_SEGMENT_SIZE): bigint {
  return lsn / BigInt(segmentSize);
}

/** The file name of a segment on a timeline (XLogFileName). */
export function segmentName(timeline: number, segno: bigint, segmentSize = DEFAULT_WAL_SEGMENT_SIZE): string {
  const perId = 0x100000000n / BigInt(segmentSize);
  const high = segno / perId;
  const low = segno % perId;
  return `${hex8(timeline)}${hex8(Number(high))}${hex8(Number(low))}`;
}

/** The segment number of a segment (or .partial / .backup) file name. */
export function segmentNumberOf(name: string, segmentSize = DEFAULT_WAL_SEGMENT_SIZE): bigint {
  const perId = 0x100000000n / BigInt(segmentSize);
  return BigInt(`0x${name.slice(8, 16)}`) * perId + BigInt(`0x${name.slice(16, 24)}`);
}

// ------------------------------------------------------------------------------------------- system id

/**
 * The system identifier in a data directory's global/pg_control (its first 8 bytes, in the
 * host's byte order); undefined when the file cannot be read.
 */
export function systemIdFromPgControl(pgdata: string): string | undefined {
  try {
    const bytes = readFileSync(join(pgdata, "global", "pg_control"));
    if (bytes.length < 16) return undefined;
    const id = endianness() === "LE" ? bytes.readBigUInt64LE(0) : bytes.readBigUInt64BE(0);
    return id > 0n ? id.toString() : undefined;
  } catch {
    return undefined;
  }
}

const XLP_LONG_HEADER = 0x0002;

/**
 * The system identifier in the long page header that starts every WAL segment (xlp_sysid at
 * offset 24); undefined when the bytes do not start with one.
 */
export function systemIdFromSegment(bytes: Uint8Array): string | undefined {
  if (bytes.length < 40) return undefined;
  const b = Buffer.from(bytes.buffer, bytes.byteOffset, 40);
  const le = endianness() === "LE";
  const info = le ? b.readUInt16LE(2) : b.readUInt16BE(2);
  if ((info & XLP_LONG_HEADER) === 0) return undefined;
  const id = le ? b.readBigUInt64LE(24) : b.readBigUInt64BE(24);
  return id > 0n ? id.toString() : undefined;
}

// ------------------------------------------------------------------------------------------- push, fetch

export interface WalPushOptions {
  /** The cluster's system identifier; else read from <pgdata>/global/pg_control, else the segment header. */
  systemId?: string | undefined;
  /** The data directory (archive_command runs in it: default the current directory). */
  pgdata?: string | undefined;
  signal?: AbortSignal | undefined;
}

export interface WalPushResult extends SealedPutResult {
  key: string;
  name: string;
  systemId: string;
  timeline: number;
  size: number;
}

/**
 * Stores one WAL file (archive_command's %p) in the archive. ALREADY_EXISTS when the archive
 * holds different content under the name; INVALID_ARGUMENT when the file's own system
 * identifier contradicts the given one.
 */
export async function walPush(repo: WalRepository, path: string, options: WalPushOptions = {}): Promise<WalPushResult> {
  const name = basename(path);
  const kind = checkName(name);
  let data: Buffer;
  try {
    data = readFileSync(path);
  } catch (err) {
    throw new IotvaultError("NOT_FOUND", `cannot read the WAL file ${path}: ${(err as Error).message}`, {
      hint: "archive_command must pass %p and run in the data directory (PostgreSQL does both)",
    });
  }
  const fromSegment = kind === "segment" || kind === "partial" ? systemIdFromSegment(data) : undefined;
  const systemId = options.systemId ?? systemIdFromPgControl(options.pgdata ?? process.cwd()) ?? fromSegment;
  if (!systemId) {
    throw new IotvaultError("INVALID_ARGUMENT", `cannot tell which cluster ${name} belongs to`, {
      hint: "run wal-push from archive_command (in the data directory), or pass --system-id",
    });
  }
  if (fromSegment && fromSegment !== systemId) {
    throw new IotvaultError("INVALID_ARGUMENT", `${name} belongs to system ${fromSegment}, not to ${systemId}`, {
      hint: "check --system-id / --pgdata: the segment is from another cluster",
    });
  }
  const key = walKey(systemId, name);
  const put = await repo.putSealedObject(key, data, { ...(options.signal ? { signal: options.signal } : {}) });
  return { ...put, key, name, systemId, timeline: timelineOf(name), size: data.length };
}

/**
 * Writes an archived WAL file (restore_command's %f) to `dest` (%p), atomically. Returns false
 * when the archive does not have it (restore_command must then fail quietly).
 */
export async function walFetch(
  repo: WalRepository,
  name: string,
  dest: string,
  options: { systemId: string },
): Promise<boolean> {
  const key = walKey(options.systemId, name);
  let data: Buffer;
  try {
    data = await repo.getSealedObject(key);
  } catch (err) {
    if (isNotFound(err)) return false;
    throw err;
  }
  try {
    await writeFileSynced(dest, data);
  } catch (err) {
    throw new IotvaultError("FAILED_PRECONDITION", `cannot write ${dest}: ${(err as Error).message}`, {
      hint: "restore_command runs in the data directory as the server's OS user; check its permissions",
    });
  }
  return true;
}

/**
 * Writes `data` to `dest` durably: a temporary name beside it, fsync, rename. A reader never
 * sees a partial file under `dest`; the temporary file is removed when anything fails.
 */
export async function writeFileSynced(dest: string, data: Uint8Array): Promise<void> {
  const temp = join(dirname(dest), `.${basename(dest)}.iotvault-${randomBytes(4).toString("hex")}`);
  try {
    const fh = await open(temp, "wx", 0o600);
    try {
      await fh.writeFile(data);
      await fh.sync();
    } finally {
      await fh.close();
    }
    renameSync(temp, dest);
  } catch (err) {
    rmSync(temp, { force: true });
    throw err;
  }
}

// ------------------------------------------------------------------------------------------- listing, prune, chains

export interface WalObject {
  name: string;
  timeline: number;
  kind: WalFileKind;
  size: number;
  key: string;
}

/** Every archived WAL file of a cluster, sorted by timeline then name. */
export async function listWal(repo: WalRepository, systemId: string): Promise<WalObject[]> {
  const out: WalObject[] = [];
  for await (const o of repo.listSealedObjects(walPrefix(systemId))) {
    const name = o.key.slice(o.key.lastIndexOf("/") + 1);
    const kind = walFileKind(name);
    if (!kind) continue;
    out.push({ name, timeline: timelineOf(name), kind, size: o.size, key: o.key });
  }
  return out.sort((a, b) => a.timeline - b.timeline || (a.name < b.name ? -1 : a.name > b.name ? 1 : 0));
}

/** The clusters (system identifiers) that have WAL in the archive. */
export async function listWalSystems(repo: WalRepository): Promise<string[]> {
  const ids = new Set<string>();
  for await (const o of repo.listSealedObjects("wal/")) {
    const id = o.key.split("/")[1];
    if (id && SYSID.test(id)) ids.add(id);
  }
  return [...ids].sort();
}

/**
 * The first segment of `from..to` (inclusive, segment numbers) on `timeline` missing from
 * `archived`; undefined when all are there.
 */
export function firstMissingSegment(
  archived: ReadonlySet<string>,
  timeline: number,
  from: bigint,
  to: bigint,
  segmentSize = DEFAULT_WAL_SEGMENT_SIZE,
): string | undefined {
  for (let s = from; s <= to; s++) {
    const name = segmentName(timeline, s, segmentSize);
    if (!archived.has(name)) return name;
  }
  return undefined;
}

export interface WalPruneOptions {
  systemId: string;
  /** Report what would be removed, remove nothing. */
  dryRun?: boolean | undefined;
  signal?: AbortSignal | undefined;
}

export interface WalPruneResult {
  /** The oldest start LSN of a kept physical backup of the cluster. */
  keepFromLsn: string;
  /** The segment it lies in: segments before it (on any timeline) are not needed. */
  keepFromSegment: string;
  removed: string[];
  bytesFreed: number;
  kept: number;
}

/** The PostgreSQL metadata of a physical snapshot of the cluster, if it is one. */
function physicalStart(
  s: SnapshotManifest,
  systemId: string,
): { lsn: bigint; timeline: number; segmentSize: number } | undefined {
  const pg = s.metadata["postgres"] as
    | { mode?: unknown; systemIdentifier?: unknown; startLsn?: unknown; timeline?: unknown; walSegmentSize?: unknown }
    | undefined;
  if (!pg || pg.mode !== "physical" || pg.systemIdentifier !== systemId || typeof pg.startLsn !== "string")
    return undefined;
  return {
    lsn: parseLsn(pg.startLsn),
    timeline: typeof pg.timeline === "number" ? pg.timeline : 1,
    segmentSize: typeof pg.walSegmentSize === "number" ? pg.walSegmentSize : DEFAULT_WAL_SEGMENT_SIZE,
  };
}

/**
 * Removes archived WAL that no kept backup needs: segments (and .partial / .backup files)
 * before the segment of the oldest start LSN among the repository's physical snapshots of the
 * cluster. Timeline history files are always kept. FAILED_PRECONDITION when the repository
 * holds no physical backup of the cluster (nothing says which WAL is needed).
 */
export async function walPrune(
  repo: WalRepository & Pick<Repository, "listSnapshots">,
  options: WalPruneOptions,
): Promise<WalPruneResult> {
  const starts = (await repo.listSnapshots(options.signal))
    .map((s) => physicalStart(s, options.systemId))
    .filter((x): x is NonNullable<typeof x> => x !== undefined);
  if (starts.length === 0) {
    throw new IotvaultError(
      "FAILED_PRECONDITION",
      `the repository holds no physical backup of system ${options.systemId}`,
      {
        hint: "nothing tells which WAL a restore needs; take a physical backup first (or remove the WAL by hand)",
      },
    );
  }
  const oldest = starts.reduce((a, b) => (b.lsn < a.lsn ? b : a));
  const boundary = segmentNumber(oldest.lsn, oldest.segmentSize);
  const result: WalPruneResult = {
    keepFromLsn: formatLsn(oldest.lsn),
    keepFromSegment: segmentName(oldest.timeline, boundary, oldest.segmentSize),
    removed: [],
    bytesFreed: 0,
    kept: 0,
  };
  for (const o of await listWal(repo, options.systemId)) {
    options.signal?.throwIfAborted();
    if (o.kind === "history" || segmentNumberOf(o.name, oldest.segmentSize) >= boundary) {
      result.kept++;
      continue;
    }
    if (!options.dryRun) await repo.deleteSealedObject(o.key);
    result.removed.push(o.name);
    result.bytesFreed += o.size;
  }
  return result;
}

/** Size of a local file, or undefined when it does not exist. */
export function fileSize(path: string): number | undefined {
  try {
    return statSync(path).size;
  } catch {
    return undefined;
  }
}

/** Writes a file atomically (temp + rename) with a mode. */
export function writeFileAtomic(path: string, data: string | Uint8Array, mode = 0o600): void {
  const temp = join(dirname(path), `.${basename(path)}.iotvault-${randomBytes(4).toString("hex")}`);
  writeFileSync(temp, data, { mode, flag: "wx" });
  renameSync(temp, path);
}

/**
 * Snapshot manifests (`snapshots/<id>`, encrypted JSON). The tree itself is not in the
 * manifest: it is a stream of JSON lines stored as tree blobs, listed in `tree.chunks`.
 */
import { FORMAT_VERSION, corrupt, isId, parseJsonObject } from "./format.js";
import { newerOrCorrupt } from "./keys.js";

export type BackupTypeName = "full" | "incremental" | "differential";
const BACKUP_TYPES: ReadonlySet<string> = new Set(["full", "incremental", "differential"]);

/** Counters of one backup (the fields of the BackupStats proto message). */
export interface BackupStatsInfo {
  filesNew: number;
  filesChanged: number;
  filesUnchanged: number;
  dirs: number;
  symlinks: number;
  /** Plain bytes of all files in the snapshot. */
  totalBytes: number;
  /** Plain bytes read from the source (unchanged files are not read). */
  bytesRead: number;
  /** Plain bytes of chunks new to the repository. */
  bytesNew: number;
  /** Bytes written to storage by this backup (packs, index files, the manifest excluded). */
  bytesStored: number;
  chunksTotal: number;
  chunksNew: number;
  packsWritten: number;
  durationMs: number;
}

export const STATS_FIELDS = [
  "filesNew",
  "filesChanged",
  "filesUnchanged",
  "dirs",
  "symlinks",
  "totalBytes",
  "bytesRead",
  "bytesNew",
  "bytesStored",
  "chunksTotal",
  "chunksNew",
  "packsWritten",
  "durationMs",
] as const satisfies readonly (keyof BackupStatsInfo)[];

export function emptyStats(): BackupStatsInfo {
  return Object.fromEntries(STATS_FIELDS.map((f) => [f, 0])) as unknown as BackupStatsInfo;
}

/** What the caller of `commit` says about the snapshot. */
export interface SnapshotMeta {
  jobId: string;
  jobName: string;
  /** Source URL, e.g. `fs:/srv/iot/config`. */
  source: string;
  backupType: BackupTypeName;
  /** Defaults to os.hostname(). */
  hostname?: string | undefined;
  /** Defaults to the commit time. */
  time?: Date | undefined;
  tags?: string[] | undefined;
  labels?: Record<string, string> | undefined;
  /** Source-specific facts (PostgreSQL LSNs, RDF canonical hashes, ...); JSON-serializable. */
  metadata?: Record<string, unknown> | undefined;
}

export interface TreeRef {
  /** Tree blob ids, in order; their plaintexts concatenated are the JSON-lines tree. */
  chunks: string[];
  nodes: number;
  bytes: number;
  /** sha256 of the whole JSON-lines tree. */
  sha256: string;
}

export interface SnapshotManifest {
  version: 1;
  id: string;
  /** ISO 8601 UTC. */
  time: string;
  hostname: string;
  runId: string;
  jobId: string;
  jobName: string;
  source: string;
  backupType: BackupTypeName;
  /** Id of the parent snapshot (the one unchanged files were taken from). */
  parent?: string;
  tags: string[];
  labels: Record<string, string>;
  stats: BackupStatsInfo;
  metadata: Record<string, unknown>;
  tree: TreeRef;
}

/**
 * The consistency group a snapshot belongs to (`metadata.group.id`, the run id of the group's
 * run; each member has a run key of its own), or undefined for a snapshot on its own.
 */
export function snapshotGroupId(m: Pick<SnapshotManifest, "metadata">): string | undefined {
  const group = m.metadata["group"];
  if (typeof group !== "object" || group === null) return undefined;
  const id = (group as { id?: unknown }).id;
  return typeof id === "string" && id !== "" ? id : undefined;
}

export function encodeManifest(m: SnapshotManifest): Buffer {
  return Buffer.from(JSON.stringify(m), "utf8");
}

const isString = (v: unknown): v is string => typeof v === "string";

export function decodeManifest(plain: Uint8Array, id: string): SnapshotManifest {
  const what = `snapshot ${id}`;
  const o = parseJsonObject(plain, what);
  if (o["version"] !== FORMAT_VERSION) throw newerOrCorrupt(what, o["version"]);
  if (o["id"] !== id) throw corrupt(`${what} names another snapshot id`);
  const strings = ["time", "hostname", "runId", "jobId", "jobName", "source"].every((k) => isString(o[k]));
  if (!strings || !isString(o["backupType"]) || !BACKUP_TYPES.has(o["backupType"])) {
    throw corrupt(`${what} has missing or invalid fields`);
  }
  if (o["parent"] !== undefined && !isId(o["parent"])) throw corrupt(`${what} has an invalid parent id`);
  const tree = o["tree"] as Record<string, unknown> | undefined;
  const chunks = tree?.["chunks"];
  if (!Array.isArray(chunks) || !chunks.every(isId) || !isString(tree?.["sha256"])) {
    throw corrupt(`${what} has an invalid tree reference`);
  }
  const stats = (o["stats"] ?? {}) as Record<string, unknown>;
  const tags = Array.isArray(o["tags"]) ? o["tags"].filter(isString) : [];
  const labels = typeof o["labels"] === "object" && o["labels"] !== null ? (o["labels"] as Record<string, string>) : {};
  const metadata =
    typeof o["metadata"] === "object" && o["metadata"] !== null ? (o["metadata"] as Record<string, unknown>) : {};
  return {
    version: FORMAT_VERSION,
    id,
    time: o["time"] as string,
    hostname: o["hostname"] as string,
    runId: o["runId"] as string,
    jobId: o["jobId"] as string,
    jobName: o["jobName"] as string,
    source: o["source"] as string,
    backupType: o["backupType"] as BackupTypeName,
    ...(isString(o["parent"]) ? { parent: o["parent"] } : {}),
    tags,
    labels,
    stats: Object.fromEntries(
      STATS_FIELDS.map((f) => [f, typeof stats[f] === "number" ? stats[f] : 0]),
    ) as unknown as BackupStatsInfo,
    metadata,
    tree: {
      chunks,
      nodes: typeof tree["nodes"] === "number" ? tree["nodes"] : 0,
      bytes: typeof tree["bytes"] === "number" ? tree["bytes"] : 0,
      sha256: tree["sha256"],
    },
  };
}

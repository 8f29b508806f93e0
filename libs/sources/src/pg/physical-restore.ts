/**
 * Restore of a physical backup into a new data directory, ready for (point-in-time) recovery:
 * the snapshot's files (through the file-system restore, every file checked), backup_label and
 * tablespace_map from the snapshot, the directories whose contents a backup leaves out,
 * recovery.signal, and restore_command / recovery_target_* appended to postgresql.auto.conf.
 *
 * Before anything is written, the WAL archive is checked: a segment the backup needs (or one
 * before an LSN target, or a hole before the newest archived segment when recovering to the
 * latest point) that is missing is a NOT_FOUND error naming it. With the option recover=true
 * the server is started on a free port, recovery runs to its target, and the server is stopped
 * (or kept running with keep_running=true).
 */
import { appendFileSync, chmodSync, chownSync, existsSync, mkdirSync, readdirSync, writeFileSync } from "node:fs";
import { isAbsolute, join } from "node:path";
import { IotvaultError } from "@iotvault/errors";
import type { Repository, SnapshotManifest } from "@iotvault/repo";
import type { SourceProgress } from "../adapter.js";
import { restoreToDirectory } from "../fs/restore.js";
import { LocalCluster } from "./cluster.js";
import type { PgSnapshotMetadata } from "./metadata.js";
import { CONTENTS_EXCLUDED } from "./physical-walk.js";
import {
  recoveryConfLines,
  recoveryTarget,
  runRecovery,
  segmentsOnTimeline,
  type RecoveryOutcome,
  type RecoveryTarget,
} from "./recovery.js";
import { IS_ROOT, osUserName } from "./tools.js";
import { MAX_PREFETCH, WAL_SPOOL_DIR, removeSpool } from "./wal-spool.js";
import {
  DEFAULT_WAL_SEGMENT_SIZE,
  formatLsn,
  listWal,
  parseLsn,
  segmentName,
  segmentNumber,
  segmentNumberOf,
  type WalRepository,
} from "./wal.js";

export interface PhysicalRestoreOptions {
  target: string;
  /** recovery_target_*, restore_command, recover, keep_running, port, os_user, allow_wal_gap, archive_mode. */
  options: Readonly<Record<string, string>>;
  /** restore_command when options.restore_command is not given (undefined: none can be made). */
  restoreCommand: string | undefined;
  verify: boolean;
  signal?: AbortSignal | undefined;
  onProgress?: ((p: SourceProgress) => void) | undefined;
}

export interface PhysicalRestoreResult {
  files: number;
  dirs: number;
  symlinks: number;
  bytes: number;
  verified: boolean;
  details: Record<string, unknown>;
  /** Set when the server was started (recover=true). */
  recovery?: RecoveryOutcome | undefined;
  /** The running cluster with keep_running=true. */
  cluster?: LocalCluster | undefined;
}

export const PHYSICAL_OPTIONS = new Set([
  "restore_command",
  "recover",
  "keep_running",
  "port",
  "os_user",
  "allow_wal_gap",
  "archive_mode",
  "recovery_target_time",
  "recovery_target_lsn",
  "recovery_target_name",
  "recovery_target_xid",
  "recovery_target",
  "recovery_target_inclusive",
  "recovery_target_timeline",
  "recovery_target_action",
  "wal_prefetch",
]);

function checkOptions(options: Readonly<Record<string, string>>): void {
  for (const k of Object.keys(options)) {
    if (!PHYSICAL_OPTIONS.has(k)) {
      throw new IotvaultError("INVALID_ARGUMENT", `unknown option "${k}" for a physical PostgreSQL restore`, {
        hint: `known options: ${[...PHYSICAL_OPTIONS].join(", ")}`,
      });
    }
  }
}

function checkTarget(target: string): void {
  if (!isAbsolute(target)) {
    throw new IotvaultError(
      "INVALID_ARGUMENT",
      `a physical PostgreSQL backup restores into a directory, not "${target}"`,
      {
        hint: "give --to /absolute/path/of/a/new/data/directory",
      },
    );
  }
  if (existsSync(target) && readdirSync(target).length > 0) {
    throw new IotvaultError("ALREADY_EXISTS", `${target} is not empty`, {
      hint: "restore a data directory into a new or empty directory (never over a cluster)",
    });
  }
}

/**
 * Checks that the archive has the WAL the restore needs; returns warnings for holes it does
 * not strictly need. NOT_FOUND naming the first missing segment otherwise.
 */
export async function checkArchive(
  repo: WalRepository,
  meta: PgSnapshotMetadata,
  target: RecoveryTarget,
  allowGap: boolean,
): Promise<string[]> {
  const size = meta.walSegmentSize ?? DEFAULT_WAL_SEGMENT_SIZE;
  const timeline = meta.timeline ?? 1;
  const all = await listWal(repo, meta.systemIdentifier);
  const names = new Set(all.filter((o) => o.kind === "segment").map((o) => o.name));
  for (const name of meta.walSegments ?? []) {
    if (!names.has(name)) {
      throw new IotvaultError(
        "NOT_FOUND",
        `WAL segment ${name}, needed to make the backup consistent, is not in the archive`,
        {
          hint: "the backup cannot be restored without it; restore another backup (or put the segment back with iotvault wal-push)",
          details: { segment: name },
        },
      );
    }
  }
  const stop = segmentNumber(parseLsn(meta.stopLsn ?? "0/0") - 1n, size);
  const present = segmentsOnTimeline(names, timeline, size);
  const newest = present.length ? present[present.length - 1]! : stop;
  const hole = (upTo: bigint): string | undefined => {
    for (let s = stop + 1n; s <= upTo; s++)
      if (!names.has(segmentName(timeline, s, size))) return segmentName(timeline, s, size);
    return undefined;
  };
  if (target.lsn !== undefined) {
    const missing = hole(segmentNumber(target.lsn, size));
    if (missing && target.lsn > parseLsn(meta.stopLsn ?? "0/0")) {
      throw new IotvaultError(
        "NOT_FOUND",
        `WAL segment ${missing}, needed to reach ${target.describe}, is not in the archive`,
        {
          hint: `recovery can only reach the end of the segment before it; choose an earlier target`,
          details: { segment: missing },
        },
      );
    }
    return [];
  }
  const gap = hole(newest);
  if (!gap) return [];
  const message = `WAL segment ${gap} is missing from the archive (newer ones exist): recovery cannot replay past ${formatLsn(segmentNumberOf(gap, size) * BigInt(size))}`;
  if (target.latest && !allowGap) {
    throw new IotvaultError("NOT_FOUND", message, {
      hint: "recovering to the latest point would stop silently at the hole; give a recovery target before it, or --option allow_wal_gap=true",
      details: { segment: gap },
    });
  }
  return [message];
}

/** Restores a physical snapshot into `options.target` (see the module comment). */
export async function restorePhysical(
  repo: Repository,
  snapshot: SnapshotManifest,
  meta: PgSnapshotMetadata,
  options: PhysicalRestoreOptions,
): Promise<PhysicalRestoreResult> {
  checkOptions(options.options);
  checkTarget(options.target);
  const target = recoveryTarget(options.options);
  const restoreCommand = withPrefetch(
    options.options["restore_command"] ?? options.restoreCommand,
    options.options["wal_prefetch"],
    options.options["restore_command"] !== undefined,
  );
  if (!restoreCommand) {
    throw new IotvaultError("FAILED_PRECONDITION", "cannot tell how the restored server will fetch WAL", {
      hint: "give --option restore_command='... %f %p' (e.g. iotvault wal-fetch --repo R --system-id S %f %p)",
    });
  }
  const warnings = await checkArchive(repo, meta, target, options.options["allow_wal_gap"] === "true");
  const restored = await restoreToDirectory(repo, snapshot, {
    target: options.target,
    verify: options.verify,
    signal: options.signal,
    onProgress: options.onProgress,
  });
  const owner = meta.dataDirOwner;
  const own = (path: string, mode?: number) => {
    if (mode !== undefined) chmodSync(path, mode);
    if (IS_ROOT && owner) chownSync(path, owner.uid, owner.gid);
  };
  own(options.target, 0o700);
  for (const dir of CONTENTS_EXCLUDED) {
    const path = join(options.target, dir);
    if (!existsSync(path)) mkdirSync(path, { mode: 0o700 });
    own(path);
  }
  mkdirSync(join(options.target, "pg_wal", "archive_status"), { recursive: true, mode: 0o700 });
  own(join(options.target, "pg_wal", "archive_status"));
  const writeOwned = (name: string, text: string) => {
    writeFileSync(join(options.target, name), text, { mode: 0o600 });
    own(join(options.target, name));
  };
  writeOwned("backup_label", meta.backupLabel ?? "");
  if (meta.tablespaceMap) writeOwned("tablespace_map", meta.tablespaceMap);
  writeOwned("recovery.signal", "");
  const auto = join(options.target, "postgresql.auto.conf");
  const header = `added by iotvault: restore of snapshot ${snapshot.id.slice(0, 12)} to ${target.describe}, ${new Date().toISOString()}`;
  const archiveMode = options.options["archive_mode"];
  appendFileSync(
    auto,
    (existsSync(auto) ? "\n" : "") +
      recoveryConfLines(restoreCommand, target, header) +
      (archiveMode ? `archive_mode = '${archiveMode === "off" ? "off" : "on"}'\n` : ""),
  );
  own(auto);
  const details: Record<string, unknown> = {
    mode: "physical",
    systemIdentifier: meta.systemIdentifier,
    startLsn: meta.startLsn,
    stopLsn: meta.stopLsn,
    timeline: meta.timeline,
    target: target.describe,
    restoreCommand,
  };
  if (!existsSync(join(options.target, "postgresql.conf"))) {
    warnings.push(
      `postgresql.conf is not in the data directory (the backed-up cluster kept it in ${meta.externalConfig?.join(", ") || "another directory"}): copy your configuration before starting the server`,
    );
  }
  if (warnings.length) details["warnings"] = warnings;
  const result: PhysicalRestoreResult = { ...restored, details };
  if (options.options["recover"] === "true") await recover(repo, meta, target, options, result);
  return result;
}

/**
 * restore_command with `--prefetch N` (option wal_prefetch): the next N segments are fetched
 * ahead while PostgreSQL replays (see wal-spool.ts). Only for the wal-fetch command iotvault
 * builds; an operator's own restore_command says its own options.
 */
function withPrefetch(command: string | undefined, prefetch: string | undefined, own: boolean): string | undefined {
  if (prefetch === undefined || prefetch === "0" || command === undefined) return command;
  if (!/^\d+$/.test(prefetch) || Number(prefetch) > MAX_PREFETCH) {
    throw new IotvaultError(
      "INVALID_ARGUMENT",
      `wal_prefetch "${prefetch}": expected a number of segments, 0 to ${MAX_PREFETCH}`,
    );
  }
  const builtin = / wal-fetch .* %f %p$/.test(command);
  if (own || !builtin) {
    throw new IotvaultError("INVALID_ARGUMENT", "wal_prefetch applies to the restore_command iotvault builds", {
      hint: "add --prefetch N to the wal-fetch of your own restore_command instead",
    });
  }
  return command.replace(/ %f %p$/, ` --prefetch ${Number(prefetch)} %f %p`);
}

/** recover=true: starts the restored server and runs recovery to its target. */
async function recover(
  repo: Repository,
  meta: PgSnapshotMetadata,
  target: RecoveryTarget,
  options: PhysicalRestoreOptions,
  result: PhysicalRestoreResult,
): Promise<void> {
  const osUser = options.options["os_user"] ?? (meta.dataDirOwner ? osUserName(meta.dataDirOwner.uid) : undefined);
  ensureMinimalConfig(options.target, meta);
  const cluster = LocalCluster.attach(options.target, {
    osUser,
    major: Math.floor(meta.serverVersionNum / 10000),
    runDir: `${options.target}.run`,
  });
  const port = options.options["port"] ? Number(options.options["port"]) : "free";
  if (port !== "free" && (!Number.isInteger(port) || port <= 0 || port > 65535)) {
    throw new IotvaultError("INVALID_ARGUMENT", `port "${options.options["port"]}" is not a TCP port`);
  }
  try {
    result.recovery = await runRecovery(cluster, {
      port,
      target: target.describe,
      archive: {
        repo,
        systemId: meta.systemIdentifier,
        timeline: meta.timeline ?? 1,
        segmentSize: meta.walSegmentSize,
      },
      signal: options.signal,
    });
  } finally {
    // Recovery is over (or failed): the segments wal-fetch --prefetch held are not needed.
    await removeSpool(join(options.target, "pg_wal", WAL_SPOOL_DIR));
  }
  result.details["recovery"] = { ...result.recovery, port: cluster.port };
  if (options.options["keep_running"] === "true") result.cluster = cluster;
  else await cluster.stop();
}

/**
 * Writes minimal configuration files into a restored data directory that has none (clusters
 * whose configuration lives elsewhere, e.g. Debian's /etc/postgresql): loopback only, trust
 * for local connections. Used to start a restored copy for checks, never a production server.
 */
export function ensureMinimalConfig(
  dataDir: string,
  meta: Pick<PgSnapshotMetadata, "dataDirOwner" | "externalConfig">,
): void {
  const files: Record<string, string> = {
    "postgresql.conf": `# written by iotvault: the backed-up cluster kept its configuration outside the data directory\n# (${meta.externalConfig?.join(", ") ?? "unknown"}); copy it here before using this cluster in earnest.\nlisten_addresses = '127.0.0.1'\n`,
    "pg_hba.conf":
      "# written by iotvault for a restored copy: local connections only\nlocal all all trust\nhost all all 127.0.0.1/32 trust\n",
    "pg_ident.conf": "",
  };
  for (const [name, text] of Object.entries(files)) {
    const path = join(dataDir, name);
    if (existsSync(path)) continue;
    writeFileSync(path, text, { mode: 0o600 });
    if (IS_ROOT && meta.dataDirOwner) chownSync(path, meta.dataDirOwner.uid, meta.dataDirOwner.gid);
  }
}

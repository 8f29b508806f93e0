/**
 * Recovery of a restored data directory: the settings a point-in-time recovery needs
 * (restore_command through `iotvault wal-fetch`, recovery_target_*), and running the server
 * until recovery ends, with a clear error when it cannot reach its target (naming the WAL
 * segment missing from the archive).
 */
import { IotvaultError } from "@iotvault/errors";
import type { LocalCluster } from "./cluster.js";
import { connectPg, quoteLiteral } from "./connection.js";
import {
  DEFAULT_WAL_SEGMENT_SIZE,
  listWal,
  parseLsn,
  segmentName,
  segmentNumber,
  segmentNumberOf,
  type WalRepository,
} from "./wal.js";
import { setTimeout as sleep } from "node:timers/promises";

/** How restore_command reaches the archive: `<env assignments> <command> wal-fetch --repo R --system-id S %f %p`. */
export interface WalFetchCommand {
  /** The iotvault command line (e.g. "iotvault", or "/usr/bin/node /opt/iotvault/cli/bin/iotvault.js"). */
  command: string;
  /** Environment for it (paths only: IOTVAULT_KEY_FILE, IOTVAULT_CONFIG, IOTVAULT_STORAGE_GATEWAY_ADDRESS). */
  env: Readonly<Record<string, string>>;
}

/** Quotes a word for /bin/sh. */
export function shellQuote(word: string): string {
  return /^[A-Za-z0-9_@%+=:,./-]+$/.test(word) ? word : `'${word.replace(/'/g, `'\\''`)}'`;
}

/**
 * restore_command for a repository reached through the storage-gateway (`gateway://addr/name`
 * store locations): `iotvault wal-fetch --repo <name> --system-id <id> %f %p` with the given
 * environment. undefined for other locations (the caller must give restore_command).
 */
export function gatewayRestoreCommand(fetch: WalFetchCommand, location: string, systemId: string): string | undefined {
  const m = /^gateway:\/\/[^/]+\/([a-z0-9][a-z0-9._-]*)$/.exec(location);
  if (!m) return undefined;
  const env = Object.entries(fetch.env).map(([k, v]) => `${k}=${shellQuote(v)}`);
  return [...env, fetch.command, "wal-fetch", "--repo", m[1]!, "--system-id", systemId, "%f", "%p"].join(" ");
}

/** The recovery target options a restore accepts (values as PostgreSQL takes them). */
export const RECOVERY_OPTIONS = [
  "recovery_target_time",
  "recovery_target_lsn",
  "recovery_target_name",
  "recovery_target_xid",
  "recovery_target",
  "recovery_target_inclusive",
  "recovery_target_timeline",
  "recovery_target_action",
] as const;

export interface RecoveryTarget {
  settings: Record<string, string>;
  /** A human description ("the latest WAL", "2024-05-01 10:00:00+00", "LSN 0/5000060"). */
  describe: string;
  /** An LSN target, for the archive pre-check. */
  lsn?: bigint | undefined;
  latest: boolean;
}

/** Validates and collects the recovery_target_* options. */
export function recoveryTarget(options: Readonly<Record<string, string>>): RecoveryTarget {
  const settings: Record<string, string> = {};
  for (const name of RECOVERY_OPTIONS) {
    const v = options[name];
    if (v === undefined || v === "") continue;
    if (/[\n\r\0]/.test(v)) throw new IotvaultError("INVALID_ARGUMENT", `${name}: line breaks are not allowed`);
    settings[name] = v;
  }
  const targets = [
    "recovery_target_time",
    "recovery_target_lsn",
    "recovery_target_name",
    "recovery_target_xid",
    "recovery_target",
  ].filter((k) => settings[k] !== undefined);
  if (targets.length > 1) {
    throw new IotvaultError("INVALID_ARGUMENT", `give at most one recovery target, not ${targets.join(" and ")}`);
  }
  if (settings["recovery_target"] !== undefined && settings["recovery_target"] !== "immediate") {
    throw new IotvaultError("INVALID_ARGUMENT", `recovery_target can only be "immediate"`);
  }
  if (settings["recovery_target_time"] !== undefined && Number.isNaN(Date.parse(settings["recovery_target_time"]))) {
    throw new IotvaultError(
      "INVALID_ARGUMENT",
      `recovery_target_time "${settings["recovery_target_time"]}" is not a time`,
      {
        hint: "write a timestamp with its time zone, e.g. 2026-11-24 10:15:00+00",
      },
    );
  }
  const action = settings["recovery_target_action"] ?? "promote";
  if (!["promote", "pause", "shutdown"].includes(action)) {
    throw new IotvaultError("INVALID_ARGUMENT", `recovery_target_action must be promote, pause or shutdown`);
  }
  let lsn: bigint | undefined;
  if (settings["recovery_target_lsn"] !== undefined) lsn = parseLsn(settings["recovery_target_lsn"]);
  const describe =
    settings["recovery_target_time"] ??
    (lsn !== undefined ? `LSN ${settings["recovery_target_lsn"]}` : undefined) ??
    (settings["recovery_target_name"] !== undefined
      ? `restore point "${settings["recovery_target_name"]}"`
      : undefined) ??
    (settings["recovery_target_xid"] !== undefined ? `transaction ${settings["recovery_target_xid"]}` : undefined) ??
    (settings["recovery_target"] !== undefined ? "the end of the backup (immediate)" : "the latest WAL in the archive");
  if (targets.length > 0) settings["recovery_target_action"] = action;
  return { settings, describe, lsn, latest: targets.length === 0 };
}

/** The lines appended to postgresql.auto.conf of a restored data directory. */
export function recoveryConfLines(restoreCommand: string, target: RecoveryTarget, header: string): string {
  const lines = [`# ${header}`, `restore_command = ${quoteLiteral(restoreCommand)}`];
  for (const [k, v] of Object.entries(target.settings)) lines.push(`${k} = ${quoteLiteral(v)}`);
  return lines.join("\n") + "\n";
}

export interface RecoveryOutcome {
  /** The server left recovery (promoted) and accepts writes. */
  promoted: boolean;
  timeline: number;
  /** "redo done at ..." of the server log (the last WAL replayed). */
  redoDoneAt: string | undefined;
  /** "recovery stopping ..." of the server log, when a target stopped it. */
  stoppedAt: string | undefined;
  /** "last completed transaction was at log time ..." */
  lastTransaction: string | undefined;
  durationMs: number;
}

export interface RunRecoveryOptions {
  /** A TCP port, or "free" (see StartOptions.port). */
  port: number | "free";
  settings?: Readonly<Record<string, string>> | undefined;
  /** Describes the target in messages. */
  target: string;
  /** The archive and cluster, to name a missing segment. */
  archive?: { repo: WalRepository; systemId: string; timeline: number; segmentSize?: number | undefined } | undefined;
  timeoutMs?: number | undefined;
  signal?: AbortSignal | undefined;
}

const logValue = (log: string, re: RegExp): string | undefined => {
  let last: string | undefined;
  for (const m of log.matchAll(re)) last = m[1];
  return last;
};

/**
 * Starts a restored data directory and waits until recovery ends and the server is promoted
 * (recovery_target_action promote). On failure: NOT_FOUND naming the WAL segment missing from
 * the archive when that is what stopped it, else UNAVAILABLE quoting the server's FATAL lines.
 */
export async function runRecovery(cluster: LocalCluster, options: RunRecoveryOptions): Promise<RecoveryOutcome> {
  const started = Date.now();
  const deadline = started + (options.timeoutMs ?? 10 * 60_000);
  try {
    await cluster.start({
      port: options.port,
      settings: { archive_mode: "off", ssl: "off", ...options.settings },
      timeoutMs: Math.max(1000, deadline - Date.now()),
      signal: options.signal,
    });
  } catch (err) {
    throw await explainFailure(cluster, options, err);
  }
  for (;;) {
    options.signal?.throwIfAborted();
    if (cluster.pid() === undefined) throw await explainFailure(cluster, options, undefined);
    const state = await recoveryState(cluster);
    if (state && !state.inRecovery) {
      const log = cluster.log();
      return {
        promoted: true,
        timeline: state.timeline,
        redoDoneAt: logValue(log, /redo done at ([0-9A-F]+\/[0-9A-F]+)/g),
        stoppedAt: logValue(log, /LOG:\s+(recovery stopping [^\n]*)/g),
        lastTransaction: logValue(log, /last completed transaction was at log time ([^\n]*)/g),
        durationMs: Date.now() - started,
      };
    }
    if (Date.now() > deadline) {
      await cluster.stop({ mode: "immediate" }).catch(() => undefined);
      throw new IotvaultError("DEADLINE_EXCEEDED", `recovery to ${options.target} did not end in time`, {
        hint: `the server log says:\n${cluster.logTail()}`,
      });
    }
    await sleep(100);
  }
}

async function recoveryState(cluster: LocalCluster): Promise<{ inRecovery: boolean; timeline: number } | undefined> {
  try {
    const client = await connectPg(cluster.connection());
    try {
      const { rows } = await client.query<{ r: boolean; tli: number }>(
        "SELECT pg_is_in_recovery() AS r, (SELECT timeline_id FROM pg_control_checkpoint()) AS tli",
      );
      return { inRecovery: rows[0]!.r, timeline: rows[0]!.tli };
    } finally {
      await client.end().catch(() => undefined);
    }
  } catch {
    return undefined;
  }
}

/** Turns a failed recovery into an error that says why (the missing segment when that is it). */
async function explainFailure(
  cluster: LocalCluster,
  options: RunRecoveryOptions,
  cause: unknown,
): Promise<IotvaultError> {
  await cluster.stop({ mode: "immediate" }).catch(() => undefined);
  const log = cluster.log();
  const fatal = [...log.matchAll(/(?:FATAL|PANIC):\s+([^\n]*)/g)].map((m) => m[1]!).slice(-3);
  const missing = options.archive ? await missingSegment(log, options.archive) : undefined;
  if (missing) {
    return new IotvaultError(
      "NOT_FOUND",
      `recovery to ${options.target} failed: WAL segment ${missing} is not in the archive${fatal.length ? ` (PostgreSQL: ${fatal.join("; ")})` : ""}`,
      {
        hint: `recovery cannot replay past the end of segment ${missing} minus one; choose an earlier target, or put ${missing} back (it may still be in the old server's pg_wal) with iotvault wal-push`,
        details: { segment: missing },
        cause,
      },
    );
  }
  return new IotvaultError(
    "UNAVAILABLE",
    `recovery to ${options.target} failed${fatal.length ? `: ${fatal.join("; ")}` : ""}`,
    { hint: `the server log says:\n${cluster.logTail(20)}`, cause, retryable: false },
  );
}

/**
 * The segment recovery needed and could not get: the first one after the last WAL replayed
 * ("redo done at" in the log) that the archive does not hold on the backup's timeline.
 */
async function missingSegment(
  log: string,
  archive: NonNullable<RunRecoveryOptions["archive"]>,
): Promise<string | undefined> {
  const redo = logValue(log, /redo (?:done|starts) at ([0-9A-F]+\/[0-9A-F]+)/g);
  if (!redo || !/recovery ended before|WAL ends before|could not locate|requested timeline/.test(log)) return undefined;
  const size = archive.segmentSize ?? DEFAULT_WAL_SEGMENT_SIZE;
  const names = new Set(
    (await listWal(archive.repo, archive.systemId))
      .filter((o) => o.timeline === archive.timeline && o.kind === "segment")
      .map((o) => o.name),
  );
  let s = segmentNumber(parseLsn(redo), size);
  for (let i = 0; i < 1_000_000; i++, s++) {
    const name = segmentName(archive.timeline, s, size);
    if (!names.has(name)) return name;
  }
  return undefined;
}

/** The segment numbers present on a timeline, for gap detection. */
export function segmentsOnTimeline(
  names: Iterable<string>,
  timeline: number,
  size = DEFAULT_WAL_SEGMENT_SIZE,
): bigint[] {
  const out: bigint[] = [];
  for (const n of names)
    if (Number.parseInt(n.slice(0, 8), 16) === timeline && n.length === 24) out.push(segmentNumberOf(n, size));
  return out.sort((a, b) => (a < b ? -1 : a > b ? 1 : 0));
}

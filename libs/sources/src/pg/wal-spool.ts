/**
 * wal-fetch's prefetch spool. PostgreSQL replays WAL by running restore_command once per
 * segment, one after the other; each `iotvault wal-fetch` is a process that starts, opens the
 * repository and fetches one segment (~0.2 s), so a point-in-time recovery over many segments
 * waits on those processes more than on the replay. With `--prefetch N`, the segments after the
 * one asked for are fetched ahead, by one background process, into a spool directory; the next
 * calls find their segment there and only move it into place.
 *
 * The spool lies beside the destination (`pg_wal/.iotvault-prefetch` for PostgreSQL's
 * `pg_wal/RECOVERYXLOG`): on the same file system, so that a held segment is renamed into place,
 * never copied; written by PostgreSQL's OS user; and inside pg_wal, whose contents neither
 * pg_basebackup nor iotvault's physical backup copy.
 *
 * - A segment is in the spool only under its own name once complete: written to a temporary
 *   name, fsync'ed, renamed (walFetch). It was decrypted and authenticated when fetched, and an
 *   archived name never changes content (wal-push refuses that), so a held segment is the
 *   archived one.
 * - One filler at a time: `.filler.lock` holds its pid; a lock whose process is gone (or is no
 *   filler: a reused pid) is taken over. The filler stops when the spool directory disappears
 *   (the restore is over).
 * - Segments before the one PostgreSQL asks for are dropped from the spool on every call.
 * - Anything wrong with the spool (missing, unwritable, a failed filler: see `.filler.log`)
 *   only means the segment is fetched from the archive as without prefetch.
 */
import { closeSync, existsSync, openSync, readFileSync, readdirSync, renameSync, rmSync, writeFileSync } from "node:fs";
import { readFile } from "node:fs/promises";
import { dirname, join } from "node:path";
import { setTimeout as sleep } from "node:timers/promises";
import { walFetch, walPrefix, writeFileSynced, type WalRepository } from "./wal.js";

/** The spool's directory name, beside the destination of restore_command (%p). */
export const WAL_SPOOL_DIR = ".iotvault-prefetch";
/** The filler's pid, while it runs. */
export const SPOOL_LOCK = ".filler.lock";
/** The last filler's output (its errors). */
export const SPOOL_LOG = ".filler.log";

const SEGMENT = /^[0-9A-F]{24}$/;

/** The most segments fetched ahead (16 MiB each in the spool). */
export const MAX_PREFETCH = 64;

/** The spool for a restore_command destination: `<dirname(%p)>/.iotvault-prefetch`. */
export function defaultSpool(dest: string): string {
  return join(dirname(dest), WAL_SPOOL_DIR);
}

/** The position of a segment in the WAL (log and segment number), across timelines. */
const position = (name: string): string => name.slice(8);

function segmentsIn(spool: string): string[] {
  try {
    return readdirSync(spool).filter((n) => SEGMENT.test(n));
  } catch {
    return [];
  }
}

/** How many segments after `name` the spool holds. */
export function spoolAhead(spool: string, name: string): number {
  return segmentsIn(spool).filter((n) => position(n) > position(name)).length;
}

/**
 * Moves `name` from the spool to `dest`; false when the spool does not hold it (or cannot give
 * it: the caller then fetches it from the archive). Drops the segments before `name` first.
 */
export async function takeFromSpool(spool: string, name: string, dest: string): Promise<boolean> {
  if (!SEGMENT.test(name)) return false;
  for (const n of segmentsIn(spool)) {
    if (position(n) < position(name)) rmSync(join(spool, n), { force: true });
  }
  const held = join(spool, name);
  try {
    renameSync(held, dest);
    return true;
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code;
    if (code !== "EXDEV") return false;
  }
  // A spool given on another file system: copied, synced and renamed into place.
  try {
    await writeFileSynced(dest, await readFile(held));
    rmSync(held, { force: true });
    return true;
  } catch {
    return false;
  }
}

/**
 * Whether `pid` is a live filler: its command line is `... wal-fetch --fill ...` (a pid the
 * lock names may have been reused by another process since its filler was killed).
 */
function isFiller(pid: number): boolean {
  try {
    const args = readFileSync(`/proc/${pid}/cmdline`, "utf8").split("\0");
    return args.includes("wal-fetch") && args.includes(FILL_FLAG);
  } catch {
    return false;
  }
}

/** The flag that makes `iotvault wal-fetch` the spool's filler. */
export const FILL_FLAG = "--fill";

/** The pid of the spool's running filler, if one runs. */
export function fillerPid(spool: string): number | undefined {
  try {
    const pid = Number(readFileSync(join(spool, SPOOL_LOCK), "utf8").trim());
    return Number.isInteger(pid) && pid > 0 && isFiller(pid) ? pid : undefined;
  } catch {
    return undefined;
  }
}

/** Takes the filler's lock for this process; false when another live filler holds it or the spool is gone. */
function lockSpool(spool: string): boolean {
  const path = join(spool, SPOOL_LOCK);
  for (let attempt = 0; attempt < 2; attempt++) {
    try {
      const fd = openSync(path, "wx", 0o600);
      try {
        writeFileSync(fd, `${process.pid}\n`);
      } finally {
        closeSync(fd);
      }
      return true;
    } catch (err) {
      const code = (err as NodeJS.ErrnoException).code;
      if (code === "ENOENT") return false; // the spool is gone: the restore is over
      if (code !== "EEXIST") throw err;
      if (fillerPid(spool) !== undefined) return false;
      rmSync(path, { force: true }); // its process is gone
    }
  }
  return false;
}

export interface FillResult {
  /** Segments fetched into the spool by this call. */
  fetched: string[];
  /** False when another filler was running or the spool is gone (this one did nothing). */
  ran: boolean;
}

/**
 * Fetches into the spool up to `count` archived segments after `after` on its timeline (those
 * held already count). Temporary files a killed filler left are removed first.
 */
export async function fillSpool(
  repo: WalRepository,
  options: { spool: string; after: string; systemId: string; count: number },
): Promise<FillResult> {
  const { spool, after, systemId, count } = options;
  if (!lockSpool(spool)) return { fetched: [], ran: false };
  const fetched: string[] = [];
  try {
    for (const n of readdirSync(spool)) if (n.includes(".iotvault-")) rmSync(join(spool, n), { force: true });
    for (const name of await segmentsAfter(repo, systemId, after, count)) {
      if (!existsSync(spool)) break; // the restore is over
      if (existsSync(join(spool, name))) continue;
      if (await walFetch(repo, name, join(spool, name), { systemId })) fetched.push(name);
    }
  } finally {
    rmSync(join(spool, SPOOL_LOCK), { force: true });
  }
  return { fetched, ran: true };
}

/**
 * The first `count` archived segments after `after` on its timeline. Listed one WAL log (the
 * segments whose names share their first 16 characters: 4 GiB of WAL) at a time, from the
 * one of `after`, so that a filler never lists a whole archive of months of WAL.
 */
async function segmentsAfter(repo: WalRepository, systemId: string, after: string, count: number): Promise<string[]> {
  const timeline = after.slice(0, 8);
  const found: string[] = [];
  const first = Number.parseInt(after.slice(8, 16), 16);
  for (let log = first; found.length < count && log <= 0xffffffff; log++) {
    const prefix = `${walPrefix(systemId)}${timeline}/${timeline}${log.toString(16).toUpperCase().padStart(8, "0")}`;
    const names: string[] = [];
    for await (const o of repo.listSealedObjects(prefix)) {
      const name = o.key.slice(o.key.lastIndexOf("/") + 1);
      if (SEGMENT.test(name) && name > after) names.push(name);
    }
    // A later log without segments ends the search (the archive ends there, or has a hole).
    if (names.length === 0 && log > first) break;
    found.push(...names.sort());
  }
  return found.slice(0, count);
}

/** Stops the spool's filler (SIGTERM, then SIGKILL after `graceMs`) and removes the spool. */
export async function removeSpool(spool: string, graceMs = 2000): Promise<void> {
  const pid = fillerPid(spool);
  if (pid !== undefined) {
    for (const signal of ["SIGTERM", "SIGKILL"] as const) {
      try {
        process.kill(pid, signal);
      } catch {
        break; // gone meanwhile
      }
      const until = Date.now() + graceMs;
      while (isFiller(pid) && Date.now() < until) await sleep(20);
      if (!isFiller(pid)) break;
    }
  }
  rmSync(spool, { recursive: true, force: true });
}

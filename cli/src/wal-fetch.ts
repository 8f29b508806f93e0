/**
 * wal-fetch's arguments and its fast path: with `--prefetch N`, a segment the prefetch spool
 * holds is moved into place without opening the repository (this module loads no gRPC, no
 * repository code: a call served from the spool is Node's start and a rename). The rest of
 * wal-fetch (fetching from the archive, the spool's filler) is in postgres.ts.
 */
import { spawn } from "node:child_process";
import { closeSync, mkdirSync, openSync } from "node:fs";
import { join, resolve } from "node:path";
import { IotvaultError } from "@iotvault/errors";
import {
  FILL_FLAG,
  MAX_PREFETCH,
  SPOOL_LOG,
  defaultSpool,
  fillerPid,
  spoolAhead,
  takeFromSpool,
} from "@iotvault/sources/wal-spool";
import { flag, parse, required, str } from "./args.js";

export const WAL_FETCH_USAGE =
  "iotvault wal-fetch <file name (%f)> <destination (%p)> --repo R --system-id S [--prefetch N] [--spool DIR]";

export interface WalFetchArgs {
  name: string;
  dest: string;
  repository: string;
  systemId: string;
  /** Segments fetched ahead into the spool; 0: none. */
  prefetch: number;
  spool: string;
  /** This process is the spool's filler (started by wal-fetch itself). */
  fill: boolean;
}

export function walFetchArgs(argv: string[]): WalFetchArgs {
  const p = parse(
    argv,
    {
      repo: { type: "string" },
      "system-id": { type: "string" },
      prefetch: { type: "string" },
      spool: { type: "string" },
      fill: { type: "boolean" },
    },
    WAL_FETCH_USAGE,
  );
  const name = required(p.positionals[0], "WAL file name (%f)", WAL_FETCH_USAGE);
  const dest = required(p.positionals[1], "destination path (%p)", WAL_FETCH_USAGE);
  const text = str(p, "prefetch") ?? "0";
  const prefetch = /^\d+$/.test(text) ? Number(text) : NaN;
  if (!(prefetch >= 0 && prefetch <= MAX_PREFETCH)) {
    throw new IotvaultError(
      "INVALID_ARGUMENT",
      `--prefetch ${text}: expected a number of segments, 0 to ${MAX_PREFETCH}`,
      {
        hint: `usage: ${WAL_FETCH_USAGE}`,
      },
    );
  }
  return {
    name,
    dest,
    repository: required(str(p, "repo"), "--repo", WAL_FETCH_USAGE),
    systemId: required(str(p, "system-id"), "--system-id", WAL_FETCH_USAGE),
    prefetch,
    spool: resolve(str(p, "spool") ?? defaultSpool(dest)),
    fill: flag(p, FILL_FLAG.slice(2)),
  };
}

/**
 * Serves the call from the prefetch spool when it holds the segment (then tops the spool up)
 * and returns the segment's name; undefined otherwise, and for any call this path does not
 * handle (errors included: the full path reports them).
 */
export async function fetchFromSpool(argv: string[]): Promise<string | undefined> {
  let a: WalFetchArgs;
  try {
    a = walFetchArgs(argv);
  } catch {
    return undefined;
  }
  if (a.fill || a.prefetch === 0 || !(await takeFromSpool(a.spool, a.name, a.dest))) return undefined;
  startFiller(a);
  return a.name;
}

/**
 * Starts the spool's filler in the background when the spool holds no more than half of the
 * segments asked ahead and no filler runs. Best effort: without a filler, segments come from
 * the archive one call at a time.
 */
export function startFiller(a: WalFetchArgs): void {
  try {
    if (a.prefetch === 0 || spoolAhead(a.spool, a.name) * 2 > a.prefetch) return;
    if (fillerPid(a.spool) !== undefined) return;
    mkdirSync(a.spool, { recursive: true, mode: 0o700 });
    const log = openSync(join(a.spool, SPOOL_LOG), "w", 0o600);
    try {
      const args = [
        process.argv[1]!,
        "wal-fetch",
        FILL_FLAG,
        a.name,
        a.dest,
        "--repo",
        a.repository,
        "--system-id",
        a.systemId,
        "--prefetch",
        String(a.prefetch),
        "--spool",
        a.spool,
      ];
      spawn(process.execPath, args, { detached: true, stdio: ["ignore", log, log] }).unref();
    } finally {
      closeSync(log);
    }
  } catch {
    // the next call fetches from the archive
  }
}

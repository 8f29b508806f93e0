/**
 * PostgreSQL commands of `iotvault`:
 *
 *   wal-push <%p> --repo R                archive_command: store a WAL file, publish wal.archived
 *   wal-fetch <%f> <%p> --repo R --system-id S [--prefetch N] [--spool DIR]
 *                                         restore_command: exit 1 (silently) when not archived;
 *                                         --prefetch: the next N segments fetched ahead (wal-fetch.ts)
 *   wal-list --repo R [--system-id S]     what the archive holds, per cluster and timeline
 *   wal-prune --repo R [--system-id S] [--dry-run]
 *                                         remove WAL older than the oldest kept physical backup
 *   drill <job> [--snapshot ID] [--keep] [--option K=V]...
 *                                         restore drill now (RestoreService.Drill)
 *   drill <job> --schedule CRON|off       drill the job's newest snapshot on a schedule
 *
 * wal-push / wal-fetch run once per WAL file, so they open the repository without its index
 * (loadIndex: false); a key file (IOTVAULT_KEY_FILE) spares them the passphrase's scrypt.
 *
 * ```sh
 * archive_command = 'IOTVAULT_KEY_FILE=/etc/iotvault/wal.key iotvault wal-push --repo main %p'
 * restore_command = 'IOTVAULT_KEY_FILE=/etc/iotvault/wal.key iotvault wal-fetch --repo main --system-id 7441... %f %p'
 * ```
 */
import { readRepositorySecret, repositoryOptionsOf } from "@iotvault/config";
import { IotvaultError, isCode, toIotvaultError } from "@iotvault/errors";
import { DrillResult, Job, SUBJECTS, WalArchived } from "@iotvault/proto";
import { Repository } from "@iotvault/repo";
import { GatewayObjectStore, callServerStream, callUnary } from "@iotvault/rpc/client";
import type { WalObject, WalPushResult } from "@iotvault/sources/wal";
import { UsageRequested, flag, list, parse, required, str } from "./args.js";
import type { Context } from "./context.js";
import { ProgressBar, formatBytes, formatDuration, table } from "./output.js";
import { startFiller, walFetchArgs, type WalFetchArgs } from "./wal-fetch.js";

/** Exit code of wal-fetch for anything but "not in the archive": PostgreSQL stops recovery on it. */
export const WAL_FETCH_FATAL = 126;

/**
 * The WAL functions, loaded on first use from the package's light `wal` entry: the main entry
 * brings every source adapter with it (a third of a second), and archive_command runs once per
 * WAL segment.
 */
const wal = () => import("@iotvault/sources/wal");

async function openArchive(ctx: Context, repository: string, loadIndex: boolean): Promise<Repository> {
  const store = new GatewayObjectStore(ctx.gateway, repository, { address: ctx.config.addressOf("storage-gateway") });
  return Repository.open(store, readRepositorySecret(ctx.env, ctx.config.repository), {
    ...repositoryOptionsOf(ctx.config),
    workers: 1,
    loadIndex,
  });
}

function splitOption(text: string): [string, string] {
  const at = text.indexOf("=");
  if (at <= 0) throw new IotvaultError("INVALID_ARGUMENT", `--option ${text}: expected KEY=VALUE`);
  return [text.slice(0, at), text.slice(at + 1)];
}

// ---------------------------------------------------------------------------------------------- wal-push

export async function walPushCmd(ctx: Context, argv: string[]): Promise<void> {
  const usage = "iotvault wal-push <path (%p)> --repo R [--system-id S] [--pgdata DIR]";
  const p = parse(
    argv,
    { repo: { type: "string" }, "system-id": { type: "string" }, pgdata: { type: "string" } },
    usage,
  );
  const path = required(p.positionals[0], "WAL file path (%p)", usage);
  const repository = required(str(p, "repo"), "--repo", usage);
  const started = Date.now();
  const [repo, { walPush }] = await Promise.all([openArchive(ctx, repository, false), wal()]);
  let pushed: WalPushResult;
  try {
    pushed = await walPush(repo, path, { systemId: str(p, "system-id"), pgdata: str(p, "pgdata") });
  } finally {
    await repo.close();
  }
  const published = await publishArchived(ctx, repository, pushed);
  ctx.print(
    { ...pushed, repository, published, durationMs: Date.now() - started },
    () =>
      `${pushed.name} ${pushed.existed ? "was archived already (same content)" : `archived (${formatBytes(pushed.storedBytes)} stored)`}`,
  );
}

/**
 * iotvault.events.wal.archived, best effort: the segment is safe whether or not NATS answers
 * (archiving must not stop because the event bus is down), so a failure is a warning on stderr.
 */
async function publishArchived(ctx: Context, repository: string, pushed: WalPushResult): Promise<boolean> {
  try {
    const bus = await withTimeout(ctx.bus(), 5000, "connecting to NATS");
    await withTimeout(
      bus.publish(
        SUBJECTS.walArchived,
        WalArchived,
        {
          repository,
          systemId: pushed.systemId,
          timeline: pushed.timeline,
          segment: pushed.name,
          size: BigInt(pushed.size),
          archivedAt: new Date(),
        },
        { msgId: `wal:${repository}:${pushed.systemId}:${pushed.name}` },
      ),
      5000,
      "publishing wal.archived",
    );
    return true;
  } catch (err) {
    process.stderr.write(
      `iotvault wal-push: ${pushed.name} is archived, but the wal.archived event was not published: ${toIotvaultError(err).message}\n`,
    );
    return false;
  }
}

async function withTimeout<T>(promise: Promise<T>, ms: number, what: string): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  try {
    return await Promise.race([
      promise,
      new Promise<never>((_, reject) => {
        timer = setTimeout(() => reject(new IotvaultError("DEADLINE_EXCEEDED", `${what} took more than ${ms} ms`)), ms);
      }),
    ]);
  } finally {
    clearTimeout(timer);
  }
}

// ---------------------------------------------------------------------------------------------- wal-fetch

/**
 * restore_command. Exit codes: 0 restored; 1 not in the archive (no output: PostgreSQL asks for
 * files that do not exist as a matter of course); 126 any other failure, after retries of
 * transient ones: PostgreSQL treats it as fatal and stops recovery rather than ending it early
 * as if the archive had no more WAL.
 */
export async function walFetchCmd(ctx: Context, argv: string[]): Promise<void> {
  try {
    const a = walFetchArgs(argv);
    if (a.fill) {
      await fillCmd(ctx, a);
      return;
    }
    const walModule = wal(); // loads while the repository opens
    const found = await retrying(async () => {
      const [repo, { walFetch }] = await Promise.all([openArchive(ctx, a.repository, false), walModule]);
      try {
        return await walFetch(repo, a.name, a.dest, { systemId: a.systemId });
      } finally {
        await repo.close();
      }
    });
    if (!found) process.exitCode = 1;
    else {
      startFiller(a);
      if (ctx.json) ctx.print({ name: a.name, restored: true }, () => "");
    }
  } catch (err) {
    if (err instanceof UsageRequested) throw err; // --help: main prints the usage, exit 0
    const e = toIotvaultError(err);
    process.stderr.write(`iotvault wal-fetch: ${e.message}${e.hint ? `\nhint: ${e.hint}` : ""}\n`);
    process.exitCode = WAL_FETCH_FATAL;
  }
}

/** The prefetch spool's filler (`wal-fetch --fill`, started by wal-fetch): see wal-spool.ts. */
async function fillCmd(ctx: Context, a: WalFetchArgs): Promise<void> {
  const [repo, { fillSpool }] = await Promise.all([
    openArchive(ctx, a.repository, false),
    import("@iotvault/sources/wal-spool"),
  ]);
  try {
    const r = await fillSpool(repo, { spool: a.spool, after: a.name, systemId: a.systemId, count: a.prefetch });
    process.stdout.write(
      `${r.ran ? `fetched ${r.fetched.length} segment(s) after ${a.name}` : "another filler runs"}\n`,
    );
  } finally {
    await repo.close();
  }
}

async function retrying<T>(fn: () => Promise<T>): Promise<T> {
  for (let attempt = 1; ; attempt++) {
    try {
      return await fn();
    } catch (err) {
      if (attempt >= 4 || !toIotvaultError(err).retryable) throw err;
      await new Promise((r) => setTimeout(r, 250 * 2 ** attempt));
    }
  }
}

// ---------------------------------------------------------------------------------------------- wal-list, wal-prune

interface TimelineSummary {
  systemId: string;
  timeline: number;
  segments: number;
  first: string;
  last: string;
  history: number;
  storedBytes: number;
}

function summarize(systemId: string, objects: WalObject[]): TimelineSummary[] {
  const byTimeline = new Map<number, TimelineSummary>();
  for (const o of objects) {
    let s = byTimeline.get(o.timeline);
    if (!s) {
      s = { systemId, timeline: o.timeline, segments: 0, first: "", last: "", history: 0, storedBytes: 0 };
      byTimeline.set(o.timeline, s);
    }
    s.storedBytes += o.size;
    if (o.kind === "segment") {
      s.segments++;
      if (!s.first || o.name < s.first) s.first = o.name;
      if (o.name > s.last) s.last = o.name;
    } else s.history++;
  }
  return [...byTimeline.values()];
}

export async function walListCmd(ctx: Context, argv: string[]): Promise<void> {
  const usage = "iotvault wal-list --repo R [--system-id S]";
  const p = parse(argv, { repo: { type: "string" }, "system-id": { type: "string" } }, usage);
  const repository = required(str(p, "repo"), "--repo", usage);
  const { listWal, listWalSystems } = await wal();
  const repo = await openArchive(ctx, repository, false);
  try {
    const systems = str(p, "system-id") ? [str(p, "system-id")!] : await listWalSystems(repo);
    const rows: TimelineSummary[] = [];
    for (const id of systems) rows.push(...summarize(id, await listWal(repo, id)));
    ctx.print(rows, () =>
      rows.length === 0
        ? `no WAL archived in ${repository}`
        : table(
            ["SYSTEM", "TIMELINE", "SEGMENTS", "FIRST", "LAST", "OTHER FILES", "STORED"],
            rows.map((r) => [
              r.systemId,
              String(r.timeline),
              String(r.segments),
              r.first || "-",
              r.last || "-",
              String(r.history),
              formatBytes(r.storedBytes),
            ]),
          ),
    );
  } finally {
    await repo.close();
  }
}

export async function walPruneCmd(ctx: Context, argv: string[]): Promise<void> {
  const usage = "iotvault wal-prune --repo R [--system-id S] [--dry-run]";
  const p = parse(
    argv,
    { repo: { type: "string" }, "system-id": { type: "string" }, "dry-run": { type: "boolean" } },
    usage,
  );
  const repository = required(str(p, "repo"), "--repo", usage);
  const dryRun = flag(p, "dry-run");
  const { listWalSystems, walPrune } = await wal();
  const repo = await openArchive(ctx, repository, false);
  try {
    const given = str(p, "system-id");
    const systems = given ? [given] : await listWalSystems(repo);
    const results: unknown[] = [];
    const lines: string[] = [];
    for (const systemId of systems) {
      try {
        const r = await walPrune(repo, { systemId, dryRun });
        results.push({ systemId, ...r });
        lines.push(
          `${systemId}: ${dryRun ? "would remove" : "removed"} ${r.removed.length} file(s), ${formatBytes(r.bytesFreed)}; kept ${r.kept} from ${r.keepFromSegment} (start of the oldest physical backup, ${r.keepFromLsn})`,
        );
      } catch (err) {
        if (!given && isCode(err, "FAILED_PRECONDITION")) {
          results.push({ systemId, skipped: toIotvaultError(err).message });
          lines.push(`${systemId}: skipped, ${toIotvaultError(err).message}`);
          continue;
        }
        throw err;
      }
    }
    ctx.print(results, () => (lines.length ? lines.join("\n") : `no WAL archived in ${repository}`));
  } finally {
    await repo.close();
  }
}

// ---------------------------------------------------------------------------------------------- drill

export async function drillCmd(ctx: Context, argv: string[]): Promise<void> {
  const usage =
    "iotvault drill <job> [--snapshot ID] [--keep] [--option KEY=VALUE]... | drill <job> --schedule CRON|off";
  const p = parse(
    argv,
    {
      snapshot: { type: "string" },
      keep: { type: "boolean" },
      option: { type: "string", multiple: true },
      schedule: { type: "string" },
    },
    usage,
  );
  const jobName = required(p.positionals[0], "job", usage);
  const job = (await callUnary(ctx.scheduler, "getJob", { job: jobName })).job!;
  const schedule = str(p, "schedule");
  if (schedule !== undefined) {
    const drillSchedule = schedule === "off" ? "" : schedule;
    const res = await callUnary(ctx.scheduler, "updateJob", { job: { ...job, drillSchedule } });
    ctx.print(Job.toJSON(res.job!), () =>
      drillSchedule
        ? `job ${job.name}: drills scheduled at "${drillSchedule}" (${res.job!.timeZone || "UTC"})`
        : `job ${job.name}: no scheduled drill`,
    );
    return;
  }
  const bar = new ProgressBar();
  let result: DrillResult | undefined;
  try {
    const stream = callServerStream(ctx.restore, "drill", {
      repository: job.repository,
      jobId: job.id,
      jobName: job.name,
      snapshotId: str(p, "snapshot") ?? "",
      requestedBy: `cli:${ctx.env["USER"] ?? "unknown"}`,
      keep: flag(p, "keep"),
      options: Object.fromEntries(list(p, "option").map(splitOption)),
    });
    for await (const msg of stream) {
      if (msg.message?.$case === "progress") {
        const pr = msg.message.value;
        bar.update({ done: Number(pr.bytesDone), total: Number(pr.bytesTotal), label: "drill", detail: pr.current });
      } else if (msg.message?.$case === "result") result = msg.message.value;
    }
  } finally {
    bar.done();
  }
  if (!result) throw new IotvaultError("INTERNAL", "the restore service ended the drill without a result");
  const r = result;
  ctx.print(DrillResult.toJSON(r), () =>
    [
      `drill ${r.drillId}: ${r.ok ? "OK" : "FAILED"} — ${r.kind || "?"} snapshot ${r.snapshotId.slice(0, 12)} of job ${r.jobName} in ${formatDuration(r.durationMs)}`,
      ...r.checks.map((c) => `  ${c.ok ? "ok  " : "FAIL"} ${c.name}: ${c.detail}`),
      ...(r.error ? [`error: ${r.error.message}${r.error.hint ? `\nhint: ${r.error.hint}` : ""}`] : []),
      ...(r.scratch ? [`scratch: ${r.scratch}`] : []),
    ].join("\n"),
  );
  if (!r.ok) process.exitCode = 1;
}

/**
 * Retention and repository maintenance, run by the CLI against a repository through the
 * storage-gateway (like restic, the client holds the repository secret): forget, prune, hold,
 * locks, and `catalog rebuild`. Each change is published as an event so that the catalog and
 * other services learn of it.
 */
import { hostname } from "node:os";
import { IotvaultError } from "@iotvault/errors";
import {
  BackupStats,
  PruneCompleted,
  SUBJECTS,
  SnapshotHold,
  SnapshotsForgotten,
  backupTypeFromJSON,
  type RebuildRepositoryRequest,
} from "@iotvault/proto";
import { Repository, policyFromJobRetention, type SnapshotManifest } from "@iotvault/repo";
import { GatewayObjectStore, callClientStream, callUnary } from "@iotvault/rpc/client";
import { readRepositorySecret, repositoryOptionsOf } from "@iotvault/config";
import { flag, parse, required, str } from "./args.js";
import type { Context } from "./context.js";
import { ProgressBar, formatBytes, formatTime, table } from "./output.js";
import { RETENTION_OPTIONS, describeRetention, retentionOf } from "./commands.js";

async function openRepository(ctx: Context, name: string): Promise<Repository> {
  const store = new GatewayObjectStore(ctx.gateway, name, { address: ctx.config.addressOf("storage-gateway") });
  return Repository.open(store, readRepositorySecret(ctx.env, ctx.config.repository), {
    ...repositoryOptionsOf(ctx.config),
    workers: 1,
  });
}

export async function forget(ctx: Context, argv: string[]): Promise<void> {
  const usage =
    "iotvault forget --job J [--keep-last N] [--keep-hourly N] [--keep-daily N] [--keep-weekly N] [--keep-monthly N] [--keep-yearly N] [--retention-days N] [--tz ZONE] [--dry-run]";
  const p = parse(
    argv,
    { job: { type: "string" }, tz: { type: "string" }, "dry-run": { type: "boolean" }, ...RETENTION_OPTIONS },
    usage,
  );
  const jobName = required(str(p, "job"), "--job", usage);
  const job = (await callUnary(ctx.scheduler, "getJob", { job: jobName })).job!;
  const given = Object.keys(RETENTION_OPTIONS).some((k) => p.values[k] !== undefined);
  const retention = given ? retentionOf(p) : job.retention;
  const policy = policyFromJobRetention(retention, str(p, "tz") ?? job.timeZone);
  if (!retention || !policy) {
    throw new IotvaultError("INVALID_ARGUMENT", `job ${job.name} has no retention policy and none was given`, {
      hint: "give --keep-* / --retention-days flags, or set them on the job (`iotvault job update`)",
    });
  }
  const dryRun = flag(p, "dry-run");
  const repo = await openRepository(ctx, job.repository);
  try {
    const result = await repo.forget({
      policy,
      jobId: job.id,
      dryRun,
      lockWaitMs: 60_000,
    });
    if (!dryRun && result.removed.length > 0) {
      const bus = await ctx.bus();
      await bus.publish(
        SUBJECTS.snapshotForgotten,
        SnapshotsForgotten,
        {
          repository: job.repository,
          jobId: job.id,
          snapshotIds: result.removed,
          policy: describeRetention(retention),
          at: new Date(),
          traceId: "",
        },
        { msgId: `forget:${job.repository}:${result.removed.join(",").slice(0, 200)}` },
      );
    }
    const rows = result.decisions.map((d) => [
      d.snapshot.id.slice(0, 12),
      formatTime(new Date(d.snapshot.time)),
      d.keep ? "keep" : dryRun ? "would remove" : "removed",
      d.reasons.join("; "),
    ]);
    ctx.print(
      {
        dryRun,
        policy: describeRetention(retention),
        kept: result.decisions.filter((d) => d.keep).map((d) => d.snapshot.id),
        removed: dryRun ? result.decisions.filter((d) => !d.keep).map((d) => d.snapshot.id) : result.removed,
      },
      () =>
        `${table(["SNAPSHOT", "TIME", "DECISION", "WHY"], rows)}\n\npolicy: ${describeRetention(retention)}; ${result.decisions.filter((d) => !d.keep).length} snapshot(s) ${dryRun ? "would be" : ""} removed${dryRun ? "" : "; run `iotvault prune` to free their data"}`,
    );
  } finally {
    await repo.close();
  }
}

export async function prune(ctx: Context, argv: string[]): Promise<void> {
  const usage = "iotvault prune --repo R [--dry-run] [--wait SECONDS] [--repack-threshold 0..1]";
  const p = parse(
    argv,
    {
      repo: { type: "string" },
      "dry-run": { type: "boolean" },
      wait: { type: "string" },
      "repack-threshold": { type: "string" },
    },
    usage,
  );
  const repository = required(str(p, "repo"), "--repo", usage);
  const waitS = Number(str(p, "wait") ?? "0");
  const threshold = str(p, "repack-threshold") === undefined ? undefined : Number(str(p, "repack-threshold"));
  if (!(waitS >= 0) || (threshold !== undefined && !(threshold >= 0 && threshold <= 1))) {
    throw new IotvaultError("INVALID_ARGUMENT", "--wait must be >= 0 seconds and --repack-threshold within 0..1");
  }
  const repo = await openRepository(ctx, repository);
  const bar = new ProgressBar();
  const startedAt = new Date();
  try {
    const r = await repo.prune({
      dryRun: flag(p, "dry-run"),
      lockWaitMs: waitS * 1000,
      ...(threshold !== undefined ? { repackThreshold: threshold } : {}),
      onProgress: (pr) => bar.update({ done: pr.done, total: pr.total, label: `prune ${pr.phase}`, unit: "items" }),
    });
    bar.done();
    if (!r.dryRun) {
      const bus = await ctx.bus();
      const b = (n: number) => BigInt(n);
      await bus.publish(
        SUBJECTS.pruneCompleted,
        PruneCompleted,
        {
          repository,
          snapshots: b(r.snapshots),
          packsDeleted: b(r.packsDeleted),
          packsRepacked: b(r.packsRepacked),
          orphanPacksDeleted: b(r.orphanPacksDeleted),
          bytesFreed: b(Math.max(0, r.bytesFreed)),
          bytesRepacked: b(r.bytesRepacked),
          startedAt,
          finishedAt: new Date(),
          traceId: "",
        },
        { msgId: `prune:${repository}:${startedAt.toISOString()}` },
      );
    }
    ctx.print(r, () =>
      [
        `${r.dryRun ? "dry run: would free" : "freed"} ${formatBytes(Math.max(0, r.bytesFreed))} in ${repository}`,
        `${r.snapshots} snapshots kept; packs: ${r.packsBefore} before, ${r.packsDeleted} deleted, ${r.packsRepacked} repacked into ${r.packsWritten}, ${r.orphanPacksDeleted} orphans deleted`,
        `index files: ${r.indexFilesBefore} -> ${r.indexFilesAfter}`,
      ].join("\n"),
    );
  } finally {
    bar.done();
    await repo.close();
  }
}

export async function hold(ctx: Context, argv: string[]): Promise<void> {
  const usage =
    "iotvault hold <snapshot> --reason TEXT [--repo R] | hold --release <snapshot> [--repo R] | hold --list --repo R";
  const p = parse(
    argv,
    { reason: { type: "string" }, repo: { type: "string" }, release: { type: "boolean" }, list: { type: "boolean" } },
    usage,
  );
  if (flag(p, "list")) {
    const repo = await openRepository(ctx, required(str(p, "repo"), "--repo", usage));
    try {
      const holds = await repo.listHolds();
      ctx.print(holds, () =>
        table(
          ["SNAPSHOT", "SINCE", "BY", "REASON"],
          holds.map((h) => [
            h.snapshotId.slice(0, 12),
            h.createdAt.slice(0, 19).replace("T", " "),
            h.createdBy ?? "",
            h.reason,
          ]),
        ),
      );
    } finally {
      await repo.close();
    }
    return;
  }
  const given = required(p.positionals[0], "snapshot", usage);
  let repository = str(p, "repo");
  let snapshotId = given;
  if (!repository) {
    const s = (await callUnary(ctx.catalog, "getSnapshot", { snapshotId: given })).snapshot!;
    repository = s.repository;
    snapshotId = s.snapshotId;
  }
  const repo = await openRepository(ctx, repository);
  try {
    const by = `${process.env["USER"] ?? "unknown"}@${hostname()}`;
    let held: boolean;
    let reason = "";
    if (flag(p, "release")) {
      snapshotId = (await repo.loadSnapshot(snapshotId)).id;
      if (!(await repo.releaseHold(snapshotId)))
        throw new IotvaultError("NOT_FOUND", `snapshot ${snapshotId.slice(0, 12)} has no hold`);
      held = false;
    } else {
      reason = required(str(p, "reason"), "--reason", usage);
      const h = await repo.hold(snapshotId, reason, by);
      snapshotId = h.snapshotId;
      held = true;
    }
    const bus = await ctx.bus();
    await bus.publish(
      held ? SUBJECTS.snapshotHeld : SUBJECTS.snapshotReleased,
      SnapshotHold,
      { repository, snapshotId, reason, held, by, at: new Date() },
      { msgId: `hold:${snapshotId}:${held}:${Date.now()}` },
    );
    ctx.print({ snapshotId, held, reason }, () =>
      held
        ? `snapshot ${snapshotId.slice(0, 12)} is held (${reason}): no retention policy will forget it`
        : `hold on ${snapshotId.slice(0, 12)} released`,
    );
  } finally {
    await repo.close();
  }
}

export async function locks(ctx: Context, argv: string[]): Promise<void> {
  const usage = "iotvault locks --repo R";
  const p = parse(argv, { repo: { type: "string" } }, usage);
  const repo = await openRepository(ctx, required(str(p, "repo"), "--repo", usage));
  try {
    const all = await repo.listLocks();
    ctx.print(all, () =>
      all.length === 0
        ? "no locks"
        : table(
            ["LOCK", "KIND", "PURPOSE", "HOST", "PID", "REFRESHED", "STALE"],
            all.map((l) => [
              l.id.slice(0, 12),
              l.exclusive ? "exclusive" : "shared",
              l.purpose,
              l.hostname,
              String(l.pid),
              l.refreshedAt.slice(0, 19).replace("T", " "),
              l.stale ? "yes" : "",
            ]),
          ),
    );
  } finally {
    await repo.close();
  }
}

/** `iotvault catalog rebuild --repo R`: the catalog's snapshot rows from the repository alone. */
export async function catalog(ctx: Context, argv: string[]): Promise<void> {
  const usage = "iotvault catalog rebuild --repo R";
  const p = parse(argv, { repo: { type: "string" } }, usage);
  if (p.positionals[0] !== "rebuild")
    throw new IotvaultError("INVALID_ARGUMENT", "unknown catalog command", { hint: `usage: ${usage}` });
  const repository = required(str(p, "repo"), "--repo", usage);
  const repo = await openRepository(ctx, repository);
  let manifests: SnapshotManifest[];
  let holds: Map<string, string>;
  try {
    manifests = await repo.listSnapshots();
    holds = new Map((await repo.listHolds()).map((h) => [h.snapshotId, h.reason]));
  } finally {
    await repo.close();
  }
  function* requests(): Generator<RebuildRepositoryRequest> {
    yield { part: { $case: "repository", value: repository } };
    for (const m of manifests) {
      const b = (n: number) => BigInt(Math.max(0, Math.round(n)));
      const warnings = typeof m.metadata["warnings"] === "number" ? m.metadata["warnings"] : 0;
      yield {
        part: {
          $case: "snapshot",
          value: {
            snapshotId: m.id,
            repository,
            jobId: m.jobId,
            jobName: m.jobName,
            runId: m.runId,
            backupType: backupTypeFromJSON(`BACKUP_TYPE_${m.backupType.toUpperCase()}`),
            source: m.source,
            parentSnapshotId: m.parent ?? "",
            hostname: m.hostname,
            time: new Date(m.time),
            stats: BackupStats.fromPartial({
              filesNew: b(m.stats.filesNew),
              filesChanged: b(m.stats.filesChanged),
              filesUnchanged: b(m.stats.filesUnchanged),
              dirs: b(m.stats.dirs),
              symlinks: b(m.stats.symlinks),
              totalBytes: b(m.stats.totalBytes),
              bytesRead: b(m.stats.bytesRead),
              bytesNew: b(m.stats.bytesNew),
              bytesStored: b(m.stats.bytesStored),
              chunksTotal: b(m.stats.chunksTotal),
              chunksNew: b(m.stats.chunksNew),
              packsWritten: b(m.stats.packsWritten),
              durationMs: b(m.stats.durationMs),
              warnings: b(warnings),
            }),
            held: holds.has(m.id),
            holdReason: holds.get(m.id) ?? "",
            ...groupFields(m),
          },
        },
      };
    }
  }
  const r = await callClientStream(ctx.catalog, "rebuildRepository", requests());
  ctx.print(
    {
      repository,
      seen: Number(r.snapshotsSeen),
      added: Number(r.snapshotsAdded),
      forgotten: Number(r.snapshotsForgotten),
    },
    () =>
      `catalog rebuilt for ${repository}: ${Number(r.snapshotsSeen)} snapshots in the repository, ${Number(r.snapshotsAdded)} added to the catalog, ${Number(r.snapshotsForgotten)} no longer in the repository`,
  );
}

/** A snapshot's consistency group, as its manifest records it (see the executor). */
function groupFields(m: SnapshotManifest): { groupId: string; groupRestoreOptions: Record<string, string> } {
  const group = m.metadata["group"] as
    { id?: string; members?: { snapshotId: string; restoreOptions?: Record<string, string> }[] } | undefined;
  const me = group?.members?.find((x) => x.snapshotId === m.id);
  return { groupId: group?.id ?? "", groupRestoreOptions: me?.restoreOptions ?? {} };
}

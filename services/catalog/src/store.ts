/**
 * The catalog's PostgreSQL store: applies events idempotently and answers queries.
 */
import { readFileSync } from "node:fs";
import { IotvaultError, redactUrl } from "@iotvault/errors";
import {
  type BackupCompleted,
  type BackupFailed,
  type BackupProgress,
  type BackupStarted,
  type BackupCancelled,
  BackupStats,
  ErrorInfo,
  Job as JobCodec,
  type JobCreated,
  type JobDeleted,
  type JobUpdated,
  PruneCompleted,
  RestoreCompleted,
  type RestoreFailed,
  type RestoreStarted,
  type SnapshotHold,
  type SnapshotsForgotten,
  VerifyCompleted,
  type VerifyFailed,
  DrillCheck,
  type DrillCompleted,
  type WalArchived,
  backupTypeToJSON,
  backupTypeFromJSON,
  runStatusFromJSON,
  runStatusToJSON,
  triggerKindFromJSON,
  triggerKindToJSON,
  type Run,
  type RunStatus,
  type Snapshot,
} from "@iotvault/proto";
import pg from "pg";
import { migrate } from "./migrations.js";

export interface EventMeta {
  /** Nats-Msg-Id of the event, or a stream-sequence based id when it has none. */
  eventId: string;
  subject: string;
  streamSequence: number;
}

export class CatalogStore {
  private constructor(readonly pool: pg.Pool) {}

  /**
   * Connects, creating the database when it does not exist, and applies migrations. The
   * password, when needed, comes from `passwordFile` (read at each new connection).
   */
  static async open(url: string, options: { passwordFile?: string | undefined } = {}): Promise<CatalogStore> {
    const password = passwordReader(options.passwordFile);
    await ensureDatabase(url, password);
    const pool = new pg.Pool({ ...connectionConfig(url, password), max: 5 });
    pool.on("error", () => undefined); // idle client errors surface on the next query instead
    const client = await connectOrExplain(pool, url);
    try {
      await migrate(client);
    } finally {
      client.release();
    }
    return new CatalogStore(pool);
  }

  async close(): Promise<void> {
    await this.pool.end();
  }

  /**
   * Applies one event in one transaction. Returns false when the event had been applied
   * before (a redelivery) and nothing changed, or when its type is not one the catalog keeps.
   */
  async applyEvent(type: string, payload: unknown, meta: EventMeta): Promise<boolean> {
    const apply = APPLIERS[type];
    if (!apply) return false;
    const client = await this.pool.connect().catch((err: unknown) => {
      throw classifyDatabaseError(err);
    });
    try {
      await client.query("BEGIN");
      const fresh = await client.query(
        "INSERT INTO processed_events (event_id, subject, stream_seq) VALUES ($1, $2, $3) ON CONFLICT DO NOTHING",
        [meta.eventId, meta.subject, meta.streamSequence],
      );
      if (fresh.rowCount === 0) {
        await client.query("ROLLBACK");
        return false;
      }
      await apply(client, payload);
      await client.query("COMMIT");
      return true;
    } catch (err) {
      await client.query("ROLLBACK").catch(() => undefined);
      throw classifyDatabaseError(err);
    } finally {
      client.release();
    }
  }

  /** Forgets processed event ids older than the events stream keeps (they cannot come back). */
  async pruneProcessedEvents(olderThanDays: number): Promise<number> {
    const r = await this.pool.query(
      "DELETE FROM processed_events WHERE processed_at < now() - make_interval(days => $1)",
      [olderThanDays],
    );
    return r.rowCount ?? 0;
  }

  async listRuns(filter: { job?: string; status?: RunStatus; limit?: number }): Promise<Run[]> {
    const where: string[] = [];
    const args: unknown[] = [];
    if (filter.job) {
      args.push(filter.job);
      where.push(`(job_id = $${args.length} OR job_name = $${args.length})`);
    }
    if (filter.status) {
      args.push(runStatusToJSON(filter.status));
      where.push(`status = $${args.length}`);
    }
    args.push(Math.min(filter.limit || 100, 10_000));
    const { rows } = await this.pool.query<RunRow>(
      `SELECT * FROM runs ${where.length ? "WHERE " + where.join(" AND ") : ""}
       ORDER BY COALESCE(started_at, scheduled_at) DESC NULLS LAST, run_id DESC LIMIT $${args.length}`,
      args,
    );
    return rows.map(toRun);
  }

  async getRun(runId: string): Promise<Run> {
    const { rows } = await this.pool.query<RunRow>("SELECT * FROM runs WHERE run_id = $1", [runId]);
    const row = rows[0];
    if (!row) {
      throw new IotvaultError("NOT_FOUND", `run ${runId} is not in the catalog`, {
        hint: "a run appears when an executor starts it; check `iotvault runs`",
      });
    }
    return toRun(row);
  }

  async listSnapshots(filter: {
    job?: string;
    repository?: string;
    limit?: number;
    groupId?: string;
  }): Promise<Snapshot[]> {
    const where: string[] = ["forgotten_at IS NULL"];
    const args: unknown[] = [];
    if (filter.job) {
      args.push(filter.job);
      where.push(`(job_id = $${args.length} OR job_name = $${args.length})`);
    }
    if (filter.repository) {
      args.push(filter.repository);
      where.push(`repository = $${args.length}`);
    }
    if (filter.groupId) {
      args.push(filter.groupId);
      where.push(`group_id = $${args.length}`);
    }
    args.push(Math.min(filter.limit || 100, 10_000));
    const { rows } = await this.pool.query<SnapshotRow>(
      `SELECT * FROM snapshots ${where.length ? "WHERE " + where.join(" AND ") : ""}
       ORDER BY time DESC, snapshot_id LIMIT $${args.length}`,
      args,
    );
    return rows.map(toSnapshot);
  }

  /**
   * Makes the catalog's snapshots of a repository match the repository (catalog rebuild):
   * adds the snapshots it lacks, marks as forgotten those the repository no longer holds.
   */
  async rebuildRepository(
    repository: string,
    snapshots: AsyncIterable<Snapshot>,
  ): Promise<{ seen: number; added: number; forgotten: number }> {
    const client = await this.pool.connect().catch((err: unknown) => {
      throw classifyDatabaseError(err);
    });
    try {
      await client.query("BEGIN");
      await client.query("CREATE TEMP TABLE rebuild_seen (snapshot_id text PRIMARY KEY) ON COMMIT DROP");
      let seen = 0;
      let added = 0;
      for await (const s of snapshots) {
        if (s.repository !== repository) {
          throw new IotvaultError(
            "INVALID_ARGUMENT",
            `snapshot ${s.snapshotId} names repository ${s.repository}, not ${repository}`,
          );
        }
        seen++;
        await client.query("INSERT INTO rebuild_seen VALUES ($1) ON CONFLICT DO NOTHING", [s.snapshotId]);
        const stats = json(s.stats ? BackupStats.toJSON(s.stats) : undefined);
        const r = await client.query<{ inserted: boolean }>(
          `INSERT INTO snapshots (snapshot_id, repository, job_id, job_name, run_id, backup_type, source,
                                  parent_snapshot_id, hostname, time, stats, held, hold_reason)
           VALUES ($1,$2,$3,$4,$5,$6,$7,$8,$9,$10,$11,$12,$13)
           ON CONFLICT (snapshot_id) DO UPDATE SET forgotten_at = NULL, held = EXCLUDED.held, hold_reason = EXCLUDED.hold_reason
           RETURNING (xmax = 0) AS inserted`,
          [
            s.snapshotId,
            repository,
            s.jobId,
            s.jobName,
            s.runId || null,
            backupTypeToJSON(s.backupType),
            s.source,
            s.parentSnapshotId || null,
            s.hostname,
            s.time ?? new Date(0),
            stats,
            s.held,
            s.holdReason,
          ],
        );
        if (s.groupId) {
          await client.query("UPDATE snapshots SET group_id = $2, group_restore_options = $3 WHERE snapshot_id = $1", [
            s.snapshotId,
            s.groupId,
            json(s.groupRestoreOptions),
          ]);
        }
        if (r.rows[0]?.inserted) {
          added++;
          if (s.runId) {
            // The run that made it, as far as the repository knows it.
            await client.query(
              `INSERT INTO runs (run_id, job_id, job_name, status, backup_type, repository, source, snapshot_id, stats,
                                 started_at, finished_at, attempts)
               VALUES ($1,$2,$3,'RUN_STATUS_SUCCEEDED',$4,$5,$6,$7,$8,$9,$9,1) ON CONFLICT (run_id) DO NOTHING`,
              [
                s.runId,
                s.jobId,
                s.jobName,
                backupTypeToJSON(s.backupType),
                repository,
                s.source,
                s.snapshotId,
                stats,
                s.time ?? null,
              ],
            );
          }
        }
      }
      const gone = await client.query(
        `UPDATE snapshots SET forgotten_at = now()
         WHERE repository = $1 AND forgotten_at IS NULL AND snapshot_id NOT IN (SELECT snapshot_id FROM rebuild_seen)`,
        [repository],
      );
      await client.query("COMMIT");
      return { seen, added, forgotten: gone.rowCount ?? 0 };
    } catch (err) {
      await client.query("ROLLBACK").catch(() => undefined);
      throw classifyDatabaseError(err);
    } finally {
      client.release();
    }
  }

  async getSnapshot(idOrPrefix: string): Promise<Snapshot> {
    if (!/^[0-9a-f]{6,64}$/.test(idOrPrefix)) {
      throw new IotvaultError("INVALID_ARGUMENT", `"${idOrPrefix}" is not a snapshot id`, {
        hint: "give a snapshot id or a unique prefix of at least 6 hex characters",
      });
    }
    const { rows } = await this.pool.query<SnapshotRow>(
      "SELECT * FROM snapshots WHERE snapshot_id LIKE $1 ORDER BY snapshot_id LIMIT 2",
      [idOrPrefix + "%"],
    );
    if (rows.length === 0) throw new IotvaultError("NOT_FOUND", `snapshot ${idOrPrefix} is not in the catalog`);
    if (rows.length > 1) {
      throw new IotvaultError("INVALID_ARGUMENT", `snapshot prefix ${idOrPrefix} is ambiguous`, {
        hint: "give more characters of the id",
      });
    }
    return toSnapshot(rows[0]!);
  }
}

type Applier = (client: pg.ClientBase, payload: unknown) => Promise<void>;

const json = (v: unknown) => (v === undefined ? null : JSON.stringify(v));

const APPLIERS: Record<string, Applier> = {
  "iotvault.v1.JobCreated": async (c, p) => upsertJob(c, (p as JobCreated).job),
  "iotvault.v1.JobUpdated": async (c, p) => upsertJob(c, (p as JobUpdated).job),
  "iotvault.v1.JobDeleted": async (c, p) => {
    const e = p as JobDeleted;
    await c.query("UPDATE jobs SET deleted = true, updated_at = $2 WHERE job_id = $1", [e.jobId, e.deletedAt ?? null]);
  },
  "iotvault.v1.BackupStarted": async (c, p) => {
    const e = p as BackupStarted;
    await c.query(
      `INSERT INTO runs (run_id, job_id, job_name, status, backup_type, trigger, repository, source, site,
                         trace_id, executor, attempts, scheduled_at, started_at)
       VALUES ($1,$2,$3,'RUN_STATUS_RUNNING',$4,$5,$6,$7,$8,$9,$10,$11,$12,$13)
       ON CONFLICT (run_id) DO UPDATE SET
         status = CASE WHEN runs.status IN ('RUN_STATUS_SUCCEEDED','RUN_STATUS_FAILED','RUN_STATUS_CANCELLED')
                       THEN runs.status ELSE 'RUN_STATUS_RUNNING' END,
         executor = EXCLUDED.executor,
         attempts = GREATEST(runs.attempts, EXCLUDED.attempts),
         trace_id = COALESCE(runs.trace_id, EXCLUDED.trace_id),
         started_at = COALESCE(runs.started_at, EXCLUDED.started_at),
         updated_at = now()`,
      [
        e.runId,
        e.jobId,
        e.jobName,
        backupTypeToJSON(e.backupType),
        triggerKindToJSON(e.trigger),
        e.repository,
        e.source,
        e.site,
        e.traceId || null,
        e.executor,
        e.attempt,
        e.scheduledAt ?? null,
        e.startedAt ?? null,
      ],
    );
  },
  "iotvault.v1.BackupProgress": async (c, p) => {
    const e = p as BackupProgress;
    await c.query(
      `UPDATE runs SET bytes_done = GREATEST(bytes_done, $2), files_done = GREATEST(files_done, $3), updated_at = now()
       WHERE run_id = $1 AND status = 'RUN_STATUS_RUNNING'`,
      [e.runId, e.bytesDone.toString(), e.filesDone.toString()],
    );
  },
  "iotvault.v1.BackupCompleted": async (c, p) => {
    const e = p as BackupCompleted;
    const stats = json(e.stats ? BackupStats.toJSON(e.stats) : undefined);
    await c.query(
      `INSERT INTO runs (run_id, job_id, job_name, status, backup_type, repository, source, site, snapshot_id,
                         stats, trace_id, executor, started_at, finished_at, attempts, degraded, missing_targets)
       VALUES ($1,$2,$3,'RUN_STATUS_SUCCEEDED',$4,$5,$6,$7,$8,$9,$10,$11,$12,$13,1,$16,$17)
       ON CONFLICT (run_id) DO UPDATE SET status = 'RUN_STATUS_SUCCEEDED', snapshot_id = EXCLUDED.snapshot_id,
         stats = EXCLUDED.stats, error = NULL, finished_at = EXCLUDED.finished_at, executor = EXCLUDED.executor,
         trace_id = COALESCE(runs.trace_id, EXCLUDED.trace_id), updated_at = now(),
         bytes_done = GREATEST(runs.bytes_done, $14), files_done = GREATEST(runs.files_done, $15),
         degraded = $16, missing_targets = $17`,
      [
        e.runId,
        e.jobId,
        e.jobName,
        backupTypeToJSON(e.backupType),
        e.repository,
        e.source,
        e.site,
        e.snapshotId,
        stats,
        e.traceId || null,
        e.executor,
        e.startedAt ?? null,
        e.finishedAt ?? null,
        (e.stats?.totalBytes ?? 0n).toString(),
        ((e.stats?.filesNew ?? 0n) + (e.stats?.filesChanged ?? 0n) + (e.stats?.filesUnchanged ?? 0n)).toString(),
        e.degraded,
        e.missingTargets,
      ],
    );
    await c.query(
      `INSERT INTO snapshots (snapshot_id, repository, job_id, job_name, run_id, backup_type, source,
                              parent_snapshot_id, hostname, time, stats)
       VALUES ($1,$2,$3,$4,$5,$6,$7,$8,$9,$10,$11)
       ON CONFLICT (snapshot_id) DO NOTHING`,
      [
        e.snapshotId,
        e.repository,
        e.jobId,
        e.jobName,
        e.runId,
        backupTypeToJSON(e.backupType),
        e.source,
        e.parentSnapshotId || null,
        e.hostname,
        e.snapshotTime ?? e.finishedAt ?? new Date(),
        stats,
      ],
    );
    // A consistency group: one snapshot per member, all with the run id as group id.
    for (const m of e.groupMembers) {
      await c.query(
        `INSERT INTO snapshots (snapshot_id, repository, job_id, job_name, run_id, backup_type, source,
                                hostname, time, group_id, group_restore_options)
         VALUES ($1,$2,$3,$4,$5,$6,$7,$8,$9,$10,$11)
         ON CONFLICT (snapshot_id) DO UPDATE SET group_id = EXCLUDED.group_id,
           group_restore_options = EXCLUDED.group_restore_options`,
        [
          m.snapshotId,
          e.repository,
          e.jobId,
          e.jobName,
          e.runId,
          backupTypeToJSON(e.backupType),
          m.source,
          e.hostname,
          e.snapshotTime ?? e.finishedAt ?? new Date(),
          e.runId,
          json(m.restoreOptions),
        ],
      );
    }
  },
  "iotvault.v1.BackupFailed": async (c, p) => {
    const e = p as BackupFailed;
    // A failure that will be retried keeps the run RUNNING (the next attempt may succeed); a final
    // one fails it. Events of an older attempt never change what a newer attempt decided, and a
    // terminal status is never undone (events may arrive out of order after redeliveries).
    await c.query(
      `INSERT INTO runs (run_id, job_id, job_name, status, error, trace_id, attempts, finished_at)
       VALUES ($1,$2,$3,$4,$5,$6,$7,$8)
       ON CONFLICT (run_id) DO UPDATE SET
         status = CASE
           WHEN runs.status IN ('RUN_STATUS_SUCCEEDED','RUN_STATUS_FAILED','RUN_STATUS_CANCELLED') THEN runs.status
           WHEN EXCLUDED.attempts < runs.attempts THEN runs.status
           ELSE EXCLUDED.status END,
         error = CASE
           WHEN runs.status = 'RUN_STATUS_SUCCEEDED' THEN runs.error
           WHEN runs.status = 'RUN_STATUS_FAILED' AND EXCLUDED.status <> 'RUN_STATUS_FAILED' THEN runs.error
           WHEN EXCLUDED.attempts < runs.attempts THEN runs.error
           ELSE EXCLUDED.error END,
         attempts = GREATEST(runs.attempts, EXCLUDED.attempts),
         finished_at = CASE
           WHEN runs.status IN ('RUN_STATUS_SUCCEEDED','RUN_STATUS_FAILED','RUN_STATUS_CANCELLED') THEN runs.finished_at
           WHEN EXCLUDED.status = 'RUN_STATUS_FAILED' THEN EXCLUDED.finished_at
           ELSE runs.finished_at END,
         updated_at = now()`,
      [
        e.runId,
        e.jobId,
        e.jobName,
        e.willRetry ? "RUN_STATUS_RUNNING" : "RUN_STATUS_FAILED",
        json(e.error ? ErrorInfo.toJSON(e.error) : undefined),
        e.traceId || null,
        e.attempt,
        e.willRetry ? null : (e.at ?? new Date()),
      ],
    );
  },
  "iotvault.v1.BackupCancelled": async (c, p) => {
    const e = p as BackupCancelled;
    await c.query(
      `UPDATE runs SET status = 'RUN_STATUS_CANCELLED', finished_at = $2, updated_at = now(),
         error = $3 WHERE run_id = $1 AND status NOT IN ('RUN_STATUS_SUCCEEDED','RUN_STATUS_FAILED')`,
      [e.runId, e.at ?? new Date(), json({ code: "CANCELLED", message: e.reason })],
    );
  },
  "iotvault.v1.SnapshotsForgotten": async (c, p) => {
    const e = p as SnapshotsForgotten;
    await c.query(
      "UPDATE snapshots SET forgotten_at = COALESCE(forgotten_at, $3) WHERE repository = $1 AND snapshot_id = ANY($2::text[])",
      [e.repository, e.snapshotIds, e.at ?? new Date()],
    );
  },
  "iotvault.v1.SnapshotHold": async (c, p) => {
    const e = p as SnapshotHold;
    await c.query("UPDATE snapshots SET held = $3, hold_reason = $4 WHERE repository = $1 AND snapshot_id = $2", [
      e.repository,
      e.snapshotId,
      e.held,
      e.held ? e.reason : "",
    ]);
  },
  "iotvault.v1.PruneCompleted": async (c, p) => {
    const e = p as PruneCompleted;
    await c.query(
      "INSERT INTO prunes (repository, result, trace_id, started_at, finished_at) VALUES ($1,$2,$3,$4,$5)",
      [e.repository, json(PruneCompleted.toJSON(e)), e.traceId || null, e.startedAt ?? null, e.finishedAt ?? null],
    );
  },
  "iotvault.v1.RestoreStarted": async (c, p) => {
    const e = p as RestoreStarted;
    await c.query(
      `INSERT INTO restores (restore_id, repository, snapshot_id, target, status, trace_id, started_at)
       VALUES ($1,$2,$3,$4,'RUNNING',$5,$6) ON CONFLICT (restore_id) DO NOTHING`,
      [e.restoreId, e.repository, e.snapshotId, e.target, e.traceId || null, e.startedAt ?? null],
    );
  },
  "iotvault.v1.RestoreCompleted": async (c, p) => {
    const e = p as RestoreCompleted;
    await c.query(
      `INSERT INTO restores (restore_id, repository, snapshot_id, target, status, result, trace_id, started_at, finished_at)
       VALUES ($1,$2,$3,$4,'SUCCEEDED',$5,$6,$7,$8)
       ON CONFLICT (restore_id) DO UPDATE SET status = 'SUCCEEDED', result = EXCLUDED.result,
         finished_at = EXCLUDED.finished_at`,
      [
        e.restoreId,
        e.repository,
        e.snapshotId,
        e.target,
        json(RestoreCompleted.toJSON(e)),
        e.traceId || null,
        e.startedAt ?? null,
        e.finishedAt ?? null,
      ],
    );
  },
  "iotvault.v1.RestoreFailed": async (c, p) => {
    const e = p as RestoreFailed;
    await c.query(
      `INSERT INTO restores (restore_id, repository, snapshot_id, target, status, error, trace_id, finished_at)
       VALUES ($1,$2,$3,$4,'FAILED',$5,$6,$7)
       ON CONFLICT (restore_id) DO UPDATE SET status = 'FAILED', error = EXCLUDED.error, finished_at = EXCLUDED.finished_at`,
      [
        e.restoreId,
        e.repository,
        e.snapshotId,
        e.target,
        json(e.error ? ErrorInfo.toJSON(e.error) : undefined),
        e.traceId || null,
        e.at ?? null,
      ],
    );
  },
  "iotvault.v1.VerifyCompleted": async (c, p) => {
    const e = p as VerifyCompleted;
    await c.query(
      `INSERT INTO verifications (verify_id, repository, snapshot_id, ok, read_data, read_percent, problems,
                                  trace_id, started_at, finished_at)
       VALUES ($1,$2,$3,$4,$5,$6,$7,$8,$9,$10) ON CONFLICT (verify_id) DO NOTHING`,
      [
        e.verifyId,
        e.repository,
        e.snapshotId,
        e.ok,
        e.readData,
        e.readDataPercent,
        json(VerifyCompleted.toJSON(e)),
        e.traceId || null,
        e.startedAt ?? null,
        e.finishedAt ?? null,
      ],
    );
  },
  "iotvault.v1.DrillCompleted": async (c, p) => {
    const e = p as DrillCompleted;
    await c.query(
      `INSERT INTO drills (drill_id, repository, job_id, job_name, snapshot_id, kind, ok, checks, error, requested_by,
                           duration_ms, trace_id, started_at, finished_at)
       VALUES ($1,$2,$3,$4,$5,$6,$7,$8,$9,$10,$11,$12,$13,$14) ON CONFLICT (drill_id) DO NOTHING`,
      [
        e.drillId,
        e.repository,
        e.jobId,
        e.jobName,
        e.snapshotId,
        e.kind,
        e.ok,
        json(e.checks.map((x) => DrillCheck.toJSON(x))),
        json(e.error ? ErrorInfo.toJSON(e.error) : undefined),
        e.requestedBy,
        e.durationMs.toString(),
        e.traceId || null,
        e.startedAt ?? null,
        e.finishedAt ?? null,
      ],
    );
  },
  "iotvault.v1.WalArchived": async (c, p) => {
    const e = p as WalArchived;
    await c.query(
      `INSERT INTO wal_segments (repository, system_id, timeline, segment, size, archived_at)
       VALUES ($1,$2,$3,$4,$5,$6) ON CONFLICT (repository, system_id, segment) DO NOTHING`,
      [e.repository, e.systemId, e.timeline, e.segment, e.size.toString(), e.archivedAt ?? null],
    );
  },
  "iotvault.v1.VerifyFailed": async (c, p) => {
    const e = p as VerifyFailed;
    await c.query(
      `INSERT INTO verifications (verify_id, repository, snapshot_id, ok, error, trace_id, finished_at)
       VALUES ($1,$2,$3,NULL,$4,$5,$6) ON CONFLICT (verify_id) DO NOTHING`,
      [
        e.verifyId,
        e.repository,
        e.snapshotId,
        json(e.error ? ErrorInfo.toJSON(e.error) : undefined),
        e.traceId || null,
        e.at ?? null,
      ],
    );
  },
};

async function upsertJob(c: pg.ClientBase, job: JobCodec | undefined): Promise<void> {
  if (!job?.id) throw new IotvaultError("INVALID_ARGUMENT", "job event without a job id");
  await c.query(
    `INSERT INTO jobs (job_id, name, definition, created_at, updated_at) VALUES ($1,$2,$3,$4,$5)
     ON CONFLICT (job_id) DO UPDATE SET name = EXCLUDED.name, definition = EXCLUDED.definition,
       updated_at = EXCLUDED.updated_at, deleted = false
     WHERE jobs.updated_at IS NULL OR EXCLUDED.updated_at IS NULL OR EXCLUDED.updated_at >= jobs.updated_at`,
    [job.id, job.name, json(JobCodec.toJSON(job)), job.createdAt ?? null, job.updatedAt ?? null],
  );
}

interface RunRow {
  run_id: string;
  job_id: string;
  job_name: string;
  status: string;
  backup_type: string;
  trigger: string;
  repository: string;
  source: string;
  snapshot_id: string | null;
  stats: unknown;
  error: unknown;
  trace_id: string | null;
  executor: string | null;
  attempts: number;
  scheduled_at: Date | null;
  started_at: Date | null;
  finished_at: Date | null;
  bytes_done: string;
  files_done: string;
  degraded: boolean;
}

interface SnapshotRow {
  group_id: string | null;
  group_restore_options: Record<string, string> | null;
  held: boolean;
  hold_reason: string;
  snapshot_id: string;
  repository: string;
  job_id: string;
  job_name: string;
  run_id: string | null;
  backup_type: string;
  source: string;
  parent_snapshot_id: string | null;
  hostname: string;
  time: Date;
  stats: unknown;
}

function toRun(r: RunRow): Run {
  return {
    runId: r.run_id,
    jobId: r.job_id,
    jobName: r.job_name,
    status: runStatusFromJSON(r.status),
    backupType: backupTypeFromJSON(r.backup_type),
    trigger: triggerKindFromJSON(r.trigger),
    repository: r.repository,
    source: r.source,
    snapshotId: r.snapshot_id ?? "",
    stats: r.stats ? BackupStats.fromJSON(r.stats) : undefined,
    error: r.error ? ErrorInfo.fromJSON(r.error) : undefined,
    traceId: r.trace_id ?? "",
    executor: r.executor ?? "",
    attempts: r.attempts,
    scheduledAt: r.scheduled_at ?? undefined,
    startedAt: r.started_at ?? undefined,
    finishedAt: r.finished_at ?? undefined,
    bytesDone: BigInt(r.bytes_done),
    filesDone: BigInt(r.files_done),
    degraded: r.degraded,
  };
}

function toSnapshot(r: SnapshotRow): Snapshot {
  return {
    snapshotId: r.snapshot_id,
    repository: r.repository,
    jobId: r.job_id,
    jobName: r.job_name,
    runId: r.run_id ?? "",
    backupType: backupTypeFromJSON(r.backup_type),
    source: r.source,
    parentSnapshotId: r.parent_snapshot_id ?? "",
    hostname: r.hostname,
    time: r.time,
    stats: r.stats ? BackupStats.fromJSON(r.stats) : undefined,
    held: r.held,
    holdReason: r.hold_reason,
    groupId: r.group_id ?? "",
    groupRestoreOptions: r.group_restore_options ?? {},
  };
}

async function connectOrExplain(pool: pg.Pool, url: string): Promise<pg.PoolClient> {
  try {
    return await pool.connect();
  } catch (err) {
    throw new IotvaultError(
      "UNAVAILABLE",
      `cannot reach the catalog database at ${redactUrl(url, { unparsable: "<invalid url>" })}: ${(err as Error).message}`,
      {
        hint: "start PostgreSQL (`iotvault stack up` starts one when none runs) or set IOTVAULT_DATABASE_URL",
        cause: err,
      },
    );
  }
}

/**
 * Client settings from a postgres:// URL. A password in the URL wins; else the reader's (a
 * connection string would hide a password given as a function, so the URL is taken apart here).
 */
function connectionConfig(url: string, password: (() => string) | undefined): pg.ClientConfig {
  const u = new URL(url);
  const socketHost = u.searchParams.get("host");
  return {
    host: socketHost ?? (u.hostname.replace(/^\[|\]$/g, "") || "127.0.0.1"),
    port: u.port ? Number(u.port) : 5432,
    user: decodeURIComponent(u.username) || undefined,
    database: decodeURIComponent(u.pathname.replace(/^\//, "")) || undefined,
    ...(u.password ? { password: decodeURIComponent(u.password) } : password ? { password } : {}),
    ...(u.searchParams.get("sslmode") === "require" ? { ssl: { rejectUnauthorized: false } } : {}),
  };
}

function passwordReader(file: string | undefined): (() => string) | undefined {
  if (!file) return undefined;
  return () => {
    try {
      return readFileSync(file, "utf8").replace(/\r?\n$/, "");
    } catch (err) {
      throw new IotvaultError(
        "FAILED_PRECONDITION",
        `cannot read the database password file ${file}: ${(err as Error).message}`,
        {
          hint: "check database.passwordFile / IOTVAULT_DATABASE_PASSWORD_FILE",
        },
      );
    }
  };
}

/** Creates the database named in the URL when it does not exist (needs CREATEDB). */
async function ensureDatabase(url: string, password: (() => string) | undefined): Promise<void> {
  const u = new URL(url);
  const name = decodeURIComponent(u.pathname.replace(/^\//, ""));
  if (!name) throw new IotvaultError("CONFIG_INVALID", "database.url names no database");
  const admin = new URL(url);
  admin.pathname = "/postgres";
  const client = new pg.Client(connectionConfig(admin.toString(), password));
  try {
    await client.connect();
  } catch {
    return; // no access to the maintenance database: assume the target exists; connect reports otherwise
  }
  try {
    const { rowCount } = await client.query("SELECT 1 FROM pg_database WHERE datname = $1", [name]);
    if (!rowCount) {
      await client.query(`CREATE DATABASE ${pg.escapeIdentifier(name)}`).catch((err: { code?: string }) => {
        if (err.code !== "42P04") throw err; // created concurrently
      });
    }
  } finally {
    await client.end();
  }
}

/** SQLSTATE classes and codes after which the same statement may succeed later. */
const TRANSIENT_SQLSTATE = /^(08|53|57P0[1-3]|40001|40P01|55P03)/;

/**
 * Classifies a database error once: connection loss, shutdown, overload, serialization and
 * deadlock failures are UNAVAILABLE (retryable: the event is delivered again); the rest keep
 * their meaning (a constraint violation will not go away by retrying).
 */
export function classifyDatabaseError(err: unknown): IotvaultError {
  if (err instanceof IotvaultError) return err;
  const e = err as { code?: unknown; message?: unknown } | null;
  const code = typeof e?.code === "string" ? e.code : "";
  const message = typeof e?.message === "string" ? e.message : String(err);
  if (
    TRANSIENT_SQLSTATE.test(code) ||
    ["ECONNREFUSED", "ECONNRESET", "ETIMEDOUT", "EPIPE", "EHOSTUNREACH"].includes(code) ||
    /connection terminated|terminating connection|timeout exceeded when trying to connect|Connection ended/i.test(
      message,
    )
  ) {
    return new IotvaultError("UNAVAILABLE", `catalog database unavailable: ${message}`, {
      cause: err,
      hint: "the event is retried; check that PostgreSQL is up",
    });
  }
  return new IotvaultError("INTERNAL", `catalog database error${code ? ` ${code}` : ""}: ${message}`, { cause: err });
}

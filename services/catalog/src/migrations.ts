/**
 * Versioned schema migrations of the catalog. Each migration runs once, in order, inside a
 * transaction, under an advisory lock (several catalog replicas may start at once). Never edit
 * a released migration: add a new one.
 */
import type pg from "pg";

export interface Migration {
  version: number;
  name: string;
  sql: string;
}

export const MIGRATIONS: readonly Migration[] = [
  {
    version: 1,
    name: "jobs, runs, snapshots, restores, verifications, processed events",
    sql: `
      CREATE TABLE jobs (
        job_id      text PRIMARY KEY,
        name        text NOT NULL,
        definition  jsonb NOT NULL,
        deleted     boolean NOT NULL DEFAULT false,
        created_at  timestamptz,
        updated_at  timestamptz
      );
      CREATE INDEX jobs_name_idx ON jobs (name);

      CREATE TABLE runs (
        run_id        text PRIMARY KEY,
        job_id        text NOT NULL,
        job_name      text NOT NULL DEFAULT '',
        status        text NOT NULL,
        backup_type   text NOT NULL DEFAULT 'BACKUP_TYPE_UNSPECIFIED',
        trigger       text NOT NULL DEFAULT 'TRIGGER_KIND_UNSPECIFIED',
        repository    text NOT NULL DEFAULT '',
        source        text NOT NULL DEFAULT '',
        site          text NOT NULL DEFAULT '',
        snapshot_id   text,
        stats         jsonb,
        error         jsonb,
        trace_id      text,
        executor      text,
        attempts      integer NOT NULL DEFAULT 0,
        scheduled_at  timestamptz,
        started_at    timestamptz,
        finished_at   timestamptz,
        bytes_done    bigint NOT NULL DEFAULT 0,
        files_done    bigint NOT NULL DEFAULT 0,
        updated_at    timestamptz NOT NULL DEFAULT now()
      );
      CREATE INDEX runs_job_idx ON runs (job_id, started_at DESC);
      CREATE INDEX runs_started_idx ON runs (started_at DESC);

      CREATE TABLE snapshots (
        snapshot_id         text PRIMARY KEY,
        repository          text NOT NULL,
        job_id              text NOT NULL DEFAULT '',
        job_name            text NOT NULL DEFAULT '',
        run_id              text,
        backup_type         text NOT NULL DEFAULT 'BACKUP_TYPE_UNSPECIFIED',
        source              text NOT NULL DEFAULT '',
        parent_snapshot_id  text,
        hostname            text NOT NULL DEFAULT '',
        time                timestamptz NOT NULL,
        stats               jsonb,
        recorded_at         timestamptz NOT NULL DEFAULT now()
      );
      CREATE INDEX snapshots_job_idx ON snapshots (job_id, time DESC);
      CREATE INDEX snapshots_repo_idx ON snapshots (repository, time DESC);

      CREATE TABLE restores (
        restore_id   text PRIMARY KEY,
        repository   text NOT NULL DEFAULT '',
        snapshot_id  text NOT NULL DEFAULT '',
        target       text NOT NULL DEFAULT '',
        status       text NOT NULL,
        result       jsonb,
        error        jsonb,
        trace_id     text,
        started_at   timestamptz,
        finished_at  timestamptz
      );

      CREATE TABLE verifications (
        verify_id     text PRIMARY KEY,
        repository    text NOT NULL DEFAULT '',
        snapshot_id   text NOT NULL DEFAULT '',
        ok            boolean,
        read_data     boolean NOT NULL DEFAULT false,
        read_percent  double precision,
        problems      jsonb,
        error         jsonb,
        trace_id      text,
        started_at    timestamptz,
        finished_at   timestamptz
      );

      -- Idempotency: an event (by its Nats-Msg-Id) changes the catalog at most once.
      CREATE TABLE processed_events (
        event_id      text PRIMARY KEY,
        subject       text NOT NULL,
        stream_seq    bigint,
        processed_at  timestamptz NOT NULL DEFAULT now()
      );
    `,
  },
  {
    version: 2,
    name: "retention: forgotten and held snapshots, prunes",
    sql: `
      ALTER TABLE snapshots ADD COLUMN forgotten_at timestamptz;
      ALTER TABLE snapshots ADD COLUMN held boolean NOT NULL DEFAULT false;
      ALTER TABLE snapshots ADD COLUMN hold_reason text NOT NULL DEFAULT '';
      CREATE INDEX snapshots_live_idx ON snapshots (repository, time DESC) WHERE forgotten_at IS NULL;

      CREATE TABLE prunes (
        prune_id       bigserial PRIMARY KEY,
        repository     text NOT NULL,
        result         jsonb NOT NULL,
        trace_id       text,
        started_at     timestamptz,
        finished_at    timestamptz
      );
    `,
  },
  {
    version: 3,
    name: "degraded runs (a target of the repository was down)",
    sql: `
      ALTER TABLE runs ADD COLUMN degraded boolean NOT NULL DEFAULT false;
      ALTER TABLE runs ADD COLUMN missing_targets text[] NOT NULL DEFAULT '{}';
    `,
  },
  {
    version: 4,
    name: "restore drills and archived PostgreSQL WAL segments",
    sql: `
      CREATE TABLE drills (
        drill_id      text PRIMARY KEY,
        repository    text NOT NULL DEFAULT '',
        job_id        text NOT NULL DEFAULT '',
        job_name      text NOT NULL DEFAULT '',
        snapshot_id   text NOT NULL DEFAULT '',
        kind          text NOT NULL DEFAULT '',
        ok            boolean NOT NULL,
        checks        jsonb,
        error         jsonb,
        requested_by  text NOT NULL DEFAULT '',
        duration_ms   bigint NOT NULL DEFAULT 0,
        trace_id      text,
        started_at    timestamptz,
        finished_at   timestamptz
      );
      CREATE INDEX drills_job_idx ON drills (job_id, finished_at DESC);

      CREATE TABLE wal_segments (
        repository    text NOT NULL,
        system_id     text NOT NULL,
        timeline      integer NOT NULL,
        segment       text NOT NULL,
        size          bigint NOT NULL DEFAULT 0,
        archived_at   timestamptz,
        PRIMARY KEY (repository, system_id, segment)
      );
      CREATE INDEX wal_segments_archived_idx ON wal_segments (repository, system_id, archived_at DESC);
    `,
  },
  {
    version: 5,
    name: "consistency groups: the members of a run",
    sql: `
      ALTER TABLE snapshots ADD COLUMN group_id text;
      ALTER TABLE snapshots ADD COLUMN group_restore_options jsonb NOT NULL DEFAULT '{}';
      CREATE INDEX snapshots_group_idx ON snapshots (group_id) WHERE group_id IS NOT NULL;
    `,
  },
];

const LOCK_KEY = 0x10700a17; // advisory lock id for catalog migrations

/** Applies the migrations not applied yet; returns the versions it applied. */
export async function migrate(client: pg.ClientBase): Promise<number[]> {
  await client.query("SELECT pg_advisory_lock($1)", [LOCK_KEY]);
  try {
    await client.query(`CREATE TABLE IF NOT EXISTS schema_migrations (
      version integer PRIMARY KEY, name text NOT NULL, applied_at timestamptz NOT NULL DEFAULT now())`);
    const done = new Set(
      (await client.query<{ version: number }>("SELECT version FROM schema_migrations")).rows.map((r) => r.version),
    );
    const applied: number[] = [];
    for (const m of MIGRATIONS) {
      if (done.has(m.version)) continue;
      await client.query("BEGIN");
      try {
        await client.query(m.sql);
        await client.query("INSERT INTO schema_migrations (version, name) VALUES ($1, $2)", [m.version, m.name]);
        await client.query("COMMIT");
      } catch (err) {
        await client.query("ROLLBACK");
        throw err;
      }
      applied.push(m.version);
    }
    return applied;
  } finally {
    await client.query("SELECT pg_advisory_unlock($1)", [LOCK_KEY]);
  }
}

/**
 * Logical PostgreSQL backups against a real PostgreSQL server (a cluster made with initdb on a
 * free port): a consistent parallel dump into the repository, whole and table-level restores
 * into new databases with row counts and checksums verified, a verification that catches
 * different data, a cancelled backup, and drills.
 */
import assert from "node:assert/strict";
import { after, before, describe, it } from "node:test";
import { isCode } from "@iotvault/errors";
import type { SnapshotManifest } from "@iotvault/repo";
import { drillPostgres } from "./drill.js";
import { backupLogical } from "./logical-backup.js";
import { restoreLogical } from "./logical-restore.js";
import { pgMetadataOf } from "./metadata.js";
import { commitBackup, startPgSandbox, type PgSandbox } from "./test-support.js";
import { parsePostgresUrl } from "./url.js";

const SCHEMA = `
CREATE TYPE kind AS ENUM ('temperature', 'humidity', 'co2');
CREATE TABLE sensors (id serial PRIMARY KEY, name text NOT NULL UNIQUE, kind kind NOT NULL, meta jsonb, added timestamptz NOT NULL);
CREATE TABLE readings (id bigserial PRIMARY KEY, sensor_id int NOT NULL REFERENCES sensors(id), at timestamptz NOT NULL,
                       value double precision, raw bytea, note text);
CREATE INDEX readings_at_idx ON readings (at);
CREATE SCHEMA audit;
CREATE TABLE audit.events (id int GENERATED ALWAYS AS IDENTITY PRIMARY KEY, what text, amount numeric(12,3), during interval);
CREATE VIEW latest AS SELECT sensor_id, max(at) AS at FROM readings GROUP BY sensor_id;
COMMENT ON TABLE readings IS 'one row per measurement';
INSERT INTO sensors (name, kind, meta, added)
  SELECT 'sensor-' || i, (ARRAY['temperature','humidity','co2'])[1 + i % 3]::kind,
         jsonb_build_object('floor', i % 4, 'label', 'Ünïcødé ' || i), '2026-01-01 00:00:00+00'::timestamptz + i * interval '1 hour'
  FROM generate_series(1, 50) i;
INSERT INTO readings (sensor_id, at, value, raw, note)
  SELECT 1 + i % 50, '2026-02-01 00:00:00+00'::timestamptz + i * interval '1 second', i * 0.1 + 1e-9,
         decode(md5(i::text), 'hex'), CASE WHEN i % 7 = 0 THEN NULL ELSE 'n' || i END
  FROM generate_series(1, 30000) i;
INSERT INTO audit.events (what, amount, during) SELECT 'e' || i, i * 1.5, i * interval '1 minute' FROM generate_series(1, 200) i;
`;

async function tableRows(s: PgSandbox, db: string, table: string): Promise<string> {
  const rows = await s.sql<{ t: string }>(db, `SELECT string_agg(x::text, '|' ORDER BY x::text) AS t FROM ${table} x`);
  return rows[0]!.t;
}

async function logicalBackup(s: PgSandbox, runId: string, query = ""): Promise<SnapshotManifest> {
  const url = s.url("app", query);
  const { snapshot } = await commitBackup(s.repo, runId, url, "full", undefined, (writer) =>
    backupLogical(writer, { source: parsePostgresUrl(url) }),
  );
  return snapshot;
}

describe("logical PostgreSQL backups (real server)", { timeout: 120_000 }, () => {
  let s: PgSandbox;
  let snapshot: SnapshotManifest;

  before(async () => {
    s = await startPgSandbox();
    await s.sql("postgres", "CREATE DATABASE app");
    await s.sql("app", SCHEMA);
    snapshot = await logicalBackup(s, "logical-1");
  });

  after(async () => {
    await s?.cleanup();
  });

  it("records per-table row counts and checksums taken in the dump's snapshot", () => {
    const meta = pgMetadataOf(snapshot);
    assert.equal(meta.mode, "logical");
    assert.equal(meta.database, "app");
    assert.match(meta.systemIdentifier, /^\d+$/);
    const byName = new Map((meta.tables ?? []).map((t) => [`${t.schema}.${t.name}`, t]));
    assert.deepEqual([...byName.keys()].sort(), ["audit.events", "public.readings", "public.sensors"]);
    assert.equal(byName.get("public.readings")!.rows, 30000);
    assert.equal(byName.get("public.sensors")!.rows, 50);
    assert.match(byName.get("public.readings")!.checksum!, /^-?\d+$/);
    assert.deepEqual(byName.get("public.readings")!.indexes, ["readings_at_idx", "readings_pkey"]);
    assert.deepEqual(byName.get("public.readings")!.foreignKeys, [
      { name: "readings_sensor_id_fkey", refSchema: "public", refTable: "sensors" },
    ]);
    assert.deepEqual(byName.get("audit.events")!.sequences, ["events_id_seq"]);
  });

  it("restores the whole database into a new one, identical, with every table verified", async () => {
    const r = await restoreLogical(s.repo, snapshot, pgMetadataOf(snapshot), {
      target: s.url("copy1"),
      options: { create_database: "true" },
      verify: true,
    });
    assert.equal(r.verified, true);
    const verification = r.details["verification"] as { table: string; ok: boolean }[];
    assert.equal(verification.length, 3);
    assert.ok(verification.every((v) => v.ok));
    for (const t of ["sensors", "readings", "audit.events"]) {
      assert.equal(await tableRows(s, "copy1", t), await tableRows(s, "app", t), t);
    }
    // schema objects: the view, the comment, the sequence positions, the enum
    const [view] = await s.sql<{ n: string }>("copy1", "SELECT count(*)::text AS n FROM latest");
    assert.equal(view!.n, "50");
    const [seq] = await s.sql<{ v: string }>("copy1", "SELECT nextval('readings_id_seq')::text AS v");
    assert.equal(seq!.v, "30001");
    const [comment] = await s.sql<{ c: string }>("copy1", "SELECT obj_description('readings'::regclass) AS c");
    assert.equal(comment!.c, "one row per measurement");
  });

  it("restores chosen tables only, leaving out a foreign key to a table not restored", async () => {
    const r = await restoreLogical(s.repo, snapshot, pgMetadataOf(snapshot), {
      target: s.url("copy2"),
      options: { create_database: "true", tables: "public.readings,audit.events" },
      verify: true,
    });
    assert.equal(r.verified, true);
    const tables = await s.sql<{ t: string }>(
      "copy2",
      "SELECT table_schema || '.' || table_name AS t FROM information_schema.tables WHERE table_schema IN ('public','audit') AND table_type = 'BASE TABLE' ORDER BY 1",
    );
    assert.deepEqual(
      tables.map((t) => t.t),
      ["audit.events", "public.readings"],
    );
    assert.equal(await tableRows(s, "copy2", "readings"), await tableRows(s, "app", "readings"));
    const indexes = await s.sql<{ i: string }>(
      "copy2",
      "SELECT indexname AS i FROM pg_indexes WHERE tablename = 'readings' ORDER BY 1",
    );
    assert.deepEqual(
      indexes.map((i) => i.i),
      ["readings_at_idx", "readings_pkey"],
    );
    assert.deepEqual(r.details["skippedForeignKeys"], [
      "public.readings: readings_sensor_id_fkey (references public.sensors, not restored)",
    ]);
  });

  it("refuses a table that is not in the backup, an existing database and a missing one", async () => {
    await assert.rejects(
      restoreLogical(s.repo, snapshot, pgMetadataOf(snapshot), {
        target: s.url("copy3"),
        options: { tables: "public.nope" },
        verify: true,
      }),
      (err: unknown) => isCode(err, "NOT_FOUND") && /public\.nope/.test((err as Error).message),
    );
    await assert.rejects(
      restoreLogical(s.repo, snapshot, pgMetadataOf(snapshot), {
        target: s.url("app"),
        options: { create_database: "true" },
        verify: true,
      }),
      (err: unknown) => isCode(err, "ALREADY_EXISTS"),
    );
    await assert.rejects(
      restoreLogical(s.repo, snapshot, pgMetadataOf(snapshot), { target: s.url("nowhere"), options: {}, verify: true }),
      (err: unknown) => isCode(err, "NOT_FOUND") && /create_database=true/.test((err as { hint?: string }).hint ?? ""),
    );
  });

  it("verification fails when the restored rows differ from what the backup recorded", async () => {
    const meta = pgMetadataOf(snapshot);
    const tampered = structuredClone(meta);
    const readings = tampered.tables!.find((t) => t.name === "readings")!;
    readings.checksum = "12345";
    await assert.rejects(
      restoreLogical(s.repo, snapshot, tampered, {
        target: s.url("copy4"),
        options: { create_database: "true" },
        verify: true,
      }),
      (err: unknown) => isCode(err, "DATA_CORRUPT") && /public\.readings/.test((err as Error).message),
    );
  });

  it("dumps the data of the tables the include/exclude globs choose", async () => {
    const url = s.url("app");
    const { snapshot: only } = await commitBackup(s.repo, "logical-globs", url, "full", undefined, (writer) =>
      backupLogical(writer, { source: parsePostgresUrl(url), exclude: ["audit.*"] }),
    );
    const tables = pgMetadataOf(only).tables!.map((t) => `${t.schema}.${t.name}`);
    assert.deepEqual(tables, ["public.readings", "public.sensors"]);
  });

  it("a cancelled backup leaves no session behind and the earlier snapshot restores", async () => {
    const url = s.url("app", "jobs=1");
    const controller = new AbortController();
    const writer = await s.repo.startBackup({ runId: "logical-cancelled" });
    await assert.rejects(
      backupLogical(writer, {
        source: parsePostgresUrl(url),
        signal: controller.signal,
        onProgress: () => controller.abort(),
      }),
      (err: unknown) => isCode(err, "CANCELLED"),
    );
    await writer.abort();
    // The dumps and checksum sessions are stopped, not left to run to their end.
    const deadline = Date.now() + 5000;
    let left = "";
    do {
      const sessions = await s.sql<{ n: string }>(
        "postgres",
        "SELECT count(*)::text AS n FROM pg_stat_activity WHERE application_name LIKE 'iotvault%' OR application_name = 'pg_dump'",
      );
      left = sessions[0]!.n;
    } while (left !== "0" && Date.now() < deadline && (await new Promise((r) => setTimeout(r, 50))) === undefined);
    assert.equal(left, "0", "sessions of the cancelled backup are still there after 5 s");
    const r = await restoreLogical(s.repo, snapshot, pgMetadataOf(snapshot), {
      target: s.url("copy5"),
      options: { create_database: "true", tables: "public.sensors" },
      verify: true,
    });
    assert.equal(r.verified, true);
  });

  it("a drill restores into a scratch cluster and checks every table; a wrong record fails it", async () => {
    const good = await drillPostgres(s.repo, snapshot);
    assert.equal(good.kind, "postgres-logical");
    assert.equal(good.ok, true, JSON.stringify(good.checks, null, 2));
    assert.deepEqual(
      good.checks.map((c) => c.name),
      ["restore", "answers app", "rows app"],
    );
    assert.match(good.checks[2]!.detail, /3 of 3 tables/);
    const tampered = structuredClone(snapshot);
    const meta = tampered.metadata["postgres"] as { tables: { name: string; rows: number }[] };
    meta.tables.find((t) => t.name === "sensors")!.rows = 49;
    const bad = await drillPostgres(s.repo, tampered);
    assert.equal(bad.ok, false);
    assert.ok(
      bad.checks.some(
        (c) => !c.ok && /public\.sensors/.test(c.name) && /50 rows, the backup recorded 49/.test(c.detail),
      ),
    );
  });
});

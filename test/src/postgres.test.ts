/**
 * PostgreSQL end to end, through the five services as real processes and the real CLI, against
 * a PostgreSQL 15 cluster made with initdb on a free port whose archive_command is
 * `iotvault wal-push` (through the storage-gateway):
 *
 * - WAL archiving: segments stored and announced (wal.archived, catalog wal_segments), pushing
 *   the same segment again is fine, different content under its name is refused, wal-fetch
 *   exits 1 without a word for a segment that is not archived;
 * - logical job: backup, restore of the whole database and of one table into new databases,
 *   verified against the row counts and checksums recorded at backup time;
 * - physical job: point-in-time restore through the restore service (recover=true), then the
 *   test starts the restored server and checks the exact rows; a missing WAL segment named;
 * - an executor killed during a physical backup: the earlier backup still restores;
 * - drills (now and scheduled): verdict, DrillCompleted event, catalog row;
 * - wal-prune keeps what the oldest physical backup needs.
 */
import assert from "node:assert/strict";
import { execFileSync } from "node:child_process";
import { randomBytes, randomInt } from "node:crypto";
import { chmod, copyFile, mkdir, readFile, readdir, rename, writeFile } from "node:fs/promises";
import { join } from "node:path";
import { after, before, describe, it } from "node:test";
import { connect, type NatsConnection, type Subscription } from "@nats-io/transport-node";
import pg from "pg";
import { LocalCluster, walKey } from "@iotvault/sources";
import { freePort, tempDir, waitFor, type TempDir } from "@iotvault/testing";
import { CLI, TestStack } from "./harness.js";

const IS_ROOT = process.getuid?.() === 0;

interface Event {
  subject: string;
  data: any;
}

/** Every iotvault event, as seen by a plain NATS subscriber. */
class Events {
  readonly seen: Event[] = [];
  private constructor(
    private readonly nc: NatsConnection,
    private readonly sub: Subscription,
  ) {
    void (async () => {
      for await (const m of sub) this.seen.push({ subject: m.subject, data: m.json() });
    })();
  }
  static async open(url: string): Promise<Events> {
    const nc = await connect({ servers: url });
    return new Events(nc, nc.subscribe("iotvault.events.>"));
  }
  wait(what: string, match: (e: Event) => boolean, timeoutMs = 30_000): Promise<Event> {
    return waitFor(() => this.seen.find(match), { what, timeoutMs, intervalMs: 50 });
  }
  async close(): Promise<void> {
    this.sub.unsubscribe();
    await this.nc.close();
  }
}

async function query<T extends pg.QueryResultRow = any>(
  url: string,
  sql: string,
  params: unknown[] = [],
): Promise<T[]> {
  const client = new pg.Client({ connectionString: url });
  await client.connect();
  try {
    return (await client.query<T>(sql, params)).rows;
  } finally {
    await client.end();
  }
}

describe("PostgreSQL end to end: WAL archive, logical and physical jobs, PITR, drills", { timeout: 600_000 }, () => {
  let stack: TestStack;
  let data: TempDir;
  let events: Events;
  let source: LocalCluster;
  let repoDir: string;
  let keyFile: string;
  let systemId: string;
  const clusters: LocalCluster[] = [];
  let srcUrl: (db: string) => string;
  let fullSnapshot = "";
  let pitrTime = "";

  before(async () => {
    data = await tempDir("iotvault-pg-e2e-");
    await chmod(data.path, 0o755);
    keyFile = join(data.path, "wal.key");
    repoDir = join(data.path, "repo");
    stack = await TestStack.start({
      extraEnv: { IOTVAULT_COMMAND: `${process.execPath} ${CLI}`, IOTVAULT_WAL_KEY_FILE: keyFile },
    });
    events = await Events.open(stack.nats.url);
    await stack.cliJson(["repo", "init", "main", "--url", `file://${repoDir}`]);
    // The key-file slot archive_command and restore_command open the repository with (no scrypt).
    await stack.cliJson(["key", "add", "--repo", "main", "--new-key-file", keyFile]);
    if (IS_ROOT) execFileSync("chown", ["postgres:postgres", keyFile]);
    const pgDir = join(data.path, "pg");
    await mkdir(pgDir, { mode: 0o755 });
    if (IS_ROOT) execFileSync("chown", ["postgres:postgres", pgDir]);
    source = await LocalCluster.init(join(pgDir, "data"), { runDir: join(pgDir, "run") });
    clusters.push(source);
    const env = [
      `IOTVAULT_STORAGE_GATEWAY_ADDRESS=${stack.address("storage-gateway")}`,
      `IOTVAULT_NATS_URL=${stack.nats.url}`,
      `IOTVAULT_KEY_FILE=${keyFile}`,
    ].join(" ");
    await writeFile(
      join(source.dataDir, "postgresql.auto.conf"),
      [
        "archive_mode = on",
        `archive_command = '${env} ${process.execPath} ${CLI} wal-push --repo main %p'`,
        "fsync = off",
        "autovacuum = off",
        "checkpoint_timeout = '30min'",
        "",
      ].join("\n"),
    );
    await source.start({ port: await freePort() });
    srcUrl = (db) => `postgres://postgres@127.0.0.1:${source.port}/${db}`;
    await query(srcUrl("postgres"), "CREATE DATABASE iot");
    await query(
      srcUrl("iot"),
      `CREATE TABLE sensors (id serial PRIMARY KEY, name text UNIQUE NOT NULL);
       CREATE TABLE readings (id bigserial PRIMARY KEY, sensor_id int REFERENCES sensors(id), at timestamptz, value float8);
       INSERT INTO sensors (name) SELECT 's' || i FROM generate_series(1, 20) i;
       INSERT INTO readings (sensor_id, at, value)
         SELECT 1 + i % 20, '2026-01-01'::timestamptz + i * interval '1 s', i / 7.0 FROM generate_series(1, 20000) i;
       CREATE TABLE events (id serial PRIMARY KEY, v text NOT NULL);
       INSERT INTO events (v) VALUES ('before-backup');`,
    );
    systemId = (await query(srcUrl("postgres"), "SELECT system_identifier::text AS s FROM pg_control_system()"))[0].s;
  });

  after(async () => {
    for (const c of clusters) await c.stop({ mode: "immediate" }).catch(() => undefined);
    await events?.close();
    await stack?.stop();
    await data?.cleanup();
  });

  it("archive_command stores each segment through the gateway, announces it and the catalog records it", async () => {
    const [{ name }] = await query(srcUrl("postgres"), "SELECT pg_walfile_name(pg_switch_wal()) AS name");
    const e = await events.wait(
      "wal.archived",
      (x) => x.subject === "iotvault.events.wal.archived" && x.data.segment === name,
    );
    assert.equal(e.data.systemId, systemId);
    assert.equal(e.data.repository, "main");
    assert.equal(e.data.timeline, 1);
    await waitFor(
      async () => (await query(stack.db.url, "SELECT 1 FROM wal_segments WHERE segment = $1", [name])).length === 1,
      {
        what: "the catalog's wal_segments row",
        timeoutMs: 20_000,
      },
    );
    const list = await stack.cliJson(["wal-list", "--repo", "main"]);
    assert.ok(list.some((r: any) => r.systemId === systemId && r.segments >= 1));
  });

  it("wal-push is idempotent, refuses different content, and wal-fetch fails quietly for a missing segment", async () => {
    const dir = join(data.path, "walcopy");
    await mkdir(dir);
    const [{ name }] = await query(srcUrl("postgres"), "SELECT pg_walfile_name(pg_current_wal_lsn()) AS name");
    await query(srcUrl("postgres"), "SELECT pg_switch_wal()");
    await events.wait(
      "the segment archived",
      (x) => x.subject === "iotvault.events.wal.archived" && x.data.segment === name,
    );
    const copy = join(dir, name);
    await copyFile(join(source.dataDir, "pg_wal", name), copy);
    const again = await stack.cli(["wal-push", "--repo", "main", "--system-id", systemId, copy]);
    assert.equal(again.code, 0, again.stderr);
    const original = await readFile(copy);
    const bytes = Buffer.from(original);
    bytes[bytes.length - 1] = bytes[bytes.length - 1]! ^ 0xff;
    await writeFile(copy, bytes);
    const different = await stack.cli(["wal-push", "--repo", "main", "--system-id", systemId, copy]);
    assert.equal(different.code, 1);
    assert.match(different.stderr, /already exists with different content/);
    // A segment is compressed at the configured repository.compressionLevel. The data: 400
    // random records repeated in random order (matches far apart, which higher zstd levels find),
    // with no WAL page header in front, archived under a system id of its own so that the
    // cluster's archive is left as it is.
    const records = Array.from({ length: 400 }, () => randomBytes(120).toString("base64"));
    const lines = Array.from({ length: 20_000 }, () => records[randomInt(records.length)]!);
    const text = Buffer.concat([Buffer.alloc(64), Buffer.from(lines.join("\n"))]);
    const stored: number[] = [];
    for (const [i, level] of [1, 12].entries()) {
      const conf = join(dir, `level-${level}.yaml`);
      await writeFile(conf, `repository:\n  compressionLevel: ${level}\n`);
      const segment = join(dir, `00000001000000000000000${i + 1}`);
      await writeFile(segment, text);
      const pushed = await stack.cliJson<{ storedBytes: number }>(
        ["wal-push", "--repo", "main", "--system-id", "4242", segment],
        { IOTVAULT_CONFIG: conf },
      );
      stored.push(pushed.storedBytes);
    }
    assert.ok(stored[1]! < stored[0]!, `level 12 stores less than level 1 (${stored.join(" / ")} bytes)`);
    const fetched = join(dir, "fetched");
    const ok = await stack.cli(["wal-fetch", "--repo", "main", "--system-id", systemId, name, fetched]);
    assert.equal(ok.code, 0, ok.stderr);
    assert.ok((await readFile(fetched)).equals(original), "the fetched segment is the archived one, byte for byte");
    const missing = await stack.cli([
      "wal-fetch",
      "--repo",
      "main",
      "--system-id",
      systemId,
      "0000000100000000000000FF",
      join(dir, "x"),
    ]);
    assert.deepEqual([missing.code, missing.stdout, missing.stderr], [1, "", ""]);
  });

  it("wal-fetch --prefetch fetches the next segments ahead; the next calls take them without the archive", async () => {
    const dir = join(data.path, "prefetch");
    await mkdir(join(dir, "pg_wal"), { recursive: true });
    const names: string[] = [];
    // Some WAL in each of three segments (in a table of its own: later tests count events' rows).
    await query(srcUrl("postgres"), "CREATE TABLE prefetch_probe (i int)");
    for (let i = 0; i < 3; i++) {
      await query(srcUrl("postgres"), `INSERT INTO prefetch_probe VALUES (${i})`);
      const [{ name }] = await query(srcUrl("postgres"), "SELECT pg_walfile_name(pg_switch_wal()) AS name");
      await events.wait(
        `segment ${name} archived`,
        (x) => x.subject === "iotvault.events.wal.archived" && x.data.segment === name,
      );
      names.push(name);
    }
    const original = (name: string) => readFile(join(source.dataDir, "pg_wal", name));
    const dest = join(dir, "pg_wal", "RECOVERYXLOG");
    const spool = join(dir, "pg_wal", ".iotvault-prefetch");
    const fetch = (name: string, env: NodeJS.ProcessEnv = {}) =>
      stack.cli(["wal-fetch", "--repo", "main", "--system-id", systemId, "--prefetch", "2", name, dest], env);

    const first = await fetch(names[0]!);
    assert.equal(first.code, 0, first.stderr);
    assert.ok((await readFile(dest)).equals(await original(names[0]!)));
    // The filler runs in the background: it fetches the two segments after the first.
    await waitFor(
      async () => (await readdir(spool).catch(() => [])).filter((n) => /^[0-9A-F]{24}$/.test(n)).length === 2,
      {
        what: "two segments in the spool",
        timeoutMs: 30_000,
      },
    );
    assert.deepEqual((await readdir(spool)).filter((n) => /^[0-9A-F]{24}$/.test(n)).sort(), names.slice(1).sort());
    // With the storage-gateway out of reach, the next two calls still succeed: from the spool.
    const unreachable = { IOTVAULT_STORAGE_GATEWAY_ADDRESS: `127.0.0.1:${await freePort()}` };
    for (const name of names.slice(1)) {
      const r = await fetch(name, unreachable);
      assert.deepEqual([r.code, r.stderr], [0, ""], `${name} from the spool`);
      assert.ok((await readFile(dest)).equals(await original(name)), `${name}, byte for byte`);
    }
    assert.deepEqual(
      (await readdir(spool)).filter((n) => /^[0-9A-F]{24}$/.test(n)),
      [],
    );
    // A segment the spool does not hold goes to the archive, which is out of reach: fatal (126).
    const after = await fetch(names[0]!, unreachable);
    assert.equal(after.code, 126, after.stderr);
    assert.equal(
      (await stack.cli(["wal-fetch", "--repo", "main", "--system-id", systemId, "--prefetch", "x", names[0]!, dest]))
        .code,
      126,
    );
  });

  it("logical job: backup, whole and single-table restores into new databases, verified", async () => {
    await stack.cliJson(["job", "create", "pglog", "--source", srcUrl("iot"), "--repo", "main", "--type", "full"]);
    const run = await stack.cliJson(["backup", "pglog", "--wait"]);
    assert.equal(run.status, "RUN_STATUS_SUCCEEDED", JSON.stringify(run));
    const whole = await stack.cliJson([
      "restore",
      run.snapshotId,
      "--to",
      srcUrl("iot_copy"),
      "--option",
      "create_database=true",
    ]);
    assert.equal(whole.verified, true);
    const details = JSON.parse(whole.details);
    assert.equal(details.tables, 3);
    assert.ok(details.verification.every((v: any) => v.ok));
    const count = async (db: string, t: string) =>
      (await query(srcUrl(db), `SELECT count(*)::int AS n FROM ${t}`))[0].n;
    assert.equal(await count("iot_copy", "readings"), 20000);
    const one = await stack.cliJson([
      "restore",
      run.snapshotId,
      "--to",
      srcUrl("iot_one"),
      "--option",
      "create_database=true",
      "--option",
      "tables=public.sensors",
    ]);
    assert.equal(one.verified, true);
    const tables = await query(
      srcUrl("iot_one"),
      "SELECT tablename FROM pg_tables WHERE schemaname = 'public' ORDER BY 1",
    );
    assert.deepEqual(
      tables.map((t) => t.tablename),
      ["sensors"],
    );
  });

  it("physical job: point-in-time restore through the restore service, exact rows on the restored server", async () => {
    const physical = `${srcUrl("postgres")}?mode=physical&pgdata=${encodeURIComponent(source.dataDir)}`;
    await stack.cliJson(["job", "create", "pgphys", "--source", physical, "--repo", "main", "--type", "full"]);
    const run = await stack.cliJson(["backup", "pgphys", "--wait"]);
    assert.equal(run.status, "RUN_STATUS_SUCCEEDED", JSON.stringify(run));
    fullSnapshot = run.snapshotId;
    await query(srcUrl("iot"), "INSERT INTO events (v) VALUES ('before-target')");
    pitrTime = (await query(srcUrl("iot"), "SELECT clock_timestamp()::text AS t"))[0].t;
    await query(srcUrl("iot"), "INSERT INTO events (v) VALUES ('after-target')");
    const [{ name }] = await query(srcUrl("postgres"), "SELECT pg_walfile_name(pg_switch_wal()) AS name");
    await events.wait(
      "the last segment archived",
      (x) => x.subject === "iotvault.events.wal.archived" && x.data.segment === name,
    );

    const target = join(data.path, "pitr");
    const restored = await stack.cliJson([
      "restore",
      fullSnapshot,
      "--to",
      target,
      "--option",
      `recovery_target_time=${pitrTime}`,
      "--option",
      "recover=true",
      "--option",
      "wal_prefetch=4",
    ]);
    const details = JSON.parse(restored.details);
    assert.equal(details.recovery.promoted, true);
    assert.match(details.restoreCommand, /wal-fetch --repo main --system-id \d+ --prefetch 4 %f %p/);
    assert.deepEqual(
      (await readdir(join(target, "pg_wal"))).filter((n) => n.includes("iotvault")),
      [],
      "the prefetch spool is removed once recovery is over",
    );
    const restoredCluster = LocalCluster.attach(target, { runDir: `${target}.run` });
    clusters.push(restoredCluster);
    await restoredCluster.start({ port: await freePort() });
    const rows = await query(restoredCluster.url("iot"), "SELECT v FROM events ORDER BY id");
    assert.deepEqual(
      rows.map((r) => r.v),
      ["before-backup", "before-target"],
    );
    await restoredCluster.stop();
  });

  it("a missing WAL segment is named by the restore", async () => {
    await query(srcUrl("iot"), "INSERT INTO events (v) VALUES ('x')");
    const [{ name }] = await query(srcUrl("postgres"), "SELECT pg_walfile_name(pg_switch_wal()) AS name");
    await events.wait(
      "the segment archived",
      (x) => x.subject === "iotvault.events.wal.archived" && x.data.segment === name,
    );
    await query(srcUrl("iot"), "INSERT INTO events (v) VALUES ('y')");
    const [{ name: last }] = await query(srcUrl("postgres"), "SELECT pg_walfile_name(pg_switch_wal()) AS name");
    await events.wait(
      "the next segment archived",
      (x) => x.subject === "iotvault.events.wal.archived" && x.data.segment === last,
    );
    const file = join(repoDir, walKey(systemId, name));
    await rename(file, `${file}.away`);
    try {
      // To the latest point, the restore refuses before writing anything (the library tests
      // also cover a time target, where recovery itself stops at the hole).
      const r = await stack.cli(["restore", fullSnapshot, "--to", join(data.path, "gap"), "--option", "recover=true"]);
      assert.equal(r.code, 1);
      assert.match(r.stderr, new RegExp(`WAL segment ${name} is missing from the archive`));
    } finally {
      await rename(`${file}.away`, file);
    }
  });

  it("drills: logical and physical verdicts, DrillCompleted events and catalog rows", async () => {
    const logical = await stack.cliJson(["drill", "pglog"]);
    assert.equal(logical.ok, true, JSON.stringify(logical, null, 2));
    assert.equal(logical.kind, "postgres-logical");
    const physical = await stack.cliJson(["drill", "pgphys"]);
    assert.equal(physical.ok, true, JSON.stringify(physical, null, 2));
    assert.equal(physical.kind, "postgres-physical");
    assert.ok(physical.checks.some((c: any) => c.name === "recovery" && c.ok));
    for (const d of [logical, physical]) {
      const e = await events.wait(
        "drill.completed",
        (x) => x.subject === "iotvault.events.drill.completed" && x.data.drillId === d.drillId,
      );
      assert.equal(e.data.ok, true);
    }
    const rows = await waitFor(
      async () => {
        const r = await query(stack.db.url, "SELECT drill_id, ok, kind FROM drills ORDER BY finished_at");
        return r.length >= 2 ? r : undefined;
      },
      { what: "two drills in the catalog", timeoutMs: 20_000 },
    );
    assert.deepEqual(
      rows.map((r) => [r.drill_id, r.ok, r.kind]),
      [
        [logical.drillId, true, "postgres-logical"],
        [physical.drillId, true, "postgres-physical"],
      ],
    );
  });

  it("a scheduled drill runs by itself", async () => {
    const job = await stack.cliJson(["drill", "pglog", "--schedule", "*/2 * * * * *"]);
    assert.equal(job.drillSchedule, "*/2 * * * * *");
    try {
      const e = await events.wait(
        "a scheduled drill",
        (x) => x.subject === "iotvault.events.drill.completed" && x.data.requestedBy === "scheduler",
        60_000,
      );
      assert.equal(e.data.ok, true, JSON.stringify(e.data));
    } finally {
      await stack.cliJson(["drill", "pglog", "--schedule", "off"]);
    }
  });

  it("an executor killed during a physical backup leaves the earlier backup restorable", async () => {
    await query(
      srcUrl("iot"),
      "CREATE TABLE bulk AS SELECT i, repeat(md5(i::text), 30) AS payload FROM generate_series(1, 150000) i",
    );
    await query(srcUrl("postgres"), "CHECKPOINT");
    const trigger = await stack.cliJson(["backup", "pgphys"]);
    await events.wait(
      "the run's progress",
      (x) => x.subject === "iotvault.events.backup.progress" && x.data.runId === trigger.runId,
      60_000,
    );
    await stack.kill("executor");
    await waitFor(
      async () =>
        (
          await query(
            srcUrl("postgres"),
            "SELECT count(*)::int AS n FROM pg_stat_activity WHERE application_name LIKE 'iotvault%'",
          )
        )[0].n === 0,
      { what: "the killed backup's session to end", timeoutMs: 20_000 },
    );
    const target = join(data.path, "after-kill");
    const restored = await stack.cliJson([
      "restore",
      fullSnapshot,
      "--to",
      target,
      "--option",
      "recovery_target=immediate",
      "--option",
      "recover=true",
    ]);
    assert.equal(JSON.parse(restored.details).recovery.promoted, true);
    await stack.startService("executor");
  });

  it("wal-prune keeps the WAL the oldest physical backup needs", async () => {
    const pruned = await stack.cliJson(["wal-prune", "--repo", "main", "--system-id", systemId, "--dry-run"]);
    assert.equal(pruned.length, 1);
    const snap = await stack.cliJson(["snapshots", "--job", "pgphys"]);
    assert.ok(snap.length >= 1);
    const list = await stack.cliJson(["wal-list", "--repo", "main", "--system-id", systemId]);
    const first = list.find((r: any) => r.timeline === 1).first as string;
    assert.ok(pruned[0].keepFromSegment >= first);
    assert.ok(pruned[0].removed.every((n: string) => n < pruned[0].keepFromSegment));
  });

  it("a consistency group: the database, its model and its configuration come back to one recovery point", async () => {
    const model = join(data.path, "model");
    const conf = join(data.path, "conf");
    await mkdir(model, { recursive: true });
    await mkdir(conf, { recursive: true });
    const ttl = "@prefix sosa: <http://www.w3.org/ns/sosa/> .\n<urn:s1> a sosa:Sensor .\n";
    await writeFile(join(model, "sensors.ttl"), ttl);
    await writeFile(join(conf, "gateway.yaml"), "interval: 10\n");
    await query(srcUrl("iot"), "INSERT INTO events (v) VALUES ('in-group')");
    const physical = `${srcUrl("postgres")}?mode=physical&pgdata=${encodeURIComponent(source.dataDir)}`;
    await stack.cliJson([
      "job",
      "create",
      "platform",
      "--source",
      physical,
      "--repo",
      "main",
      "--type",
      "full",
      "--group-source",
      `rdf:${model}`,
      "--group-source",
      `config:${conf}`,
    ]);
    const run = await stack.cliJson(["backup", "platform", "--wait"]);
    assert.equal(run.status, "RUN_STATUS_SUCCEEDED", JSON.stringify(run));
    // Everything after the run must not come back with the group.
    await query(srcUrl("iot"), "INSERT INTO events (v) VALUES ('after-group')");
    await writeFile(join(model, "sensors.ttl"), ttl + "<urn:s2> a sosa:Sensor .\n");
    const [{ name }] = await query(srcUrl("postgres"), "SELECT pg_walfile_name(pg_switch_wal()) AS name");
    await events.wait(
      "the restore point's WAL archived",
      (x) => x.subject === "iotvault.events.wal.archived" && x.data.segment === name,
    );

    const members = await waitFor(
      async () => {
        const m = await stack.cliJson(["snapshots", "--group", run.runId]);
        return m.length === 3 ? m : undefined;
      },
      { what: "the group's three snapshots in the catalog" },
    );
    const pgMember = members.find((m: any) => m.source.startsWith("postgres"));
    assert.match(pgMember.groupRestoreOptions.recovery_target_name, /^iotvault-/);

    const target = join(data.path, "group-restore");
    const restored = await stack.cliJson(["restore-group", run.runId, "--to", target]);
    assert.equal(restored.members.length, 3);
    const sources = restored.members.map((m: any) => m.source).sort();
    assert.deepEqual(sources, [`config:${conf}`, physical, `rdf:${model}`].sort());
    // The model and the configuration as they were during the run.
    const dirs = await readdir(target);
    const modelDir = join(
      target,
      dirs.find((d) => d.endsWith("-rdf"))!,
    );
    const confDir = join(
      target,
      dirs.find((d) => d.endsWith("-config"))!,
    );
    assert.equal(await readFile(join(modelDir, "sensors.ttl"), "utf8"), ttl);
    assert.equal(await readFile(join(confDir, "gateway.yaml"), "utf8"), "interval: 10\n");
    // The database at the group's restore point: the row written before is there, the one after is not.
    const pgDir = join(
      target,
      dirs.find((d) => d.endsWith("-postgres"))!,
    );
    const cluster = LocalCluster.attach(pgDir, { runDir: `${pgDir}.run` });
    clusters.push(cluster);
    await cluster.start({ port: await freePort() });
    await waitFor(
      async () => {
        const [{ r }] = await query(cluster.url("postgres"), "SELECT pg_is_in_recovery() AS r");
        return r === false || undefined;
      },
      { what: "recovery to the restore point", timeoutMs: 60_000 },
    );
    const rows = (await query(cluster.url("iot"), "SELECT v FROM events")).map((r) => r.v);
    assert.ok(rows.includes("in-group"), rows.join(","));
    assert.ok(!rows.includes("after-group"), rows.join(","));
    await cluster.stop();

    // A drill of the group job checks its PostgreSQL member, not whichever member lists first.
    const drill = await stack.cliJson(["drill", "platform"]);
    assert.equal(drill.ok, true, JSON.stringify(drill, null, 2));
    assert.equal(drill.kind, "postgres-physical");
    assert.equal(drill.snapshotId, pgMember.snapshotId);
  });
});

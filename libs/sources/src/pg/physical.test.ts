/**
 * Physical PostgreSQL backups against a real server archiving its WAL into the repository:
 * full backups with their LSNs, point-in-time recovery (time, LSN, restore point, latest) that
 * the test checks row by row on the recovered server, a missing WAL segment named in the error,
 * file-level incremental and differential backups that read only changed relation files and
 * restore on their own, a cancelled backup, and a drill.
 */
import assert from "node:assert/strict";
import { createServer, type AddressInfo } from "node:net";
import { join } from "node:path";
import { after, before, describe, it } from "node:test";
import { setTimeout as sleep } from "node:timers/promises";
import { isCode } from "@iotvault/errors";
import type { SnapshotManifest, TreeNode } from "@iotvault/repo";
import pg from "pg";
import { LocalCluster, freeLoopbackPort } from "./cluster.js";
import { drillPostgres } from "./drill.js";
import { pgMetadataOf } from "./metadata.js";
import { backupPhysical } from "./physical-backup.js";
import { restorePhysical } from "./physical-restore.js";
import { RACY_WINDOW_MS } from "./physical-walk.js";
import { commitBackup, startPgSandbox, type PgSandbox } from "./test-support.js";
import { parsePostgresUrl } from "./url.js";
import { walKey } from "./wal.js";

type BackupType = "full" | "incremental" | "differential";

async function physicalBackup(
  s: PgSandbox,
  runId: string,
  type: BackupType = "full",
  parent?: SnapshotManifest,
  signal?: AbortSignal,
  onProgress?: () => void,
) {
  const url = s.url("postgres", `mode=physical&pgdata=${encodeURIComponent(s.source.dataDir)}`);
  return commitBackup(s.repo, runId, url, type, parent, (writer) =>
    // The archive runs as the postgres OS user and must write the WAL objects itself.
    backupPhysical(s.repo, writer, {
      source: parsePostgresUrl(url),
      label: runId,
      parent,
      signal,
      onProgress,
      archiverWaitMs: 30_000,
    }),
  );
}

/** Restores a snapshot into a new directory, runs recovery to the options' target, returns the running server. */
async function recoverTo(s: PgSandbox, snapshot: SnapshotManifest, name: string, options: Record<string, string> = {}) {
  const meta = pgMetadataOf(snapshot);
  const target = s.newDir(name);
  const r = await restorePhysical(s.repo, snapshot, meta, {
    target,
    options: { recover: "true", keep_running: "true", ...options },
    restoreCommand: s.restoreCommand(meta.systemIdentifier),
    verify: true,
  });
  s.adopt(r.cluster!);
  return { result: r, cluster: r.cluster! };
}

const BIG_DIGEST = "SELECT count(*)::text || ':' || md5(string_agg(payload, '' ORDER BY id)) AS d FROM big";

async function bigDigest(cluster: LocalCluster): Promise<string> {
  const client = new pg.Client({ host: "127.0.0.1", port: cluster.port, user: "postgres", database: "postgres" });
  await client.connect();
  try {
    return (await client.query<{ d: string }>(BIG_DIGEST)).rows[0]!.d;
  } finally {
    await client.end();
  }
}

async function values(cluster: LocalCluster): Promise<string[]> {
  const client = new pg.Client({ host: "127.0.0.1", port: cluster.port, user: "postgres", database: "postgres" });
  await client.connect();
  try {
    return (await client.query<{ v: string }>("SELECT v FROM events ORDER BY id")).rows.map((r) => r.v);
  } finally {
    await client.end();
  }
}

describe(
  "physical PostgreSQL backups and point-in-time recovery (real server, WAL archive)",
  { timeout: 180_000 },
  () => {
    let s: PgSandbox;
    let full: SnapshotManifest;
    const marks: Record<string, string> = {};

    before(async () => {
      s = await startPgSandbox({ archive: true });
      await s.sql("postgres", "CREATE TABLE events (id serial PRIMARY KEY, v text NOT NULL)");
      await s.sql("postgres", "CREATE TABLE big (id int, payload text)");
      // About 14 MiB: its relation file is larger than LOCAL_FILE_MAX_BYTES, so it is streamed a segment at a time.
      await s.sql("postgres", "INSERT INTO big SELECT i, repeat(md5(i::text), 8) FROM generate_series(1, 50000) i");
      marks["big"] = (await s.sql<{ d: string }>("postgres", BIG_DIGEST))[0]!.d;
      await s.sql("postgres", "INSERT INTO events (v) VALUES ('before-backup')");
      await s.sql("postgres", "CHECKPOINT");
      // Files written just before a backup count as changed for the next one (racy mtime).
      await sleep(RACY_WINDOW_MS + 200);
      full = (await physicalBackup(s, "phys-full")).snapshot;
      await s.sql("postgres", "INSERT INTO events (v) VALUES ('A')");
      marks["time"] = (await s.sql<{ t: string }>("postgres", "SELECT clock_timestamp()::text AS t"))[0]!.t;
      await sleep(20);
      await s.sql("postgres", "INSERT INTO events (v) VALUES ('B')");
      marks["lsn"] = (await s.sql<{ l: string }>("postgres", "SELECT pg_current_wal_insert_lsn()::text AS l"))[0]!.l;
      await s.sql("postgres", "INSERT INTO events (v) VALUES ('C')");
      await s.sql("postgres", "SELECT pg_create_restore_point('before-D')");
      await s.sql("postgres", "INSERT INTO events (v) VALUES ('D')");
      marks["segment"] = await s.switchWal();
    });

    after(async () => {
      await s?.cleanup();
    });

    it("a full backup records start/stop LSN, timeline, system id and the WAL it needs", () => {
      const meta = pgMetadataOf(full);
      assert.equal(meta.mode, "physical");
      assert.equal(meta.systemIdentifier, s.systemId);
      assert.equal(meta.timeline, 1);
      assert.match(meta.startLsn!, /^[0-9A-F]+\/[0-9A-F]+$/);
      assert.match(meta.stopLsn!, /^[0-9A-F]+\/[0-9A-F]+$/);
      assert.match(meta.backupLabel!, /START WAL LOCATION: .*\nCHECKPOINT LOCATION/);
      assert.ok(meta.walSegments!.length >= 1);
      assert.ok(meta.databases!.some((d) => d.name === "postgres"));
    });

    it("recovers to a time: the row committed before it is there, the one after it is not", async () => {
      const { cluster, result } = await recoverTo(s, full, "pitr-time", { recovery_target_time: marks["time"]! });
      assert.deepEqual(await values(cluster), ["before-backup", "A"]);
      assert.equal(await bigDigest(cluster), marks["big"], "the streamed large relation came back whole");
      assert.equal(result.recovery!.promoted, true);
      assert.match(result.recovery!.stoppedAt ?? "", /recovery stopping before commit/);
      await cluster.stop();
    });

    it("recovers to an LSN, to a named restore point, and to the latest WAL", async () => {
      const lsn = await recoverTo(s, full, "pitr-lsn", { recovery_target_lsn: marks["lsn"]! });
      assert.deepEqual(await values(lsn.cluster), ["before-backup", "A", "B"]);
      await lsn.cluster.stop();
      const named = await recoverTo(s, full, "pitr-name", { recovery_target_name: "before-D" });
      assert.deepEqual(await values(named.cluster), ["before-backup", "A", "B", "C"]);
      await named.cluster.stop();
      const latest = await recoverTo(s, full, "pitr-latest");
      assert.deepEqual(await values(latest.cluster), ["before-backup", "A", "B", "C", "D"]);
      await latest.cluster.stop();
    });

    it("a missing WAL segment gives a clear error naming it", async () => {
      await s.sql("postgres", "INSERT INTO events (v) VALUES ('E')");
      const gap = await s.switchWal();
      await s.sql("postgres", "INSERT INTO events (v) VALUES ('F')");
      const after = (await s.sql<{ t: string }>("postgres", "SELECT clock_timestamp()::text AS t"))[0]!.t;
      await s.sql("postgres", "INSERT INTO events (v) VALUES ('G')");
      await s.switchWal();
      const key = walKey(s.systemId, gap);
      const saved = await s.repo.getSealedObject(key);
      await s.repo.deleteSealedObject(key);
      try {
        // To the latest point: refused before anything is written.
        await assert.rejects(
          recoverTo(s, full, "gap-latest"),
          (err: unknown) => isCode(err, "NOT_FOUND") && (err as Error).message.includes(gap),
        );
        // To a time after the hole: recovery stops there, and the error names the segment.
        await assert.rejects(
          recoverTo(s, full, "gap-time", { recovery_target_time: after }),
          (err: unknown) =>
            isCode(err, "NOT_FOUND") && (err as Error).message.includes(`WAL segment ${gap} is not in the archive`),
        );
      } finally {
        await s.repo.putSealedObject(key, saved);
        s.chownRepo();
      }
    });

    it("a large relation file is stored as fixed chunks of the chunker's average size", async () => {
      const [bigFile] = await s.sql<{ p: string }>("postgres", "SELECT pg_relation_filepath('big') AS p");
      let node: TreeNode | undefined;
      for await (const n of s.repo.readTree(full)) if (n.path.endsWith(bigFile!.p)) node = n;
      assert.ok(node?.size && node.size > 8 * 1024 * 1024, `${bigFile!.p} is streamed (${node?.size} bytes)`);
      const lengths: number[] = [];
      for await (const piece of s.repo.readFile(node)) lengths.push(piece.length);
      const MiB = 1024 * 1024;
      assert.equal(lengths.length, Math.ceil(node.size / MiB));
      assert.deepEqual(lengths.slice(0, -1), new Array<number>(lengths.length - 1).fill(MiB));
    });

    it("an incremental backup reads only the relation files that changed, and restores on its own", async () => {
      const [bigFile] = await s.sql<{ p: string }>("postgres", "SELECT pg_relation_filepath('big') AS p");
      const [eventsFile] = await s.sql<{ p: string }>("postgres", "SELECT pg_relation_filepath('events') AS p");
      await s.sql("postgres", "INSERT INTO events (v) VALUES ('H')");
      await s.sql("postgres", "CHECKPOINT");
      const incr = await physicalBackup(s, "phys-incr", "incremental", full);
      const read = incr.result.readPaths;
      assert.ok(read.includes(eventsFile!.p), `${eventsFile!.p} was changed and must be read`);
      assert.ok(!read.includes(bigFile!.p), `${bigFile!.p} did not change and must not be read`);
      assert.ok(incr.result.unchanged > 100, `${incr.result.unchanged} files unchanged`);
      assert.ok(incr.bytesRead < incr.result.bytes / 2, `${incr.bytesRead} of ${incr.result.bytes} bytes read`);
      assert.equal(pgMetadataOf(incr.snapshot).parentSnapshot, full.id);
      // A differential has the full as parent; it does not read what the incremental read already.
      const diff = await physicalBackup(s, "phys-diff", "differential", full);
      assert.ok(!diff.result.readPaths.includes(bigFile!.p));
      // Each restores alone (its unchanged files come from the full's chunks).
      const { cluster } = await recoverTo(s, incr.snapshot, "incr-restore", { recovery_target: "immediate" });
      const rows = await values(cluster);
      assert.equal(rows.at(-1), "H");
      await cluster.stop();
    });

    it("a cancelled backup leaves the server without a backup in progress and the earlier one restorable", async () => {
      const controller = new AbortController();
      await assert.rejects(
        physicalBackup(s, "phys-cancelled", "full", undefined, controller.signal, () => controller.abort()),
        (err: unknown) => isCode(err, "CANCELLED"),
      );
      // The backup's session ends, and with it the backup PostgreSQL had started.
      const deadline = Date.now() + 5000;
      let left = "";
      do {
        await sleep(50);
        const sessions = await s.sql<{ n: string }>(
          "postgres",
          "SELECT count(*)::text AS n FROM pg_stat_activity WHERE application_name LIKE 'iotvault%'",
        );
        left = sessions[0]!.n;
      } while (left !== "0" && Date.now() < deadline);
      assert.equal(left, "0", "the cancelled backup's session is still there after 5 s");
      const again = await physicalBackup(s, "phys-after-cancel");
      assert.ok(again.result.files > 100);
      const { cluster } = await recoverTo(s, full, "after-cancel", { recovery_target: "immediate" });
      assert.deepEqual(await values(cluster), ["before-backup"]);
      await cluster.stop();
    });

    it("a drill restores the backup into a scratch cluster, recovers it and checks it", async () => {
      const verdict = await drillPostgres(s.repo, full, {
        restoreCommand: (_location, id) => s.restoreCommand(id),
      });
      assert.equal(verdict.kind, "postgres-physical");
      assert.equal(verdict.ok, true, JSON.stringify(verdict.checks, null, 2));
      const names = verdict.checks.map((c) => c.name);
      for (const n of ["restore", "recovery", "system identifier", "answers postgres", "tables postgres"])
        assert.ok(names.includes(n), n);
    });

    it('a cluster started on a "free" port tries another when its port was taken before it could bind', async () => {
      const cluster = await LocalCluster.init(join(s.dir, "port-retry"), { runDir: join(s.dir, "run") });
      // The first port handed out is held by another listener, as when a parallel process took it.
      const held = createServer();
      await new Promise<void>((resolve) => held.listen(0, "127.0.0.1", resolve));
      const taken = (held.address() as AddressInfo).port;
      const picked: number[] = [];
      try {
        await cluster.start({
          port: "free",
          pickPort: async () => {
            const port = picked.length === 0 ? taken : await freeLoopbackPort();
            picked.push(port);
            return port;
          },
        });
        assert.equal(picked.length, 2, `ports tried: ${picked.join(", ")}`);
        assert.equal(cluster.port, picked[1]);
        const client = new pg.Client({ host: "127.0.0.1", port: cluster.port, user: "postgres", database: "postgres" });
        await client.connect();
        assert.equal((await client.query<{ one: number }>("SELECT 1 AS one")).rows[0]!.one, 1);
        await client.end();
        // A port given by number is not changed behind the caller's back.
        await cluster.stop();
        await assert.rejects(
          cluster.start({ port: taken }),
          (err: unknown) =>
            isCode(err, "UNAVAILABLE") && /Address already in use/.test(String((err as { hint?: string }).hint)),
        );
      } finally {
        await cluster.stop().catch(() => undefined);
        await new Promise((resolve) => held.close(resolve));
      }
    });

    it("a restore into a non-empty directory or with an unknown option is refused", async () => {
      const meta = pgMetadataOf(full);
      await assert.rejects(
        restorePhysical(s.repo, full, meta, {
          target: s.source.dataDir,
          options: {},
          restoreCommand: "x",
          verify: true,
        }),
        (err: unknown) => isCode(err, "ALREADY_EXISTS"),
      );
      await assert.rejects(
        restorePhysical(s.repo, full, meta, {
          target: s.newDir("x"),
          options: { recovery_target_tim: "x" },
          restoreCommand: "x",
          verify: true,
        }),
        (err: unknown) => isCode(err, "INVALID_ARGUMENT") && /recovery_target_tim/.test((err as Error).message),
      );
      // wal_prefetch: a number of segments, and only for the wal-fetch command iotvault writes.
      const builtin = "IOTVAULT_KEY_FILE=/k iotvault wal-fetch --repo main --system-id 1 %f %p";
      for (const [options, restoreCommand, message] of [
        [{ wal_prefetch: "lots" }, builtin, /wal_prefetch "lots"/],
        [{ wal_prefetch: "65" }, builtin, /0 to 64/],
        [{ wal_prefetch: "4" }, "cp /archive/%f %p", /applies to the restore_command iotvault builds/],
        [{ wal_prefetch: "4", restore_command: builtin }, builtin, /applies to the restore_command iotvault builds/],
      ] as const) {
        await assert.rejects(
          restorePhysical(s.repo, full, meta, { target: s.newDir("p"), options, restoreCommand, verify: true }),
          (err: unknown) => isCode(err, "INVALID_ARGUMENT") && message.test((err as Error).message),
        );
      }
    });
  },
);

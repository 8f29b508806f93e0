import assert from "node:assert/strict";
import { after, before, describe, it } from "node:test";
import pg from "pg";
import { isCode } from "@iotvault/errors";
import { BackupType, RunStatus } from "@iotvault/proto";
import { createTestDatabase, type TestDatabase } from "@iotvault/testing";
import { MIGRATIONS } from "./migrations.js";
import { CatalogStore, classifyDatabaseError } from "./store.js";
import { completed, started, stats } from "./test-events.js";

describe("catalog store (real PostgreSQL)", () => {
  let db: TestDatabase;
  let store: CatalogStore;
  let seq = 0;
  const meta = (eventId: string, subject = "iotvault.events.test") => ({ eventId, subject, streamSequence: ++seq });

  before(async () => {
    db = await createTestDatabase({ prefix: "catalog" });
    store = await CatalogStore.open(db.url);
  });
  after(async () => {
    await store?.close();
    await db?.drop();
  });

  it("applies every migration once and records it", async () => {
    const second = await CatalogStore.open(db.url); // a second start (or replica) changes nothing
    await second.close();
    const client = new pg.Client(db.url);
    await client.connect();
    try {
      const { rows } = await client.query<{ version: number }>(
        "SELECT version FROM schema_migrations ORDER BY version",
      );
      assert.deepEqual(
        rows.map((r) => r.version),
        MIGRATIONS.map((m) => m.version),
      );
    } finally {
      await client.end();
    }
  });

  it("creates the database when it does not exist", async () => {
    const url = new URL(db.url);
    url.pathname = `/${db.name}_created`;
    const s = await CatalogStore.open(url.toString());
    await s.close();
    const admin = new URL(db.url);
    admin.pathname = "/postgres";
    const client = new pg.Client(admin.toString());
    await client.connect();
    try {
      const { rowCount } = await client.query("SELECT 1 FROM pg_database WHERE datname = $1", [`${db.name}_created`]);
      assert.equal(rowCount, 1);
      await client.query(`DROP DATABASE "${db.name}_created"`);
    } finally {
      await client.end();
    }
  });

  it("follows a run from started through progress to completed, and records the snapshot", async () => {
    assert.equal(await store.applyEvent("iotvault.v1.BackupStarted", started("run-a"), meta("run-a:started:1")), true);
    let run = await store.getRun("run-a");
    assert.equal(run.status, RunStatus.RUN_STATUS_RUNNING);
    assert.equal(run.traceId, "0af7651916cd43dd8448eb211c80319c");

    await store.applyEvent(
      "iotvault.v1.BackupProgress",
      {
        runId: "run-a",
        jobId: "job-1",
        filesDone: 5n,
        bytesDone: 500n,
        filesTotal: 0n,
        bytesTotal: 0n,
        bytesNew: 0n,
        currentPath: "x",
      },
      meta("run-a:progress:1"),
    );
    run = await store.getRun("run-a");
    assert.equal(run.bytesDone, 500n);

    await store.applyEvent(
      "iotvault.v1.BackupCompleted",
      completed("run-a", "ab12cd34ef56" + "0".repeat(52)),
      meta("run-a:completed"),
    );
    run = await store.getRun("run-a");
    assert.equal(run.status, RunStatus.RUN_STATUS_SUCCEEDED);
    assert.equal(run.stats?.bytesStored, 120n);
    const snap = await store.getSnapshot("ab12cd34");
    assert.equal(snap.runId, "run-a");
    assert.equal(snap.stats?.filesNew, 3n);
    assert.equal((await store.listSnapshots({ job: "gateway" })).length, 1);
  });

  it("ignores a redelivered event (same event id) and keeps the row as it was", async () => {
    await store.applyEvent("iotvault.v1.BackupStarted", started("run-b"), meta("run-b:started:1"));
    await store.applyEvent(
      "iotvault.v1.BackupCompleted",
      completed("run-b", "cd" + "1".repeat(62)),
      meta("run-b:completed"),
    );
    const before = await store.getRun("run-b");
    // The same started event again (redelivery) must not turn a finished run back to running.
    assert.equal(await store.applyEvent("iotvault.v1.BackupStarted", started("run-b"), meta("run-b:started:1")), false);
    assert.equal(
      await store.applyEvent(
        "iotvault.v1.BackupCompleted",
        completed("run-b", "cd" + "1".repeat(62)),
        meta("run-b:completed"),
      ),
      false,
    );
    const after = await store.getRun("run-b");
    assert.deepEqual(after, before);
  });

  it("a late started event of another attempt does not undo a terminal status", async () => {
    await store.applyEvent("iotvault.v1.BackupStarted", started("run-c"), meta("run-c:started:1"));
    await store.applyEvent(
      "iotvault.v1.BackupCompleted",
      completed("run-c", "ef" + "2".repeat(62)),
      meta("run-c:completed"),
    );
    await store.applyEvent("iotvault.v1.BackupStarted", started("run-c", 2), meta("run-c:started:2"));
    const run = await store.getRun("run-c");
    assert.equal(run.status, RunStatus.RUN_STATUS_SUCCEEDED);
    assert.equal(run.attempts, 2);
  });

  it("a failure that will be retried keeps the run running; a final one fails it", async () => {
    const err = { code: "UNAVAILABLE", message: "gateway down", retryable: true, hint: "" };
    await store.applyEvent("iotvault.v1.BackupStarted", started("run-d"), meta("run-d:started:1"));
    await store.applyEvent(
      "iotvault.v1.BackupFailed",
      {
        runId: "run-d",
        jobId: "job-1",
        jobName: "gateway",
        error: err,
        attempt: 1,
        willRetry: true,
        at: new Date(),
        traceId: "",
      },
      meta("run-d:failed:1"),
    );
    assert.equal((await store.getRun("run-d")).status, RunStatus.RUN_STATUS_RUNNING);
    await store.applyEvent(
      "iotvault.v1.BackupFailed",
      {
        runId: "run-d",
        jobId: "job-1",
        jobName: "gateway",
        error: { ...err, retryable: false },
        attempt: 2,
        willRetry: false,
        at: new Date(),
        traceId: "",
      },
      meta("run-d:failed:2"),
    );
    const run = await store.getRun("run-d");
    assert.equal(run.status, RunStatus.RUN_STATUS_FAILED);
    assert.equal(run.error?.message, "gateway down");
    assert.equal(run.attempts, 2);
    const failed = await store.listRuns({ status: RunStatus.RUN_STATUS_FAILED });
    assert.deepEqual(
      failed.map((r) => r.runId),
      ["run-d"],
    );
  });

  it("reports unknown runs and ambiguous or malformed snapshot ids clearly", async () => {
    await assert.rejects(store.getRun("nope"), (e: unknown) => isCode(e, "NOT_FOUND"));
    await assert.rejects(store.getSnapshot("zz"), (e: unknown) => isCode(e, "INVALID_ARGUMENT"));
    await store.applyEvent(
      "iotvault.v1.BackupCompleted",
      completed("run-e", "ab12cd34ff" + "3".repeat(54)),
      meta("run-e:completed"),
    );
    await assert.rejects(
      store.getSnapshot("ab12cd"),
      (e: unknown) => isCode(e, "INVALID_ARGUMENT") && /ambiguous/.test(e.message),
    );
  });

  it("keeps job definitions from job events and ignores types it does not store", async () => {
    const job = {
      id: "job-9",
      name: "plc",
      source: "fs:/srv/plc",
      repository: "main",
      schedule: "",
      timeZone: "UTC",
      backupType: 2,
      site: "default",
      include: [],
      exclude: [],
      labels: {},
      paused: false,
      createdAt: new Date(),
      updatedAt: new Date(),
    };
    assert.equal(await store.applyEvent("iotvault.v1.JobCreated", { job }, meta("job:job-9:created")), true);
    assert.equal(await store.applyEvent("iotvault.v1.RestoreProgress", {}, meta("restore-progress-1")), false);
    const { rows } = await store.pool.query<{ name: string }>("SELECT name FROM jobs WHERE job_id = 'job-9'");
    assert.equal(rows[0]?.name, "plc");
  });
});

describe("catalog store: ordering and database faults", () => {
  let db: TestDatabase;
  let store: CatalogStore;
  let seq = 1000;
  const meta = (eventId: string) => ({ eventId, subject: "iotvault.events.test", streamSequence: ++seq });
  const failed = (runId: string, attempt: number, willRetry: boolean, message: string) => ({
    runId,
    jobId: "job-1",
    jobName: "gateway",
    error: { code: "UNAVAILABLE", message, retryable: willRetry, hint: "" },
    attempt,
    willRetry,
    at: new Date(),
    traceId: "",
  });

  before(async () => {
    db = await createTestDatabase({ prefix: "catalog_faults" });
    store = await CatalogStore.open(db.url);
  });
  after(async () => {
    await store?.close();
    await db?.drop();
  });

  it("an older attempt's retryable failure arriving late does not reopen a failed run", async () => {
    await store.applyEvent("iotvault.v1.BackupFailed", failed("run-x", 3, false, "final"), meta("run-x:failed:3"));
    await store.applyEvent("iotvault.v1.BackupFailed", failed("run-x", 2, true, "older"), meta("run-x:failed:2"));
    const run = await store.getRun("run-x");
    assert.equal(run.status, RunStatus.RUN_STATUS_FAILED);
    assert.equal(run.error?.message, "final");
    assert.equal(run.attempts, 3);
  });

  it("an older attempt's failure does not override a newer attempt that is running", async () => {
    await store.applyEvent("iotvault.v1.BackupStarted", started("run-y", 2), meta("run-y:started:2"));
    await store.applyEvent("iotvault.v1.BackupFailed", failed("run-y", 1, false, "stale"), meta("run-y:failed:1"));
    assert.equal((await store.getRun("run-y")).status, RunStatus.RUN_STATUS_RUNNING);
  });

  it("classifies a lost database connection as retryable, and a bad statement as permanent", async () => {
    const terminated = classifyDatabaseError(
      Object.assign(new Error("terminating connection due to administrator command"), { code: "57P01" }),
    );
    assert.ok(isCode(terminated, "UNAVAILABLE") && terminated.retryable);
    assert.ok(classifyDatabaseError(new Error("Connection terminated unexpectedly")).retryable);
    assert.ok(!classifyDatabaseError(Object.assign(new Error("duplicate key"), { code: "23505" })).retryable);
    // A real outage: every connection of the catalog's pool is terminated mid-way.
    const admin = new pg.Client(db.url);
    await admin.connect();
    try {
      const probe = store.pool.connect();
      const client = await probe;
      client.release();
      await admin.query(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = current_database() AND pid <> pg_backend_pid()",
      );
    } finally {
      await admin.end();
    }
    // The pool recovers by itself: the next event applies (or, had the database been down, would have been retried).
    await store
      .applyEvent("iotvault.v1.BackupStarted", started("run-z"), meta("run-z:started:1"))
      .catch((e: unknown) => {
        assert.ok(isCode(e, "UNAVAILABLE"), `unexpected ${String(e)}`);
      });
    await store.applyEvent("iotvault.v1.BackupStarted", started("run-z"), meta("run-z:started:1b"));
    assert.equal((await store.getRun("run-z")).status, RunStatus.RUN_STATUS_RUNNING);
  });

  it("forgets processed event ids past the retention", async () => {
    await store.pool.query(
      "UPDATE processed_events SET processed_at = now() - interval '40 days' WHERE event_id = 'run-x:failed:2'",
    );
    assert.equal(await store.pruneProcessedEvents(31), 1);
  });
});

describe("catalog store: retention and rebuild", () => {
  let db: TestDatabase;
  let store: CatalogStore;
  let seq = 5000;
  const meta = (eventId: string) => ({ eventId, subject: "iotvault.events.test", streamSequence: ++seq });
  const id = (n: number) => n.toString(16).padStart(64, "a");

  before(async () => {
    db = await createTestDatabase({ prefix: "catalog_retention" });
    store = await CatalogStore.open(db.url);
    for (let n = 1; n <= 3; n++) {
      await store.applyEvent(
        "iotvault.v1.BackupCompleted",
        { ...completed(`run-r${n}`, id(n)), repository: "main" },
        meta(`run-r${n}:completed`),
      );
    }
  });
  after(async () => {
    await store?.close();
    await db?.drop();
  });

  it("hides forgotten snapshots, records holds and prunes", async () => {
    await store.applyEvent(
      "iotvault.v1.SnapshotHold",
      { repository: "main", snapshotId: id(2), reason: "legal", held: true, by: "op", at: new Date() },
      meta("hold-2"),
    );
    await store.applyEvent(
      "iotvault.v1.SnapshotsForgotten",
      { repository: "main", jobId: "job-1", snapshotIds: [id(1)], policy: "keep last 2", at: new Date(), traceId: "" },
      meta("forget-1"),
    );
    const live = await store.listSnapshots({ repository: "main" });
    assert.deepEqual(live.map((s) => s.snapshotId).sort(), [id(2), id(3)]);
    assert.equal(live.find((s) => s.snapshotId === id(2))?.holdReason, "legal");
    await store.applyEvent(
      "iotvault.v1.PruneCompleted",
      {
        repository: "main",
        snapshots: 2n,
        packsDeleted: 3n,
        packsRepacked: 1n,
        orphanPacksDeleted: 0n,
        bytesFreed: 1000n,
        bytesRepacked: 10n,
        startedAt: new Date(),
        finishedAt: new Date(),
        traceId: "",
      },
      meta("prune-1"),
    );
    const { rows } = await store.pool.query("SELECT result FROM prunes");
    assert.equal(rows.length, 1);
  });

  it("rebuilds a repository's snapshots from what the repository holds", async () => {
    async function* fromRepository() {
      // The repository holds snapshot 3 and a snapshot the catalog never heard of; 2 is gone.
      for (const [n, run] of [
        [3, "run-r3"],
        [9, "run-r9"],
      ] as const) {
        yield {
          snapshotId: id(n),
          repository: "main",
          jobId: "job-1",
          jobName: "gateway",
          runId: run,
          backupType: BackupType.BACKUP_TYPE_FULL,
          source: "fs:/srv/gw",
          parentSnapshotId: "",
          hostname: "gw-01",
          time: new Date("2026-02-01T00:00:00Z"),
          stats,
          held: false,
          holdReason: "",
          groupId: "",
          groupRestoreOptions: {},
        };
      }
    }
    const r = await store.rebuildRepository("main", fromRepository());
    assert.deepEqual(r, { seen: 2, added: 1, forgotten: 1 });
    const live = await store.listSnapshots({ repository: "main" });
    assert.deepEqual(live.map((s) => s.snapshotId).sort(), [id(3), id(9)]);
    assert.equal((await store.getRun("run-r9")).status, RunStatus.RUN_STATUS_SUCCEEDED);
  });
});

describe("catalog store: degraded runs", () => {
  it("records that a run completed while a target was down", async () => {
    const db = await createTestDatabase({ prefix: "catalog_degraded" });
    const store = await CatalogStore.open(db.url);
    try {
      await store.applyEvent(
        "iotvault.v1.BackupCompleted",
        { ...completed("run-deg", "dd".repeat(32)), degraded: true, missingTargets: ["s3://b?endpoint=x:1"] },
        { eventId: "run-deg:completed", subject: "s", streamSequence: 1 },
      );
      const run = await store.getRun("run-deg");
      assert.equal(run.degraded, true);
      assert.equal(run.status, RunStatus.RUN_STATUS_SUCCEEDED);
    } finally {
      await store.close();
      await db.drop();
    }
  });
});

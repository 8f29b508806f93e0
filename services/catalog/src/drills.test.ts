/**
 * The catalog records restore drills (iotvault.events.drill.completed) and archived WAL
 * segments (iotvault.events.wal.archived), once per event, in a real PostgreSQL database.
 */
import assert from "node:assert/strict";
import { after, before, describe, it } from "node:test";
import type pg from "pg";
import { createTestDatabase, type TestDatabase } from "@iotvault/testing";
import { CatalogStore } from "./store.js";

describe("catalog: drills and WAL segments", () => {
  let db: TestDatabase;
  let store: CatalogStore;

  before(async () => {
    db = await createTestDatabase({ prefix: "catalog_drills" });
    store = await CatalogStore.open(db.url);
  });

  after(async () => {
    await store?.close();
    await db?.drop();
  });

  async function rows<T extends pg.QueryResultRow>(sql: string): Promise<T[]> {
    return (await store.pool.query<T>(sql)).rows;
  }

  it("keeps one row per drill with its verdict, checks and error", async () => {
    const drill = {
      drillId: "dr-20261124T100000Z-0a1b2c3d",
      repository: "main",
      jobId: "job-1",
      jobName: "pg",
      snapshotId: "ab".repeat(32),
      kind: "postgres-physical",
      ok: false,
      checks: [
        { name: "restore", ok: true, detail: "963 files" },
        { name: "rows postgres", ok: false, detail: "1 of 2 tables match" },
      ],
      error: undefined,
      requestedBy: "scheduler",
      durationMs: 4200n,
      startedAt: new Date("2026-11-24T10:00:00Z"),
      finishedAt: new Date("2026-11-24T10:00:04Z"),
      traceId: "",
    };
    const meta = {
      eventId: `${drill.drillId}:completed`,
      subject: "iotvault.events.drill.completed",
      streamSequence: 1,
    };
    assert.equal(await store.applyEvent("iotvault.v1.DrillCompleted", drill, meta), true);
    assert.equal(await store.applyEvent("iotvault.v1.DrillCompleted", drill, meta), false);
    const got = await rows<{
      ok: boolean;
      kind: string;
      checks: { name: string; ok?: boolean }[];
      duration_ms: string;
      requested_by: string;
    }>("SELECT ok, kind, checks, duration_ms::text, requested_by FROM drills");
    assert.equal(got.length, 1);
    assert.equal(got[0]!.ok, false);
    assert.equal(got[0]!.kind, "postgres-physical");
    assert.equal(got[0]!.duration_ms, "4200");
    assert.equal(got[0]!.requested_by, "scheduler");
    assert.deepEqual(
      got[0]!.checks.map((c) => c.name),
      ["restore", "rows postgres"],
    );
  });

  it("keeps one row per archived WAL segment, whatever the redeliveries", async () => {
    const wal = (segment: string, seq: number) => ({
      payload: {
        repository: "main",
        systemId: "7441234567890123456",
        timeline: 1,
        segment,
        size: 16777216n,
        archivedAt: new Date("2026-11-24T10:00:00Z"),
      },
      meta: {
        eventId: `wal:main:7441234567890123456:${segment}#${seq}`,
        subject: "iotvault.events.wal.archived",
        streamSequence: seq,
      },
    });
    for (const [i, seg] of [
      "000000010000000000000003",
      "000000010000000000000004",
      "000000010000000000000003",
    ].entries()) {
      const e = wal(seg, i + 10);
      await store.applyEvent("iotvault.v1.WalArchived", e.payload, e.meta);
    }
    const got = await rows<{ segment: string; size: string }>(
      "SELECT segment, size::text FROM wal_segments ORDER BY segment",
    );
    assert.deepEqual(got, [
      { segment: "000000010000000000000003", size: "16777216" },
      { segment: "000000010000000000000004", size: "16777216" },
    ]);
  });
});

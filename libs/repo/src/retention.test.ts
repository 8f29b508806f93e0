import assert from "node:assert/strict";
import { test } from "node:test";
import { isCode } from "@iotvault/errors";
import { LocalDirectoryStore } from "@iotvault/storage";
import { Repository } from "./repository.js";
import { decideRetention, isoWeek, type RetentionCandidate, type RetentionPolicy } from "./retention.js";
import { backupFiles, fingerprint, keysUnder, withTempDir } from "./test-support.js";
import { FAST, PASSWORD, newRepo, random } from "./test-util.js";

const NOW = new Date("2026-11-25T12:00:00Z");

/** Snapshots named by their time; job "j" unless given. */
function snaps(times: string[], jobId = "j"): RetentionCandidate[] {
  return times.map((time) => ({ id: `${jobId}@${time}`, time, jobId }));
}

function kept(
  candidates: RetentionCandidate[],
  policy: RetentionPolicy,
  holds: ReadonlyMap<string, { reason: string }> = new Map(),
): string[] {
  return decideRetention(candidates, policy, NOW, holds)
    .filter((d) => d.keep)
    .map((d) => d.snapshot.time)
    .sort();
}

void test("ISO weeks across year boundaries", () => {
  assert.deepEqual(isoWeek(2026, 12, 31), { year: 2026, week: 53 }); // Thursday
  assert.deepEqual(isoWeek(2027, 1, 3), { year: 2026, week: 53 }); // Sunday of the same week
  assert.deepEqual(isoWeek(2027, 1, 4), { year: 2027, week: 1 }); // Monday
  assert.deepEqual(isoWeek(2024, 12, 30), { year: 2025, week: 1 });
  assert.deepEqual(isoWeek(2021, 1, 3), { year: 2020, week: 53 });
  assert.deepEqual(isoWeek(2026, 6, 15), { year: 2026, week: 25 });
});

void test("policy table: last, hourly, daily, weekly, monthly, yearly (UTC)", () => {
  const cases: { name: string; times: string[]; policy: RetentionPolicy; keep: string[] }[] = [
    {
      name: "keepLast keeps the n newest",
      times: ["2026-11-20T01:00:00Z", "2026-11-21T01:00:00Z", "2026-11-22T01:00:00Z", "2026-11-23T01:00:00Z"],
      policy: { keepLast: 2 },
      keep: ["2026-11-22T01:00:00Z", "2026-11-23T01:00:00Z"],
    },
    {
      name: "keepHourly: a tie in one hour keeps only the newest of that hour",
      times: ["2026-11-25T09:05:00Z", "2026-11-25T09:55:00Z", "2026-11-25T10:10:00Z", "2026-11-25T08:00:00Z"],
      policy: { keepHourly: 2 },
      keep: ["2026-11-25T09:55:00Z", "2026-11-25T10:10:00Z"],
    },
    {
      name: "keepDaily: newest of each of the 3 newest days that have one (a gap day is not counted)",
      times: [
        "2026-11-20T23:00:00Z",
        "2026-11-22T01:00:00Z",
        "2026-11-22T20:00:00Z",
        "2026-11-24T02:00:00Z",
        "2026-11-24T03:00:00Z",
      ],
      policy: { keepDaily: 3 },
      keep: ["2026-11-20T23:00:00Z", "2026-11-22T20:00:00Z", "2026-11-24T03:00:00Z"],
    },
    {
      name: "keepWeekly uses ISO weeks (2027-01-03 is in 2026-W53)",
      times: ["2026-12-20T10:00:00Z", "2026-12-27T10:00:00Z", "2026-12-29T10:00:00Z", "2027-01-03T10:00:00Z"],
      policy: { keepWeekly: 2 },
      keep: ["2026-12-27T10:00:00Z", "2027-01-03T10:00:00Z"],
    },
    {
      name: "keepMonthly",
      times: ["2026-08-31T10:00:00Z", "2026-09-01T10:00:00Z", "2026-09-30T10:00:00Z", "2026-10-15T10:00:00Z"],
      policy: { keepMonthly: 2 },
      keep: ["2026-09-30T10:00:00Z", "2026-10-15T10:00:00Z"],
    },
    {
      name: "keepYearly with more years asked than exist keeps one per year",
      times: ["2024-01-01T00:00:00Z", "2024-12-31T23:59:59Z", "2025-06-01T00:00:00Z", "2026-03-01T00:00:00Z"],
      policy: { keepYearly: 10 },
      keep: ["2024-12-31T23:59:59Z", "2025-06-01T00:00:00Z", "2026-03-01T00:00:00Z"],
    },
    {
      name: "rules combine: a snapshot is removed only when no rule keeps it",
      times: ["2026-09-15T10:00:00Z", "2026-10-20T10:00:00Z", "2026-11-23T10:00:00Z", "2026-11-24T10:00:00Z"],
      policy: { keepLast: 1, keepMonthly: 2 },
      keep: ["2026-10-20T10:00:00Z", "2026-11-24T10:00:00Z"],
    },
  ];
  for (const c of cases) assert.deepEqual(kept(snaps(c.times), c.policy), c.keep, c.name);
});

void test("buckets follow the time zone", () => {
  const times = ["2026-03-09T12:00:00Z", "2026-03-10T23:30:00Z", "2026-03-11T00:30:00Z"];
  // UTC: days 11 and 10. New York (UTC-4 since 8 March): both late ones fall on 10 March local.
  assert.deepEqual(kept(snaps(times), { keepDaily: 2 }), ["2026-03-10T23:30:00Z", "2026-03-11T00:30:00Z"]);
  assert.deepEqual(kept(snaps(times), { keepDaily: 2, timeZone: "America/New_York" }), [
    "2026-03-09T12:00:00Z",
    "2026-03-11T00:30:00Z",
  ]);
  // Kolkata is UTC+5:30: 10:20Z and 10:40Z are 15:50 and 16:10 local, two hours.
  const half = ["2026-05-01T10:20:00Z", "2026-05-01T10:40:00Z", "2026-05-01T09:00:00Z"];
  assert.deepEqual(kept(snaps(half), { keepHourly: 2 }), ["2026-05-01T09:00:00Z", "2026-05-01T10:40:00Z"]);
  assert.deepEqual(kept(snaps(half), { keepHourly: 2, timeZone: "Asia/Kolkata" }), [
    "2026-05-01T10:20:00Z",
    "2026-05-01T10:40:00Z",
  ]);
  // Months: 31 Oct 23:00 UTC is already November in Berlin.
  const month = ["2026-10-31T23:30:00Z", "2026-10-15T10:00:00Z"];
  assert.deepEqual(kept(snaps(month), { keepMonthly: 1 }), ["2026-10-31T23:30:00Z"]);
  assert.deepEqual(kept(snaps(month), { keepMonthly: 2, timeZone: "Europe/Berlin" }), [
    "2026-10-15T10:00:00Z",
    "2026-10-31T23:30:00Z",
  ]);
});

void test("keepWithinDays counts from now; holds always keep; reasons say why", () => {
  const times = ["2026-11-24T12:00:00Z", "2026-10-27T12:00:00Z", "2026-10-25T12:00:00Z", "2026-01-01T00:00:00Z"];
  const candidates = snaps(times);
  assert.deepEqual(kept(candidates, { keepWithinDays: 30 }), ["2026-10-27T12:00:00Z", "2026-11-24T12:00:00Z"]);
  const holds = new Map([["j@2026-01-01T00:00:00Z", { reason: "legal" }]]);
  const decisions = decideRetention(candidates, { keepWithinDays: 30, keepLast: 1, keepDaily: 1 }, NOW, holds);
  const byTime = new Map(decisions.map((d) => [d.snapshot.time, d]));
  assert.deepEqual(byTime.get("2026-11-24T12:00:00Z")?.reasons, ["last 1", "daily 2026-11-24", "within 30 days"]);
  assert.deepEqual(byTime.get("2026-01-01T00:00:00Z")?.reasons, ["hold: legal"]);
  assert.equal(byTime.get("2026-10-25T12:00:00Z")?.keep, false);
  assert.deepEqual(byTime.get("2026-10-25T12:00:00Z")?.reasons, []);
  assert.deepEqual(
    decisions.map((d) => d.snapshot.time),
    times,
    "decisions follow the input order",
  );
});

void test("groups are the job ids: each job keeps its own newest", () => {
  const candidates = [
    ...snaps(["2026-11-20T00:00:00Z", "2026-11-21T00:00:00Z"], "a"),
    ...snaps(["2026-11-01T00:00:00Z", "2026-11-02T00:00:00Z"], "b"),
  ];
  const keep = decideRetention(candidates, { keepLast: 1 }, NOW, new Map())
    .filter((d) => d.keep)
    .map((d) => d.snapshot.id);
  assert.deepEqual(keep.sort(), ["a@2026-11-21T00:00:00Z", "b@2026-11-02T00:00:00Z"]);
});

void test("the members of a consistency-group run are kept or removed together", () => {
  // Three runs of one group job, each with three member snapshots (one group id, one time; each
  // member has a run key of its own, as the executor writes them).
  const runs = ["2026-11-22T02:00:00Z", "2026-11-23T02:00:00Z", "2026-11-24T02:00:00Z"];
  const candidates: RetentionCandidate[] = runs.flatMap((time, r) =>
    ["pg", "rdf", "config"].map((m, i) => ({
      id: `${m}-${r}`,
      time,
      jobId: "g",
      metadata: { group: { id: `run-${r}` }, groupMember: i, runKey: i ? `run-${r}/member-${i}` : `run-${r}` },
    })),
  );
  const decide = (policy: RetentionPolicy, holds = new Map<string, { reason: string }>()) =>
    decideRetention(candidates, policy, NOW, holds)
      .filter((d) => d.keep)
      .map((d) => d.snapshot.id)
      .sort();
  // keepLast 2 counts runs, not member snapshots: the two newest runs stay whole.
  assert.deepEqual(decide({ keepLast: 2 }), ["config-1", "config-2", "pg-1", "pg-2", "rdf-1", "rdf-2"]);
  // One snapshot per day means one run per day, whole.
  assert.deepEqual(decide({ keepDaily: 1 }), ["config-2", "pg-2", "rdf-2"]);
  // A hold on one member keeps its whole run.
  const held = decideRetention(candidates, { keepLast: 1 }, NOW, new Map([["rdf-0", { reason: "audit" }]]));
  const run0 = held.filter((d) => d.snapshot.id.endsWith("-0"));
  assert.equal(run0.length, 3);
  assert.ok(
    run0.every((d) => d.keep),
    JSON.stringify(run0),
  );
  assert.match(run0.find((d) => d.snapshot.id === "pg-0")!.reasons[0]!, /^hold: audit \(on rdf-0 of this run\)$/);
  // Without a group id every snapshot is its own unit.
  const alone = candidates.map(({ id, time, jobId }) => ({ id, time, jobId }));
  assert.equal(decideRetention(alone, { keepLast: 2 }, NOW, new Map()).filter((d) => d.keep).length, 2);
});

void test("a policy without a rule, bad numbers and unknown time zones are refused", () => {
  const c = snaps(["2026-11-20T00:00:00Z"]);
  for (const policy of [{}, { keepLast: 0, keepDaily: 0 }, { timeZone: "UTC" }, { keepWithinDays: 0 }]) {
    assert.throws(
      () => decideRetention(c, policy, NOW, new Map()),
      (err: unknown) => isCode(err, "INVALID_ARGUMENT") && /refusing to forget every snapshot/.test(err.message),
      JSON.stringify(policy),
    );
  }
  for (const policy of [{ keepLast: -1 }, { keepDaily: 1.5 }, { keepWithinDays: -2 }, { keepLast: Number.NaN }]) {
    assert.throws(
      () => decideRetention(c, policy, NOW, new Map()),
      (err: unknown) => isCode(err, "INVALID_ARGUMENT"),
    );
  }
  assert.throws(
    () => decideRetention(c, { keepDaily: 1, timeZone: "Mars/Olympus_Mons" }, NOW, new Map()),
    (err: unknown) => isCode(err, "INVALID_ARGUMENT") && /unknown time zone/.test(err.message),
  );
});

void test("forget deletes only manifests, honours holds, and a dry run changes nothing", async () => {
  await withTempDir(async (dir) => {
    const store = new LocalDirectoryStore(dir);
    const repo = await Repository.init(store, PASSWORD, FAST);
    try {
      const content = new Map([["a.bin", random(300_000)]]);
      const ids: string[] = [];
      for (let day = 20; day <= 24; day++) {
        const time = new Date(`2026-11-${day}T02:00:00Z`);
        ids.push((await backupFiles(repo, `run-${day}`, content, { time })).id);
      }
      const other = await backupFiles(repo, "other-job", content, { jobId: "job-2", time: new Date("2026-01-01") });
      const held = await repo.hold(ids[0]!.slice(0, 10), "legal", "alice");
      assert.deepEqual(held, {
        snapshotId: ids[0],
        reason: "legal",
        createdAt: held.createdAt,
        createdBy: "alice",
      });
      assert.deepEqual(
        (await repo.listHolds()).map((h) => h.snapshotId),
        [ids[0]],
      );

      const before = await fingerprint(store);
      const dry = await repo.forget({ policy: { keepLast: 2 }, jobId: "job-1", dryRun: true, now: NOW });
      assert.deepEqual(dry.removed, []);
      assert.deepEqual(await fingerprint(store), before, "a dry run changes nothing");
      assert.deepEqual(
        dry.decisions.filter((d) => !d.keep).map((d) => d.snapshot.id),
        [ids[2], ids[1]],
      );

      const result = await repo.forget({ policy: { keepLast: 2 }, jobId: "job-1", now: NOW });
      assert.deepEqual(result.removed.sort(), [ids[1], ids[2]].sort());
      const heldDecision = result.decisions.find((d) => d.snapshot.id === ids[0]);
      assert.deepEqual(heldDecision?.reasons, ["hold: legal"]);
      const after = await fingerprint(store);
      for (const [key, sha] of before) {
        const gone = key === `snapshots/${ids[1]}` || key === `snapshots/${ids[2]}`;
        assert.equal(after.get(key), gone ? undefined : sha, `${key} ${gone ? "deleted" : "unchanged"}`);
      }
      assert.equal(after.size, before.size - 2, "nothing was added");
      assert.deepEqual(await keysUnder(store, "locks/"), [], "the shared lock is released");
      assert.deepEqual((await repo.listSnapshots()).map((s) => s.id).sort(), [ids[0], ids[3], ids[4], other.id].sort());

      // The hold is released; the next forget may remove the snapshot.
      assert.equal(await repo.releaseHold(ids[0]!.slice(0, 8)), true);
      assert.equal(await repo.releaseHold(ids[0]!), false);
      const again = await repo.forget({ policy: { keepLast: 2 }, now: NOW });
      assert.deepEqual(again.removed, [ids[0]]);
      assert.ok(await repo.hasSnapshot(other.id), "the other job's group keeps its newest");
    } finally {
      await repo.close();
    }
  });
});

void test("hold on a missing snapshot is NOT_FOUND; an empty reason is refused", async () => {
  const { repo } = await newRepo();
  try {
    await assert.rejects(repo.hold("ab".repeat(32), "legal"), (err: unknown) => isCode(err, "NOT_FOUND"));
    await assert.rejects(repo.hold("abcdef", "legal"), (err: unknown) => isCode(err, "NOT_FOUND"));
    const s = await backupFiles(repo, "r", new Map([["f", random(10)]]));
    await assert.rejects(repo.hold(s.id, "  "), (err: unknown) => isCode(err, "INVALID_ARGUMENT"));
    assert.deepEqual(await repo.listHolds(), []);
  } finally {
    await repo.close();
  }
});

void test("forget does not run beside a prune's exclusive lock", async () => {
  const { store, repo } = await newRepo();
  const other = await Repository.open(store, PASSWORD, FAST);
  try {
    const s = await backupFiles(repo, "r1", new Map([["f", random(100)]]), { time: new Date("2026-11-01") });
    await backupFiles(repo, "r2", new Map([["f", random(100)]]), { time: new Date("2026-11-02") });
    const exclusive = await other.lock("exclusive", { purpose: "prune" });
    await assert.rejects(repo.forget({ policy: { keepLast: 1 } }), (err: unknown) => {
      assert.ok(isCode(err, "FAILED_PRECONDITION"), String(err));
      assert.match(err.message, /locked by prune on .* \(pid \d+\) since /);
      assert.equal(err.retryable, true);
      return true;
    });
    assert.ok(await repo.hasSnapshot(s.id), "nothing was forgotten");
    await exclusive.release();
    assert.deepEqual((await repo.forget({ policy: { keepLast: 1 } })).removed, [s.id]);
  } finally {
    await other.close();
    await repo.close();
  }
});

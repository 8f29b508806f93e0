import assert from "node:assert/strict";
import { after, before, describe, it } from "node:test";
import { Bus } from "@iotvault/bus";
import { isCode } from "@iotvault/errors";
import { BackupRequested, BackupType, Job, STREAMS, TriggerKind } from "@iotvault/proto";
import { startNats, type NatsServerHandle } from "@iotvault/testing";
import { CronLoop } from "./cron.js";
import { JobStore, validateJob } from "./jobs.js";
import { publishRun, runIdFor } from "./trigger.js";

const baseJob = (over: Partial<Job> = {}): Job =>
  Job.fromPartial({ name: "gateway", source: "fs:/srv/gateway", repository: "main", ...over });

describe("job validation", () => {
  it("accepts a good job and fills defaults", () => {
    const job = validateJob(baseJob({ schedule: "*/5 * * * *", timeZone: "Europe/Paris" }), { site: "edge-1" });
    assert.equal(job.site, "edge-1");
    assert.equal(job.backupType, BackupType.BACKUP_TYPE_INCREMENTAL);
  });

  for (const [field, over, pattern] of [
    ["name", { name: "Bad Name" }, /job name/],
    ["schedule", { schedule: "every day" }, /job schedule/],
    ["time zone", { schedule: "0 2 * * *", timeZone: "Mars/Olympus" }, /job time_zone/],
    ["source", { source: "ftp://x" }, /job source/],
    ["relative fs source", { source: "fs:relative/path" }, /must be absolute/],
    ["repository", { repository: "" }, /job repository/],
  ] as const) {
    it(`names the bad field: ${field}`, () => {
      assert.throws(
        () => validateJob(baseJob(over), { site: "default" }),
        (e: unknown) => isCode(e, "INVALID_ARGUMENT") && pattern.test(e.message),
      );
    });
  }
});

describe("cron loop", () => {
  it("fires each due time once, with the exact scheduled time, in the job's time zone", async () => {
    let now = new Date("2026-03-01T10:00:30Z");
    const fired: string[] = [];
    const loop = new CronLoop({
      fire: async (_job, at) => {
        fired.push(at.toISOString());
      },
      onError: () => undefined,
      now: () => now,
    });
    loop.set("j1", baseJob({ id: "j1", schedule: "*/5 * * * *", timeZone: "UTC" }));
    // 11:15 in Paris is 10:15 UTC on that date (CET, UTC+1).
    loop.set("j2", baseJob({ id: "j2", name: "b", schedule: "15 11 * * *", timeZone: "Europe/Paris" }));
    await loop.tick();
    assert.deepEqual(fired, []);
    now = new Date("2026-03-01T10:06:00Z");
    await loop.tick();
    assert.deepEqual(fired, ["2026-03-01T10:05:00.000Z"]);
    // A stall of ten minutes: 10:10 and 10:15 were due; only the latest fires (catch-up "skip").
    now = new Date("2026-03-01T10:16:00Z");
    await loop.tick();
    assert.deepEqual(fired, ["2026-03-01T10:05:00.000Z", "2026-03-01T10:15:00.000Z", "2026-03-01T10:15:00.000Z"]);
    await loop.tick();
    assert.equal(fired.length, 3);
  });

  it("retries a time whose publish failed, and forgets paused or deleted jobs", async () => {
    let now = new Date("2026-03-01T10:00:30Z");
    let fail = true;
    const fired: string[] = [];
    const errors: unknown[] = [];
    const loop = new CronLoop({
      fire: async (_job, at) => {
        if (fail) throw new Error("nats down");
        fired.push(at.toISOString());
      },
      onError: (_job, err) => errors.push(err),
      now: () => now,
    });
    loop.set("j1", baseJob({ id: "j1", schedule: "* * * * *" }));
    now = new Date("2026-03-01T10:01:10Z");
    await loop.tick();
    assert.equal(errors.length, 1);
    fail = false;
    await loop.tick();
    assert.deepEqual(fired, ["2026-03-01T10:01:00.000Z"]);
    loop.set("j1", baseJob({ id: "j1", schedule: "* * * * *", paused: true }));
    now = new Date("2026-03-01T10:05:10Z");
    await loop.tick();
    assert.equal(fired.length, 1);
  });
});

describe("jobs and triggers on real NATS JetStream", () => {
  let nats: NatsServerHandle;
  let bus: Bus;
  let jobs: JobStore;

  before(async () => {
    nats = await startNats();
    bus = await Bus.connect({ url: nats.url, name: "scheduler-test" });
    await bus.ensureStreams({ duplicateWindowMs: 60_000 });
    jobs = await JobStore.open(bus.nc);
  });
  after(async () => {
    await bus?.close();
    await nats?.stop();
  });

  it("creates, finds by name and id, updates and deletes jobs; names are unique", async () => {
    const job = await jobs.create(baseJob({ name: "plc-1" }), { site: "default" });
    assert.match(job.id, /^[0-9a-f-]{36}$/);
    assert.equal((await jobs.get("plc-1")).id, job.id);
    assert.equal((await jobs.get(job.id)).name, "plc-1");
    await assert.rejects(jobs.create(baseJob({ name: "plc-1" }), { site: "default" }), (e: unknown) =>
      isCode(e, "ALREADY_EXISTS"),
    );
    const renamed = await jobs.update({ ...job, name: "plc-2", schedule: "0 3 * * *" }, { site: "default" });
    assert.equal(renamed.schedule, "0 3 * * *");
    assert.equal(await jobs.find("plc-1"), undefined);
    assert.equal(
      (await jobs.list()).some((j) => j.name === "plc-2"),
      true,
    );
    await jobs.delete("plc-2");
    await assert.rejects(jobs.get("plc-2"), (e: unknown) => isCode(e, "NOT_FOUND"));
    // The name is free again.
    await jobs.create(baseJob({ name: "plc-2" }), { site: "default" });
  });

  it("publishes one work item per (job, scheduled time): a second replica's publish is a duplicate", async () => {
    const job = await jobs.create(baseJob({ name: "dedup" }), { site: "site-a" });
    const at = new Date("2026-05-01T02:00:00Z");
    const first = await publishRun(bus, job, {
      scheduledAt: at,
      trigger: TriggerKind.TRIGGER_KIND_SCHEDULE,
      requestedBy: "replica-1",
    });
    const second = await publishRun(bus, job, {
      scheduledAt: at,
      trigger: TriggerKind.TRIGGER_KIND_SCHEDULE,
      requestedBy: "replica-2",
    });
    assert.equal(first.duplicate, false);
    assert.equal(second.duplicate, true);
    assert.equal(first.runId, second.runId);
    assert.equal(first.runId, runIdFor(job.id, at));
    const info = await bus.jsm.streams.info(STREAMS.work.name);
    assert.equal(info.state.messages, 1);
    const msg = await bus.jsm.streams.getMessage(STREAMS.work.name, { last_by_subj: "iotvault.work.backup.site-a" });
    const payload = BackupRequested.fromJSON(JSON.parse(new TextDecoder().decode(msg!.data)));
    assert.equal(payload.runId, first.runId);
    assert.equal(payload.job?.name, "dedup");
    assert.equal(payload.backupType, BackupType.BACKUP_TYPE_INCREMENTAL);
    assert.equal(msg!.header.get("Nats-Msg-Id"), `${job.id}:${at.toISOString()}`);
  });
});

/**
 * One backup run against a real NATS JetStream (events) and an in-memory repository store
 * (the storage-gateway path is covered by the end-to-end suite).
 */
import assert from "node:assert/strict";
import { after, before, describe, it } from "node:test";
import { Bus, type BusMessage } from "@iotvault/bus";
import { IotvaultError, isCode } from "@iotvault/errors";
import { BackupRequested, BackupType, EVENT_TYPES, Job, STREAMS, TriggerKind, type EventName } from "@iotvault/proto";
import { Repository } from "@iotvault/repo";
import { makeGatewayTree } from "@iotvault/sample";
import { MemoryStore, type ObjectStore } from "@iotvault/storage";
import { createLogger } from "@iotvault/telemetry";
import { startNats, tempDir, type NatsServerHandle, type TempDir } from "@iotvault/testing";
import { announceDeadLetteredRun, runBackup, type BackupRunDeps } from "./backup-run.js";

const PASSWORD = Buffer.from("executor test passphrase");
const OPTIONS = { scryptLogN: 10, packSizeBytes: 4 << 20, compressionLevel: 3, workers: 1 };

describe("executor backup run", () => {
  let nats: NatsServerHandle;
  let bus: Bus;
  let dir: TempDir;
  let seq = 0;

  before(async () => {
    nats = await startNats();
    bus = await Bus.connect({ url: nats.url, name: "executor-test" });
    await bus.ensureStreams();
    dir = await tempDir("iotvault-executor-");
    await makeGatewayTree(`${dir.path}/src`, { sizeBytes: 1 << 20, seed: 5 });
  });
  after(async () => {
    await bus?.close();
    await nats?.stop();
    await dir?.cleanup();
  });

  const deps = (store: ObjectStore, over: Partial<BackupRunDeps> = {}): BackupRunDeps => ({
    bus,
    storeFor: () => store,
    password: () => PASSWORD,
    repositoryOptions: OPTIONS,
    maxDeliver: 3,
    progressIntervalMs: 100,
    logger: createLogger({ service: "executor-test", level: "error" }),
    ...over,
  });

  const work = (
    runId: string,
    source = `fs:${dir.path}/src`,
    attempt = 1,
    signal = new AbortController().signal,
  ): BusMessage<BackupRequested> => ({
    subject: "iotvault.work.backup.default",
    type: "iotvault.v1.BackupRequested",
    payload: BackupRequested.fromPartial({
      runId,
      job: Job.fromPartial({
        id: "job-1",
        name: "gw",
        source,
        repository: "main",
        site: "default",
        backupType: BackupType.BACKUP_TYPE_INCREMENTAL,
      }),
      backupType: BackupType.BACKUP_TYPE_INCREMENTAL,
      trigger: TriggerKind.TRIGGER_KIND_MANUAL,
      scheduledAt: new Date(),
    }),
    msgId: runId,
    deliveryCount: attempt,
    streamSequence: ++seq,
    headers: {},
    signal,
    working: () => undefined,
  });

  /** The events of one run, in stream order: [type, payload]. */
  async function eventsOf(runId: string): Promise<[string, any][]> {
    const out: [string, any][] = [];
    const info = await bus.jsm.streams.info(STREAMS.events.name);
    for (let s = info.state.first_seq; s <= info.state.last_seq; s++) {
      const m = await bus.jsm.streams.getMessage(STREAMS.events.name, { seq: s }).catch(() => null);
      if (!m) continue;
      const type = m.header.get("Iotvault-Event-Type") as EventName;
      const payload = EVENT_TYPES[type].fromJSON(JSON.parse(new TextDecoder().decode(m.data))) as { runId?: string };
      if (payload.runId === runId) out.push([type.replace("iotvault.v1.", ""), payload]);
    }
    return out;
  }

  it("commits a snapshot and announces started then completed with the stats", async () => {
    const store = new MemoryStore();
    await (await Repository.init(store, PASSWORD, OPTIONS)).close();
    await runBackup(deps(store), work("run-ok"));
    const events = await eventsOf("run-ok");
    assert.deepEqual(
      events.map(([t]) => t).filter((t) => t !== "BackupProgress"),
      ["BackupStarted", "BackupCompleted"],
    );
    const completed = events.at(-1)![1];
    assert.ok(completed.stats.filesNew > 100n);
    const repo = await Repository.open(store, PASSWORD, OPTIONS);
    try {
      assert.equal(completed.snapshotId, repo.snapshotIdFor("run-ok"));
      assert.equal((await repo.listSnapshots()).length, 1);
    } finally {
      await repo.close();
    }
  });

  it("a redelivered run whose snapshot is committed is only announced again", async () => {
    const store = new MemoryStore();
    await (await Repository.init(store, PASSWORD, OPTIONS)).close();
    await runBackup(deps(store), work("run-twice"));
    await runBackup(deps(store), work("run-twice", undefined, 2));
    const events = (await eventsOf("run-twice")).map(([t]) => t).filter((t) => t !== "BackupProgress");
    assert.deepEqual(
      events,
      ["BackupStarted", "BackupCompleted"],
      "the second completed has the same message id and is deduplicated",
    );
    const repo = await Repository.open(store, PASSWORD, OPTIONS);
    assert.equal((await repo.listSnapshots()).length, 1);
    await repo.close();
  });

  it("a bad source is a permanent failure: failed with willRetry false, and the error is thrown", async () => {
    const store = new MemoryStore();
    await (await Repository.init(store, PASSWORD, OPTIONS)).close();
    await assert.rejects(
      runBackup(deps(store), work("run-bad", "ftp://nowhere")),
      (e: unknown) => isCode(e, "INVALID_ARGUMENT") && !e.retryable,
    );
    const [type, failed] = (await eventsOf("run-bad"))[0]!;
    assert.equal(type, "BackupFailed");
    assert.equal(failed.willRetry, false);
    assert.equal(failed.error.code, "INVALID_ARGUMENT");
  });

  it("an unreachable store is retryable: failed with willRetry true before the last delivery, false on it", async () => {
    const down: ObjectStore = Object.assign(new MemoryStore(), {
      get: async () => {
        throw new IotvaultError("UNAVAILABLE", "cannot reach the storage-gateway service");
      },
    });
    await assert.rejects(runBackup(deps(down), work("run-down", undefined, 1)), (e: unknown) =>
      isCode(e, "UNAVAILABLE"),
    );
    await assert.rejects(runBackup(deps(down), work("run-down", undefined, 3)), (e: unknown) =>
      isCode(e, "UNAVAILABLE"),
    );
    const failures = (await eventsOf("run-down")).map(([, p]) => [p.attempt, p.willRetry]);
    assert.deepEqual(failures, [
      [1, true],
      [3, false],
    ]);
  });

  it("an executor stopping mid-run does not announce the run's end", async () => {
    const store = new MemoryStore();
    await (await Repository.init(store, PASSWORD, OPTIONS)).close();
    const stop = new AbortController();
    stop.abort();
    await assert.rejects(runBackup(deps(store), work("run-stop", undefined, 3, stop.signal)));
    const events = await eventsOf("run-stop");
    assert.ok(!events.some(([t]) => t === "BackupCompleted"));
    const [, failed] = events.find(([t]) => t === "BackupFailed")!;
    assert.equal(failed.willRetry, true, "the work item is delivered again: not a final failure");
    assert.equal(failed.error.code, "CANCELLED");
  });

  it("announces the final failure of a run dead-lettered behind its back, once", async () => {
    const payload = work("run-abandoned").payload;
    await announceDeadLetteredRun(bus, { reason: "max deliveries reached", deliveries: 3, payload });
    await announceDeadLetteredRun(bus, { reason: "max deliveries reached", deliveries: 3, payload });
    await announceDeadLetteredRun(bus, { reason: "malformed payload", deliveries: 1, payload: undefined });
    const events = await eventsOf("run-abandoned");
    assert.equal(events.length, 1);
    assert.equal(events[0]![1].willRetry, false);
    assert.match(events[0]![1].error.message, /abandoned: max deliveries reached/);
  });
});

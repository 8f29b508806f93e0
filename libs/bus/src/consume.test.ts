import assert from "node:assert/strict";
import { setTimeout as sleep } from "node:timers/promises";
import { test } from "node:test";
import { BackupCompleted, BackupRequested, JobCreated, STREAMS, SUBJECTS } from "@iotvault/proto";
import { IotvaultError, isCode } from "@iotvault/errors";
import { waitFor } from "@iotvault/testing";
import { defaultRetryDelayMs, EVENT_TYPE_HEADER, type BusMessage } from "./index.js";
import {
  backupRequest,
  busFixture,
  deadLetters,
  gate,
  publishRaw,
  publishWork,
  recordingLogger,
  storedCount,
  workConsumer,
} from "./test-helpers.js";

const WORK = STREAMS.work.name;

void test("a handler that resolves acks the message and the work item is removed", async () => {
  const f = await busFixture();
  try {
    const seen: BusMessage<BackupRequested>[] = [];
    const consumer = await f.bus.consume(workConsumer({ handler: async (m) => void seen.push(m) }));
    const seq = await publishWork(f.bus, "run-1");
    await waitFor(() => seen.length === 1, { what: "the work item to be handled" });
    await waitFor(async () => (await storedCount(f.bus, WORK)) === 0, {
      what: "the acked work item to leave the work queue",
    });
    const m = seen[0]!;
    assert.equal(m.subject, SUBJECTS.workBackup("site1"));
    assert.equal(m.type, "iotvault.v1.BackupRequested");
    assert.deepEqual(m.payload, backupRequest("run-1"));
    assert.equal(m.msgId, "run-1");
    assert.equal(m.deliveryCount, 1);
    assert.equal(m.streamSequence, seq);
    assert.equal(m.headers[EVENT_TYPE_HEADER], "iotvault.v1.BackupRequested");
    assert.equal(m.signal.aborted, false);
    await consumer.stop();
    assert.equal(m.signal.aborted, true, "stop() aborts the handlers' signal");
    assert.deepEqual(await deadLetters(f.bus), []);
  } finally {
    await f.close();
  }
});

void test("a retryable failure is redelivered after the nak delay, then acked", async () => {
  const f = await busFixture();
  try {
    const deliveries: { count: number; at: number }[] = [];
    const logger = recordingLogger();
    await f.bus.consume(
      workConsumer({
        logger,
        retryDelayMs: (n) => 300 * n,
        handler: async (m) => {
          deliveries.push({ count: m.deliveryCount, at: Date.now() });
          if (m.deliveryCount < 3) throw new IotvaultError("UNAVAILABLE", "storage-gateway is down");
        },
      }),
    );
    await publishWork(f.bus, "run-1");
    await waitFor(async () => deliveries.length === 3 && (await storedCount(f.bus, WORK)) === 0, {
      what: "three deliveries and an ack",
    });
    assert.deepEqual(
      deliveries.map((d) => d.count),
      [1, 2, 3],
    );
    assert.ok(deliveries[1]!.at - deliveries[0]!.at >= 250, "first redelivery waited for the nak delay (300 ms)");
    assert.ok(deliveries[2]!.at - deliveries[1]!.at >= 550, "second redelivery waited longer (600 ms)");
    assert.equal(logger.entries.filter((e) => e.msg === "handler failed, will retry").length, 2);
    assert.deepEqual(await deadLetters(f.bus), []);
  } finally {
    await f.close();
  }
});

void test("the default retry delay doubles from 1 s and is capped at 30 s", () => {
  assert.deepEqual([1, 2, 3, 4, 5, 6, 20].map(defaultRetryDelayMs), [1000, 2000, 4000, 8000, 16000, 30000, 30000]);
});

void test("a permanent failure is dead-lettered with the reason, the original bytes and headers, and terminated", async () => {
  const f = await busFixture();
  try {
    let calls = 0;
    await f.bus.consume(
      workConsumer({
        handler: async () => {
          calls++;
          throw new IotvaultError("INVALID_ARGUMENT", "source fs:/srv/plant does not exist", { hint: "fix the job" });
        },
      }),
    );
    const seq = await publishWork(f.bus, "run-1");
    const original = await f.bus.jsm.streams.getMessage(WORK, { seq });
    const [letter] = await waitFor(async () => {
      const letters = await deadLetters(f.bus);
      return letters.length > 0 && letters;
    });
    assert.ok(letter);
    assert.equal(letter.subject, SUBJECTS.workBackup("site1"));
    assert.equal(letter.stream, WORK);
    assert.equal(letter.streamSequence, BigInt(seq));
    assert.equal(letter.consumer, "executor-site1");
    assert.equal(letter.deliveries, 1);
    assert.equal(
      letter.reason,
      "permanent error: INVALID_ARGUMENT: source fs:/srv/plant does not exist (hint: fix the job)",
    );
    assert.deepEqual(letter.payload, Buffer.from(original!.data));
    assert.equal(letter.headers["Nats-Msg-Id"], "run-1");
    assert.equal(letter.headers[EVENT_TYPE_HEADER], "iotvault.v1.BackupRequested");
    assert.ok(letter.at instanceof Date);
    // The dead letter itself is a typed, idempotent message on iotvault.dlq.<subject>.
    const stored = await f.bus.jsm.streams.getMessage(STREAMS.deadLetter.name, { seq: 1 });
    assert.equal(stored?.subject, `iotvault.dlq.${SUBJECTS.workBackup("site1")}`);
    assert.equal(stored?.header.get(EVENT_TYPE_HEADER), "iotvault.v1.DeadLetter");
    assert.equal(stored?.header.get("Nats-Msg-Id"), `dlq:${WORK}:${seq}`);
    await waitFor(async () => (await storedCount(f.bus, WORK)) === 0, { what: "term() to remove the work item" });
    await sleep(1300); // longer than ackWait: a terminated message is never redelivered
    assert.equal(calls, 1);
    assert.equal((await f.bus.jsm.consumers.info(WORK, "executor-site1")).delivered.consumer_seq, 1);
  } finally {
    await f.close();
  }
});

void test("an error that is not an IotvaultError is permanent; a retryable one on the last delivery is dead-lettered", async () => {
  const f = await busFixture();
  try {
    await f.bus.consume(
      workConsumer({
        durable: "site1",
        handler: async () => {
          throw new TypeError("cannot read properties of undefined");
        },
      }),
    );
    await f.bus.consume(
      workConsumer({
        durable: "site2",
        filterSubject: SUBJECTS.workBackup("site2"),
        maxDeliver: 2,
        handler: async () => {
          throw new IotvaultError("UNAVAILABLE", "gateway unreachable");
        },
      }),
    );
    await publishWork(f.bus, "run-1");
    await f.bus.publish(SUBJECTS.workBackup("site2"), BackupRequested, backupRequest("run-2"), { msgId: "run-2" });
    const letters = await waitFor(async () => {
      const all = await deadLetters(f.bus);
      return all.length === 2 && all;
    });
    const bySite = new Map(letters.map((l) => [l.consumer, l]));
    assert.equal(bySite.get("site1")?.reason, "permanent error: INTERNAL: cannot read properties of undefined");
    assert.equal(bySite.get("site1")?.deliveries, 1);
    assert.match(
      bySite.get("site2")?.reason ?? "",
      /^retryable error on the last delivery \(2 of 2\): UNAVAILABLE: gateway unreachable/,
    );
    assert.equal(bySite.get("site2")?.deliveries, 2);
    await waitFor(async () => (await storedCount(f.bus, WORK)) === 0, { what: "both items to leave the work queue" });
  } finally {
    await f.close();
  }
});

void test("malformed payloads are dead-lettered once and never reach the handler", async () => {
  const f = await busFixture();
  try {
    let calls = 0;
    await f.bus.consume(workConsumer({ handler: async () => void calls++ }));
    const subject = SUBJECTS.workBackup("site1");
    const type = { [EVENT_TYPE_HEADER]: "iotvault.v1.BackupRequested" };
    const cases: [string, Record<string, string>, RegExp][] = [
      ['{"runId":"r"}', {}, /^malformed payload: no Iotvault-Event-Type header$/],
      [
        '{"runId":"r"}',
        { [EVENT_TYPE_HEADER]: "iotvault.v1.NoSuchThing" },
        /^malformed payload: unexpected event type iotvault\.v1\.NoSuchThing$/,
      ],
      [
        '{"job":{}}',
        { [EVENT_TYPE_HEADER]: "iotvault.v1.JobCreated" },
        /^malformed payload: unexpected event type iotvault\.v1\.JobCreated$/,
      ],
      ["run r please", type, /^malformed payload: not UTF-8 JSON/],
      ["[]", type, /^malformed payload: expected a JSON object, got an array$/],
      ['{"runId":7}', type, /^malformed payload: field runId: expected a string, got number$/],
    ];
    for (const [data, h] of cases) await publishRaw(f.bus, subject, data, h);
    const letters = await waitFor(async () => {
      const all = await deadLetters(f.bus);
      return all.length === cases.length && all;
    });
    letters.sort((a, b) => Number(a.streamSequence - b.streamSequence));
    cases.forEach(([data, , reason], i) => {
      assert.match(letters[i]!.reason, reason);
      assert.equal(letters[i]!.deliveries, 1);
      assert.equal(Buffer.from(letters[i]!.payload).toString(), data);
    });
    await waitFor(async () => (await storedCount(f.bus, WORK)) === 0, { what: "the malformed items to be terminated" });
    await sleep(1200);
    assert.equal(calls, 0);
    const info = await f.bus.jsm.consumers.info(WORK, "executor-site1");
    assert.equal(info.delivered.consumer_seq, cases.length, "each malformed message was delivered exactly once");
    assert.equal((await deadLetters(f.bus)).length, cases.length, "no second dead letter");
  } finally {
    await f.close();
  }
});

void test("a message whose dead letter cannot be written is kept and dead-lettered later", async () => {
  const f = await busFixture();
  try {
    const logger = recordingLogger();
    await f.bus.jsm.streams.delete(STREAMS.deadLetter.name); // e.g. an operator removed it
    await f.bus.consume(
      workConsumer({
        logger,
        maxDeliver: 10,
        retryDelayMs: () => 500,
        handler: async () => {
          throw new IotvaultError("INVALID_ARGUMENT", "bad job");
        },
      }),
    );
    await publishWork(f.bus, "run-1");
    await waitFor(() => logger.entries.some((e) => e.msg === "cannot write the dead letter; the message is kept"), {
      what: "the failed dead letter to be reported",
    });
    assert.equal(await storedCount(f.bus, WORK), 1, "the work item is kept, not terminated");
    await f.bus.ensureStreams();
    const [letter] = await waitFor(async () => {
      const letters = await deadLetters(f.bus);
      return letters.length > 0 && letters;
    });
    assert.equal(letter!.reason, "permanent error: INVALID_ARGUMENT: bad job");
    assert.ok(letter!.deliveries >= 2);
    await waitFor(async () => (await storedCount(f.bus, WORK)) === 0, { what: "term() after the dead letter" });
  } finally {
    await f.close();
  }
});

void test('"any-event" decodes every iotvault payload type by its header', async () => {
  const f = await busFixture();
  try {
    const seen: BusMessage<unknown>[] = [];
    await f.bus.consume<unknown>({
      stream: STREAMS.events.name,
      durable: "audit",
      filterSubject: "iotvault.events.>",
      accept: "any-event",
      ackWaitMs: 2000,
      maxDeliver: 3,
      handler: async (m) => void seen.push(m),
      logger: recordingLogger(),
    });
    const completed = BackupCompleted.fromPartial({
      runId: "run-1",
      snapshotId: "snap-1",
      finishedAt: new Date("2026-11-25T10:05:00Z"),
    });
    await f.bus.publish(SUBJECTS.backupCompleted, BackupCompleted, completed, { msgId: "run-1:completed" });
    await f.bus.publish(SUBJECTS.jobCreated, JobCreated, JobCreated.fromPartial({ job: { id: "j", name: "n" } }), {
      msgId: "j:created",
    });
    await waitFor(() => seen.length === 2, { what: "both events" });
    assert.deepEqual(
      seen.map((m) => m.type),
      ["iotvault.v1.BackupCompleted", "iotvault.v1.JobCreated"],
    );
    assert.deepEqual(seen[0]!.payload, completed);
    assert.equal(await storedCount(f.bus, STREAMS.events.name), 2, "acks do not remove events from a limits stream");
  } finally {
    await f.close();
  }
});

void test("handlers run concurrently up to `concurrency`, never more", async () => {
  const f = await busFixture();
  try {
    let running = 0;
    let peak = 0;
    let done = 0;
    const hold = gate();
    await f.bus.consume(
      workConsumer({
        concurrency: 3,
        handler: async () => {
          running++;
          peak = Math.max(peak, running);
          await hold.promise;
          running--;
          done++;
        },
      }),
    );
    for (let i = 0; i < 7; i++) await publishWork(f.bus, `run-${i}`);
    await waitFor(() => running === 3, { what: "three handlers running" });
    await sleep(300);
    assert.equal(running, 3, "the fourth message waits for a free slot");
    hold.open();
    await waitFor(() => done === 7, { what: "all seven handled" });
    assert.equal(peak, 3);
    await waitFor(async () => (await storedCount(f.bus, WORK)) === 0);
  } finally {
    await f.close();
  }
});

void test("consumer config is created, then updated idempotently; overlapping work-queue filters are refused", async () => {
  const f = await busFixture();
  try {
    const handler = async (): Promise<void> => undefined;
    const first = await f.bus.consume(workConsumer({ handler }));
    let info = await f.bus.jsm.consumers.info(WORK, "executor-site1");
    assert.equal(info.config.ack_policy, "explicit");
    assert.equal(info.config.ack_wait, 1e9);
    assert.equal(info.config.max_deliver, 3);
    assert.equal(info.config.filter_subject, "iotvault.work.backup.site1");
    await first.stop();
    const second = await f.bus.consume(workConsumer({ handler, ackWaitMs: 2000, maxDeliver: 5 }));
    const replica = await (
      await f.connect("replica")
    ).consume(workConsumer({ handler, ackWaitMs: 2000, maxDeliver: 5 }));
    info = await f.bus.jsm.consumers.info(WORK, "executor-site1");
    assert.equal(info.config.ack_wait, 2e9);
    assert.equal(info.config.max_deliver, 5);
    await assert.rejects(
      f.bus.consume(workConsumer({ handler, durable: "greedy", filterSubject: "iotvault.work.backup.>" })),
      (err: unknown) => {
        assert.ok(isCode(err, "FAILED_PRECONDITION"));
        assert.equal(
          err.message,
          "consumer greedy: filter iotvault.work.backup.> overlaps the filter of another consumer of work-queue stream IOTVAULT_WORK",
        );
        assert.match(err.hint ?? "", /exactly one durable consumer/);
        return true;
      },
    );
    await Promise.all([second.stop(), replica.stop()]);
  } finally {
    await f.close();
  }
});

void test("a consumer whose durable was deleted under it creates it again and goes on", async () => {
  const f = await busFixture();
  try {
    const seen: string[] = [];
    const logger = recordingLogger();
    await f.bus.consume(workConsumer({ logger, handler: async (m) => void seen.push(m.payload.runId) }));
    await publishWork(f.bus, "before");
    await waitFor(() => seen.length === 1, { what: "the first item" });
    await f.bus.jsm.consumers.delete(WORK, "executor-site1");
    await publishWork(f.bus, "after");
    await waitFor(() => seen.includes("after"), { timeoutMs: 15_000, what: "an item after the consumer was deleted" });
    assert.ok(logger.entries.some((e) => e.msg === "the durable consumer was deleted; created it again"));
    assert.equal((await f.bus.jsm.consumers.info(WORK, "executor-site1")).config.max_deliver, 3);
  } finally {
    await f.close();
  }
});

void test("consume() rejects invalid options and a missing stream with clear errors", async () => {
  const f = await busFixture();
  try {
    const handler = async (): Promise<void> => undefined;
    const invalid = async (overrides: Parameters<typeof workConsumer>[0], pattern: RegExp): Promise<void> =>
      assert.rejects(
        f.bus.consume(workConsumer(overrides)),
        (err: unknown) => isCode(err, "INVALID_ARGUMENT") && pattern.test(err.message),
      );
    await invalid({ handler, durable: "a.b" }, /invalid durable name "a\.b"/);
    await invalid({ handler, maxDeliver: 0 }, /maxDeliver must be an integer >= 1/);
    await invalid({ handler, ackWaitMs: 10 }, /ackWaitMs must be an integer >= 100/);
    await invalid({ handler, concurrency: 0 }, /concurrency must be an integer >= 1/);
    await invalid({ handler, accept: [] }, /accept lists no payload type/);
    await f.bus.jsm.streams.delete(STREAMS.work.name);
    await assert.rejects(f.bus.consume(workConsumer({ handler })), (err: unknown) => {
      assert.ok(isCode(err, "FAILED_PRECONDITION"));
      assert.equal(err.message, "stream IOTVAULT_WORK does not exist");
      assert.match(err.hint ?? "", /ensureStreams/);
      return true;
    });
  } finally {
    await f.close();
  }
});

void test("the dead-letter hook hears of every dead letter, with the decoded payload when there is one", async () => {
  const f = await busFixture();
  try {
    const notices: { subject: string; reason: string; runId: string | undefined }[] = [];
    await f.bus.consume(
      workConsumer({
        handler: async () => {
          throw new IotvaultError("INVALID_ARGUMENT", "bad source");
        },
        onDeadLetter: async (n) => {
          notices.push({ subject: n.subject, reason: n.reason, runId: n.payload?.runId });
          throw new Error("a failing hook is logged, not thrown");
        },
      }),
    );
    await publishWork(f.bus, "run-hook");
    await publishRaw(f.bus, SUBJECTS.workBackup("site1"), "{broken", {
      [EVENT_TYPE_HEADER]: "iotvault.v1.BackupRequested",
    });
    await waitFor(() => notices.length === 2 || undefined, { what: "two dead-letter notices" });
    const byRun = notices.find((n) => n.runId === "run-hook");
    assert.match(byRun?.reason ?? "", /permanent error: INVALID_ARGUMENT: bad source/);
    const malformed = notices.find((n) => n.runId === undefined);
    assert.match(malformed?.reason ?? "", /malformed payload/);
  } finally {
    await f.close();
  }
});

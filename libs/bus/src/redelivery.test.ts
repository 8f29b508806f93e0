import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { once } from "node:events";
import { createInterface } from "node:readline";
import { setTimeout as sleep } from "node:timers/promises";
import { test } from "node:test";
import { AckPolicy } from "@nats-io/jetstream";
import { nanos } from "@nats-io/transport-node";
import { BackupRequested, STREAMS, SUBJECTS } from "@iotvault/proto";
import { IotvaultError } from "@iotvault/errors";
import { waitFor } from "@iotvault/testing";
import type { BusMessage } from "./index.js";
import {
  backupRequest,
  busFixture,
  deadLetters,
  gate,
  publishWork,
  recordingLogger,
  storedCount,
  workConsumer,
} from "./test-helpers.js";

const WORK = STREAMS.work.name;
const INDEX_URL = new URL("./index.js", import.meta.url).href;
const PROTO_URL = import.meta.resolve("@iotvault/proto");

void test("in-progress heartbeats keep a handler that outlasts ackWait from being redelivered", async () => {
  const f = await busFixture();
  try {
    const deliveries: string[] = [];
    const slow = async (m: BusMessage<BackupRequested>): Promise<void> => {
      deliveries.push(`first:${m.deliveryCount}`);
      await sleep(2600); // 2.6 x ackWait
    };
    await f.bus.consume(workConsumer({ ackWaitMs: 1000, handler: slow }));
    // A second replica on the same durable would get the message if it were redelivered.
    await (
      await f.connect("replica")
    ).consume(
      workConsumer({ ackWaitMs: 1000, handler: async (m) => void deliveries.push(`replica:${m.deliveryCount}`) }),
    );
    await publishWork(f.bus, "run-1");
    await waitFor(async () => (await storedCount(f.bus, WORK)) === 0, {
      timeoutMs: 6000,
      what: "the slow handler to finish and ack",
    });
    assert.equal(deliveries.length, 1, `delivered once, got ${deliveries.join(", ")}`);
    assert.match(deliveries[0]!, /:1$/);
  } finally {
    await f.close();
  }
});

void test("stop() waits for in-flight handlers and leaves unfinished messages unacked for another consumer", async () => {
  const f = await busFixture();
  try {
    const started = gate();
    let sawAbort = false;
    const first = await f.bus.consume(
      workConsumer({
        handler: async (m) => {
          started.open();
          await once(m.signal, "abort");
          sawAbort = true;
          throw new IotvaultError("CANCELLED", "stopping");
        },
      }),
    );
    await publishWork(f.bus, "run-1");
    await started.promise;
    await first.stop();
    assert.ok(sawAbort, "the handler's signal was aborted and stop() waited for it");
    const stoppedAt = Date.now();
    const other = await f.connect("replica");
    const redelivered = gate();
    let delivery: BusMessage<BackupRequested> | undefined;
    await other.consume(
      workConsumer({
        handler: async (m) => {
          delivery = m;
          redelivered.open();
        },
      }),
    );
    await redelivered.promise;
    assert.equal(delivery?.deliveryCount, 2);
    assert.equal(delivery?.payload.runId, "run-1");
    assert.ok(Date.now() - stoppedAt >= 500, "redelivered after ackWait, not at once (no nak)");
    assert.deepEqual(await deadLetters(f.bus), [], "an unfinished message is not a failure");
    await waitFor(async () => (await storedCount(f.bus, WORK)) === 0);
  } finally {
    await f.close();
  }
});

void test("a worker process killed mid-message gets its message redelivered to another consumer", async () => {
  const f = await busFixture();
  const script = `
    import { Bus } from ${JSON.stringify(INDEX_URL)};
    import { BackupRequested, STREAMS, SUBJECTS } from ${JSON.stringify(PROTO_URL)};
    const bus = await Bus.connect({ url: ${JSON.stringify(f.nats.url)}, name: "doomed-worker" });
    await bus.consume({
      stream: STREAMS.work.name, durable: "executor-site1", filterSubject: SUBJECTS.workBackup("site1"),
      accept: [BackupRequested], ackWaitMs: 1000, maxDeliver: 3,
      handler: async (m) => { console.log("working " + m.payload.runId); await new Promise(() => {}); },
    });
    console.log("ready");`;
  const child = spawn(process.execPath, ["--input-type=module", "-e", script], {
    stdio: ["ignore", "pipe", "inherit"],
  });
  try {
    const lines = createInterface({ input: child.stdout });
    const next = async (): Promise<string> => {
      const [line] = (await once(lines, "line")) as [string];
      return line;
    };
    assert.equal(await next(), "ready");
    await publishWork(f.bus, "run-1");
    assert.equal(await next(), "working run-1");
    await sleep(1500); // the child's heartbeats keep the message alive past ackWait ...
    child.kill("SIGKILL"); // ... until the process dies without a word
    await once(child, "exit");
    const redelivered = gate();
    let delivery: BusMessage<BackupRequested> | undefined;
    await f.bus.consume(
      workConsumer({
        handler: async (m) => {
          delivery = m;
          redelivered.open();
        },
      }),
    );
    await redelivered.promise;
    assert.equal(delivery?.payload.runId, "run-1");
    assert.equal(delivery?.deliveryCount, 2);
    await waitFor(async () => (await storedCount(f.bus, WORK)) === 0);
  } finally {
    child.kill("SIGKILL");
    await f.close();
  }
});

void test("a message that hits max deliveries without a verdict is dead-lettered from the advisory", async () => {
  const f = await busFixture();
  try {
    const durable = "executor-site1";
    await f.bus.jsm.consumers.add(WORK, {
      durable_name: durable,
      ack_policy: AckPolicy.Explicit,
      ack_wait: nanos(700),
      max_deliver: 2,
      filter_subject: SUBJECTS.workBackup("site1"),
    });
    const seq = await publishWork(f.bus, "run-1");
    // Two workers take the message and die without acking (simulated at the protocol level).
    const raw = await f.bus.js.consumers.get(WORK, durable);
    for (let i = 1; i <= 2; i++) {
      const taken = await waitFor(async () => (await raw.next({ expires: 1000 })) ?? undefined, {
        timeoutMs: 3000,
        what: `delivery ${i}`,
      });
      assert.equal(taken.info.deliveryCount, i);
    }
    await sleep(900); // the last delivery's ackWait runs out
    let calls = 0;
    const logger = recordingLogger();
    await f.bus.consume(workConsumer({ ackWaitMs: 700, maxDeliver: 2, logger, handler: async () => void calls++ }));
    const [letter] = await waitFor(async () => {
      const letters = await deadLetters(f.bus);
      return letters.length > 0 && letters;
    });
    assert.match(letter!.reason, /^max deliveries reached \(2\) without a verdict from a handler/);
    assert.equal(letter!.streamSequence, BigInt(seq));
    assert.equal(letter!.deliveries, 2);
    assert.equal(letter!.consumer, durable);
    assert.equal(letter!.headers["Nats-Msg-Id"], "run-1");
    assert.equal(JSON.parse(Buffer.from(letter!.payload).toString()).runId, "run-1");
    await waitFor(async () => (await storedCount(f.bus, WORK)) === 0, {
      what: "the dead work item to be removed from the work queue",
    });
    assert.equal(calls, 0);
    assert.ok(logger.entries.some((e) => e.msg === "message dead-lettered after max deliveries"));
  } finally {
    await f.close();
  }
});

void test("a consumer keeps going after the server restarts", async () => {
  const f = await busFixture();
  try {
    const seen: string[] = [];
    await f.bus.consume(workConsumer({ handler: async (m) => void seen.push(m.payload.runId) }));
    await publishWork(f.bus, "before");
    await waitFor(async () => seen.length === 1 && (await storedCount(f.bus, WORK)) === 0, {
      what: "the first item to be handled and acked",
    });
    await f.nats.restart();
    // A publish sent while the client reconnects may get no answer: retry with a short timeout.
    const publish = async (runId: string): Promise<boolean> =>
      (
        await f.bus.publish(SUBJECTS.workBackup("site1"), BackupRequested, backupRequest(runId), {
          msgId: runId,
          timeoutMs: 1000,
        })
      ).seq > 0;
    await waitFor(() => publish("after"), { timeoutMs: 15_000, what: "a publish after the restart" });
    await waitFor(() => seen.includes("after"), {
      timeoutMs: 15_000,
      what: "the consumer to handle an item after the restart",
    });
    await waitFor(async () => (await storedCount(f.bus, WORK)) === 0, { what: "the ack after the restart" });
    assert.deepEqual(seen, ["before", "after"]);
    await f.nats.kill(); // an unclean crash, too
    await f.nats.restart();
    await waitFor(() => publish("after-crash"), { timeoutMs: 15_000, what: "a publish after the crash" });
    await waitFor(() => seen.includes("after-crash"), { timeoutMs: 15_000, what: "an item after the crash" });
    await waitFor(async () => (await storedCount(f.bus, WORK)) === 0);
  } finally {
    await f.close();
  }
});

import assert from "node:assert/strict";
import { test } from "node:test";
import { BackupCompleted, BackupRequested, STREAMS, SUBJECTS } from "@iotvault/proto";
import { isCode } from "@iotvault/errors";
import { freePort, startNats, waitFor } from "@iotvault/testing";
import { Bus, EVENT_TYPE_HEADER } from "./index.js";
import { backupRequest, busFixture, publishRaw, recordingLogger } from "./test-helpers.js";

const DAY_NS = 24 * 60 * 60 * 1e9;

void test("connect to an unreachable server fails with UNAVAILABLE naming the URL, without credentials", async () => {
  const port = await freePort();
  await assert.rejects(
    Bus.connect({ url: `nats://user:secret@127.0.0.1:${port}`, name: "t", connectTimeoutMs: 1000 }),
    (err: unknown) => {
      assert.ok(isCode(err, "UNAVAILABLE"));
      assert.match(err.message, new RegExp(`^cannot reach NATS at nats://\\*\\*\\*@127\\.0\\.0\\.1:${port}: `));
      assert.doesNotMatch(err.message, /secret/);
      assert.match(err.hint ?? "", /nats-server is running/);
      assert.equal(err.retryable, true);
      return true;
    },
  );
});

void test("connect to a server without JetStream fails with FAILED_PRECONDITION", async () => {
  const nats = await startNats({ jetstream: false });
  try {
    await assert.rejects(Bus.connect({ url: nats.url, name: "t" }), (err: unknown) => {
      assert.ok(isCode(err, "FAILED_PRECONDITION"));
      assert.match(err.message, /JetStream is not available/);
      assert.match(err.hint ?? "", /-js/);
      return true;
    });
  } finally {
    await nats.stop();
  }
});

void test("a server that refuses the credentials gives PERMISSION_DENIED; the right ones connect", async () => {
  const nats = await startNats({ args: ["--user", "iot", "--pass", "s3cret-pass"] });
  try {
    const wrong = `nats://iot:not-it@127.0.0.1:${nats.port}`;
    await assert.rejects(Bus.connect({ url: wrong, name: "t", connectTimeoutMs: 2000 }), (err: unknown) => {
      assert.ok(isCode(err, "PERMISSION_DENIED"), String(err));
      assert.doesNotMatch(err.message, /not-it|s3cret/);
      assert.match(err.hint ?? "", /credentials/);
      return true;
    });
    const bus = await Bus.connect({
      url: `nats://iot:s3cret-pass@127.0.0.1:${nats.port}`,
      name: "t",
      logger: recordingLogger(),
    });
    await bus.ensureStreams();
    await bus.close();
  } finally {
    await nats.stop();
  }
});

void test("a missing credentials file is a CONFIG_INVALID error", async () => {
  await assert.rejects(
    Bus.connect({ url: "nats://127.0.0.1:4222", name: "t", credsFile: "/nonexistent/user.creds" }),
    (err: unknown) => {
      assert.ok(isCode(err, "CONFIG_INVALID"));
      assert.match(err.message, /\/nonexistent\/user\.creds: ENOENT/);
      return true;
    },
  );
});

void test("ensureStreams creates the three streams idempotently and updates their config", async () => {
  const f = await busFixture(); // ran ensureStreams() once with the defaults
  try {
    const work = await f.bus.jsm.streams.info(STREAMS.work.name);
    assert.equal(work.config.retention, "workqueue");
    assert.deepEqual(work.config.subjects, ["iotvault.work.>"]);
    const events = await f.bus.jsm.streams.info(STREAMS.events.name);
    assert.equal(events.config.retention, "limits");
    assert.equal(events.config.max_age, 7 * DAY_NS);
    assert.equal((await f.bus.jsm.streams.info(STREAMS.deadLetter.name)).config.subjects[0], "iotvault.dlq.>");

    await f.bus.ensureStreams(); // twice: no error
    await f.bus.ensureStreams({ eventsMaxAgeDays: 3, duplicateWindowMs: 60_000 });
    const updated = await f.bus.jsm.streams.info(STREAMS.events.name);
    assert.equal(updated.config.max_age, 3 * DAY_NS);
    assert.equal(updated.config.duplicate_window, 60e9);
    assert.equal((await f.bus.jsm.streams.info(STREAMS.work.name)).config.duplicate_window, 60e9);
    // Several processes starting at once.
    await Promise.all([f.bus.ensureStreams(), f.bus.ensureStreams(), (await f.connect("other")).ensureStreams()]);

    await assert.rejects(f.bus.ensureStreams({ replicas: 0 }), (err: unknown) => isCode(err, "INVALID_ARGUMENT"));
    await assert.rejects(f.bus.ensureStreams({ replicas: 3 }), (err: unknown) => {
      assert.ok(isCode(err, "FAILED_PRECONDITION"), String(err));
      assert.match(err.hint ?? "", /replicas/);
      return true;
    });
  } finally {
    await f.close();
  }
});

void test("ensureStreams refuses to change an existing stream's retention", async () => {
  const nats = await startNats();
  const bus = await Bus.connect({ url: nats.url, name: "t", logger: recordingLogger() });
  try {
    await bus.jsm.streams.add({ name: STREAMS.work.name, subjects: ["iotvault.work.>"] }); // limits, by mistake
    await assert.rejects(bus.ensureStreams(), (err: unknown) => {
      assert.ok(isCode(err, "FAILED_PRECONDITION"));
      assert.match(err.message, /IOTVAULT_WORK exists with retention "limits", iotvault needs "workqueue"/);
      return true;
    });
  } finally {
    await bus.close();
    await nats.stop();
  }
});

void test("publish sends canonical proto3 JSON with type and msg-id headers; a repeated msgId is a duplicate", async () => {
  const f = await busFixture();
  try {
    const subject = SUBJECTS.workBackup("site1");
    const first = await f.bus.publish(subject, BackupRequested, backupRequest("run-1"), {
      msgId: "job-1:2026-11-25T10:00",
      expectStream: STREAMS.work.name,
    });
    assert.deepEqual(first, { seq: 1, duplicate: false, stream: STREAMS.work.name });
    const again = await f.bus.publish(subject, BackupRequested, backupRequest("run-1"), {
      msgId: "job-1:2026-11-25T10:00",
    });
    assert.deepEqual(again, { seq: 1, duplicate: true, stream: STREAMS.work.name });
    const other = await f.bus.publish(subject, BackupRequested, backupRequest("run-2"), {
      msgId: "job-1:2026-11-25T11:00",
    });
    assert.equal(other.seq, 2);

    const stored = await f.bus.jsm.streams.getMessage(STREAMS.work.name, { seq: 1 });
    assert.ok(stored);
    assert.equal(stored.header.get(EVENT_TYPE_HEADER), "iotvault.v1.BackupRequested");
    assert.equal(stored.header.get("Nats-Msg-Id"), "job-1:2026-11-25T10:00");
    assert.equal(stored.header.has("traceparent"), false, "no active span, no traceparent");
    assert.deepEqual(stored.json(), BackupRequested.toJSON(backupRequest("run-1")));
    assert.equal((await f.bus.jsm.streams.info(STREAMS.work.name)).state.messages, 2);
  } finally {
    await f.close();
  }
});

void test("watch follows published events without a consumer, skips what does not decode, and ends when asked", async () => {
  const f = await busFixture();
  try {
    const seen: BackupCompleted[] = [];
    const watcher = await f.connect("watcher");
    const stop = watcher.watch(SUBJECTS.backupCompleted, BackupCompleted, (e) => {
      seen.push(e);
      if (e.runId === "throws") throw new Error("the handler failed");
    });
    await watcher.nc.flush();
    const completed = (runId: string) =>
      f.bus.publish(SUBJECTS.backupCompleted, BackupCompleted, BackupCompleted.create({ runId, repository: "main" }), {
        msgId: `${runId}:completed`,
      });
    await completed("run-1");
    // Another type under the subject, bytes that are no JSON, a handler that throws: skipped or
    // logged, and the events after them still arrive.
    await publishRaw(f.bus, SUBJECTS.backupCompleted, JSON.stringify({ runId: "x" }), {
      [EVENT_TYPE_HEADER]: "iotvault.v1.BackupFailed",
    });
    await publishRaw(f.bus, SUBJECTS.backupCompleted, "not json", {
      [EVENT_TYPE_HEADER]: "iotvault.v1.BackupCompleted",
    });
    await completed("throws");
    await completed("run-2");
    await waitFor(() => (seen.length === 3 ? true : undefined), { timeoutMs: 5000, what: "three events" });
    assert.deepEqual(
      seen.map((e) => [e.runId, e.repository]),
      [
        ["run-1", "main"],
        ["throws", "main"],
        ["run-2", "main"],
      ],
    );
    const warnings = f.logger.entries.filter((e) => e.level === "warn").map((e) => e.msg);
    assert.deepEqual(warnings, [
      "skipping an event that does not decode",
      "skipping an event that does not decode",
      "an event watcher failed",
    ]);
    // No consumer was made for it.
    assert.equal((await f.bus.jsm.consumers.list(STREAMS.events.name).next()).length, 0);
    stop();
    await watcher.nc.flush();
    await completed("run-3");
    await f.bus.nc.flush();
    await watcher.nc.flush();
    assert.equal(seen.length, 3, "nothing after the watch ended");
  } finally {
    await f.close();
  }
});

void test("publish errors are classified: no stream, wrong stream, bad arguments, closed bus", async () => {
  const f = await busFixture();
  try {
    await assert.rejects(
      f.bus.publish("nowhere.x", BackupCompleted, BackupCompleted.create(), { msgId: "m1" }),
      (err: unknown) => {
        assert.ok(isCode(err, "UNAVAILABLE"));
        assert.match(err.message, /cannot publish iotvault\.v1\.BackupCompleted to nowhere\.x/);
        assert.match(err.hint ?? "", /ensureStreams/);
        return true;
      },
    );
    await assert.rejects(
      f.bus.publish(SUBJECTS.backupCompleted, BackupCompleted, BackupCompleted.create(), {
        msgId: "m2",
        expectStream: STREAMS.work.name,
      }),
      (err: unknown) => isCode(err, "FAILED_PRECONDITION") && /expected stream does not match/.test(err.message),
    );
    await assert.rejects(
      f.bus.publish("iotvault.events.>", BackupCompleted, BackupCompleted.create(), { msgId: "m3" }),
      (err: unknown) => isCode(err, "INVALID_ARGUMENT"),
    );
    await assert.rejects(
      f.bus.publish(SUBJECTS.backupCompleted, BackupCompleted, BackupCompleted.create(), { msgId: "" }),
      (err: unknown) => isCode(err, "INVALID_ARGUMENT"),
    );
    await f.bus.close();
    await assert.rejects(
      f.bus.publish(SUBJECTS.backupCompleted, BackupCompleted, BackupCompleted.create(), { msgId: "m4" }),
      (err: unknown) => isCode(err, "FAILED_PRECONDITION"),
    );
  } finally {
    await f.close();
  }
});

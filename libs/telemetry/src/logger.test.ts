import assert from "node:assert/strict";
import { Writable } from "node:stream";
import { test } from "node:test";
import { IotvaultError } from "@iotvault/errors";
import { createLogger, startTelemetry, withSpan, type LoggerOptions } from "./index.js";

function capture(options: Omit<LoggerOptions, "stream">): {
  lines: () => Record<string, unknown>[];
  logger: ReturnType<typeof createLogger>;
} {
  let text = "";
  const stream = new Writable({
    write(chunk: Buffer, _enc, done) {
      text += chunk.toString();
      done();
    },
  });
  const logger = createLogger({ ...options, stream });
  return {
    logger,
    lines: () =>
      text
        .split("\n")
        .filter((l) => l !== "")
        .map((l) => JSON.parse(l) as Record<string, unknown>),
  };
}

void test("one JSON object per line with time, level, service, msg and fields", () => {
  const { logger, lines } = capture({ service: "catalog" });
  logger.info("run recorded", { runId: "r1", bytes: 10n, at: new Date(0), blob: Buffer.alloc(3) });
  const [line] = lines();
  assert.ok(line);
  assert.deepEqual(Object.keys(line).slice(0, 4), ["time", "level", "service", "msg"]);
  assert.ok(!Number.isNaN(Date.parse(line["time"] as string)));
  assert.equal(line["level"], "info");
  assert.equal(line["service"], "catalog");
  assert.equal(line["msg"], "run recorded");
  assert.equal(line["runId"], "r1");
  assert.equal(line["bytes"], "10");
  assert.equal(line["at"], "1970-01-01T00:00:00.000Z");
  assert.equal(line["blob"], "[3 bytes]");
  assert.equal(line["trace_id"], undefined);
});

void test("secret fields are redacted at any depth; key ids and names that only start with key are kept", () => {
  const { logger, lines } = capture({ service: "executor" });
  logger.warn("connecting", {
    password: "hunter2",
    passphrase: "correct horse",
    secretKey: "s3cr3t",
    apiToken: "tok-123",
    apiKey: "ak-1",
    key: "raw-key-bytes",
    Authorization: "Bearer abc",
    credentials: { user: "u", pass: "p" },
    keyId: "k-42",
    keySlots: 2,
    target: { url: "s3://bucket", accessKey: "AKIA", nested: [{ token: "t" }] },
    dsn: "postgres://app:hunter3@db/x?sslmode=disable",
    note: "retrying with password=hunter4",
  });
  const [line] = lines();
  assert.ok(line);
  for (const field of [
    "password",
    "passphrase",
    "secretKey",
    "apiToken",
    "apiKey",
    "key",
    "Authorization",
    "credentials",
  ]) {
    assert.equal(line[field], "[redacted]", field);
  }
  assert.equal(line["keyId"], "k-42");
  assert.equal(line["keySlots"], 2);
  assert.deepEqual(line["target"], { url: "s3://bucket", accessKey: "[redacted]", nested: [{ token: "[redacted]" }] });
  assert.equal(line["dsn"], "postgres://app:***@db/x?sslmode=disable");
  assert.equal(line["note"], "retrying with password=***");
  assert.doesNotMatch(JSON.stringify(line), /hunter|s3cr3t|tok-123|ak-1|raw-key|AKIA|correct horse/);
});

void test("errors become {name, code, message}; circular values do not break a line", () => {
  const { logger, lines } = capture({ service: "restore" });
  const loop: Record<string, unknown> = { name: "loop" };
  loop["self"] = loop;
  logger.error("restore failed", {
    error: new IotvaultError("WRONG_KEY", "the passphrase does not open repository r1", {
      hint: "check IOTVAULT_PASSWORD",
    }),
    other: Object.assign(new Error("disk gone"), { code: "EIO" }),
    loop,
  });
  const [line] = lines();
  assert.deepEqual(line?.["error"], {
    name: "IotvaultError",
    code: "WRONG_KEY",
    message: "the passphrase does not open repository r1",
    hint: "check IOTVAULT_PASSWORD",
  });
  assert.deepEqual(line?.["other"], { name: "Error", code: "EIO", message: "disk gone" });
  assert.deepEqual(line?.["loop"], { name: "loop", self: "[circular]" });
});

void test("levels below the threshold are dropped; child loggers add their fields; reserved names are kept apart", () => {
  const { logger, lines } = capture({ service: "scheduler", level: "warn" });
  logger.debug("d");
  logger.info("i");
  logger.warn("w");
  const child = logger.child({ jobId: "j1" });
  child.error("e", { attempt: 2, level: "fake", msg: "fake" });
  const out = lines();
  assert.deepEqual(
    out.map((l) => l["msg"]),
    ["w", "e"],
  );
  assert.equal(out[1]?.["jobId"], "j1");
  assert.equal(out[1]?.["attempt"], 2);
  assert.equal(out[1]?.["level"], "error");
  assert.equal(out[1]?.["field_level"], "fake");
  assert.equal(out[0]?.["jobId"], undefined, "the parent logger is unchanged");
  const debug = capture({ service: "scheduler", level: "debug" });
  debug.logger.debug("visible");
  assert.equal(debug.lines().length, 1);
});

void test("lines written inside a span carry its trace_id and span_id", async (t) => {
  const telemetry = startTelemetry({ serviceName: "executor", inMemory: true });
  t.after(() => telemetry.shutdown());
  const { logger, lines } = capture({ service: "executor" });
  let ids: { traceId: string; spanId: string } | undefined;
  await withSpan("backup.run", async (span) => {
    ids = span.spanContext();
    await new Promise((r) => setTimeout(r, 1));
    logger.info("inside");
  });
  logger.info("outside");
  const [inside, outside] = lines();
  assert.equal(inside?.["trace_id"], ids?.traceId);
  assert.equal(inside?.["span_id"], ids?.spanId);
  assert.equal(outside?.["trace_id"], undefined);
  assert.equal(outside?.["span_id"], undefined);
});

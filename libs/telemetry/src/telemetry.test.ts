import assert from "node:assert/strict";
import { execFile } from "node:child_process";
import { once } from "node:events";
import { createServer, type IncomingMessage } from "node:http";
import { mkdtemp, readFile, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { test } from "node:test";
import { promisify } from "node:util";
import { SpanKind, SpanStatusCode, trace } from "@opentelemetry/api";
import { IotvaultError } from "@iotvault/errors";
import {
  currentTraceId,
  otlpTracesUrl,
  readSpans,
  startTelemetry,
  traceparentOf,
  withSpan,
  type SpanRecord,
} from "./index.js";

const run = promisify(execFile);
const LIMIT = { timeout: 30_000 };

async function tempDir(t: { after(fn: () => Promise<void>): void }): Promise<string> {
  const dir = await mkdtemp(join(tmpdir(), "iotvault-telemetry-"));
  t.after(() => rm(dir, { recursive: true, force: true }));
  return dir;
}

async function fileRecords(file: string): Promise<SpanRecord[]> {
  const text = await readFile(file, "utf8");
  return text
    .split("\n")
    .filter((l) => l !== "")
    .map((l) => JSON.parse(l) as SpanRecord);
}

void test("nested spans land in <spansDir>/<service>.jsonl with parent ids as soon as they end", LIMIT, async (t) => {
  const dir = await tempDir(t);
  const spansDir = join(dir, "spans", "nested");
  const telemetry = startTelemetry({ serviceName: "executor", spansDir });
  t.after(() => telemetry.shutdown());

  let traceId: string | undefined;
  await withSpan(
    "backup.run",
    async () => {
      traceId = currentTraceId();
      await withSpan("backup.chunk", async (span) => {
        span.setAttribute("iotvault.bytes", 42);
        await new Promise((r) => setTimeout(r, 5));
      });
      // The child is on disk before the parent ends (SimpleSpanProcessor, synchronous append).
      const early = await fileRecords(join(spansDir, "executor.jsonl"));
      assert.deepEqual(
        early.map((r) => r.name),
        ["backup.chunk"],
      );
    },
    { kind: SpanKind.SERVER, attributes: { "iotvault.job": "nightly" } },
  );

  const records = await fileRecords(join(spansDir, "executor.jsonl"));
  assert.equal(records.length, 2);
  const [child, parent] = records as [SpanRecord, SpanRecord];
  assert.equal(parent.name, "backup.run");
  assert.equal(parent.kind, "SERVER");
  assert.equal(parent.service, "executor");
  assert.equal(parent.parentSpanId, undefined);
  assert.equal(parent.attributes["iotvault.job"], "nightly");
  assert.equal(child.parentSpanId, parent.spanId);
  assert.equal(child.traceId, parent.traceId);
  assert.equal(child.traceId, traceId);
  assert.equal(child.kind, "INTERNAL");
  assert.equal(child.attributes["iotvault.bytes"], 42);
  assert.ok(child.durationMs >= 4, `child lasted ${child.durationMs} ms`);
  assert.ok(Math.abs(child.endTimeMs - child.startTimeMs - child.durationMs) < 0.01);
  assert.ok(parent.startTimeMs <= child.startTimeMs && parent.endTimeMs >= child.endTimeMs);
  assert.equal(child.status, "unset");
});

void test("withSpan records a failure with a scrubbed message, rethrows it and ends the span", LIMIT, async (t) => {
  const telemetry = startTelemetry({ serviceName: "catalog", inMemory: true });
  t.after(() => telemetry.shutdown());
  const failure = new IotvaultError("UNAVAILABLE", "cannot connect to postgres://app:hunter2@db:5432/catalog");
  await assert.rejects(
    withSpan("catalog.query", async () => {
      throw failure;
    }),
    (err) => err === failure,
  );
  const [span] = telemetry.memoryExporter!.getFinishedSpans();
  assert.ok(span, "the span ended");
  assert.equal(span.status.code, SpanStatusCode.ERROR);
  assert.equal(span.status.message, "cannot connect to postgres://app:***@db:5432/catalog");
  const event = span.events.find((e) => e.name === "exception");
  assert.equal(event?.attributes?.["exception.type"], "UNAVAILABLE");
  assert.doesNotMatch(JSON.stringify(span.events), /hunter2/);
});

void test("currentTraceId and traceparentOf follow the active span and are empty outside", LIMIT, async (t) => {
  const telemetry = startTelemetry({ serviceName: "cli", inMemory: true });
  t.after(() => telemetry.shutdown());
  assert.equal(currentTraceId(), undefined);
  assert.equal(traceparentOf(), undefined);
  await withSpan("outer", async (span) => {
    const { traceId, spanId } = span.spanContext();
    assert.equal(currentTraceId(), traceId);
    assert.equal(traceparentOf(), `00-${traceId}-${spanId}-01`);
    await new Promise((r) => setImmediate(r));
    assert.equal(currentTraceId(), traceId, "the context survives an await");
  });
  assert.equal(currentTraceId(), undefined);
});

void test("a second startTelemetry in the same process is refused until the first is shut down", LIMIT, async (t) => {
  const first = startTelemetry({ serviceName: "scheduler", inMemory: true });
  assert.throws(
    () => startTelemetry({ serviceName: "restore", inMemory: true }),
    (err: unknown) =>
      err instanceof IotvaultError && err.code === "FAILED_PRECONDITION" && /scheduler/.test(err.message),
  );
  await first.shutdown();
  const second = startTelemetry({ serviceName: "restore", inMemory: true });
  await withSpan("after-restart", async () => undefined);
  assert.deepEqual(
    second.memoryExporter!.getFinishedSpans().map((s) => s.name),
    ["after-restart"],
  );
  assert.deepEqual(first.memoryExporter!.getFinishedSpans(), []);
  await second.shutdown();
  assert.throws(() => startTelemetry({ serviceName: "../etc" }), /invalid telemetry service name/);
  const notADir = join(await tempDir(t), "file");
  await writeFile(notADir, "x");
  assert.throws(
    () => startTelemetry({ serviceName: "executor", spansDir: join(notADir, "spans") }),
    (err: unknown) =>
      err instanceof IotvaultError && /cannot create the span directory .*file\/spans/.test(err.message),
  );
  // A failed start leaves nothing registered: the next one works.
  const third = startTelemetry({ serviceName: "restore", inMemory: true });
  await third.shutdown();
});

void test("spans are exported over OTLP/HTTP when an endpoint is set", LIMIT, async (t) => {
  const bodies: { url: string; type: string; body: string }[] = [];
  const server = createServer((req: IncomingMessage, res) => {
    const chunks: Buffer[] = [];
    req.on("data", (c: Buffer) => chunks.push(c));
    req.on("end", () => {
      bodies.push({
        url: req.url ?? "",
        type: req.headers["content-type"] ?? "",
        body: Buffer.concat(chunks).toString(),
      });
      res.writeHead(200, { "content-type": "application/json" }).end("{}");
    });
  });
  server.listen(0, "127.0.0.1");
  await once(server, "listening");
  t.after(() => new Promise<void>((resolve) => server.close(() => resolve())));
  const { port } = server.address() as { port: number };

  const telemetry = startTelemetry({ serviceName: "storage-gateway", otlpEndpoint: `http://127.0.0.1:${port}` });
  t.after(() => telemetry.shutdown());
  await withSpan("gateway.put", async () => undefined);
  assert.equal(bodies.length, 0, "batched, not sent per span");
  await telemetry.flush();
  assert.equal(bodies.length, 1);
  assert.equal(bodies[0]!.url, "/v1/traces");
  assert.match(bodies[0]!.type, /application\/(json|x-protobuf)/);
  assert.match(bodies[0]!.body, /gateway\.put/);
  assert.match(bodies[0]!.body, /storage-gateway/);
});

void test("otlpTracesUrl appends /v1/traces once and refuses non-HTTP endpoints", () => {
  assert.equal(otlpTracesUrl("http://collector:4318"), "http://collector:4318/v1/traces");
  assert.equal(otlpTracesUrl("http://collector:4318/"), "http://collector:4318/v1/traces");
  assert.equal(otlpTracesUrl("https://c.example/otlp/v1/traces"), "https://c.example/otlp/v1/traces");
  assert.throws(() => otlpTracesUrl("grpc://collector:4317"), /must use http or https/);
  assert.throws(() => otlpTracesUrl("collector"), /is not a URL/);
});

void test("several processes appending to one span file never interleave partial lines", LIMIT, async (t) => {
  const dir = await tempDir(t);
  const entry = new URL("./index.js", import.meta.url).href;
  const script = join(dir, "writer.mjs");
  await writeFile(
    script,
    `import { startTelemetry, withSpan } from ${JSON.stringify(entry)};
const telemetry = startTelemetry({ serviceName: "executor", spansDir: process.argv[2] });
const padding = "x".repeat(3000);
for (let i = 0; i < 300; i++) await withSpan("w" + process.argv[3], async (s) => s.setAttribute("pad", padding));
await telemetry.shutdown();
`,
  );
  const writers = ["1", "2", "3", "4"];
  await Promise.all(writers.map((w) => run(process.execPath, [script, dir, w])));
  const lines = (await readFile(join(dir, "executor.jsonl"), "utf8")).split("\n").filter((l) => l !== "");
  assert.equal(lines.length, writers.length * 300);
  const names = new Map<string, number>();
  for (const line of lines) {
    const record = JSON.parse(line) as SpanRecord; // throws on an interleaved line
    names.set(record.name, (names.get(record.name) ?? 0) + 1);
  }
  assert.deepEqual([...names.values()], [300, 300, 300, 300]);
  const traceId = (JSON.parse(lines[0]!) as SpanRecord).traceId;
  assert.equal((await readSpans(dir, traceId)).length, 1);
});

void test("withSpan without started telemetry still runs the function (no-op tracer)", LIMIT, async () => {
  assert.equal(trace.getTracerProvider().getTracer("x").startSpan("s").spanContext().traceId, "0".repeat(32));
  assert.equal(await withSpan("noop", async () => 7), 7);
  assert.equal(currentTraceId(), undefined);
});

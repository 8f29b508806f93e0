import assert from "node:assert/strict";
import { test } from "node:test";
import { renderTraceTree, type SpanRecord } from "./index.js";

const TRACE = "a".repeat(32);
let nextId = 0;

function span(
  name: string,
  service: string,
  start: number,
  duration: number,
  parent?: SpanRecord,
  extra: Partial<SpanRecord> = {},
): SpanRecord {
  nextId += 1;
  return {
    traceId: TRACE,
    spanId: nextId.toString(16).padStart(16, "0"),
    ...(parent ? { parentSpanId: parent.spanId } : {}),
    name,
    kind: "INTERNAL",
    service,
    startTimeMs: start,
    endTimeMs: start + duration,
    durationMs: duration,
    status: "unset",
    attributes: {},
    ...extra,
  };
}

void test("children sit under their parent, ordered by start time, with durations and offsets", () => {
  const root = span("backup.run", "scheduler", 1000, 812.44);
  const publish = span("publish", "scheduler", 1001.5, 2);
  publish.parentSpanId = root.spanId;
  const handle = span("executor.handle", "executor", 1010, 700, publish);
  const upload = span("upload", "executor", 1300, 100.05, handle);
  const chunk = span("chunk", "executor", 1020, 250, handle);
  const commit = span("commit", "executor", 1801, 4, root, { status: "error", statusMessage: "snapshot exists" });
  // Input order is scrambled on purpose.
  const text = renderTraceTree([commit, upload, root, chunk, handle, publish]);
  assert.equal(
    text,
    [
      "backup.run  [scheduler]  812.4 ms  (+0.0 ms)",
      "├─ publish  [scheduler]  2.0 ms  (+1.5 ms)",
      "│  └─ executor.handle  [executor]  700.0 ms  (+10.0 ms)",
      "│     ├─ chunk  [executor]  250.0 ms  (+20.0 ms)",
      "│     └─ upload  [executor]  100.0 ms  (+300.0 ms)",
      "└─ commit  [executor]  4.0 ms  (+801.0 ms)  ✗ error: snapshot exists",
    ].join("\n"),
  );
});

void test("more than collapseAfter siblings of one name become one summary line; failures stay visible", () => {
  const root = span("backup.run", "executor", 0, 2000);
  const puts = Array.from({ length: 45 }, (_, i) =>
    span("StorageGatewayService/PutObject", "storage-gateway", 10 + i, 30, root, i === 40 ? { status: "error" } : {}),
  );
  const commit = span("commit", "executor", 1900, 5, root);
  const lines = renderTraceTree([root, commit, ...puts]).split("\n");
  assert.equal(lines.length, 1 + 8 + 1 + 1 + 1, lines.join("\n"));
  assert.equal(lines.filter((l) => l.includes("PutObject  [")).length, 9);
  assert.equal(lines[9], "├─ … 36 more StorageGatewayService/PutObject, total 1.1 s");
  assert.match(lines[10]!, /^├─ StorageGatewayService\/PutObject .*\(\+50\.0 ms\) {2}✗ error$/);
  assert.match(lines[11]!, /^└─ commit /);

  const wide = renderTraceTree([root, commit, ...puts], { collapseAfter: 100 }).split("\n");
  assert.equal(wide.length, 47);
  const narrow = renderTraceTree([root, ...puts.slice(0, 3)], { collapseAfter: 1 }).split("\n");
  assert.equal(narrow[2], "└─ … 2 more StorageGatewayService/PutObject, total 60.0 ms");
});

void test("spans whose parent was not recorded are shown at the root, marked", () => {
  const root = span("backup.run", "scheduler", 0, 50);
  const orphan = span("executor.handle", "executor", 20, 10, undefined, { parentSpanId: "f".repeat(16) });
  const child = span("chunk", "executor", 22, 3, orphan);
  const lines = renderTraceTree([child, orphan, root]).split("\n");
  assert.deepEqual(lines, [
    "backup.run  [scheduler]  50.0 ms  (+0.0 ms)",
    "executor.handle  [executor]  10.0 ms  (+20.0 ms)  (parent span not recorded)",
    "└─ chunk  [executor]  3.0 ms  (+22.0 ms)",
  ]);
});

void test("colour marks errors in red and dims the rest; empty input gives an empty string", () => {
  const failed = span("restore.apply", "restore", 0, 1, undefined, { status: "error" });
  const coloured = renderTraceTree([failed], { color: true });
  assert.ok(coloured.includes("\u001b[31m✗ error\u001b[0m"), coloured);
  assert.ok(coloured.includes("\u001b[2m[restore]\u001b[0m"));
  assert.equal(renderTraceTree([]), "");
});

void test("a parent cycle does not loop forever and still shows every span", () => {
  const a = span("a", "x", 0, 1);
  const b = span("b", "x", 1, 1, a);
  a.parentSpanId = b.spanId;
  const lines = renderTraceTree([a, b]).split("\n");
  assert.equal(lines.length, 2);
  assert.match(lines[0]!, /^a .*parent span not recorded/);
  assert.match(lines[1]!, /^└─ b /);
});

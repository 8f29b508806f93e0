import assert from "node:assert/strict";
import { mkdir, mkdtemp, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { test } from "node:test";
import { IotvaultError } from "@iotvault/errors";
import { readSpans, type SpanRecord } from "./index.js";

const T1 = "1".repeat(32);
const T2 = "2".repeat(32);

function record(
  traceId: string,
  spanId: string,
  name: string,
  service: string,
  start: number,
  parent?: string,
): SpanRecord {
  return {
    traceId,
    spanId,
    ...(parent ? { parentSpanId: parent } : {}),
    name,
    kind: "INTERNAL",
    service,
    startTimeMs: start,
    endTimeMs: start + 10,
    durationMs: 10,
    status: "unset",
    attributes: {},
  };
}

const lines = (records: SpanRecord[]): string => records.map((r) => `${JSON.stringify(r)}\n`).join("");

void test("readSpans gathers one trace from the files of every service, by start time", async (t) => {
  const dir = await mkdtemp(join(tmpdir(), "iotvault-spans-"));
  t.after(() => rm(dir, { recursive: true, force: true }));
  await writeFile(
    join(dir, "scheduler.jsonl"),
    lines([
      record(T1, "a".repeat(16), "backup.run", "scheduler", 100),
      record(T2, "b".repeat(16), "other", "scheduler", 50),
    ]),
  );
  await writeFile(
    join(dir, "executor.jsonl"),
    lines([record(T1, "c".repeat(16), "executor.handle", "executor", 120, "a".repeat(16))]) +
      `{"traceId":"${T1}","spanId":"dddddddddddddddd","na` + // a line cut short by a crash
      "\n" +
      lines([record(T1, "e".repeat(16), "executor.chunk", "executor", 110, "c".repeat(16))]),
  );
  await writeFile(join(dir, "notes.txt"), lines([record(T1, "f".repeat(16), "ignored", "x", 1)]));
  await mkdir(join(dir, "sub.jsonl"));

  const spans = await readSpans(dir, T1);
  assert.deepEqual(
    spans.map((s) => [s.name, s.service]),
    [
      ["backup.run", "scheduler"],
      ["executor.chunk", "executor"],
      ["executor.handle", "executor"],
    ],
  );
  assert.deepEqual(
    (await readSpans(dir, T2)).map((s) => s.name),
    ["other"],
  );
  assert.deepEqual(await readSpans(dir, "9".repeat(32)), []);
});

void test("readSpans refuses a malformed trace id and reports a missing directory", async () => {
  await assert.rejects(
    readSpans(tmpdir(), "not-a-trace"),
    (err) => err instanceof IotvaultError && err.code === "INVALID_ARGUMENT",
  );
  await assert.rejects(
    readSpans(join(tmpdir(), "iotvault-no-such-dir-4f1c"), T1),
    (err) => err instanceof IotvaultError && err.code === "NOT_FOUND" && err.hint !== undefined,
  );
});

void test("readSpans stops when its signal is aborted", async (t) => {
  const dir = await mkdtemp(join(tmpdir(), "iotvault-spans-"));
  t.after(() => rm(dir, { recursive: true, force: true }));
  await writeFile(join(dir, "a.jsonl"), lines([record(T1, "a".repeat(16), "x", "a", 1)]));
  const controller = new AbortController();
  controller.abort();
  await assert.rejects(readSpans(dir, T1, { signal: controller.signal }), { name: "AbortError" });
});

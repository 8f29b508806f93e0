import { createReadStream } from "node:fs";
import { readdir } from "node:fs/promises";
import { join } from "node:path";
import { createInterface } from "node:readline";
import { IotvaultError } from "@iotvault/errors";
import type { SpanRecord } from "./span-file.js";

const TRACE_ID = /^[0-9a-f]{32}$/;

export interface ReadSpansOptions {
  signal?: AbortSignal | undefined;
}

/**
 * Every span of one trace found in the `*.jsonl` span files of a directory (the files of all
 * services), ordered by start time. Files are streamed line by line and only the matching
 * spans are kept, so memory stays bounded by the size of the trace, not of the files. Lines
 * that are not span records (a line cut short by a crash) are skipped.
 */
export async function readSpans(
  spansDir: string,
  traceId: string,
  options: ReadSpansOptions = {},
): Promise<SpanRecord[]> {
  if (!TRACE_ID.test(traceId)) {
    throw new IotvaultError("INVALID_ARGUMENT", `invalid trace id ${JSON.stringify(traceId)}`, {
      hint: "a trace id is 32 lower-case hex digits, as printed by `iotvault backup`",
    });
  }
  const spans: SpanRecord[] = [];
  for (const file of await spanFiles(spansDir)) {
    options.signal?.throwIfAborted();
    await collect(join(spansDir, file), traceId, spans, options.signal);
  }
  return spans.sort((a, b) => a.startTimeMs - b.startTimeMs);
}

async function spanFiles(spansDir: string): Promise<string[]> {
  try {
    const entries = await readdir(spansDir, { withFileTypes: true });
    return entries.filter((e) => e.isFile() && e.name.endsWith(".jsonl")).map((e) => e.name);
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === "ENOENT") {
      throw new IotvaultError("NOT_FOUND", `span directory ${spansDir} does not exist`, {
        cause: err,
        hint: "services write spans there only when started with a spans directory; check the configured path",
      });
    }
    throw err;
  }
}

async function collect(file: string, traceId: string, into: SpanRecord[], signal?: AbortSignal): Promise<void> {
  const input = createReadStream(file, { encoding: "utf8", ...(signal ? { signal } : {}) });
  const lines = createInterface({ input, crlfDelay: Infinity });
  try {
    for await (const line of lines) {
      if (!line.includes(traceId)) continue;
      const record = parseRecord(line);
      if (record?.traceId === traceId) into.push(record);
    }
  } finally {
    lines.close();
    input.destroy();
  }
}

function parseRecord(line: string): SpanRecord | undefined {
  let value: unknown;
  try {
    value = JSON.parse(line);
  } catch {
    return undefined;
  }
  const r = value as Partial<SpanRecord> | null;
  if (
    typeof r !== "object" ||
    r === null ||
    typeof r.traceId !== "string" ||
    typeof r.spanId !== "string" ||
    typeof r.name !== "string" ||
    typeof r.startTimeMs !== "number" ||
    typeof r.durationMs !== "number"
  ) {
    return undefined;
  }
  return r as SpanRecord;
}

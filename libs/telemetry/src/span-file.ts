import { closeSync, mkdirSync, openSync, writeSync } from "node:fs";
import { join } from "node:path";
import { SpanKind, SpanStatusCode } from "@opentelemetry/api";
import { ExportResultCode, hrTimeToMilliseconds, type ExportResult } from "@opentelemetry/core";
import type { ReadableSpan, SpanExporter } from "@opentelemetry/sdk-trace-base";
import { ATTR_SERVICE_NAME } from "@opentelemetry/semantic-conventions";

/** One finished span as stored in a span file (one JSON object per line). */
export interface SpanRecord {
  traceId: string;
  spanId: string;
  parentSpanId?: string;
  name: string;
  /** "INTERNAL", "SERVER", "CLIENT", "PRODUCER" or "CONSUMER". */
  kind: string;
  service: string;
  startTimeMs: number;
  endTimeMs: number;
  durationMs: number;
  status: "ok" | "error" | "unset";
  statusMessage?: string;
  attributes: Record<string, unknown>;
}

export function spanFilePath(spansDir: string, service: string): string {
  return join(spansDir, `${service}.jsonl`);
}

function statusOf(code: SpanStatusCode): SpanRecord["status"] {
  if (code === SpanStatusCode.ERROR) return "error";
  return code === SpanStatusCode.OK ? "ok" : "unset";
}

/** Converts a finished SDK span to the span-file shape. */
export function toSpanRecord(span: ReadableSpan, fallbackService: string): SpanRecord {
  const context = span.spanContext();
  const startTimeMs = hrTimeToMilliseconds(span.startTime);
  const endTimeMs = hrTimeToMilliseconds(span.endTime);
  const service = span.resource.attributes[ATTR_SERVICE_NAME];
  const record: SpanRecord = {
    traceId: context.traceId,
    spanId: context.spanId,
    name: span.name,
    kind: SpanKind[span.kind],
    service: typeof service === "string" ? service : fallbackService,
    startTimeMs,
    endTimeMs,
    durationMs: hrTimeToMilliseconds(span.duration),
    status: statusOf(span.status.code),
    attributes: { ...span.attributes },
  };
  const parentSpanId = span.parentSpanContext?.spanId;
  if (parentSpanId) record.parentSpanId = parentSpanId;
  if (span.status.message) record.statusMessage = span.status.message;
  return record;
}

/**
 * Appends every finished span as one JSON line to `<spansDir>/<service>.jsonl`. Each line is
 * written by a single write(2) on an O_APPEND descriptor, so several processes can share a
 * directory (even a file) without interleaving partial lines. Use it behind a
 * SimpleSpanProcessor: a span is on disk as soon as it ends. Never throws into the host:
 * failures are reported through the export result.
 */
export class SpanFileExporter implements SpanExporter {
  readonly file: string;
  private fd: number | undefined;
  private closed = false;

  constructor(
    spansDir: string,
    private readonly service: string,
  ) {
    mkdirSync(spansDir, { recursive: true, mode: 0o700 });
    this.file = spanFilePath(spansDir, service);
  }

  export(spans: ReadableSpan[], resultCallback: (result: ExportResult) => void): void {
    if (this.closed) {
      resultCallback({ code: ExportResultCode.FAILED, error: new Error("span file exporter is shut down") });
      return;
    }
    try {
      this.fd ??= openSync(this.file, "a", 0o600);
      for (const span of spans) writeLine(this.fd, `${JSON.stringify(toSpanRecord(span, this.service))}\n`);
      resultCallback({ code: ExportResultCode.SUCCESS });
    } catch (err) {
      resultCallback({ code: ExportResultCode.FAILED, error: err instanceof Error ? err : new Error(String(err)) });
    }
  }

  async forceFlush(): Promise<void> {
    // Every line is written synchronously in export(); nothing is buffered.
  }

  async shutdown(): Promise<void> {
    this.closed = true;
    if (this.fd !== undefined) closeSync(this.fd);
    this.fd = undefined;
  }
}

function writeLine(fd: number, line: string): void {
  const bytes = Buffer.from(line, "utf8");
  let written = writeSync(fd, bytes, 0, bytes.length);
  // A regular file takes the whole buffer in one call; the loop only guards against a short write.
  while (written < bytes.length) written += writeSync(fd, bytes, written, bytes.length - written);
}

import { context, isSpanContextValid, trace } from "@opentelemetry/api";
import { isIotvaultError } from "@iotvault/errors";
import { isSecretField, REDACTED, scrubSecrets } from "./scrub.js";

export type LogLevel = "debug" | "info" | "warn" | "error";
export type LogFields = Record<string, unknown>;

export interface Logger {
  debug(message: string, fields?: LogFields): void;
  info(message: string, fields?: LogFields): void;
  warn(message: string, fields?: LogFields): void;
  error(message: string, fields?: LogFields): void;
  /** A logger that adds `fields` to every line (e.g. `{ runId }`). */
  child(fields: LogFields): Logger;
}

export interface LoggerOptions {
  service: string;
  /** Lines below this level are dropped (default "info"). */
  level?: LogLevel | undefined;
  /** Where lines go (default process.stderr, so that a CLI's stdout stays its output). */
  stream?: NodeJS.WritableStream | undefined;
}

const LEVELS: Readonly<Record<LogLevel, number>> = { debug: 10, info: 20, warn: 30, error: 40 };
const RESERVED = new Set(["time", "level", "service", "msg", "trace_id", "span_id"]);
const MAX_DEPTH = 6;

/** Any value as something JSON.stringify writes safely: secrets redacted, errors summarised. */
function sanitize(value: unknown, depth: number, ancestors: Set<object>): unknown {
  switch (typeof value) {
    case "string":
      return scrubSecrets(value);
    case "bigint":
      return value.toString();
    case "function":
    case "symbol":
      return undefined;
    case "object":
      return value === null ? null : sanitizeObject(value, depth, ancestors);
    default:
      return value;
  }
}

function sanitizeError(err: Error): Record<string, unknown> {
  const out: Record<string, unknown> = { name: err.name };
  const code = (err as { code?: unknown }).code;
  if (typeof code === "string" || typeof code === "number") out["code"] = code;
  out["message"] = scrubSecrets(err.message);
  if (isIotvaultError(err) && err.hint) out["hint"] = err.hint;
  return out;
}

function sanitizeObject(value: object, depth: number, ancestors: Set<object>): unknown {
  if (value instanceof Error) return sanitizeError(value);
  if (value instanceof Date) return Number.isNaN(value.getTime()) ? "Invalid Date" : value.toISOString();
  if (value instanceof Uint8Array) return `[${value.byteLength} bytes]`;
  if (ancestors.has(value)) return "[circular]";
  if (depth >= MAX_DEPTH) return "[too deep]";
  ancestors.add(value);
  try {
    if (Array.isArray(value)) return value.map((v) => sanitize(v, depth + 1, ancestors) ?? null);
    const entries = value instanceof Map ? [...value.entries()] : Object.entries(value);
    const out: Record<string, unknown> = {};
    for (const [key, v] of entries) {
      const name = String(key);
      out[name] = isSecretField(name) ? REDACTED : sanitize(v, depth + 1, ancestors);
    }
    return out;
  } finally {
    ancestors.delete(value);
  }
}

/** Redacts secret fields and serialises values into JSON-safe data. */
export function sanitizeLogFields(fields: LogFields): LogFields {
  return sanitizeObject(fields, 0, new Set()) as LogFields;
}

function traceIds(): { trace_id?: string; span_id?: string } {
  const spanContext = trace.getSpan(context.active())?.spanContext();
  if (!spanContext || !isSpanContextValid(spanContext)) return {};
  return { trace_id: spanContext.traceId, span_id: spanContext.spanId };
}

function formatLine(service: string, level: LogLevel, message: string, fields: LogFields): string {
  const line: Record<string, unknown> = {
    time: new Date().toISOString(),
    level,
    service,
    msg: scrubSecrets(message),
    ...traceIds(),
  };
  for (const [key, value] of Object.entries(sanitizeLogFields(fields))) {
    line[RESERVED.has(key) ? `field_${key}` : key] = value;
  }
  return `${JSON.stringify(line)}\n`;
}

class JsonLogger implements Logger {
  constructor(
    private readonly service: string,
    private readonly threshold: number,
    private readonly stream: NodeJS.WritableStream,
    private readonly bound: LogFields,
  ) {}

  private write(level: LogLevel, message: string, fields: LogFields | undefined): void {
    if (LEVELS[level] < this.threshold) return;
    const merged = fields ? { ...this.bound, ...fields } : this.bound;
    this.stream.write(formatLine(this.service, level, message, merged));
  }

  debug(message: string, fields?: LogFields): void {
    this.write("debug", message, fields);
  }
  info(message: string, fields?: LogFields): void {
    this.write("info", message, fields);
  }
  warn(message: string, fields?: LogFields): void {
    this.write("warn", message, fields);
  }
  error(message: string, fields?: LogFields): void {
    this.write("error", message, fields);
  }
  child(fields: LogFields): Logger {
    return new JsonLogger(this.service, this.threshold, this.stream, { ...this.bound, ...fields });
  }
}

/**
 * A structured logger: one JSON object per line with `time`, `level`, `service`, `msg`, the
 * `trace_id`/`span_id` of the active span, then the fields. Values of secret-looking fields
 * (see SECRET_FIELD_PATTERN) are replaced by "[redacted]", credentials in strings are
 * scrubbed, Error values become `{ name, code, message }`.
 */
export function createLogger(options: LoggerOptions): Logger {
  const level = options.level ?? "info";
  return new JsonLogger(options.service, LEVELS[level], options.stream ?? process.stderr, {});
}

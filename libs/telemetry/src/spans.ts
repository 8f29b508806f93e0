import {
  context,
  defaultTextMapSetter,
  isSpanContextValid,
  SpanStatusCode,
  trace,
  type Attributes,
  type Context,
  type Exception,
  type Span,
  type SpanKind,
  type SpanOptions,
} from "@opentelemetry/api";
import { W3CTraceContextPropagator } from "@opentelemetry/core";
import { isIotvaultError } from "@iotvault/errors";
import { scrubSecrets } from "./scrub.js";

/** The tracer name used when none is given. */
export const DEFAULT_TRACER_NAME = "iotvault";

export interface WithSpanOptions {
  kind?: SpanKind;
  attributes?: Attributes;
  tracerName?: string;
}

/** The message of any thrown value, with credentials scrubbed (never a stack or a cause). */
export function errorMessage(err: unknown): string {
  const raw = err instanceof Error ? err.message : String(err);
  return scrubSecrets(raw);
}

/**
 * Records a failure on a span: an exception event (name, code, scrubbed message; the stack
 * only for unexpected errors, which are bugs) and the ERROR status with the message only.
 */
export function recordError(span: Span, err: unknown): void {
  const message = errorMessage(err);
  const exception: { message: string; name?: string; code?: string; stack?: string } = { message };
  if (err instanceof Error) {
    exception.name = err.name;
    if (!isIotvaultError(err) && err.stack) exception.stack = scrubSecrets(err.stack);
  }
  if (isIotvaultError(err)) exception.code = err.code;
  span.recordException(exception satisfies Exception);
  span.setStatus({ code: SpanStatusCode.ERROR, message });
}

/**
 * Runs `fn` in a new active span: children created inside (also across awaits) get it as their
 * parent. A thrown or rejected error is recorded and sets the ERROR status, then rethrown; the
 * span always ends.
 */
export async function withSpan<T>(
  name: string,
  fn: (span: Span) => Promise<T>,
  options: WithSpanOptions = {},
): Promise<T> {
  const tracer = trace.getTracer(options.tracerName ?? DEFAULT_TRACER_NAME);
  const spanOptions: SpanOptions = {};
  if (options.kind !== undefined) spanOptions.kind = options.kind;
  if (options.attributes !== undefined) spanOptions.attributes = options.attributes;
  return tracer.startActiveSpan(name, spanOptions, async (span) => {
    try {
      return await fn(span);
    } catch (err) {
      recordError(span, err);
      throw err;
    } finally {
      span.end();
    }
  });
}

/** The trace id of the active span, or undefined outside any (valid) span. */
export function currentTraceId(): string | undefined {
  const spanContext = trace.getSpan(context.active())?.spanContext();
  return spanContext && isSpanContextValid(spanContext) ? spanContext.traceId : undefined;
}

const traceContext = new W3CTraceContextPropagator();

/**
 * The W3C `traceparent` header value for a context (default: the active one), e.g.
 * `00-<trace id>-<span id>-01`; undefined when the context holds no valid span. Works whether
 * or not telemetry is started.
 */
export function traceparentOf(ctx: Context = context.active()): string | undefined {
  const carrier: Record<string, string> = {};
  traceContext.inject(ctx, carrier, defaultTextMapSetter);
  return carrier["traceparent"];
}

import {
  context,
  propagation,
  ROOT_CONTEXT,
  SpanKind,
  SpanStatusCode,
  trace,
  type Attributes,
  type Span,
  type TextMapGetter,
  type TextMapSetter,
} from "@opentelemetry/api";
import { Match, type MsgHdrs } from "@nats-io/transport-node";

const TRACER_NAME = "iotvault.bus";

const setter: TextMapSetter<MsgHdrs> = {
  set: (carrier, key, value) => carrier.set(key, value),
};

const getter: TextMapGetter<MsgHdrs | undefined> = {
  get: (carrier, key) => (carrier?.has(key, Match.IgnoreCase) ? carrier.get(key, Match.IgnoreCase) : undefined),
  keys: (carrier) => carrier?.keys() ?? [],
};

/** Writes traceparent/tracestate of the active context into NATS headers (needs a registered propagator). */
export function injectTraceContext(headers: MsgHdrs): void {
  propagation.inject(context.active(), headers, setter);
}

export function recordError(span: Span, err: unknown): void {
  span.recordException(err instanceof Error ? err : new Error(String(err)));
  span.setStatus({ code: SpanStatusCode.ERROR, message: err instanceof Error ? err.message : String(err) });
}

/** Runs `fn` in an active span of `kind`, ended when `fn` settles; a thrown error marks the span. */
export async function inSpan<R>(
  name: string,
  kind: SpanKind,
  attributes: Attributes,
  fn: (span: Span) => Promise<R>,
): Promise<R> {
  return trace.getTracer(TRACER_NAME).startActiveSpan(name, { kind, attributes }, async (span) => {
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

/** Runs `fn` in a CONSUMER span whose parent is the trace context found in the message headers. */
export async function inConsumerSpan<R>(
  name: string,
  headers: MsgHdrs | undefined,
  attributes: Attributes,
  fn: (span: Span) => Promise<R>,
): Promise<R> {
  const parent = propagation.extract(ROOT_CONTEXT, headers, getter);
  return context.with(parent, () => inSpan(name, SpanKind.CONSUMER, attributes, fn));
}

import assert from "node:assert/strict";
import { AsyncLocalStorage } from "node:async_hooks";
import { randomBytes } from "node:crypto";
import { test } from "node:test";
import {
  context,
  propagation,
  ROOT_CONTEXT,
  SpanKind,
  trace,
  TraceFlags,
  type Attributes,
  type AttributeValue,
  type Context,
  type ContextManager,
  type Span,
  type SpanContext,
  type SpanOptions,
  type SpanStatus,
  type TextMapPropagator,
  type Tracer,
  type TracerProvider,
} from "@opentelemetry/api";
import { BackupRequested, STREAMS, SUBJECTS } from "@iotvault/proto";
import { IotvaultError } from "@iotvault/errors";
import { waitFor } from "@iotvault/testing";
import type { BusMessage } from "./index.js";
import { backupRequest, busFixture, deadLetters, workConsumer } from "./test-helpers.js";

// The OpenTelemetry SDK is not a dependency of the bus: these are minimal stand-ins for what a
// service registers (AsyncLocalStorage context manager, W3C trace-context propagator, a tracer
// provider), enough to observe the spans the bus creates and the context it carries.

class AlsContextManager implements ContextManager {
  private readonly storage = new AsyncLocalStorage<Context>();
  active(): Context {
    return this.storage.getStore() ?? ROOT_CONTEXT;
  }
  with<A extends unknown[], F extends (...args: A) => ReturnType<F>>(
    ctx: Context,
    fn: F,
    thisArg?: ThisParameterType<F>,
    ...args: A
  ): ReturnType<F> {
    return this.storage.run(ctx, () => fn.call(thisArg, ...args));
  }
  bind<T>(_ctx: Context, target: T): T {
    return target;
  }
  enable(): this {
    return this;
  }
  disable(): this {
    this.storage.disable();
    return this;
  }
}

const w3c: TextMapPropagator = {
  inject(ctx, carrier, setter) {
    const sc = trace.getSpanContext(ctx);
    if (sc) setter.set(carrier, "traceparent", `00-${sc.traceId}-${sc.spanId}-0${sc.traceFlags & 1}`);
  },
  extract(ctx, carrier, getter) {
    const value = getter.get(carrier, "traceparent");
    const match = /^00-([0-9a-f]{32})-([0-9a-f]{16})-0([01])$/.exec((Array.isArray(value) ? value[0] : value) ?? "");
    if (!match) return ctx;
    return trace.setSpanContext(ctx, {
      traceId: match[1]!,
      spanId: match[2]!,
      traceFlags: Number(match[3]),
      isRemote: true,
    });
  },
  fields: () => ["traceparent"],
};

class RecordedSpan implements Span {
  readonly attributes: Attributes = {};
  status: SpanStatus | undefined;
  ended = false;
  constructor(
    public name: string,
    readonly kind: SpanKind,
    readonly parent: SpanContext | undefined,
    private readonly context: SpanContext,
  ) {}
  spanContext(): SpanContext {
    return this.context;
  }
  setAttribute(key: string, value: AttributeValue): this {
    this.attributes[key] = value;
    return this;
  }
  setAttributes(attributes: Attributes): this {
    Object.assign(this.attributes, attributes);
    return this;
  }
  addEvent(): this {
    return this;
  }
  addLink(): this {
    return this;
  }
  addLinks(): this {
    return this;
  }
  setStatus(status: SpanStatus): this {
    this.status = status;
    return this;
  }
  updateName(name: string): this {
    this.name = name;
    return this;
  }
  end(): void {
    this.ended = true;
  }
  isRecording(): boolean {
    return !this.ended;
  }
  recordException(): void {}
}

class RecordingTracer implements Tracer, TracerProvider {
  readonly spans: RecordedSpan[] = [];
  getTracer(): Tracer {
    return this;
  }
  startSpan(name: string, options: SpanOptions = {}, ctx: Context = context.active()): Span {
    const parent = options.root ? undefined : trace.getSpanContext(ctx);
    const own = {
      traceId: parent?.traceId ?? randomBytes(16).toString("hex"),
      spanId: randomBytes(8).toString("hex"),
      traceFlags: TraceFlags.SAMPLED,
    };
    const span = new RecordedSpan(name, options.kind ?? SpanKind.INTERNAL, parent, own);
    if (options.attributes) span.setAttributes(options.attributes);
    this.spans.push(span);
    return span;
  }
  startActiveSpan<F extends (span: Span) => unknown>(name: string, fn: F): ReturnType<F>;
  startActiveSpan<F extends (span: Span) => unknown>(name: string, options: SpanOptions, fn: F): ReturnType<F>;
  startActiveSpan<F extends (span: Span) => unknown>(
    name: string,
    options: SpanOptions,
    ctx: Context,
    fn: F,
  ): ReturnType<F>;
  startActiveSpan<F extends (span: Span) => unknown>(name: string, ...args: unknown[]): ReturnType<F> {
    const fn = args.at(-1) as F;
    const options = (args.length >= 2 ? args[0] : {}) as SpanOptions;
    const ctx = (args.length >= 3 ? args[1] : context.active()) as Context;
    const span = this.startSpan(name, options, ctx);
    return context.with(trace.setSpan(ctx, span), () => fn(span)) as ReturnType<F>;
  }
  named(name: string): RecordedSpan {
    const span = this.spans.find((s) => s.name === name);
    assert.ok(span, `no span named ${name} among ${this.spans.map((s) => s.name).join(", ")}`);
    return span;
  }
}

const tracer = new RecordingTracer();
context.setGlobalContextManager(new AlsContextManager());
propagation.setGlobalPropagator(w3c);
trace.setGlobalTracerProvider(tracer);

void test("publish injects traceparent of a PRODUCER span; the handler runs in a CONSUMER span of the same trace", async () => {
  const f = await busFixture();
  try {
    const subject = SUBJECTS.workBackup("site1");
    let inHandler:
      { traceId: string | undefined; spanId: string | undefined; traceparent: string | undefined } | undefined;
    await f.bus.consume(
      workConsumer({
        spanName: (s) => `executor.handle ${s}`,
        handler: async (m: BusMessage<BackupRequested>) => {
          const active = trace.getActiveSpan()?.spanContext();
          inHandler = { traceId: active?.traceId, spanId: active?.spanId, traceparent: m.headers["traceparent"] };
        },
      }),
    );
    const run = await tracer.startActiveSpan("backup.run", async (span) => {
      await f.bus.publish(subject, BackupRequested, backupRequest("run-1"), { msgId: "run-1" });
      span.end();
      return span;
    });
    const traceId = run.spanContext().traceId;
    await waitFor(() => inHandler, { what: "the handler" });

    const publish = tracer.named(`publish ${subject}`);
    assert.equal(publish.kind, SpanKind.PRODUCER);
    assert.equal(publish.parent?.spanId, run.spanContext().spanId);
    assert.equal(publish.attributes["messaging.message.id"], "run-1");
    assert.equal(
      inHandler?.traceparent,
      `00-${traceId}-${publish.spanContext().spanId}-01`,
      "the header carries the producer span",
    );

    const consume = tracer.named(`executor.handle ${subject}`);
    assert.equal(consume.kind, SpanKind.CONSUMER);
    assert.equal(
      consume.parent?.spanId,
      publish.spanContext().spanId,
      "the consumer span is a child of the producer span",
    );
    assert.equal(consume.parent?.isRemote, true);
    assert.equal(inHandler?.traceId, traceId, "the handler runs in the producer's trace");
    assert.equal(inHandler?.spanId, consume.spanContext().spanId, "inside the consumer span");
    assert.equal(consume.attributes["messaging.nats.delivery_count"], 1);
    await waitFor(() => consume.ended || undefined, { what: "the consumer span to end" });
    assert.equal(consume.attributes["iotvault.bus.outcome"], "ack");
  } finally {
    await f.close();
  }
});

void test("a failing handler marks its span, and the dead letter joins the same trace", async () => {
  const f = await busFixture();
  try {
    const subject = SUBJECTS.workBackup("site1");
    await f.bus.consume(
      workConsumer({
        handler: async () => {
          throw new IotvaultError("INVALID_ARGUMENT", "bad job");
        },
      }),
    );
    const traceId = await tracer.startActiveSpan("trigger", async (span) => {
      await f.bus.publish(subject, BackupRequested, backupRequest("run-2"), { msgId: "run-2" });
      span.end();
      return span.spanContext().traceId;
    });
    await waitFor(async () => (await deadLetters(f.bus)).length === 1, { what: "the dead letter" });
    const consume = tracer.spans.find((s) => s.name === `consume ${subject}` && s.parent?.traceId === traceId);
    assert.ok(consume, "default span name is `consume <subject>`");
    assert.equal(consume.status?.code, 2 /* ERROR */);
    assert.equal(consume.attributes["iotvault.bus.outcome"], "dead-letter");
    const stored = await f.bus.jsm.streams.getMessage(STREAMS.deadLetter.name, { seq: 1 });
    const dlqParent = /^00-([0-9a-f]{32})-([0-9a-f]{16})-01$/.exec(stored?.header.get("traceparent") ?? "");
    assert.equal(dlqParent?.[1], traceId, "the dead letter is published within the consumer's trace");
  } finally {
    await f.close();
  }
});

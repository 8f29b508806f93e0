import { context, propagation, trace, type Tracer } from "@opentelemetry/api";
import { AsyncLocalStorageContextManager } from "@opentelemetry/context-async-hooks";
import { CompositePropagator, W3CBaggagePropagator, W3CTraceContextPropagator } from "@opentelemetry/core";
import { OTLPTraceExporter } from "@opentelemetry/exporter-trace-otlp-http";
import { defaultResource, resourceFromAttributes } from "@opentelemetry/resources";
import {
  BatchSpanProcessor,
  InMemorySpanExporter,
  SimpleSpanProcessor,
  type SpanProcessor,
} from "@opentelemetry/sdk-trace-base";
import { NodeTracerProvider } from "@opentelemetry/sdk-trace-node";
import { ATTR_SERVICE_NAME } from "@opentelemetry/semantic-conventions";
import { IotvaultError, toIotvaultError } from "@iotvault/errors";
import { SpanFileExporter } from "./span-file.js";

export interface TelemetryOptions {
  /** "scheduler", "executor", "storage-gateway", "catalog", "restore", "cli". */
  serviceName: string;
  /** Keep finished spans as JSON lines in `<spansDir>/<serviceName>.jsonl`. */
  spansDir?: string | undefined;
  /**
   * Also export with OTLP/HTTP (batched) when set: a collector base URL
   * (`http://host:4318`, `/v1/traces` is appended) or the full traces URL.
   */
  otlpEndpoint?: string | undefined;
  /** Keep spans in an InMemorySpanExporter (tests). */
  inMemory?: boolean;
}

export interface Telemetry {
  /** A tracer named after the service. */
  tracer: Tracer;
  /** Set when started with `inMemory: true`. */
  memoryExporter: InMemorySpanExporter | undefined;
  /** Exports every finished span that is still buffered (OTLP batches). */
  flush(): Promise<void>;
  /** Flushes, closes the exporters and unregisters the global tracer, context and propagator. */
  shutdown(): Promise<void>;
}

const SERVICE_NAME = /^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$/;
let running: string | undefined;

/** The OTLP/HTTP traces URL for a configured endpoint. */
export function otlpTracesUrl(endpoint: string): string {
  let url: URL;
  try {
    url = new URL(endpoint);
  } catch (err) {
    throw new IotvaultError("CONFIG_INVALID", `OTLP endpoint ${JSON.stringify(endpoint)} is not a URL`, {
      cause: err,
      hint: "give the collector's base URL, e.g. http://127.0.0.1:4318",
    });
  }
  if (url.protocol !== "http:" && url.protocol !== "https:") {
    throw new IotvaultError("CONFIG_INVALID", `OTLP endpoint ${url.origin} must use http or https`, {
      hint: "OTLP/HTTP is supported; give e.g. http://127.0.0.1:4318",
    });
  }
  if (!url.pathname.endsWith("/v1/traces")) url.pathname = `${url.pathname.replace(/\/+$/, "")}/v1/traces`;
  return url.toString();
}

function spanFileExporter(spansDir: string, serviceName: string): SpanFileExporter {
  try {
    return new SpanFileExporter(spansDir, serviceName);
  } catch (err) {
    throw toIotvaultError(err, `cannot create the span directory ${spansDir}`);
  }
}

function spanProcessors(options: TelemetryOptions, memoryExporter: InMemorySpanExporter | undefined): SpanProcessor[] {
  const processors: SpanProcessor[] = [];
  if (memoryExporter) processors.push(new SimpleSpanProcessor(memoryExporter));
  if (options.spansDir !== undefined) {
    processors.push(new SimpleSpanProcessor(spanFileExporter(options.spansDir, options.serviceName)));
  }
  if (options.otlpEndpoint !== undefined) {
    processors.push(new BatchSpanProcessor(new OTLPTraceExporter({ url: otlpTracesUrl(options.otlpEndpoint) })));
  }
  return processors;
}

function checkOptions(options: TelemetryOptions): void {
  if (!SERVICE_NAME.test(options.serviceName)) {
    throw new IotvaultError("CONFIG_INVALID", `invalid telemetry service name ${JSON.stringify(options.serviceName)}`, {
      hint: "use a short name of letters, digits, '.', '_' or '-', such as \"executor\"",
    });
  }
  if (running !== undefined) {
    throw new IotvaultError("FAILED_PRECONDITION", `telemetry is already started in this process (as ${running})`, {
      hint: "call shutdown() on the running Telemetry before starting another one",
    });
  }
}

/**
 * Registers a global NodeTracerProvider for this process with the AsyncLocalStorage context
 * manager and the W3C trace-context + baggage propagator. One per process at a time.
 */
export function startTelemetry(options: TelemetryOptions): Telemetry {
  checkOptions(options);
  const memoryExporter = options.inMemory ? new InMemorySpanExporter() : undefined;
  const provider = new NodeTracerProvider({
    resource: defaultResource().merge(resourceFromAttributes({ [ATTR_SERVICE_NAME]: options.serviceName })),
    spanProcessors: spanProcessors(options, memoryExporter),
  });
  provider.register({
    contextManager: new AsyncLocalStorageContextManager(),
    propagator: new CompositePropagator({
      propagators: [new W3CTraceContextPropagator(), new W3CBaggagePropagator()],
    }),
  });
  running = options.serviceName;
  let stopped: Promise<void> | undefined;
  return {
    tracer: provider.getTracer(options.serviceName),
    memoryExporter,
    flush: () => provider.forceFlush(),
    shutdown: () => {
      stopped ??= (async () => {
        try {
          await provider.shutdown();
        } finally {
          trace.disable();
          context.disable();
          propagation.disable();
          running = undefined;
        }
      })();
      return stopped;
    },
  };
}

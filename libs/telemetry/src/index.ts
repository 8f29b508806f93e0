/**
 * @iotvault/telemetry — tracing and logs for every iotvault process.
 *
 * - `startTelemetry` registers one global OpenTelemetry tracer provider per process
 *   (AsyncLocalStorage context, W3C trace-context + baggage propagation) with up to three
 *   exporters: a span file (`<spansDir>/<service>.jsonl`, written when each span ends), OTLP/HTTP,
 *   and an in-memory exporter for tests. No auto-instrumentation: gRPC (libs/rpc) and NATS
 *   (libs/bus) propagate `traceparent` by hand.
 * - `withSpan` runs a function in an active span; `currentTraceId` / `traceparentOf` read the
 *   active context.
 * - `readSpans` + `renderTraceTree` turn the span files of all services into the tree that
 *   `iotvault trace` prints.
 * - `createLogger` writes JSON lines with trace ids and never a secret.
 *
 * ```ts
 * const telemetry = startTelemetry({ serviceName: "executor", spansDir: "/var/lib/iotvault/spans" });
 * const log = createLogger({ service: "executor" });
 * await withSpan("backup.run", async (span) => {
 *   span.setAttribute("iotvault.job", jobId);
 *   log.info("backup started", { jobId });        // carries trace_id and span_id
 * });
 * await telemetry.shutdown();
 * console.log(renderTraceTree(await readSpans("/var/lib/iotvault/spans", traceId)));
 * ```
 */
export { exitOnStartupError } from "./startup.js";
export { startTelemetry, otlpTracesUrl, type Telemetry, type TelemetryOptions } from "./telemetry.js";
export {
  withSpan,
  recordError,
  errorMessage,
  currentTraceId,
  traceparentOf,
  DEFAULT_TRACER_NAME,
  type WithSpanOptions,
} from "./spans.js";
export { SpanFileExporter, spanFilePath, toSpanRecord, type SpanRecord } from "./span-file.js";
export { readSpans, type ReadSpansOptions } from "./read-spans.js";
export { renderTraceTree, type RenderTraceTreeOptions } from "./trace-tree.js";
export { createLogger, type LogFields, type LogLevel, type Logger, type LoggerOptions } from "./logger.js";
export { scrubSecrets, isSecretField, SECRET_FIELD_PATTERN, REDACTED } from "./scrub.js";

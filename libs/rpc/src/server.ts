import * as grpc from "@grpc/grpc-js";
import {
  context,
  isSpanContextValid,
  SpanKind,
  SpanStatusCode,
  trace,
  type Context,
  type Span,
} from "@opentelemetry/api";
import { HealthImplementation } from "grpc-health-check";
import { IotvaultError } from "@iotvault/errors";
import { createLogger, recordError, type Logger } from "@iotvault/telemetry";
import { DEFAULT_MAX_MESSAGE_BYTES } from "./client.js";
import { knownError, toStatusError, type GrpcStatusError } from "./status.js";
import { describePath, extractContext, RPC_TRACER_NAME, rpcAttributes } from "./tracing.js";

const DEFAULT_GRACE_MS = 10_000;

export interface ServiceBinding {
  definition: grpc.ServiceDefinition;
  implementation: grpc.UntypedServiceImplementation;
  /** Full name, e.g. "iotvault.v1.CatalogService" (the health-check service name). */
  name: string;
}

export interface GrpcServerOptions {
  /** "host:port" (port 0 picks a free one) or "unix:/path". */
  listen: string;
  services: ServiceBinding[];
  /** The iotvault service this server belongs to ("catalog", ...), for spans and logs. */
  serviceName: string;
  /** Where unexpected errors are logged with their stack (default: a JSON logger on stderr). */
  logger?: Logger | undefined;
  maxMessageBytes?: number | undefined;
  /** Default: insecure (plain text), for loopback and tests. */
  credentials?: grpc.ServerCredentials | undefined;
}

export interface GrpcServerHandle {
  /** Where clients connect: the listen address with the real port (wildcards become loopback). */
  address: string;
  port: number;
  server: grpc.Server;
  health: HealthImplementation;
  /** Health NOT_SERVING, then a graceful shutdown; calls still running after `graceMs` (default 10 s) are cancelled. */
  shutdown(graceMs?: number): Promise<void>;
}

interface MethodInfo {
  path: string;
  spanName: string;
  serviceName: string;
  logger: Logger;
}

type Outcome = { error: GrpcStatusError; cause: unknown; known: boolean } | { cancelled: true } | undefined;

function startSpan(info: MethodInfo, metadata: grpc.Metadata): { span: Span; ctx: Context } {
  const parent = extractContext(metadata);
  const span = trace
    .getTracer(RPC_TRACER_NAME)
    .startSpan(
      info.spanName,
      { kind: SpanKind.SERVER, attributes: { ...rpcAttributes(info.path), "iotvault.service": info.serviceName } },
      parent,
    );
  return { span, ctx: trace.setSpan(parent, span) };
}

function endSpan(span: Span, outcome: Outcome): void {
  if (outcome === undefined) {
    span.setAttribute("rpc.grpc.status_code", grpc.status.OK);
  } else if ("cancelled" in outcome) {
    span.setAttribute("rpc.grpc.status_code", grpc.status.CANCELLED);
    span.setStatus({ code: SpanStatusCode.ERROR, message: "cancelled by the client or its deadline" });
  } else {
    span.setAttribute("rpc.grpc.status_code", outcome.error.code);
    recordError(span, outcome.cause);
    // The span of an unexpected error keeps its (scrubbed) text and stack in the exception event;
    // its status, shown in trace trees, says the same as the client's message.
    if (!outcome.known) span.setStatus({ code: SpanStatusCode.ERROR, message: outcome.error.details });
  }
  span.end();
}

/**
 * Translates whatever a handler failed with into the status sent to the client. An unknown
 * error becomes INTERNAL with a generic message; its text and stack go to the server log only.
 */
function toServerError(
  err: unknown,
  info: MethodInfo,
  ctx: Context,
): Exclude<Outcome, { cancelled: true } | undefined> {
  const known = knownError(err);
  if (known) return { error: toStatusError(known), cause: known, known: true };
  const spanContext = trace.getSpan(ctx)?.spanContext();
  const traceId = spanContext && isSpanContextValid(spanContext) ? spanContext.traceId : undefined;
  context.with(ctx, () =>
    info.logger.error(`unexpected error in ${info.spanName}`, {
      error: err,
      stack: err instanceof Error ? err.stack : undefined,
    }),
  );
  const internal = new IotvaultError(
    "INTERNAL",
    `internal error in the ${info.serviceName} service (${info.spanName})`,
    {
      hint: `this is a bug or an unexpected condition; the ${info.serviceName} log has the details${traceId ? ` (trace ${traceId})` : ""}`,
    },
  );
  return { error: toStatusError(internal), cause: err, known: false };
}

/** Runs a handler; a synchronous throw or a rejected returned promise goes to `fail`. */
function invoke(run: () => unknown, fail: (err: unknown) => void): void {
  try {
    const result = run();
    if (result instanceof Promise) result.catch(fail);
  } catch (err) {
    fail(err);
  }
}

type UnaryLike = (
  call: grpc.ServerUnaryCall<unknown, unknown> | grpc.ServerReadableStream<unknown, unknown>,
  callback: grpc.sendUnaryData<unknown>,
) => unknown;

/** Unary and client-streaming handlers: both answer through a callback. */
function wrapCallback(handler: UnaryLike, info: MethodInfo): UnaryLike {
  return (call, callback) => {
    const { span, ctx } = startSpan(info, call.metadata);
    let done = false;
    const respond: grpc.sendUnaryData<unknown> = (err, value, trailer, flags) => {
      if (done) return;
      done = true;
      if (err) {
        const outcome = toServerError(err, info, ctx);
        endSpan(span, outcome);
        callback(outcome.error, null, trailer, flags);
      } else {
        endSpan(span, undefined);
        callback(null, value, trailer, flags);
      }
    };
    call.once("cancelled", () => {
      if (done) return;
      done = true;
      endSpan(span, { cancelled: true });
    });
    context.with(ctx, () =>
      invoke(
        () => handler(call, respond),
        (err) => respond(asServerError(err)),
      ),
    );
  };
}

function asServerError(err: unknown): grpc.ServerErrorResponse {
  return err instanceof Error ? err : Object.assign(new Error(String(err)), { cause: err });
}

type StreamLike = (
  call: grpc.ServerWritableStream<unknown, unknown> | grpc.ServerDuplexStream<unknown, unknown>,
) => unknown;

/** Server-streaming and bidi handlers: errors arrive as an 'error' event on the call. */
function wrapStream(handler: StreamLike, info: MethodInfo): StreamLike {
  return (call) => {
    const { span, ctx } = startSpan(info, call.metadata);
    let ended = false;
    const finish = (outcome: Outcome): void => {
      if (ended) return;
      ended = true;
      endSpan(span, outcome);
    };
    const emit = call.emit.bind(call);
    call.emit = ((event: string | symbol, ...args: unknown[]): boolean => {
      if (event !== "error") return emit(event, ...args);
      const outcome = toServerError(args[0], info, ctx);
      finish(outcome);
      return emit("error", outcome.error);
    }) as typeof call.emit;
    call.once("finish", () => finish(undefined));
    call.once("cancelled", () => finish({ cancelled: true }));
    context.with(ctx, () =>
      invoke(
        () => handler(call),
        (err) => call.emit("error", asServerError(err)),
      ),
    );
  };
}

/** Wraps every handler of a service: trace context, SERVER span, error -> status mapping. */
export function instrumentService(
  binding: ServiceBinding,
  serviceName: string,
  logger: Logger,
): grpc.UntypedServiceImplementation {
  const wrapped: grpc.UntypedServiceImplementation = {};
  for (const [key, method] of Object.entries(binding.definition)) {
    const original =
      binding.implementation[key] ?? (method.originalName ? binding.implementation[method.originalName] : undefined);
    if (typeof original !== "function") continue;
    const handler = original.bind(binding.implementation) as (...args: never[]) => unknown;
    const info: MethodInfo = { path: method.path, spanName: describePath(method.path).spanName, serviceName, logger };
    wrapped[key] = (
      method.responseStream ? wrapStream(handler as StreamLike, info) : wrapCallback(handler as UnaryLike, info)
    ) as grpc.UntypedHandleCall;
  }
  return wrapped;
}

function connectAddress(listen: string, port: number): string {
  if (listen.startsWith("unix:")) return listen;
  const host = listen.replace(/:\d+$/, "");
  const reachable = host === "0.0.0.0" || host === "" ? "127.0.0.1" : host === "[::]" ? "[::1]" : host;
  return `${reachable}:${port}`;
}

function bind(server: grpc.Server, listen: string, credentials: grpc.ServerCredentials): Promise<number> {
  return new Promise((resolve, reject) => {
    server.bindAsync(listen, credentials, (err, port) => {
      if (!err) {
        resolve(port);
        return;
      }
      reject(
        new IotvaultError("FAILED_PRECONDITION", `cannot listen for gRPC on ${listen}: ${err.message}`, {
          cause: err,
          hint: "check that the address is valid and that no other process uses the port (change `listen` in the configuration)",
        }),
      );
    });
  });
}

function shutdownServer(server: grpc.Server, graceMs: number): Promise<void> {
  return new Promise((resolve) => {
    const timer = setTimeout(() => {
      server.forceShutdown();
      resolve();
    }, graceMs);
    server.tryShutdown(() => {
      clearTimeout(timer);
      resolve();
    });
  });
}

/**
 * The health-check name under which a server says which iotvault service it is
 * ("iotvault.catalog", "iotvault.executor", ...): a probe that asks for it is not answered
 * SERVING by some other gRPC server that happens to listen on the address.
 */
export function healthName(serviceName: string): string {
  return `iotvault.${serviceName}`;
}

/**
 * Starts a gRPC server with the standard health service and every handler instrumented (trace
 * context from the metadata, a SERVER span `<Service>/<Method>`, errors mapped to statuses
 * with `iotvault-error-*` trailers). Health is SERVING for "", for `healthName(serviceName)`
 * and for each service once bound.
 */
export async function startGrpcServer(options: GrpcServerOptions): Promise<GrpcServerHandle> {
  const maxBytes = options.maxMessageBytes ?? DEFAULT_MAX_MESSAGE_BYTES;
  const logger = options.logger ?? createLogger({ service: options.serviceName });
  const server = new grpc.Server({
    "grpc.max_receive_message_length": maxBytes,
    "grpc.max_send_message_length": maxBytes,
  });
  const health = new HealthImplementation();
  health.addToServer(server);
  for (const binding of options.services) {
    server.addService(binding.definition, instrumentService(binding, options.serviceName, logger));
  }
  const port = await bind(server, options.listen, options.credentials ?? grpc.ServerCredentials.createInsecure());
  const names = ["", healthName(options.serviceName), ...options.services.map((s) => s.name)];
  for (const name of names) health.setStatus(name, "SERVING");
  let stopping: Promise<void> | undefined;
  return {
    address: connectAddress(options.listen, port),
    port,
    server,
    health,
    shutdown: (graceMs = DEFAULT_GRACE_MS) => {
      stopping ??= (async () => {
        for (const name of names) health.setStatus(name, "NOT_SERVING");
        await shutdownServer(server, graceMs);
      })();
      return stopping;
    },
  };
}

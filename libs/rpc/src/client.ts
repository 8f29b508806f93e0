import * as grpc from "@grpc/grpc-js";
import { IotvaultError } from "@iotvault/errors";
import { drained } from "./handlers.js";
import { toIotvaultError, type CallTarget } from "./status.js";
import { traceInterceptor } from "./tracing.js";

/** 8 MiB: the default limit of a message, both ways (the gRPC default is 4 MiB). */
export const DEFAULT_MAX_MESSAGE_BYTES = 8 * 1024 * 1024;

/**
 * 16 MiB: the HTTP/2 flow-control window a client opens for what it receives (per stream and
 * per connection). grpc-js keeps the protocol's 64 KiB otherwise, so a server streaming a
 * pack range (GetObject) sends 64 KiB and then waits for the client's event loop to grant
 * more: a restore busy writing files stalls its own downloads. Memory stays bounded by what
 * the client asked for (a restore asks for a few ranges of at most 8 MiB at once).
 * docs/performance.md has the measurement.
 */
export const DEFAULT_FLOW_CONTROL_WINDOW_BYTES = 16 * 1024 * 1024;

/** The HTTP/2 default window (a smaller one would only slow a client down). */
const MIN_FLOW_CONTROL_WINDOW_BYTES = 65_535;

export interface CreateClientOptions {
  /** Limit of one message, both ways (default 8 MiB, like the server). */
  maxMessageBytes?: number | undefined;
  /** Default: insecure (plain text). */
  credentials?: grpc.ChannelCredentials | undefined;
  /** Short service name for error messages ("catalog"); default: derived from the client class. */
  service?: string | undefined;
  /** HTTP/2 receive window, per stream and connection (default 16 MiB; at least 64 KiB). */
  flowControlWindowBytes?: number | undefined;
}

export interface CallOptions {
  /** Fail with DEADLINE_EXCEEDED when there is no answer within this many milliseconds. */
  deadlineMs?: number | undefined;
  /** Cancels the call (the promise rejects with CANCELLED). */
  signal?: AbortSignal | undefined;
}

export type UnaryMethod<Req, Res> = (
  request: Req,
  metadata: grpc.Metadata,
  options: Partial<grpc.CallOptions>,
  callback: (err: grpc.ServiceError | null, response: Res) => void,
) => grpc.ClientUnaryCall;

export type ServerStreamMethod<Req, Res> = (
  request: Req,
  metadata?: grpc.Metadata,
  options?: Partial<grpc.CallOptions>,
) => grpc.ClientReadableStream<Res>;

export type ClientStreamMethod<Req, Res> = (
  metadata: grpc.Metadata,
  options: Partial<grpc.CallOptions>,
  callback: (err: grpc.ServiceError | null, response: Res) => void,
) => grpc.ClientWritableStream<Req>;

/* eslint-disable @typescript-eslint/no-explicit-any -- method-name lookups over generated clients */
type Returned<M> = M extends (...args: any[]) => infer R ? R : never;
type KindOf<M> =
  Returned<M> extends { serialize: unknown }
    ? Returned<M> extends { deserialize: unknown }
      ? "bidi"
      : "clientStream"
    : Returned<M> extends { deserialize: unknown }
      ? "serverStream"
      : Returned<M> extends grpc.ClientUnaryCall
        ? "unary"
        : "none";
type MethodNames<C, Kind> = {
  [K in Exclude<keyof C, keyof grpc.Client>]: KindOf<C[K]> extends Kind ? K : never;
}[Exclude<keyof C, keyof grpc.Client>] &
  string;
/** Names of the unary methods of a generated client ("getRun", ...). */
export type UnaryMethodName<C> = MethodNames<C, "unary">;
export type ServerStreamMethodName<C> = MethodNames<C, "serverStream">;
export type ClientStreamMethodName<C> = MethodNames<C, "clientStream">;
type RequestOf<M> = M extends (req: infer Req, md: grpc.Metadata, ...rest: any[]) => any ? Req : never;
type UnaryResponseOf<M> = M extends UnaryMethod<any, infer Res> ? Res : never;
type StreamResponseOf<M> = M extends ServerStreamMethod<any, infer Res> ? Res : never;
type ClientStreamTypes<M> = M extends ClientStreamMethod<infer Req, infer Res> ? { req: Req; res: Res } : never;
/* eslint-enable @typescript-eslint/no-explicit-any */

const targets = new WeakMap<grpc.Client, CallTarget>();

/** "iotvault.v1.StorageGatewayService" -> "storage-gateway". */
export function serviceLabel(fullName: string): string {
  const short = fullName.slice(fullName.lastIndexOf(".") + 1).replace(/Service$/, "") || fullName;
  return short.replace(/([a-z0-9])([A-Z])/g, "$1-$2").toLowerCase();
}

/** Remembers what a client talks to, for error messages (createClient does it for you). */
export function registerClient(client: grpc.Client, target: CallTarget): void {
  targets.set(client, target);
}

function targetOf(client: grpc.Client): CallTarget {
  const known = targets.get(client);
  if (known) return known;
  const ctor = client.constructor as { serviceName?: unknown };
  const service = typeof ctor.serviceName === "string" ? serviceLabel(ctor.serviceName) : "remote";
  return { service, address: client.getChannel().getTarget().replace(/^dns:/, "") };
}

/**
 * A client of a generated service class, with the tracing interceptor and message limits.
 *
 * ```ts
 * const catalog = createClient(CatalogServiceClient, "127.0.0.1:50053");
 * const run = await callUnary(catalog, "getRun", { runId }, { deadlineMs: 5000 });
 * ```
 */
export function createClient<C extends grpc.Client>(
  Ctor: new (address: string, creds: grpc.ChannelCredentials, options?: grpc.ClientOptions) => C,
  address: string,
  options: CreateClientOptions = {},
): C {
  const maxBytes = options.maxMessageBytes ?? DEFAULT_MAX_MESSAGE_BYTES;
  const client = new Ctor(address, options.credentials ?? grpc.credentials.createInsecure(), {
    "grpc.max_receive_message_length": maxBytes,
    "grpc.max_send_message_length": maxBytes,
    "grpc-node.flow_control_window": Math.max(
      MIN_FLOW_CONTROL_WINDOW_BYTES,
      options.flowControlWindowBytes ?? DEFAULT_FLOW_CONTROL_WINDOW_BYTES,
    ),
    interceptors: [traceInterceptor],
  });
  const ctor = Ctor as { serviceName?: unknown };
  const service = options.service ?? (typeof ctor.serviceName === "string" ? serviceLabel(ctor.serviceName) : "remote");
  registerClient(client, { service, address });
  return client;
}

function resolveMethod<F>(client: grpc.Client, method: F | string): F {
  if (typeof method !== "string") return method;
  const fn = (client as unknown as Record<string, unknown>)[method];
  if (typeof fn !== "function") {
    throw new IotvaultError("INVALID_ARGUMENT", `the client has no method ${JSON.stringify(method)}`, {
      hint: 'use the lower-camel-case method name of the generated client, e.g. "getRun"',
    });
  }
  return fn as F;
}

function callOptionsOf(options: CallOptions): Partial<grpc.CallOptions> {
  return options.deadlineMs === undefined ? {} : { deadline: Date.now() + options.deadlineMs };
}

function cancelledBefore(target: CallTarget): IotvaultError {
  return new IotvaultError("CANCELLED", `the call to the ${target.service} service was cancelled before it started`);
}

/** Cancels the call when the signal fires (grpc-js then reports CANCELLED); returns the cleanup. */
function cancelOnAbort(signal: AbortSignal | undefined, call: { cancel(): void }): () => void {
  if (!signal) return () => undefined;
  const onAbort = (): void => call.cancel();
  signal.addEventListener("abort", onAbort, { once: true });
  return () => signal.removeEventListener("abort", onAbort);
}

function isServiceError(err: unknown): err is grpc.ServiceError {
  const e = err as { code?: unknown; details?: unknown; metadata?: unknown } | null;
  return typeof e?.code === "number" && typeof e.details === "string" && e.metadata instanceof grpc.Metadata;
}

/**
 * One request, one answer, as a promise. Errors are IotvaultErrors (see toIotvaultError).
 * `method` is the generated client's method name (`"getRun"`), or the method itself
 * (`client.getRun`; it is called with `this = client`).
 */
export function callUnary<C extends grpc.Client, K extends UnaryMethodName<C>>(
  client: C,
  method: K,
  request: RequestOf<C[K]>,
  options?: CallOptions,
): Promise<UnaryResponseOf<C[K]>>;
export function callUnary<Req, Res>(
  client: grpc.Client,
  method: UnaryMethod<Req, Res>,
  request: Req,
  options?: CallOptions,
): Promise<Res>;
export function callUnary<Req, Res>(
  client: grpc.Client,
  method: UnaryMethod<Req, Res> | string,
  request: Req,
  options: CallOptions = {},
): Promise<Res> {
  const target = targetOf(client);
  return new Promise<Res>((resolve, reject) => {
    if (options.signal?.aborted) {
      reject(cancelledBefore(target));
      return;
    }
    let release = (): void => undefined;
    const call = resolveMethod(client, method).call(
      client,
      request,
      new grpc.Metadata(),
      callOptionsOf(options),
      (err, res) => {
        release();
        if (err) reject(toIotvaultError(err, target));
        else resolve(res);
      },
    );
    release = cancelOnAbort(options.signal, call);
  });
}

/**
 * A server stream as an async iterable. The call starts at the first `next()`; leaving the loop
 * early (break, throw) cancels it. Errors are IotvaultErrors.
 */
export function callServerStream<C extends grpc.Client, K extends ServerStreamMethodName<C>>(
  client: C,
  method: K,
  request: RequestOf<C[K]>,
  options?: CallOptions,
): AsyncIterable<StreamResponseOf<C[K]>>;
export function callServerStream<Req, Res>(
  client: grpc.Client,
  method: ServerStreamMethod<Req, Res>,
  request: Req,
  options?: CallOptions,
): AsyncIterable<Res>;
export async function* callServerStream<Req, Res>(
  client: grpc.Client,
  method: ServerStreamMethod<Req, Res> | string,
  request: Req,
  options: CallOptions = {},
): AsyncIterable<Res> {
  const target = targetOf(client);
  const { signal } = options;
  if (signal?.aborted) throw cancelledBefore(target);
  const call = resolveMethod(client, method).call(client, request, new grpc.Metadata(), callOptionsOf(options));
  const release = cancelOnAbort(signal, call);
  let settled = false;
  try {
    for await (const message of call) yield message as Res;
    settled = true;
  } catch (err) {
    settled = true;
    throw isServiceError(err) ? toIotvaultError(err, target) : err;
  } finally {
    release();
    if (!settled) call.cancel();
  }
}

async function writeAll<Req>(
  call: grpc.ClientWritableStream<Req>,
  requests: AsyncIterable<Req> | Iterable<Req>,
  stop: AbortSignal,
): Promise<void> {
  for await (const request of requests) {
    if (stop.aborted) return;
    if (!call.write(request)) await drained(call, stop);
  }
  if (!stop.aborted) call.end();
}

/**
 * A client stream: writes every request (waiting for 'drain' when the buffer is full), then
 * resolves with the answer. A failing source cancels the call and rejects with its error;
 * when the server answers early (an error), writing stops.
 */
export function callClientStream<C extends grpc.Client, K extends ClientStreamMethodName<C>>(
  client: C,
  method: K,
  requests: AsyncIterable<ClientStreamTypes<C[K]>["req"]> | Iterable<ClientStreamTypes<C[K]>["req"]>,
  options?: CallOptions,
): Promise<ClientStreamTypes<C[K]>["res"]>;
export function callClientStream<Req, Res>(
  client: grpc.Client,
  method: ClientStreamMethod<Req, Res>,
  requests: AsyncIterable<Req> | Iterable<Req>,
  options?: CallOptions,
): Promise<Res>;
export function callClientStream<Req, Res>(
  client: grpc.Client,
  method: ClientStreamMethod<Req, Res> | string,
  requests: AsyncIterable<Req> | Iterable<Req>,
  options: CallOptions = {},
): Promise<Res> {
  const target = targetOf(client);
  return new Promise<Res>((resolve, reject) => {
    if (options.signal?.aborted) {
      reject(cancelledBefore(target));
      return;
    }
    const stop = new AbortController();
    let release = (): void => undefined;
    const call = resolveMethod(client, method).call(client, new grpc.Metadata(), callOptionsOf(options), (err, res) => {
      stop.abort();
      release();
      if (err) reject(toIotvaultError(err, target));
      else resolve(res);
    });
    release = cancelOnAbort(options.signal, call);
    writeAll(call, requests, stop.signal).catch((err: unknown) => {
      // The source failed: that error is the answer; the call is abandoned.
      reject(
        err instanceof Error ? err : new IotvaultError("INVALID_ARGUMENT", `the request source failed: ${String(err)}`),
      );
      stop.abort();
      call.cancel();
    });
  });
}

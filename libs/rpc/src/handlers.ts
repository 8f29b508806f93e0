import type { Readable } from "node:stream";
import type * as grpc from "@grpc/grpc-js";
import { IotvaultError } from "@iotvault/errors";

/**
 * Promise-style handlers. Each adapter turns an async function into the callback / stream
 * handler grpc-js wants, and gives it an AbortSignal that fires when the client cancels the
 * call or its deadline passes. Errors are passed on as they are: the server wrapper of
 * `startGrpcServer` maps them to gRPC statuses.
 */

type Cancellable = { cancelled: boolean } & NodeJS.EventEmitter;

/** An AbortSignal that fires when the call is cancelled (by the client or by its deadline). */
export function callSignal(call: Cancellable): AbortSignal {
  const controller = new AbortController();
  const abort = (): void =>
    controller.abort(
      new IotvaultError("CANCELLED", "the client cancelled the call or its deadline passed", { retryable: false }),
    );
  if (call.cancelled) abort();
  else call.once("cancelled", abort);
  return controller.signal;
}

/** grpc-js reads `.message`/`.code` of what a handler reports: always give it an object. */
function asError(err: unknown): Error {
  return err instanceof Error ? err : new Error(String(err));
}

/** Resolves when the stream can take more writes, or when it is closed or the call cancelled. */
export function drained(stream: NodeJS.EventEmitter, signal?: AbortSignal): Promise<void> {
  return new Promise((resolve) => {
    const events = ["drain", "close", "error", "finish", "status"];
    const done = (): void => {
      for (const event of events) stream.off(event, done);
      signal?.removeEventListener("abort", done);
      resolve();
    };
    if (signal?.aborted) {
      resolve();
      return;
    }
    for (const event of events) stream.once(event, done);
    signal?.addEventListener("abort", done, { once: true });
  });
}

export type UnaryHandler<Req, Res> = (
  request: Req,
  call: grpc.ServerUnaryCall<Req, Res>,
  signal: AbortSignal,
) => Promise<Res>;

/** `unary(async (req, call, signal) => res)`. */
export function unary<Req, Res>(fn: UnaryHandler<Req, Res>): grpc.handleUnaryCall<Req, Res> {
  return (call, callback) => {
    const signal = callSignal(call);
    fn(call.request, call, signal).then(
      (response) => callback(null, response),
      (err: unknown) => callback(asError(err)),
    );
  };
}

export type ServerStreamHandler<Req, Res> = (
  request: Req,
  call: grpc.ServerWritableStream<Req, Res>,
  signal: AbortSignal,
) => AsyncIterable<Res>;

/**
 * Writes everything a source yields, waiting for 'drain' whenever write() says the buffer is
 * full, and stops pulling from the source when the call is cancelled.
 */
async function pump<Res>(
  call: grpc.ServerWritableStream<unknown, Res> | grpc.ServerDuplexStream<unknown, Res>,
  source: AsyncIterable<Res>,
  signal: AbortSignal,
): Promise<void> {
  try {
    for await (const message of source) {
      if (signal.aborted) break;
      if (!call.write(message)) await drained(call, signal);
      if (signal.aborted) break;
    }
    if (!signal.aborted) call.end();
  } catch (err) {
    if (!signal.aborted) call.emit("error", asError(err));
  }
}

/** `serverStream(async function* (req, call, signal) { yield ... })`, with backpressure. */
export function serverStream<Req, Res>(fn: ServerStreamHandler<Req, Res>): grpc.handleServerStreamingCall<Req, Res> {
  return (call) => {
    const signal = callSignal(call);
    void pump(call, fn(call.request, call, signal), signal);
  };
}

/**
 * The incoming messages of a call; a cancelled call ends the iteration with CANCELLED. grpc-js
 * gives client-streaming and bidi handlers a Duplex: a plain `for await` would destroy it (and
 * so fail the call) when the requests end while the response side is still open, hence
 * `destroyOnReturn: false`.
 */
async function* incoming<Req>(stream: Readable, signal: AbortSignal): AsyncGenerator<Req> {
  try {
    for await (const message of stream.iterator({ destroyOnReturn: false })) yield message as Req;
  } catch (err) {
    if (signal.aborted) throw signal.reason;
    throw err;
  }
}

export type ClientStreamHandler<Req, Res> = (
  requests: AsyncIterable<Req>,
  call: grpc.ServerReadableStream<Req, Res>,
  signal: AbortSignal,
) => Promise<Res>;

/** `clientStream(async (requests, call, signal) => { for await (const r of requests) ...; return res; })`. */
export function clientStream<Req, Res>(fn: ClientStreamHandler<Req, Res>): grpc.handleClientStreamingCall<Req, Res> {
  return (call, callback) => {
    const signal = callSignal(call);
    fn(incoming<Req>(call, signal), call, signal).then(
      (response) => callback(null, response),
      (err: unknown) => callback(asError(err)),
    );
  };
}

export type BidiStreamHandler<Req, Res> = (
  requests: AsyncIterable<Req>,
  call: grpc.ServerDuplexStream<Req, Res>,
  signal: AbortSignal,
) => AsyncIterable<Res>;

/** `bidiStream(async function* (requests, call, signal) { for await (const r of requests) yield ... })`. */
export function bidiStream<Req, Res>(fn: BidiStreamHandler<Req, Res>): grpc.handleBidiStreamingCall<Req, Res> {
  return (call) => {
    const signal = callSignal(call);
    void pump(call, fn(incoming<Req>(call, signal), call, signal), signal);
  };
}

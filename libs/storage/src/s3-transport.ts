/**
 * The HTTP layer under the minio client: every request gets a timeout (no response or no
 * progress for `timeoutMs` destroys it), the AbortSignal of the store operation that made it,
 * and leaves its HTTP status where the error classification can read it (minio's S3Error
 * carries the S3 error code but not the status, and a 5xx without an XML body has no code).
 * The per-operation context travels through AsyncLocalStorage, so the minio calls need no
 * extra arguments.
 */
import { AsyncLocalStorage } from "node:async_hooks";
import * as http from "node:http";
import * as https from "node:https";

/** What one attempt of a store operation passes down to its HTTP requests. */
export interface S3RequestContext {
  signal?: AbortSignal | undefined;
  /** The status of the last response received in this attempt. */
  status?: number | undefined;
}

const contexts = new AsyncLocalStorage<S3RequestContext>();

/** Runs `operation` with `context` visible to the transport's requests. */
export function inRequestContext<T>(context: S3RequestContext, operation: () => Promise<T>): Promise<T> {
  return contexts.run(context, operation);
}

/** Marks a request destroyed by the timeout (classified as UNAVAILABLE, retryable). */
export class S3TimeoutError extends Error {
  override readonly name = "S3TimeoutError";
  readonly code = "ETIMEDOUT";
}

type RequestFn = typeof http.request;

/** A minio `transport` (the `request` function of node:http or node:https) with the behaviour above. */
export function createS3Transport(options: { tls: boolean; timeoutMs: number }): { request: RequestFn } {
  const base = options.tls ? https : http;
  const request = (requestOptions: http.RequestOptions, callback?: (res: http.IncomingMessage) => void) => {
    const context = contexts.getStore();
    const withSignal = context?.signal ? { ...requestOptions, signal: context.signal } : requestOptions;
    const req = base.request(withSignal, (res) => {
      if (context) context.status = res.statusCode;
      callback?.(res);
    });
    req.setTimeout(options.timeoutMs, () => {
      req.destroy(new S3TimeoutError(`no progress for ${options.timeoutMs} ms`));
    });
    return req;
  };
  return { request: request as RequestFn };
}

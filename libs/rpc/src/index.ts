/**
 * @iotvault/rpc — gRPC servers and clients for iotvault's services.
 *
 * - `startGrpcServer` serves generated services with the standard health service, and wraps
 *   every handler: the caller's trace context (`traceparent` metadata), a SERVER span
 *   `<Service>/<Method>`, and errors mapped to gRPC statuses with `iotvault-error-*` trailers
 *   (an unexpected error becomes INTERNAL with a generic message and is logged on the server).
 * - `unary`, `serverStream`, `clientStream`, `bidiStream` let handlers be async functions and
 *   async generators (backpressure and cancellation handled).
 * - `createClient` + `callUnary` / `callServerStream` / `callClientStream` call them with
 *   promises and async iterables; every error comes back as the server's IotvaultError.
 * - `checkHealth` asks a server's health service; `GatewayObjectStore` is the ObjectStore of a
 *   repository behind the storage-gateway; `prepareGatewayKeys` derives the keys of the
 *   repositories it serves at a service's start.
 *
 * ```ts
 * const handle = await startGrpcServer({
 *   listen: "127.0.0.1:50053",
 *   serviceName: "catalog",
 *   services: [{ name: "iotvault.v1.CatalogService", definition: CatalogServiceService, implementation: {
 *     getRun: unary(async (req) => ({ run: await runs.get(req.runId) })),
 *     listRuns: unary(async (req) => ({ runs: await runs.list(req) })),
 *     ...
 *   } }],
 * });
 * const catalog = createClient(CatalogServiceClient, handle.address);
 * const { run } = await callUnary(catalog, "getRun", { runId }, { deadlineMs: 5000 });
 * await handle.shutdown();
 * ```
 */
export {
  startGrpcServer,
  healthName,
  instrumentService,
  type GrpcServerHandle,
  type GrpcServerOptions,
  type ServiceBinding,
} from "./server.js";
export {
  unary,
  serverStream,
  clientStream,
  bidiStream,
  callSignal,
  type UnaryHandler,
  type ServerStreamHandler,
  type ClientStreamHandler,
  type BidiStreamHandler,
} from "./handlers.js";
export {
  DEFAULT_MAX_MESSAGE_BYTES,
  createClient,
  callUnary,
  callServerStream,
  callClientStream,
  serviceLabel,
  toIotvaultError,
  GatewayObjectStore,
  GATEWAY_CHUNK_BYTES,
  encodeBytesMessage,
  type CallOptions,
  type CallTarget,
  type CreateClientOptions,
  type GatewayObjectStoreOptions,
} from "./client-only.js";
export { prepareGatewayKeys } from "./gateway-keys.js";
export {
  type UnaryMethod,
  type ServerStreamMethod,
  type ClientStreamMethod,
  type UnaryMethodName,
  type ServerStreamMethodName,
  type ClientStreamMethodName,
} from "./client.js";
export { grpcStatusOf, errorCodeOfStatus, ERROR_METADATA, type GrpcStatusError } from "./status.js";
export { traceInterceptor, extractContext, RPC_TRACER_NAME } from "./tracing.js";
export { checkHealth, type CheckHealthOptions, type HealthStatus } from "./health.js";

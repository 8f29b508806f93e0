/**
 * `@iotvault/rpc/client`: the client side alone (calls, error mapping, trace propagation, the
 * gateway-backed ObjectStore), without the server and its telemetry SDK. A command-line process
 * that makes a few calls loads it in a fraction of the time the whole package takes.
 */
export {
  DEFAULT_MAX_MESSAGE_BYTES,
  createClient,
  callUnary,
  callServerStream,
  callClientStream,
  serviceLabel,
  type CallOptions,
  type CreateClientOptions,
} from "./client.js";
export { toIotvaultError, type CallTarget } from "./status.js";
export {
  GatewayObjectStore,
  GATEWAY_CHUNK_BYTES,
  encodeBytesMessage,
  type GatewayObjectStoreOptions,
} from "./gateway-store.js";

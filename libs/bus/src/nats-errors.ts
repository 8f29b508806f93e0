import { JetStreamApiError } from "@nats-io/jetstream";
import { IotvaultError, toIotvaultError } from "@iotvault/errors";

/** JetStream API error codes iotvault reacts to. */
export const JsCode = {
  StreamNotFound: 10059,
  ConsumerNotFound: 10014,
  StreamNameInUse: 10058,
  RetentionChange: 10052,
  FilterNotUnique: 10100,
  WrongExpectedStream: 10060,
  NoMessageFound: 10037,
} as const;

/** The JetStream API error code of a client error (JetStreamApiError), if any. */
export function apiCode(err: unknown): number | undefined {
  return err instanceof JetStreamApiError ? err.code : undefined;
}

/** Removes the user:password part of a URL before it goes into a message. */
export function redactUrl(url: string): string {
  return url.replace(/\/\/[^@/]*@/g, "//***@");
}

/**
 * Classifies an error of the NATS client once: connection problems are UNAVAILABLE (retryable),
 * permission problems PERMISSION_DENIED, JetStream API rejections FAILED_PRECONDITION.
 */
export function toBusError(err: unknown, context: string): IotvaultError {
  if (err instanceof IotvaultError) return err;
  if (err instanceof JetStreamApiError) {
    const text = `${context}: ${err.message} (JetStream API error ${err.code})`;
    // 5xx: the cluster is electing a leader, or the server is busy; insufficient resources: full store.
    if (err.status >= 500) {
      return new IotvaultError("UNAVAILABLE", text, {
        cause: err,
        hint: "JetStream is temporarily unavailable; retrying",
      });
    }
    if (/insufficient (storage )?resources|maximum bytes|storage is full/i.test(err.message)) {
      return new IotvaultError("RESOURCE_EXHAUSTED", text, {
        cause: err,
        hint: "the JetStream store is full: give nats-server more storage or shorten the events' max age",
      });
    }
    return new IotvaultError("FAILED_PRECONDITION", text, { cause: err });
  }
  const name = err instanceof Error ? err.name : "";
  const message = `${context}: ${err instanceof Error ? err.message : String(err)}`;
  switch (name) {
    case "TimeoutError":
      return new IotvaultError("UNAVAILABLE", message, {
        cause: err,
        hint: "NATS did not answer in time; check the server and the network",
      });
    case "ConnectionError":
    case "ProtocolError":
    case "RequestError":
      return new IotvaultError("UNAVAILABLE", message, {
        cause: err,
        hint: "check that nats-server is running and reachable",
      });
    case "ClosedConnectionError":
    case "DrainingConnectionError":
      return new IotvaultError("FAILED_PRECONDITION", message, {
        cause: err,
        hint: "the bus was closed; connect a new one",
      });
    case "AuthorizationError":
    case "PermissionViolationError":
    case "UserAuthenticationExpiredError":
      return new IotvaultError("PERMISSION_DENIED", message, {
        cause: err,
        hint: "check the NATS credentials (credsFile) and the user's permissions",
      });
    case "NoResponders":
    case "JetStreamNotEnabled":
      return new IotvaultError("UNAVAILABLE", message, {
        cause: err,
        hint: "no JetStream stream answered: call Bus.ensureStreams() at start-up, and check that JetStream is enabled (nats-server -js)",
      });
    default:
      return toIotvaultError(err, context);
  }
}

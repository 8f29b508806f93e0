import * as grpc from "@grpc/grpc-js";
import { ErrorCode, IotvaultError, isIotvaultError } from "@iotvault/errors";

/** Trailing metadata that carries an IotvaultError across a gRPC call. */
export const ERROR_METADATA = {
  code: "iotvault-error-code",
  hint: "iotvault-error-hint",
  retryable: "iotvault-error-retryable",
  details: "iotvault-error-details",
} as const;

const STATUS_OF_CODE: Readonly<Record<ErrorCode, grpc.status>> = {
  INVALID_ARGUMENT: grpc.status.INVALID_ARGUMENT,
  CONFIG_INVALID: grpc.status.INVALID_ARGUMENT,
  NOT_FOUND: grpc.status.NOT_FOUND,
  ALREADY_EXISTS: grpc.status.ALREADY_EXISTS,
  FAILED_PRECONDITION: grpc.status.FAILED_PRECONDITION,
  WRONG_KEY: grpc.status.UNAUTHENTICATED,
  PERMISSION_DENIED: grpc.status.PERMISSION_DENIED,
  DATA_CORRUPT: grpc.status.DATA_LOSS,
  UNAVAILABLE: grpc.status.UNAVAILABLE,
  DEADLINE_EXCEEDED: grpc.status.DEADLINE_EXCEEDED,
  CANCELLED: grpc.status.CANCELLED,
  RESOURCE_EXHAUSTED: grpc.status.RESOURCE_EXHAUSTED,
  UNIMPLEMENTED: grpc.status.UNIMPLEMENTED,
  INTERNAL: grpc.status.INTERNAL,
};

/** For a status that arrives without iotvault metadata (another gRPC server, the transport). */
const CODE_OF_STATUS: Readonly<Partial<Record<grpc.status, ErrorCode>>> = {
  [grpc.status.CANCELLED]: "CANCELLED",
  [grpc.status.INVALID_ARGUMENT]: "INVALID_ARGUMENT",
  [grpc.status.OUT_OF_RANGE]: "INVALID_ARGUMENT",
  [grpc.status.DEADLINE_EXCEEDED]: "DEADLINE_EXCEEDED",
  [grpc.status.NOT_FOUND]: "NOT_FOUND",
  [grpc.status.ALREADY_EXISTS]: "ALREADY_EXISTS",
  [grpc.status.PERMISSION_DENIED]: "PERMISSION_DENIED",
  [grpc.status.UNAUTHENTICATED]: "PERMISSION_DENIED",
  [grpc.status.RESOURCE_EXHAUSTED]: "RESOURCE_EXHAUSTED",
  [grpc.status.FAILED_PRECONDITION]: "FAILED_PRECONDITION",
  [grpc.status.ABORTED]: "UNAVAILABLE",
  [grpc.status.UNIMPLEMENTED]: "UNIMPLEMENTED",
  [grpc.status.UNAVAILABLE]: "UNAVAILABLE",
  [grpc.status.DATA_LOSS]: "DATA_CORRUPT",
};

/** The gRPC status code an IotvaultError code travels as. */
export function grpcStatusOf(code: ErrorCode): grpc.status {
  return STATUS_OF_CODE[code];
}

/** The IotvaultError code of a bare gRPC status (INTERNAL for UNKNOWN, INTERNAL, ...). */
export function errorCodeOfStatus(status: grpc.status): ErrorCode {
  return CODE_OF_STATUS[status] ?? "INTERNAL";
}

/**
 * Metadata values must be printable ASCII: like grpc-message, bytes outside 0x20-0x7E and "%"
 * itself are percent-encoded (UTF-8), so any hint survives the trip exactly.
 */
export function encodeMetadataText(text: string): string {
  let out = "";
  for (const char of text) {
    const c = char.codePointAt(0) ?? 0;
    if (c >= 0x20 && c <= 0x7e && char !== "%") out += char;
    else for (const byte of Buffer.from(char, "utf8")) out += `%${byte.toString(16).toUpperCase().padStart(2, "0")}`;
  }
  return out;
}

export function decodeMetadataText(text: string): string {
  try {
    return decodeURIComponent(text);
  } catch {
    return text;
  }
}

function firstText(metadata: grpc.Metadata | undefined, key: string): string | undefined {
  const value = metadata?.get(key)[0];
  if (value === undefined) return undefined;
  return decodeMetadataText(typeof value === "string" ? value : value.toString("utf8"));
}

/** Trailing metadata describing an IotvaultError (code, hint, retryable, details). */
export function errorMetadata(err: IotvaultError): grpc.Metadata {
  const metadata = new grpc.Metadata();
  metadata.set(ERROR_METADATA.code, err.code);
  metadata.set(ERROR_METADATA.retryable, String(err.retryable));
  if (err.hint) metadata.set(ERROR_METADATA.hint, encodeMetadataText(err.hint));
  if (Object.keys(err.details).length > 0) {
    metadata.set(ERROR_METADATA.details, encodeMetadataText(JSON.stringify(err.details)));
  }
  return metadata;
}

/** The error object a server handler gives grpc-js: status code, message, trailing metadata. */
export type GrpcStatusError = Error & { code: grpc.status; details: string; metadata: grpc.Metadata };

/** An IotvaultError as the status grpc-js sends. */
export function toStatusError(err: IotvaultError): GrpcStatusError {
  return Object.assign(new Error(err.message), {
    code: grpcStatusOf(err.code),
    details: err.message,
    metadata: errorMetadata(err),
  });
}

/** True for a value shaped like a gRPC status (a ServiceError, or `{ code, details }` a handler passed on purpose). */
export function isStatusLike(err: unknown): err is { code: grpc.status; details: string; metadata?: grpc.Metadata } {
  const e = err as { code?: unknown; details?: unknown } | null;
  return (
    typeof e === "object" &&
    e !== null &&
    typeof e.code === "number" &&
    Number.isInteger(e.code) &&
    e.code > 0 &&
    e.code <= 16 &&
    typeof e.details === "string"
  );
}

function parseDetails(text: string | undefined): Record<string, string> | undefined {
  if (text === undefined) return undefined;
  try {
    const value = JSON.parse(text) as unknown;
    if (typeof value !== "object" || value === null || Array.isArray(value)) return undefined;
    return Object.fromEntries(Object.entries(value).filter((e): e is [string, string] => typeof e[1] === "string"));
  } catch {
    return undefined;
  }
}

/** Rebuilds the IotvaultError a server sent, when the iotvault metadata is there. */
export function errorFromMetadata(
  status: { details: string; metadata?: grpc.Metadata | undefined },
  cause: unknown,
): IotvaultError | undefined {
  const code = firstText(status.metadata, ERROR_METADATA.code);
  if (code === undefined || !(Object.values(ErrorCode) as string[]).includes(code)) return undefined;
  const retryable = firstText(status.metadata, ERROR_METADATA.retryable);
  return new IotvaultError(code as ErrorCode, status.details, {
    cause,
    hint: firstText(status.metadata, ERROR_METADATA.hint),
    retryable: retryable === undefined ? undefined : retryable === "true",
    details: parseDetails(firstText(status.metadata, ERROR_METADATA.details)),
  });
}

/** Where a client call went, for messages: the service's short name and its address. */
export interface CallTarget {
  service: string;
  address: string;
}

function transportError(err: grpc.ServiceError, { service, address }: CallTarget): IotvaultError {
  const cause = { cause: err, details: { grpcStatus: grpc.status[err.code], grpcDetails: err.details } };
  switch (err.code) {
    case grpc.status.UNAVAILABLE:
      return new IotvaultError("UNAVAILABLE", `cannot reach the ${service} service at ${address}`, {
        ...cause,
        hint: "start it with `iotvault stack up`, or check `iotvault stack status`",
      });
    case grpc.status.DEADLINE_EXCEEDED:
      return new IotvaultError("DEADLINE_EXCEEDED", `the ${service} service at ${address} did not answer in time`, {
        ...cause,
        hint: "it may be overloaded or stuck; retry, or check `iotvault stack status` and its log",
      });
    case grpc.status.CANCELLED:
      return new IotvaultError("CANCELLED", `the call to the ${service} service at ${address} was cancelled`, cause);
    case grpc.status.RESOURCE_EXHAUSTED:
      return new IotvaultError("RESOURCE_EXHAUSTED", `${service} service: ${err.details}`, {
        ...cause,
        hint: "a message may exceed the gRPC size limit (maxMessageBytes, 8 MiB by default, on both sides)",
      });
    case grpc.status.UNIMPLEMENTED:
      return new IotvaultError("UNIMPLEMENTED", `${service} service: ${err.details}`, {
        ...cause,
        hint: `the ${service} service at ${address} may be an older or newer version than this client`,
      });
    default:
      return new IotvaultError(errorCodeOfStatus(err.code), `${service} service: ${err.details}`, cause);
  }
}

/**
 * The IotvaultError behind a failed call: the server's own error (same code, message, hint,
 * retryable) when it sent the iotvault metadata, otherwise one made from the bare status
 * (UNAVAILABLE becomes "cannot reach the <service> service at <address>" with a hint).
 */
export function toIotvaultError(err: grpc.ServiceError, context: CallTarget): IotvaultError {
  return errorFromMetadata(err, err) ?? transportError(err, context);
}

/** An error as the server side of iotvault sees it: IotvaultErrors as they are, gRPC statuses translated. */
export function knownError(err: unknown): IotvaultError | undefined {
  if (isIotvaultError(err)) return err;
  if (!isStatusLike(err)) return undefined;
  return errorFromMetadata(err, err) ?? new IotvaultError(errorCodeOfStatus(err.code), err.details, { cause: err });
}

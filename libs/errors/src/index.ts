/**
 * @iotvault/errors — one error class with a stable code vocabulary.
 *
 * Classify an error once where it happens (code, retryable, a hint that says what to do);
 * every boundary translates it: gRPC status (libs/rpc), JetStream ack/nak/term (libs/bus),
 * event payloads (ErrorInfo), CLI messages.
 *
 * ```ts
 * throw new IotvaultError("NOT_FOUND", `snapshot ${id} not found`, { hint: "run `iotvault snapshots`" });
 * if (isCode(err, "WRONG_KEY")) ...
 * ```
 */

export const ErrorCode = {
  /** The caller sent something invalid (a bad field, pattern, URL). Not retryable. */
  INVALID_ARGUMENT: "INVALID_ARGUMENT",
  /** Configuration file or environment is invalid. Not retryable. */
  CONFIG_INVALID: "CONFIG_INVALID",
  NOT_FOUND: "NOT_FOUND",
  ALREADY_EXISTS: "ALREADY_EXISTS",
  /** The system is not in a state that allows the operation (e.g. repository not initialised). */
  FAILED_PRECONDITION: "FAILED_PRECONDITION",
  /** The repository key or passphrase does not open the repository. */
  WRONG_KEY: "WRONG_KEY",
  PERMISSION_DENIED: "PERMISSION_DENIED",
  /** Stored data failed an integrity check (hash, authentication tag, truncated object). */
  DATA_CORRUPT: "DATA_CORRUPT",
  /** A dependency (NATS, PostgreSQL, a storage target, a service) cannot be reached. Retryable. */
  UNAVAILABLE: "UNAVAILABLE",
  DEADLINE_EXCEEDED: "DEADLINE_EXCEEDED",
  CANCELLED: "CANCELLED",
  /** Out of a resource: disk full, quota, message too large. */
  RESOURCE_EXHAUSTED: "RESOURCE_EXHAUSTED",
  UNIMPLEMENTED: "UNIMPLEMENTED",
  /** A bug or an unexpected condition. */
  INTERNAL: "INTERNAL",
} as const;

export type ErrorCode = (typeof ErrorCode)[keyof typeof ErrorCode];

const RETRYABLE_BY_DEFAULT: ReadonlySet<ErrorCode> = new Set<ErrorCode>([
  "UNAVAILABLE",
  "DEADLINE_EXCEEDED",
  "RESOURCE_EXHAUSTED",
]);

export interface IotvaultErrorOptions {
  /** What the operator can do about it, in one sentence. */
  hint?: string | undefined;
  /** Overrides the code's default (UNAVAILABLE, DEADLINE_EXCEEDED, RESOURCE_EXHAUSTED retry). */
  retryable?: boolean | undefined;
  cause?: unknown;
  /** Small, non-secret facts (object ids, paths) for logs and error details. */
  details?: Readonly<Record<string, string>> | undefined;
}

export class IotvaultError extends Error {
  override readonly name = "IotvaultError";
  readonly code: ErrorCode;
  readonly retryable: boolean;
  readonly hint: string | undefined;
  readonly details: Readonly<Record<string, string>>;

  constructor(code: ErrorCode, message: string, options: IotvaultErrorOptions = {}) {
    super(message, options.cause === undefined ? undefined : { cause: options.cause });
    this.code = code;
    this.retryable = options.retryable ?? RETRYABLE_BY_DEFAULT.has(code);
    this.hint = options.hint;
    this.details = options.details ?? {};
  }
}

export function isIotvaultError(err: unknown): err is IotvaultError {
  return err instanceof IotvaultError;
}

export function isCode(err: unknown, code: ErrorCode): err is IotvaultError {
  return err instanceof IotvaultError && err.code === code;
}

export const isNotFound = (err: unknown): err is IotvaultError => isCode(err, "NOT_FOUND");
export const isCorrupt = (err: unknown): err is IotvaultError => isCode(err, "DATA_CORRUPT");

/** True when trying the same operation again may succeed. Unknown errors are not retryable. */
export function isRetryable(err: unknown): boolean {
  if (err instanceof IotvaultError) return err.retryable;
  const code = (err as { code?: unknown } | null)?.code;
  return (
    typeof code === "string" &&
    ["ECONNREFUSED", "ECONNRESET", "ETIMEDOUT", "EPIPE", "EAI_AGAIN", "EHOSTUNREACH"].includes(code)
  );
}

const NODE_CODES: Readonly<Record<string, ErrorCode>> = {
  ENOENT: "NOT_FOUND",
  EEXIST: "ALREADY_EXISTS",
  EACCES: "PERMISSION_DENIED",
  EPERM: "PERMISSION_DENIED",
  EROFS: "PERMISSION_DENIED",
  ENOSPC: "RESOURCE_EXHAUSTED",
  EDQUOT: "RESOURCE_EXHAUSTED",
  ECONNREFUSED: "UNAVAILABLE",
  ECONNRESET: "UNAVAILABLE",
  ETIMEDOUT: "UNAVAILABLE",
  EHOSTUNREACH: "UNAVAILABLE",
  EAI_AGAIN: "UNAVAILABLE",
  ENOTDIR: "INVALID_ARGUMENT",
  EISDIR: "INVALID_ARGUMENT",
};

/**
 * Classifies any thrown value. An IotvaultError is returned as is; a Node.js system error gets
 * the matching code (ENOSPC -> RESOURCE_EXHAUSTED, ...) and `context` prefixed to its message.
 */
export function toIotvaultError(err: unknown, context?: string): IotvaultError {
  if (err instanceof IotvaultError) return err;
  const sys = err as { code?: unknown; message?: unknown } | null;
  const raw = typeof sys?.message === "string" ? sys.message : String(err);
  const message = context ? `${context}: ${raw}` : raw;
  const code = typeof sys?.code === "string" ? NODE_CODES[sys.code] : undefined;
  if (code) return new IotvaultError(code, message, { cause: err, hint: hintFor(sys?.code as string) });
  return new IotvaultError("INTERNAL", message, { cause: err });
}

function hintFor(sysCode: string): string | undefined {
  switch (sysCode) {
    case "ENOSPC":
    case "EDQUOT":
      return "free space on the target or move the repository to a larger volume";
    case "EROFS":
      return "the target is mounted read-only; remount it read-write";
    case "EACCES":
    case "EPERM":
      return "check the owner and permissions of the path";
    default:
      return undefined;
  }
}

/** The wire form of an error (matches the ErrorInfo message of the protos). */
export interface ErrorInfoShape {
  code: string;
  message: string;
  retryable: boolean;
  hint: string;
}

export function toErrorInfo(err: unknown): ErrorInfoShape {
  const e = toIotvaultError(err);
  return { code: e.code, message: e.message, retryable: e.retryable, hint: e.hint ?? "" };
}

export function fromErrorInfo(info: Partial<ErrorInfoShape>): IotvaultError {
  const code = (Object.values(ErrorCode) as string[]).includes(info.code ?? "") ? (info.code as ErrorCode) : "INTERNAL";
  return new IotvaultError(code, info.message ?? "unknown error", {
    retryable: info.retryable ?? false,
    ...(info.hint ? { hint: info.hint } : {}),
  });
}

export interface RedactUrlOptions {
  /** What to show for text that does not parse as a URL. */
  unparsable: string;
  /** Return text without a `scheme://` prefix (a path, `kv:bucket`) unchanged instead of parsing it. */
  onlySchemeUrls?: boolean | undefined;
  /** Query parameters whose name matches get the value `***` too. */
  secretParams?: RegExp | undefined;
}

/**
 * A URL as messages, logs and events may show it: its password replaced by `***` (and the
 * values of query parameters named like secrets, when asked).
 *
 * ```ts
 * redactUrl("postgres://app:s3cret@db/iot", { unparsable: "<invalid url>" }); // postgres://app:***@db/iot
 * ```
 */
export function redactUrl(text: string, options: RedactUrlOptions): string {
  if (options.onlySchemeUrls && !/^[a-z][a-z0-9+.-]*:\/\//.test(text)) return text;
  try {
    const u = new URL(text);
    if (u.password) u.password = "***";
    if (options.secretParams) {
      for (const k of [...u.searchParams.keys()]) if (options.secretParams.test(k)) u.searchParams.set(k, "***");
    }
    return u.toString();
  } catch {
    return options.unparsable;
  }
}

/**
 * Translates what the minio client throws (S3Error with an S3 error code, Node.js network
 * errors, the transport's timeout) into IotvaultErrors that name the endpoint and bucket and
 * say what to do. Credentials never appear: the access key and secret are not part of any
 * message.
 */
import { IotvaultError, type ErrorCode } from "@iotvault/errors";
import { cancelledError } from "./streams.js";

/** Where and what, for messages. */
export interface S3ErrorContext {
  /** "put of data/ab/x to s3://bucket/prefix?endpoint=..." */
  what: string;
  endpoint: string;
  bucket: string;
  key?: string | undefined;
  /** The HTTP status of the failed response, when there was one. */
  status?: number | undefined;
  signal?: AbortSignal | undefined;
}

const CREDENTIAL_CODES: Readonly<Record<string, string>> = {
  SignatureDoesNotMatch: "the secret key does not match the access key",
  InvalidAccessKeyId: "the access key is unknown to the server",
  AccessDenied: "access denied (wrong credentials, or the user may not use this bucket)",
  AllAccessDisabled: "all access to this bucket is disabled",
  InvalidToken: "the session token is invalid",
  ExpiredToken: "the session token has expired",
  AccountProblem: "the account has a problem",
};

const TRANSIENT_CODES = new Set([
  "SlowDown",
  "InternalError",
  "ServiceUnavailable",
  "RequestTimeout",
  "RequestTimeTooSkewed",
  "OperationAborted",
  "ServiceUnavailableError",
]);

const NETWORK_CODES = new Set([
  "ECONNREFUSED",
  "ECONNRESET",
  "ETIMEDOUT",
  "EPIPE",
  "EHOSTUNREACH",
  "ENETUNREACH",
  "ENOTFOUND",
  "EAI_AGAIN",
  "ECONNABORTED",
  "UND_ERR_SOCKET",
]);

const CREDENTIAL_HINT =
  "check the S3 credentials of the gateway (IOTVAULT_S3_ACCESS_KEY / IOTVAULT_S3_SECRET_KEY or their _FILE variants, or the repository's credentials file) and the bucket's policy";

/** The S3 error code (`NoSuchKey`, `AccessDenied`, ...) or Node.js error code of `err`, if any. */
export function s3CodeOf(err: unknown): string | undefined {
  const code = (err as { code?: unknown } | null)?.code;
  return typeof code === "string" && code !== "" ? code : undefined;
}

/** Classifies any error of an S3 request. An IotvaultError is returned unchanged. */
export function classifyS3Error(err: unknown, context: S3ErrorContext): IotvaultError {
  if (err instanceof IotvaultError) return err;
  if (context.signal?.aborted) return cancelledError(context.what, context.signal);
  const code = s3CodeOf(err);
  const status = context.status;
  const where = `S3 endpoint ${context.endpoint}, bucket ${context.bucket}`;
  const details = { endpoint: context.endpoint, bucket: context.bucket, s3Code: code ?? "", key: context.key ?? "" };
  const make = (errorCode: ErrorCode, message: string, hint: string, retryable?: boolean) =>
    new IotvaultError(errorCode, message, {
      cause: err,
      hint,
      details,
      ...(retryable === undefined ? {} : { retryable }),
    });

  if (code !== undefined && code in CREDENTIAL_CODES) {
    return make(
      "PERMISSION_DENIED",
      `${where} refused ${context.what}: ${CREDENTIAL_CODES[code]} (${code})`,
      CREDENTIAL_HINT,
    );
  }
  if (code === "NoSuchBucket") {
    return make(
      "FAILED_PRECONDITION",
      `bucket ${context.bucket} does not exist at S3 endpoint ${context.endpoint} (${context.what})`,
      "create the bucket (e.g. `mc mb` or `s3cmd mb`) or fix the bucket in the repository URL",
    );
  }
  if (code === "NoSuchKey" || (code === "NotFound" && context.key !== undefined)) {
    return make("NOT_FOUND", `object ${context.key ?? "?"} not found in ${where}`, "");
  }
  if (code === "EntityTooLarge" || code === "QuotaExceeded" || code === "XMinioStorageFull") {
    return make(
      "RESOURCE_EXHAUSTED",
      `${where} is out of space or quota (${code}) during ${context.what}`,
      "free space or raise the quota of the bucket's user",
      false,
    );
  }
  if (code === "InvalidBucketName") {
    return make("INVALID_ARGUMENT", `invalid bucket name ${context.bucket}`, "fix the bucket in the repository URL");
  }
  if (
    code !== undefined &&
    (NETWORK_CODES.has(code) || (err instanceof Error && /socket hang up/i.test(err.message)))
  ) {
    return make(
      "UNAVAILABLE",
      `${where} is unreachable (${code}) during ${context.what}`,
      "check that the S3 server runs and that the endpoint (host:port, tls) of the repository URL is right; the operation can be retried",
      true,
    );
  }
  if ((status !== undefined && status >= 500) || (code !== undefined && TRANSIENT_CODES.has(code))) {
    return make(
      "UNAVAILABLE",
      `${where} answered ${status ?? "an error"}${code ? ` (${code})` : ""} during ${context.what}`,
      "the S3 server is overloaded or failing; the operation can be retried",
      true,
    );
  }
  const message = err instanceof Error && err.message !== "" ? err.message : String(code ?? err);
  return make(
    "INTERNAL",
    `${where}: unexpected failure of ${context.what}${status ? ` (HTTP ${status})` : ""}: ${code ?? ""} ${message}`.trim(),
    "see the cause; report it if it persists",
    false,
  );
}

import { toIotvaultError } from "@iotvault/errors";

/**
 * Ends a service that could not start: one JSON log line on stderr (the error's code, message
 * and hint — no stack trace, no secret) and exit code 1.
 *
 * ```ts
 * main().catch((err: unknown) => exitOnStartupError("catalog", err));
 * ```
 */
export function exitOnStartupError(service: string, err: unknown): never {
  const e = toIotvaultError(err);
  const line = {
    time: new Date().toISOString(),
    level: "error",
    service,
    msg: `${service} failed to start`,
    code: e.code,
    error: e.message,
    ...(e.hint ? { hint: e.hint } : {}),
  };
  process.stderr.write(`${JSON.stringify(line)}\n`);
  process.exit(1);
}

import type { BusLogger } from "./types.js";

function write(level: string, msg: string, fields?: Record<string, unknown>): void {
  process.stderr.write(
    `${JSON.stringify({ time: new Date().toISOString(), level, component: "bus", msg, ...fields })}\n`,
  );
}

/** Warnings and errors as JSON lines on stderr; info is dropped. */
export const stderrLogger: BusLogger = {
  info: () => undefined,
  warn: (msg, fields) => write("warn", msg, fields),
  error: (msg, fields) => write("error", msg, fields),
};

export function errorFields(err: unknown): Record<string, unknown> {
  if (err instanceof Error) {
    const code = (err as { code?: unknown }).code;
    return { error: err.message, ...(code === undefined ? {} : { code }) };
  }
  return { error: String(err) };
}

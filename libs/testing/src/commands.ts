import { execFile } from "node:child_process";
import { accessSync, constants } from "node:fs";
import { delimiter, join } from "node:path";
import { IotvaultError } from "@iotvault/errors";

const SYSTEM_DIRS = ["/usr/sbin", "/usr/bin", "/sbin", "/bin", "/usr/local/sbin", "/usr/local/bin"];

/** An executable named `name` on PATH or in the usual system directories (sbin included). */
export function findProgram(name: string): string | undefined {
  const dirs = [...(process.env["PATH"] ?? "").split(delimiter).filter(Boolean), ...SYSTEM_DIRS];
  for (const dir of dirs) {
    const candidate = join(dir, name);
    try {
      accessSync(candidate, constants.X_OK);
      return candidate;
    } catch {
      // not here
    }
  }
  return undefined;
}

export interface RunOptions {
  /** Kill the program after this long (default 60 s). */
  timeoutMs?: number;
}

/**
 * Runs a program (no shell) and resolves with its standard output. A failure (exit code,
 * signal, timeout, missing program) is an UNAVAILABLE IotvaultError quoting the command and
 * the end of its standard error.
 */
export function run(program: string, args: string[], options: RunOptions = {}): Promise<string> {
  const path = findProgram(program) ?? program;
  return new Promise((resolve, reject) => {
    execFile(
      path,
      args,
      { timeout: options.timeoutMs ?? 60_000, maxBuffer: 16 * 1024 * 1024, encoding: "utf8" },
      (err, stdout, stderr) => {
        if (!err) {
          resolve(stdout);
          return;
        }
        const output = `${stderr}${stdout}`.trim().split("\n").slice(-10).join("\n");
        const why = err.killed ? "was killed (timeout)" : `failed (${String(err.code ?? err.signal)})`;
        reject(
          new IotvaultError("UNAVAILABLE", `\`${program} ${args.join(" ")}\` ${why}${output ? `:\n${output}` : ""}`, {
            cause: err,
          }),
        );
      },
    );
  });
}

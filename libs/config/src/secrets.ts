import { readFileSync, statSync } from "node:fs";
import { IotvaultError } from "@iotvault/errors";

export type PasswordSource = "IOTVAULT_PASSWORD" | "IOTVAULT_PASSWORD_FILE" | "repository.passwordFile";

/**
 * The repository passphrase: IOTVAULT_PASSWORD, else the file named by IOTVAULT_PASSWORD_FILE,
 * else the configured repository.passwordFile. There is no default: without one of them this
 * throws a FAILED_PRECONDITION error that says how to provide it. A trailing newline of a file
 * is not part of the passphrase. The value is never logged.
 */
export function readRepositoryPassword(
  env: Readonly<Record<string, string | undefined>>,
  configuredFile?: string,
): { password: Buffer; source: PasswordSource } {
  const direct = env["IOTVAULT_PASSWORD"];
  if (direct !== undefined && direct !== "")
    return { password: Buffer.from(direct, "utf8"), source: "IOTVAULT_PASSWORD" };
  const file = env["IOTVAULT_PASSWORD_FILE"] || configuredFile;
  const source: PasswordSource = env["IOTVAULT_PASSWORD_FILE"] ? "IOTVAULT_PASSWORD_FILE" : "repository.passwordFile";
  if (!file) {
    throw new IotvaultError("FAILED_PRECONDITION", "no repository passphrase is configured", {
      hint: "set IOTVAULT_PASSWORD, or IOTVAULT_PASSWORD_FILE to a file that holds it",
    });
  }
  let text: string;
  try {
    if (statSync(file).size > 64 * 1024) throw new Error("file is larger than 64 KiB");
    text = readFileSync(file, "utf8");
  } catch (err) {
    throw new IotvaultError(
      "FAILED_PRECONDITION",
      `cannot read the passphrase file named by ${source}: ${(err as Error).message}`,
      {
        hint: "check the path and its permissions",
      },
    );
  }
  const password = text.replace(/\r?\n$/, "");
  if (password === "") {
    throw new IotvaultError("FAILED_PRECONDITION", `the passphrase file named by ${source} is empty`);
  }
  return { password: Buffer.from(password, "utf8"), source };
}

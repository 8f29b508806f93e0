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
      hint: "set IOTVAULT_PASSWORD, or IOTVAULT_PASSWORD_FILE to a file that holds it (or IOTVAULT_KEY_FILE to a key file)",
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

/** What opens a repository: a passphrase, or the bytes of a key file (same shape as the repo's RepositorySecret). */
export type RepositorySecretValue = Uint8Array | { keyFile: Uint8Array };

/**
 * The secret a process opens repositories with, in this order: IOTVAULT_PASSWORD,
 * IOTVAULT_PASSWORD_FILE, IOTVAULT_KEY_FILE, then the configured repository.passwordFile and
 * repository.keyFile. No default: without any, FAILED_PRECONDITION says how to give one.
 */
export function readRepositorySecret(
  env: Readonly<Record<string, string | undefined>>,
  configured: { passwordFile?: string | undefined; keyFile?: string | undefined } = {},
): RepositorySecretValue {
  if (env["IOTVAULT_PASSWORD"] || env["IOTVAULT_PASSWORD_FILE"]) return readRepositoryPassword(env).password;
  const keyFile = env["IOTVAULT_KEY_FILE"] || (configured.passwordFile ? undefined : configured.keyFile);
  if (keyFile)
    return { keyFile: readKeyFile(keyFile, env["IOTVAULT_KEY_FILE"] ? "IOTVAULT_KEY_FILE" : "repository.keyFile") };
  return readRepositoryPassword(env, configured.passwordFile).password;
}

/** Reads a key file (its raw bytes); clear errors, never its content in a message. */
export function readKeyFile(path: string, source = "key file"): Buffer {
  try {
    if (statSync(path).size > 64 * 1024) throw new Error("file is larger than 64 KiB");
    return readFileSync(path);
  } catch (err) {
    throw new IotvaultError(
      "FAILED_PRECONDITION",
      `cannot read the key file named by ${source}: ${(err as Error).message}`,
      {
        hint: "check the path and its permissions",
      },
    );
  }
}

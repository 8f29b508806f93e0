/**
 * Secret hygiene shared by logs and spans: which field names hold secrets, and how to take
 * credentials out of free text (URLs with a password, `password=...` pairs, bearer tokens).
 */

/**
 * Field names whose values are never written anywhere: "password", "passphrase", "secretKey",
 * "apiToken", "authorization", "credentials", "apiKey", "key". Names that merely start with
 * "key" ("keyId", "keySlot") are kept: they identify a key without revealing it.
 */
export const SECRET_FIELD_PATTERN = /pass(word|phrase)?|secret|token|key$|authorization|credential/i;

/** The placeholder written instead of a secret value. */
export const REDACTED = "[redacted]";

export function isSecretField(name: string): boolean {
  return SECRET_FIELD_PATTERN.test(name);
}

const URL_PASSWORD = /([a-z][a-z0-9+.-]*:\/\/[^:/?#\s@]*):[^@/?#\s]*@/gi;
const KEY_VALUE_SECRET =
  /\b((?:pass(?:word|wd|phrase)?|pwd|secret(?:[_-]?key)?|token|api[_-]?key|access[_-]?key)\s*[=:]\s*)("[^"]*"|'[^']*'|[^\s&;,]+)/gi;
const BEARER = /\b(bearer|basic)\s+[A-Za-z0-9._~+/=-]+/gi;

/**
 * Removes credentials from free text, for error messages that reach logs or span status:
 * `postgres://app:hunter2@db/x` -> `postgres://app:***@db/x`, `password=hunter2` ->
 * `password=***`, `Bearer abc.def` -> `Bearer ***`.
 */
export function scrubSecrets(text: string): string {
  return text.replace(URL_PASSWORD, "$1:***@").replace(KEY_VALUE_SECRET, "$1***").replace(BEARER, "$1 ***");
}

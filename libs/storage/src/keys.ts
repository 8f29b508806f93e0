import { IotvaultError } from "@iotvault/errors";
import { KEY_PATTERN, type ByteRange } from "./object-store.js";

const KEY_HINT = "keys are 1-8 slash-separated segments of letters, digits, '.', '_' and '-', without '.' or '..'";

/** Throws INVALID_ARGUMENT unless `key` matches KEY_PATTERN. Call it before touching storage. */
export function checkKey(key: string): void {
  if (!KEY_PATTERN.test(key)) {
    throw new IotvaultError("INVALID_ARGUMENT", `invalid object key ${JSON.stringify(key)}`, { hint: KEY_HINT });
  }
}

const PREFIX_CHARS = /^[A-Za-z0-9._/-]*$/;

/**
 * Throws INVALID_ARGUMENT unless `prefix` could start a valid key: "" (everything), or
 * complete segments (never `.` / `..`, no empty segment, no leading `/`) followed by an
 * optional partial segment (`data/a` matches `data/ab/x`).
 */
export function checkPrefix(prefix: string): void {
  const segments = prefix.split("/");
  const complete = segments.slice(0, -1);
  const ok =
    PREFIX_CHARS.test(prefix) &&
    segments.length <= 8 &&
    complete.every((segment) => segment !== "" && segment !== "." && segment !== "..");
  if (!ok) {
    throw new IotvaultError("INVALID_ARGUMENT", `invalid list prefix ${JSON.stringify(prefix)}`, { hint: KEY_HINT });
  }
}

/** The half-open byte interval [start, end) of a range over an object of `size` bytes, clamped to it. */
export function resolveRange(size: number, range: ByteRange | undefined): { start: number; end: number } {
  if (!range) return { start: 0, end: size };
  const { offset, length } = range;
  if (
    !Number.isSafeInteger(offset) ||
    offset < 0 ||
    (length !== undefined && (!Number.isSafeInteger(length) || length < 0))
  ) {
    throw new IotvaultError("INVALID_ARGUMENT", `invalid byte range offset=${offset} length=${String(length)}`, {
      hint: "offset and length are non-negative integers; leave length out to read to the end",
    });
  }
  const start = Math.min(offset, size);
  const end = length === undefined ? size : Math.min(size, offset + length);
  return { start, end: Math.max(start, end) };
}

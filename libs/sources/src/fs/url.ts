import { posix } from "node:path";
import { IotvaultError } from "@iotvault/errors";

/**
 * Parses a file-system source URL: `fs:/abs/path` (the path is taken literally) or
 * `fs:///abs/path` (a URL: percent-escapes such as `%20` are decoded). Anything else, a
 * relative path, a host (`fs://host/...`), a query or a NUL byte, is INVALID_ARGUMENT.
 */
export function parseSourceUrl(url: string): { kind: "fs"; root: string } {
  const invalid = (why: string): IotvaultError =>
    new IotvaultError("INVALID_ARGUMENT", `invalid source URL ${JSON.stringify(url)}: ${why}`, {
      hint: "write a file-system source as fs:/absolute/path or fs:///absolute/path",
    });
  if (!url.startsWith("fs:")) throw invalid("only fs: sources are supported here");
  let path = url.slice(3);
  if (path.startsWith("//")) {
    const rest = path.slice(2);
    if (!rest.startsWith("/")) throw invalid("a host is not allowed; use fs:///path for a local path");
    if (/[?#]/.test(rest)) throw invalid("a query or fragment is not allowed");
    try {
      path = decodeURIComponent(rest);
    } catch {
      throw invalid("it has a malformed percent-escape");
    }
  }
  if (!path.startsWith("/")) throw invalid("the path must be absolute");
  if (path.includes("\0")) throw invalid("the path contains a NUL byte");
  return { kind: "fs", root: posix.normalize(path).replace(/(?<=.)\/+$/, "") };
}

/**
 * Path source URLs of the semantic kinds: `rdf:/abs/path`, `rules:/abs/path`, `config:/abs/path`
 * (taken literally) or `rdf:///abs/path` (percent-decoded), like `fs:` URLs.
 */
import { posix } from "node:path";
import { IotvaultError } from "@iotvault/errors";

export function parsePathUrl(url: string, scheme: string): string {
  const invalid = (why: string): IotvaultError =>
    new IotvaultError("INVALID_ARGUMENT", `invalid source URL ${JSON.stringify(url)}: ${why}`, {
      hint: `write it as ${scheme}:/absolute/path (a directory or one file)`,
    });
  if (!url.startsWith(`${scheme}:`)) throw invalid(`expected a ${scheme}: URL`);
  let path = url.slice(scheme.length + 1);
  if (path.startsWith("//")) {
    const rest = path.slice(2);
    if (!rest.startsWith("/")) throw invalid(`a host is not allowed; use ${scheme}:///path`);
    if (/[?#]/.test(rest)) throw invalid("a query or fragment is not allowed");
    try {
      path = decodeURIComponent(rest);
    } catch {
      throw invalid("it has a malformed percent-escape");
    }
  }
  if (!path.startsWith("/")) throw invalid("the path must be absolute");
  if (path.includes("\0")) throw invalid("the path contains a NUL byte");
  return posix.normalize(path).replace(/(?<=.)\/+$/, "");
}

import picomatch from "picomatch";
import { IotvaultError } from "@iotvault/errors";

/**
 * Compiles include/exclude globs for root-relative POSIX paths. A pattern without "/" matches
 * the last path segment at any depth (`*.log`, `.git`); a pattern with "/" matches the whole
 * path (`etc/**\/*.yaml`); a leading "/" only anchors it at the root. Dotfiles match too.
 */
export function compileGlobs(patterns: readonly string[], what: string): (path: string) => boolean {
  const whole: string[] = [];
  const base: string[] = [];
  for (const raw of patterns) {
    if (typeof raw !== "string" || raw.trim() === "") {
      throw new IotvaultError("INVALID_ARGUMENT", `an empty ${what} pattern is not allowed`);
    }
    const pattern = raw.replace(/^\/+/, "").replace(/\/+$/, "");
    if (!raw.startsWith("/") && !pattern.includes("/")) base.push(pattern);
    else whole.push(pattern);
  }
  let matchWhole: (p: string) => boolean;
  let matchBase: (p: string) => boolean;
  try {
    matchWhole = whole.length > 0 ? picomatch(whole, { dot: true }) : () => false;
    matchBase = base.length > 0 ? picomatch(base, { dot: true }) : () => false;
  } catch (err) {
    throw new IotvaultError("INVALID_ARGUMENT", `invalid ${what} pattern: ${(err as Error).message}`);
  }
  return (path) => matchWhole(path) || matchBase(path.slice(path.lastIndexOf("/") + 1));
}

/** True when `ancestor` is a proper ancestor directory of `path` (both root-relative). */
export function isUnder(ancestor: string, path: string): boolean {
  return path.length > ancestor.length && path.startsWith(ancestor) && path.charCodeAt(ancestor.length) === 47;
}

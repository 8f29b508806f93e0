import { accessSync, constants, readdirSync } from "node:fs";
import { delimiter, join } from "node:path";

function isExecutable(path: string): boolean {
  try {
    accessSync(path, constants.X_OK);
    return true;
  } catch {
    return false;
  }
}

function onPath(name: string): string | undefined {
  for (const dir of (process.env["PATH"] ?? "").split(delimiter)) {
    if (dir === "") continue;
    const candidate = join(dir, name);
    if (isExecutable(candidate)) return candidate;
  }
  return undefined;
}

/** The nats-server binary: on PATH, else /usr/sbin (Debian), else /usr/local/bin. */
export function findNatsServer(): string | undefined {
  return onPath("nats-server") ?? ["/usr/sbin/nats-server", "/usr/local/bin/nats-server"].find(isExecutable);
}

/**
 * A PostgreSQL program (initdb, pg_ctl, psql, pg_dump, ...): on PATH, else in
 * /usr/lib/postgresql/<version>/bin of the highest installed version (Debian's layout).
 */
export function findPostgresBin(name: string): string | undefined {
  const found = onPath(name);
  if (found) return found;
  const root = "/usr/lib/postgresql";
  let versions: string[];
  try {
    versions = readdirSync(root).filter((v) => /^\d+(\.\d+)?$/.test(v));
  } catch {
    return undefined;
  }
  versions.sort((a, b) => Number.parseFloat(b) - Number.parseFloat(a));
  return versions.map((v) => join(root, v, "bin", name)).find(isExecutable);
}

/** runuser, to run PostgreSQL tools as the `postgres` OS user when we are root. */
export function findRunuser(): string | undefined {
  return ["/usr/sbin/runuser", "/sbin/runuser", "/usr/bin/runuser"].find(isExecutable);
}

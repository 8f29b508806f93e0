import { mkdir, stat } from "node:fs/promises";
import { isAbsolute } from "node:path";
import { fileURLToPath, pathToFileURL } from "node:url";
import { IotvaultError } from "@iotvault/errors";
import { LocalDirectoryStore, type ObjectStore } from "@iotvault/storage";
import type { Logger } from "@iotvault/telemetry";

/** Repository names: lower-case, as in the configuration file. */
export const REPOSITORY_NAME = /^[a-z0-9][a-z0-9._-]{0,62}$/;
/** The file, in the gateway's state directory, that keeps repositories added at run time. */
export const REPOSITORIES_FILE = "repositories.json";

export interface Repository {
  readonly name: string;
  /** The canonical target URL (file:///absolute/path). */
  readonly url: string;
  /** "config" when defined in the configuration file, "runtime" when added by CreateRepository. */
  readonly origin: "config" | "runtime";
  readonly store: ObjectStore;
}

export interface RepositoryRegistryOptions {
  /** `config.storage.repositories`: name -> { url }. */
  configured?: Readonly<Record<string, { url: string }>> | undefined;
  /** `config.paths.gatewayState`: where repositories.json is kept (created 0700 when missing). */
  stateDir: string;
  logger?: Logger | undefined;
}

interface StateFile {
  version: 1;
  repositories: Record<string, { url: string; createdAt: string }>;
}

/**
 * The named repositories the gateway serves: those of the configuration file plus those added
 * at run time by CreateRepository, which are kept in `<stateDir>/repositories.json` (written
 * atomically) so that they survive a restart. A name defined in the configuration file always
 * wins over a stored one.
 *
 * ```ts
 * const registry = await RepositoryRegistry.open({ configured: config.storage.repositories, stateDir });
 * await registry.create("main", "file:///srv/iotvault/main");
 * const store = registry.store("main");
 * ```
 */
export class RepositoryRegistry {
  private readonly repositories = new Map<string, Repository>();
  private readonly runtime = new Map<string, { url: string; createdAt: string }>();
  private readonly state: LocalDirectoryStore;
  /** Serializes CreateRepository calls (read-modify-write of the state file). */
  private queue: Promise<unknown> = Promise.resolve();

  private constructor(
    stateDir: string,
    private readonly logger: Logger | undefined,
  ) {
    this.state = new LocalDirectoryStore(stateDir);
  }

  /** Validates the configured repositories, loads the stored ones. Fails fast on a bad entry. */
  static async open(options: RepositoryRegistryOptions): Promise<RepositoryRegistry> {
    await mkdir(options.stateDir, { recursive: true, mode: 0o700 });
    const registry = new RepositoryRegistry(options.stateDir, options.logger);
    for (const [name, { url }] of Object.entries(options.configured ?? {})) {
      try {
        registry.add(name, url, "config");
      } catch (err) {
        const e = err as IotvaultError;
        throw new IotvaultError(e.code, `storage.repositories.${name}: ${e.message}`, { hint: e.hint, cause: err });
      }
    }
    await registry.load();
    return registry;
  }

  /** The store of a repository; NOT_FOUND for an unknown name. */
  store(name: string): ObjectStore {
    return this.get(name).store;
  }

  get(name: string): Repository {
    const repository = this.repositories.get(name);
    if (!repository) {
      throw new IotvaultError("NOT_FOUND", `unknown repository ${name}`, {
        hint: "create it with `iotvault repo init <name> --url <url>` or define it under storage.repositories",
        details: { repository: name },
      });
    }
    return repository;
  }

  list(): Repository[] {
    return [...this.repositories.values()].sort((a, b) => (a.name < b.name ? -1 : 1));
  }

  /**
   * Registers `name` on `url`, creating the directory (0700) when missing. The same name with
   * the same URL is a no-op (`created: false`); with another URL it is ALREADY_EXISTS.
   */
  create(name: string, url: string): Promise<{ repository: Repository; created: boolean }> {
    const next = this.queue.then(() => this.createNow(name, url));
    this.queue = next.catch(() => undefined);
    return next;
  }

  private async createNow(name: string, url: string): Promise<{ repository: Repository; created: boolean }> {
    checkName(name);
    const canonical = canonicalUrl(url);
    const existing = this.repositories.get(name);
    if (existing && existing.url !== canonical) {
      throw new IotvaultError("ALREADY_EXISTS", `repository ${name} already exists with another URL`, {
        hint: `use another name, or the same URL as before (${redactUrl(existing.url)})`,
        details: { repository: name },
      });
    }
    await ensureDirectory(canonical);
    if (existing) return { repository: existing, created: false };
    const entry = { url: canonical, createdAt: new Date().toISOString() };
    await this.save(new Map([...this.runtime, [name, entry]]));
    this.runtime.set(name, entry);
    return { repository: this.add(name, canonical, "runtime"), created: true };
  }

  private add(name: string, url: string, origin: Repository["origin"]): Repository {
    checkName(name);
    const canonical = canonicalUrl(url);
    const repository: Repository = { name, url: canonical, origin, store: storeFor(canonical) };
    this.repositories.set(name, repository);
    return repository;
  }

  private async load(): Promise<void> {
    let text: string;
    try {
      text = (await this.state.get(REPOSITORIES_FILE)).toString("utf8");
    } catch (err) {
      if (err instanceof IotvaultError && err.code === "NOT_FOUND") return;
      throw err;
    }
    for (const [name, entry] of Object.entries(parseState(text, this.state.location).repositories)) {
      const configured = this.repositories.get(name);
      if (configured) {
        if (configured.url !== entry.url) {
          this.logger?.warn("a stored repository is shadowed by the configuration file", {
            repository: name,
            configuredUrl: redactUrl(configured.url),
            storedUrl: redactUrl(entry.url),
          });
        }
        continue;
      }
      this.runtime.set(name, entry);
      this.add(name, entry.url, "runtime");
    }
  }

  private async save(runtime: Map<string, { url: string; createdAt: string }>): Promise<void> {
    const file: StateFile = { version: 1, repositories: Object.fromEntries(runtime) };
    await this.state.put(REPOSITORIES_FILE, Buffer.from(`${JSON.stringify(file, null, 2)}\n`));
  }
}

function checkName(name: string): void {
  if (!REPOSITORY_NAME.test(name)) {
    throw new IotvaultError("INVALID_ARGUMENT", `invalid repository name ${JSON.stringify(name)}`, {
      hint: "use 1-63 lower-case letters, digits, '.', '_' or '-', starting with a letter or digit",
    });
  }
}

function parseState(text: string, location: string): StateFile {
  const invalid = (why: string) =>
    new IotvaultError("FAILED_PRECONDITION", `${location}/${REPOSITORIES_FILE} is invalid: ${why}`, {
      hint: "repair the file (a JSON object {version: 1, repositories: {name: {url}}}) or remove it and run `iotvault repo init` again",
    });
  let parsed: unknown;
  try {
    parsed = JSON.parse(text);
  } catch (err) {
    throw invalid((err as Error).message);
  }
  const file = parsed as Partial<StateFile> | null;
  if (file?.version !== 1 || typeof file.repositories !== "object" || file.repositories === null) {
    throw invalid("expected version 1 and a repositories object");
  }
  for (const [name, entry] of Object.entries(file.repositories)) {
    if (!REPOSITORY_NAME.test(name) || typeof entry?.url !== "string")
      throw invalid(`bad entry ${JSON.stringify(name)}`);
  }
  return file as StateFile;
}

/**
 * The canonical form of a repository URL. Only `file:///absolute/path` is served for now;
 * other well-formed URLs are UNIMPLEMENTED (naming the scheme), malformed ones INVALID_ARGUMENT.
 */
export function canonicalUrl(url: string): string {
  let parsed: URL;
  try {
    parsed = new URL(url);
  } catch {
    throw new IotvaultError("INVALID_ARGUMENT", `invalid repository URL ${JSON.stringify(redactUrl(url))}`, {
      hint: "use file:///absolute/path",
    });
  }
  const scheme = parsed.protocol.replace(/:$/, "");
  if (scheme !== "file") {
    throw new IotvaultError("UNIMPLEMENTED", `repository URLs with scheme ${scheme}:// are not supported yet`, {
      hint: "use a file:///absolute/path repository (a local or NFS directory) for now",
    });
  }
  if ((parsed.host !== "" && parsed.host !== "localhost") || parsed.search || parsed.hash) {
    throw new IotvaultError("INVALID_ARGUMENT", `invalid file URL ${JSON.stringify(redactUrl(url))}`, {
      hint: "use file:///absolute/path (three slashes, no host, query or fragment)",
    });
  }
  const path = fileURLToPath(parsed);
  if (!isAbsolute(path) || path === "/") {
    throw new IotvaultError("INVALID_ARGUMENT", `repository path ${path} must be an absolute directory below /`, {
      hint: "use file:///absolute/path",
    });
  }
  return pathToFileURL(path.replace(/\/+$/, "")).href;
}

/** A URL without credentials: no user or password, no secret-looking query parameters. */
export function redactUrl(url: string): string {
  let parsed: URL;
  try {
    parsed = new URL(url);
  } catch {
    return url.replace(/\/\/[^/@]*@/, "//");
  }
  parsed.username = "";
  parsed.password = "";
  for (const name of [...parsed.searchParams.keys()]) {
    if (/secret|password|passwd|token|credential|signature|key/i.test(name)) parsed.searchParams.delete(name);
  }
  return parsed.href;
}

function storeFor(canonical: string): ObjectStore {
  return new LocalDirectoryStore(fileURLToPath(canonical));
}

async function ensureDirectory(canonical: string): Promise<void> {
  const path = fileURLToPath(canonical);
  try {
    await mkdir(path, { recursive: true, mode: 0o700 });
    if (!(await stat(path)).isDirectory()) throw Object.assign(new Error("not a directory"), { code: "ENOTDIR" });
  } catch (err) {
    const code = (err as { code?: string }).code;
    throw new IotvaultError(
      code === "EACCES" || code === "EPERM" || code === "EROFS" ? "PERMISSION_DENIED" : "FAILED_PRECONDITION",
      `cannot create the repository directory ${path}: ${(err as Error).message}`,
      { cause: err, hint: "check that the path is a directory the gateway's user may create and write" },
    );
  }
}

import { existsSync } from "node:fs";
import { mkdir, readFile, readdir, realpath, stat } from "node:fs/promises";
import { basename, dirname, isAbsolute, join, posix, resolve, sep } from "node:path";
import { fileURLToPath, pathToFileURL } from "node:url";
import { IotvaultError } from "@iotvault/errors";
import {
  FINGERPRINT_PATTERN,
  KEY_PATTERN,
  LocalDirectoryStore,
  ReplicatedStore,
  S3Store,
  SftpStore,
  type HostKeyPolicy,
  type ObjectStore,
} from "@iotvault/storage";
import type { Logger } from "@iotvault/telemetry";
import { STORAGE_CREDENTIAL_ENV } from "./config.js";

/** Repository names: lower-case, as in the configuration file. */
export const REPOSITORY_NAME = /^[a-z0-9][a-z0-9._-]{0,62}$/;
/** The file, in the gateway's state directory, that keeps repositories added at run time. */
export const REPOSITORIES_FILE = "repositories.json";
/** The directory, in the gateway's state directory, of the copy journals (`<name>.journal`). */
export const JOURNALS_DIR = "journals";

type Env = Readonly<Record<string, string | undefined>>;

export interface Repository {
  readonly name: string;
  /** The canonical primary target URL (file:///absolute/path, s3://bucket/prefix?..., sftp://user@host:port/path). */
  readonly url: string;
  /** The canonical URLs of the replicas: more targets with a full copy (empty for one target). */
  readonly replicas: readonly string[];
  /** "config" when defined in the configuration file, "runtime" when added by CreateRepository. */
  readonly origin: "config" | "runtime";
  /** The repository's store: its one target's, or a ReplicatedStore over all its targets. */
  readonly store: ObjectStore;
  /** Each target's own store, primary first. */
  readonly targetStores: readonly ObjectStore[];
  /** The ReplicatedStore (status, heal) when the repository has replicas. */
  readonly replication: ReplicatedStore | undefined;
}

/** A repository of the configuration file. */
export interface ConfiguredRepository {
  url: string;
  /** More targets holding a full copy: every write goes to all of them (see ReplicatedStore). */
  replicas?: readonly string[] | undefined;
  /**
   * A file of `KEY=VALUE` lines (IOTVAULT_S3_ACCESS_KEY, IOTVAULT_S3_SECRET_KEY,
   * IOTVAULT_SFTP_KEY_FILE, ...) with this repository's credentials; they override the
   * gateway's environment. (The configuration schema of @iotvault/config does not carry this
   * field yet; see the package README.)
   */
  credentialsFile?: string | undefined;
}

export interface RepositoryRegistryOptions {
  /** `config.storage.repositories`: name -> { url, replicas?, credentialsFile? }. */
  configured?: Readonly<Record<string, ConfiguredRepository>> | undefined;
  /** `config.paths.gatewayState`: where repositories.json is kept (created 0700 when missing). */
  stateDir: string;
  logger?: Logger | undefined;
  /**
   * Where storage credentials come from (STORAGE_CREDENTIAL_ENV, plus HOME for the default
   * known_hosts file): the gateway's environment. Defaults to `process.env`.
   */
  env?: Env | undefined;
  /**
   * Directories under which CreateRepository may place file:// repositories
   * (`config.storage.allowedRoots`); undefined allows any path (tests only). Repositories of the
   * configuration file are the operator's own and are not checked.
   */
  allowedRoots?: readonly string[] | undefined;
}

interface StoredRepository {
  url: string;
  /** Absent for a repository with one target (and in files written before replicas existed). */
  replicas?: string[] | undefined;
  createdAt: string;
}

interface StateFile {
  version: 1;
  repositories: Record<string, StoredRepository>;
}

/**
 * The named repositories the gateway serves: those of the configuration file plus those added
 * at run time by CreateRepository, which are kept in `<stateDir>/repositories.json` (written
 * atomically) so that they survive a restart. A name defined in the configuration file always
 * wins over a stored one. Targets are local or NFS directories (`file://`), S3-compatible
 * buckets (`s3://`) and SFTP directories (`sftp://`); their credentials come from the
 * gateway's environment (or a repository's credentials file), never from the URL. A repository
 * with replicas is served by a ReplicatedStore whose copy journal lives in
 * `<stateDir>/journals/<name>.journal`.
 *
 * ```ts
 * const registry = await RepositoryRegistry.open({ configured: config.storage.repositories, stateDir, env: process.env });
 * await registry.create("main", "s3://backups/site-a?endpoint=minio:9000&tls=false");
 * await registry.create("mirrored", "file:///srv/iotvault/m", ["sftp://backup@nas:22/srv/iotvault/m"]);
 * const store = registry.store("main");
 * await registry.close();
 * ```
 */
export class RepositoryRegistry {
  private readonly repositories = new Map<string, Repository>();
  private readonly runtime = new Map<string, StoredRepository>();
  private readonly state: LocalDirectoryStore;
  /** Serializes CreateRepository calls (read-modify-write of the state file). */
  private queue: Promise<unknown> = Promise.resolve();

  private constructor(
    stateDir: string,
    private readonly logger: Logger | undefined,
    private readonly env: Env,
    private readonly allowedRoots: readonly string[] | undefined,
  ) {
    this.state = new LocalDirectoryStore(stateDir);
    this.journalsDir = join(stateDir, JOURNALS_DIR);
  }

  private readonly journalsDir: string;

  /**
   * Validates the configured repositories (URL and credentials; no target is contacted, so
   * the gateway starts while a target is down), loads the stored ones. Fails fast on a bad entry.
   */
  static async open(options: RepositoryRegistryOptions): Promise<RepositoryRegistry> {
    await mkdir(options.stateDir, { recursive: true, mode: 0o700 });
    const registry = new RepositoryRegistry(
      options.stateDir,
      options.logger,
      options.env ?? process.env,
      options.allowedRoots,
    );
    for (const [name, entry] of Object.entries(options.configured ?? {})) {
      try {
        await registry.add(name, entry.url, entry.replicas ?? [], "config", entry.credentialsFile);
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
   * Registers `name` on `url` (and `replicas`, more targets with a full copy) and prepares each
   * target: a directory is created (0700) when missing, so is an SFTP directory; an S3 bucket
   * must exist already (FAILED_PRECONDITION otherwise: buckets are the storage operator's to
   * create). The same name with the same targets is a no-op (`created: false`); with other
   * targets it is ALREADY_EXISTS. Every target must be reachable to create a repository.
   */
  create(
    name: string,
    url: string,
    replicas: readonly string[] = [],
  ): Promise<{ repository: Repository; created: boolean }> {
    const next = this.queue.then(() => this.createNow(name, url, replicas));
    this.queue = next.catch(() => undefined);
    return next;
  }

  /** Closes the copy journals and the stores' connections (SFTP sessions, S3 keep-alive sockets). */
  async close(): Promise<void> {
    await Promise.all(this.list().map((repository) => closeRepository(repository)));
  }

  private async createNow(
    name: string,
    url: string,
    replicas: readonly string[],
  ): Promise<{ repository: Repository; created: boolean }> {
    checkName(name);
    const targets = canonicalTargets(url, replicas);
    const existing = this.repositories.get(name);
    if (existing) {
      checkSameTargets(existing, targets);
      for (const [i, store] of existing.targetStores.entries()) await prepareTarget(targetsOf(existing)[i]!, store);
      return { repository: existing, created: false };
    }
    if (this.allowedRoots) {
      for (const target of targets) {
        if (target.startsWith("file:")) await checkLocalTarget(fileURLToPath(target), this.allowedRoots);
      }
    }
    const repository = await this.build(name, targets, "runtime", undefined);
    try {
      for (const [i, store] of repository.targetStores.entries()) await prepareTarget(targets[i]!, store);
      const entry: StoredRepository = {
        url: repository.url,
        ...(repository.replicas.length > 0 ? { replicas: [...repository.replicas] } : {}),
        createdAt: new Date().toISOString(),
      };
      await this.save(new Map([...this.runtime, [name, entry]]));
      this.runtime.set(name, entry);
    } catch (err) {
      await closeRepository(repository);
      throw err;
    }
    this.repositories.set(name, repository);
    return { repository, created: true };
  }

  private async add(
    name: string,
    url: string,
    replicas: readonly string[],
    origin: Repository["origin"],
    credentialsFile?: string,
  ): Promise<Repository> {
    checkName(name);
    const repository = await this.build(name, canonicalTargets(url, replicas), origin, credentialsFile);
    this.repositories.set(name, repository);
    return repository;
  }

  /** The stores of a repository's targets; a ReplicatedStore over them when there are several. */
  private async build(
    name: string,
    targets: readonly string[],
    origin: Repository["origin"],
    credentialsFile: string | undefined,
  ): Promise<Repository> {
    const stores: ObjectStore[] = [];
    try {
      for (const target of targets) stores.push(await buildStore(name, target, this.env, credentialsFile, this.logger));
      const [url, ...replicas] = targets as [string, ...string[]];
      const replication =
        replicas.length === 0
          ? undefined
          : await ReplicatedStore.open(
              targets.map((target, i) => ({ url: redactUrl(target), store: stores[i]! })),
              {
                journalPath: join(this.journalsDir, `${name}.journal`),
                logger: this.logger?.child({ repository: name }),
              },
            );
      return { name, url, replicas, origin, store: replication ?? stores[0]!, targetStores: stores, replication };
    } catch (err) {
      await Promise.all(stores.map((store) => closeStore(store)));
      throw err;
    }
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
      try {
        await this.add(name, entry.url, entry.replicas ?? [], "runtime");
      } catch (err) {
        const e = err as IotvaultError;
        throw new IotvaultError(e.code, `repository ${name} of ${REPOSITORIES_FILE}: ${e.message}`, {
          hint: e.hint,
          cause: err,
        });
      }
    }
  }

  private async save(runtime: Map<string, StoredRepository>): Promise<void> {
    const file: StateFile = { version: 1, repositories: Object.fromEntries(runtime) };
    await this.state.put(REPOSITORIES_FILE, Buffer.from(`${JSON.stringify(file, null, 2)}\n`));
  }
}

/** The canonical URLs of a primary and its replicas; INVALID_ARGUMENT for a target given twice. */
function canonicalTargets(url: string, replicas: readonly string[]): string[] {
  const targets = [canonicalUrl(url), ...replicas.map((replica) => canonicalUrl(replica))];
  const names = targets.map((target) => redactUrl(target));
  const twice = names.find((name, i) => names.indexOf(name) !== i);
  if (twice !== undefined) {
    throw new IotvaultError("INVALID_ARGUMENT", `target ${twice} is given twice`, {
      hint: "name each target of a repository once: the primary with --url, each replica with one --replica",
    });
  }
  return targets;
}

function targetsOf(repository: Repository): string[] {
  return [repository.url, ...repository.replicas];
}

/**
 * CreateRepository again: the same targets (in the same order), or the same primary without
 * replicas (`repo init` of a repository whose replicas the configuration file names); anything
 * else is ALREADY_EXISTS.
 */
function checkSameTargets(existing: Repository, targets: readonly string[]): void {
  const current = targetsOf(existing);
  if (current.join("\n") === targets.join("\n")) return;
  if (targets.length === 1 && targets[0] === current[0]) return;
  const what = current[0] === targets[0] ? "other replicas" : "another URL";
  throw new IotvaultError("ALREADY_EXISTS", `repository ${existing.name} already exists with ${what}`, {
    hint: `use another name, or the same targets as before (${current.map((t) => redactUrl(t)).join(", ")})`,
    details: { repository: existing.name },
  });
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
    const replicas: unknown = entry?.replicas;
    const replicasOk =
      replicas === undefined || (Array.isArray(replicas) && replicas.every((r) => typeof r === "string"));
    if (!REPOSITORY_NAME.test(name) || typeof entry?.url !== "string" || !replicasOk)
      throw invalid(`bad entry ${JSON.stringify(name)}`);
  }
  return file as StateFile;
}

// ---------------------------------------------------------------------------------------------
// Repository URLs

const URL_FORMS =
  "file:///absolute/path, s3://bucket/prefix?endpoint=host:port[&tls=false][&region=us-east-1], or sftp://user@host:port/absolute/path[?fingerprint=SHA256:...]";
const NO_CREDENTIALS_HINT =
  "credentials never go in the URL: give them to the storage-gateway (IOTVAULT_S3_ACCESS_KEY / IOTVAULT_S3_SECRET_KEY, IOTVAULT_SFTP_KEY_FILE, or their _FILE variants)";

/** An s3:// repository URL, parsed. */
export interface S3Target {
  bucket: string;
  /** "" or slash-separated key segments. */
  prefix: string;
  /** "host:port". */
  endpoint: string;
  tls: boolean;
  region: string;
}

/** An sftp:// repository URL, parsed. */
export interface SftpTarget {
  user: string;
  host: string;
  port: number;
  /** Absolute directory on the server. */
  path: string;
  /** A pinned host key fingerprint ("SHA256:..."), when the URL has one. */
  fingerprint?: string | undefined;
}

/**
 * The canonical form of a repository URL: `file:///absolute/path`,
 * `s3://bucket[/prefix]?endpoint=host:port&region=<region>&tls=<true|false>` (parameters
 * sorted, defaults written out) or `sftp://user@host:port/absolute/path[?fingerprint=...]`.
 * A malformed URL, or one with credentials in it, is INVALID_ARGUMENT; another scheme is
 * UNIMPLEMENTED (naming the scheme).
 */
export function canonicalUrl(url: string): string {
  const parsed = parseUrl(url);
  switch (parsed.protocol) {
    case "file:":
      return canonicalFileUrl(parsed, url);
    case "s3:":
      return formatS3Url(parseS3Url(url));
    case "sftp:":
      return formatSftpUrl(parseSftpUrl(url));
    default:
      throw new IotvaultError(
        "UNIMPLEMENTED",
        `repository URLs with scheme ${parsed.protocol.replace(/:$/, "")}:// are not supported`,
        { hint: `use ${URL_FORMS}` },
      );
  }
}

function parseUrl(url: string): URL {
  try {
    return new URL(url);
  } catch {
    throw invalidUrl(url, "not a URL");
  }
}

function invalidUrl(url: string, why: string, hint = `use ${URL_FORMS}`): IotvaultError {
  return new IotvaultError("INVALID_ARGUMENT", `invalid repository URL ${JSON.stringify(redactUrl(url))}: ${why}`, {
    hint,
  });
}

function canonicalFileUrl(parsed: URL, url: string): string {
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

/** The query parameters of a URL, decoded without turning "+" into a space (fingerprints hold "+"). */
function queryParams(parsed: URL, url: string, allowed: readonly string[]): Map<string, string> {
  const params = new Map<string, string>();
  for (const pair of parsed.search.replace(/^\?/, "").split("&").filter(Boolean)) {
    const [rawName = "", ...rest] = pair.split("=");
    let name: string;
    let value: string;
    try {
      name = decodeURIComponent(rawName);
      value = decodeURIComponent(rest.join("="));
    } catch {
      throw invalidUrl(url, `bad escape in parameter ${JSON.stringify(rawName)}`);
    }
    if (/secret|password|passwd|token|credential|signature|key/i.test(name)) {
      throw invalidUrl(url, `parameter ${name} looks like a credential`, NO_CREDENTIALS_HINT);
    }
    if (!allowed.includes(name)) {
      throw invalidUrl(url, `unknown parameter ${JSON.stringify(name)} (allowed: ${allowed.join(", ") || "none"})`);
    }
    if (params.has(name)) throw invalidUrl(url, `parameter ${name} is given twice`);
    params.set(name, value);
  }
  if (parsed.hash) throw invalidUrl(url, "a fragment (#...) is not allowed");
  return params;
}

function rejectUserInfo(parsed: URL, url: string, allowUser: boolean): void {
  if (parsed.password !== "" || (!allowUser && parsed.username !== "")) {
    throw invalidUrl(url, "it carries credentials", NO_CREDENTIALS_HINT);
  }
}

/** Parses `s3://bucket[/prefix]?endpoint=host:port[&tls=true|false][&region=...]`. */
export function parseS3Url(url: string): S3Target {
  const parsed = parseUrl(url);
  if (parsed.protocol !== "s3:") throw invalidUrl(url, "not an s3:// URL");
  rejectUserInfo(parsed, url, false);
  const bucket = parsed.hostname;
  if (!/^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$/.test(bucket) || bucket.includes("..") || parsed.port !== "") {
    throw invalidUrl(
      url,
      `bad bucket name ${JSON.stringify(parsed.host)}`,
      "S3 bucket names are 3-63 lower-case letters, digits, '.' and '-'",
    );
  }
  const prefix = decodePath(parsed, url).replace(/^\/+|\/+$/g, "");
  if (prefix !== "" && !KEY_PATTERN.test(prefix)) {
    throw invalidUrl(
      url,
      `bad key prefix ${JSON.stringify(prefix)}`,
      "use slash-separated segments of letters, digits, '.', '_' and '-'",
    );
  }
  const params = queryParams(parsed, url, ["endpoint", "tls", "region"]);
  const endpoint = params.get("endpoint");
  if (!endpoint || !/^([A-Za-z0-9.-]+|\[[0-9A-Fa-f:]+\])(:\d{1,5})?$/.test(endpoint)) {
    throw invalidUrl(
      url,
      endpoint ? `bad endpoint ${JSON.stringify(endpoint)}` : "the endpoint parameter is missing",
      "add ?endpoint=host:port (the S3 server; path-style requests)",
    );
  }
  const tlsText = params.get("tls") ?? "true";
  if (tlsText !== "true" && tlsText !== "false")
    throw invalidUrl(url, `tls must be true or false, not ${JSON.stringify(tlsText)}`);
  const tls = tlsText === "true";
  const region = params.get("region") ?? "us-east-1";
  if (!/^[a-z0-9-]{1,32}$/.test(region)) throw invalidUrl(url, `bad region ${JSON.stringify(region)}`);
  const withPort = /:\d+$/.test(endpoint) ? endpoint : `${endpoint}:${tls ? 443 : 80}`;
  return { bucket, prefix, endpoint: withPort.toLowerCase(), tls, region };
}

export function formatS3Url(target: S3Target): string {
  const path = target.prefix ? `/${target.prefix}` : "";
  return `s3://${target.bucket}${path}?endpoint=${target.endpoint}&region=${target.region}&tls=${String(target.tls)}`;
}

/** Parses `sftp://user@host[:port]/absolute/path[?fingerprint=SHA256:...]`. */
export function parseSftpUrl(url: string): SftpTarget {
  const parsed = parseUrl(url);
  if (parsed.protocol !== "sftp:") throw invalidUrl(url, "not an sftp:// URL");
  rejectUserInfo(parsed, url, true);
  const user = decodeURIComponent(parsed.username);
  if (!/^[A-Za-z0-9._][A-Za-z0-9._-]{0,31}$/.test(user)) {
    throw invalidUrl(
      url,
      user ? `bad user name ${JSON.stringify(user)}` : "the user is missing",
      "use sftp://user@host:port/absolute/path",
    );
  }
  const host = parsed.hostname;
  if (!/^([A-Za-z0-9.-]+|\[[0-9A-Fa-f:]+\])$/.test(host)) throw invalidUrl(url, `bad host ${JSON.stringify(host)}`);
  const port = parsed.port === "" ? 22 : Number(parsed.port);
  const path = decodePath(parsed, url).replace(/\/+$/, "");
  if (!path.startsWith("/") || path === "" || posix.normalize(path) !== path || /[\0\n]/.test(path)) {
    throw invalidUrl(
      url,
      `bad path ${JSON.stringify(path || "/")}`,
      "use an absolute, normalized directory other than / (sftp://user@host:port/srv/iotvault)",
    );
  }
  const fingerprint = queryParams(parsed, url, ["fingerprint"]).get("fingerprint");
  if (fingerprint !== undefined && !FINGERPRINT_PATTERN.test(fingerprint)) {
    throw invalidUrl(
      url,
      `bad fingerprint ${JSON.stringify(fingerprint)}`,
      "use the SHA256:... form that `ssh-keygen -lf <host key>.pub` prints (percent-encode '+' as %2B if a tool mangles it)",
    );
  }
  return { user, host: host.toLowerCase(), port, path, ...(fingerprint ? { fingerprint } : {}) };
}

export function formatSftpUrl(target: SftpTarget): string {
  const path = target.path.split("/").map(encodeURIComponent).join("/");
  const query = target.fingerprint ? `?fingerprint=${target.fingerprint}` : "";
  return `sftp://${encodeURIComponent(target.user)}@${target.host}:${target.port}${path}${query}`;
}

function decodePath(parsed: URL, url: string): string {
  try {
    return decodeURIComponent(parsed.pathname);
  } catch {
    throw invalidUrl(url, "bad escape in the path");
  }
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

// ---------------------------------------------------------------------------------------------
// Stores and their credentials

/** Variables with a `_FILE` form (the value read from a file). */
const SECRET_VARIABLES = ["IOTVAULT_S3_ACCESS_KEY", "IOTVAULT_S3_SECRET_KEY", "IOTVAULT_SFTP_KEY_PASSPHRASE"];
/** Variables that name a file. */
const PATH_VARIABLES = new Set([
  ...SECRET_VARIABLES.map((name) => `${name}_FILE`),
  "IOTVAULT_SFTP_KEY_FILE",
  "IOTVAULT_SFTP_KNOWN_HOSTS",
]);
/** What a credentials file may set: STORAGE_CREDENTIAL_ENV and the _FILE forms. */
const CREDENTIAL_NAMES = new Set([...Object.keys(STORAGE_CREDENTIAL_ENV), ...PATH_VARIABLES]);

/**
 * The environment with a credentials file's values on top: a variable the file sets, in
 * either form (NAME or NAME_FILE), replaces both forms of the environment's.
 */
function overlay(env: Env, file: Env): Env {
  const merged: Record<string, string | undefined> = { ...env };
  for (const name of Object.keys(file)) {
    const base = name.replace(/_FILE$/, "");
    if (SECRET_VARIABLES.includes(base)) {
      delete merged[base];
      delete merged[`${base}_FILE`];
    }
  }
  return { ...merged, ...file };
}

/** The store of a canonical URL, with its credentials. Nothing is contacted. */
async function buildStore(
  name: string,
  canonical: string,
  env: Env,
  credentialsFile: string | undefined,
  logger: Logger | undefined,
): Promise<ObjectStore> {
  if (canonical.startsWith("file:")) return new LocalDirectoryStore(fileURLToPath(canonical));
  const source = credentialsFile ? overlay(env, await readCredentialsFile(credentialsFile, name, logger)) : env;
  const where = credentialsFile
    ? `the credentials file ${credentialsFile} or the gateway's environment`
    : "the gateway's environment";
  if (canonical.startsWith("s3:")) {
    const target = parseS3Url(canonical);
    const accessKey = await secret(source, "IOTVAULT_S3_ACCESS_KEY", name);
    const secretKey = await secret(source, "IOTVAULT_S3_SECRET_KEY", name);
    if (!accessKey || !secretKey) {
      throw new IotvaultError(
        "FAILED_PRECONDITION",
        `repository ${name} (${canonical}) has no S3 credentials in ${where}`,
        {
          hint: "set IOTVAULT_S3_ACCESS_KEY and IOTVAULT_S3_SECRET_KEY (or IOTVAULT_S3_ACCESS_KEY_FILE and IOTVAULT_S3_SECRET_KEY_FILE) for the storage-gateway",
        },
      );
    }
    return new S3Store({ ...target, accessKey, secretKey });
  }
  const target = parseSftpUrl(canonical);
  const keyFile = source["IOTVAULT_SFTP_KEY_FILE"];
  if (!keyFile) {
    throw new IotvaultError(
      "FAILED_PRECONDITION",
      `repository ${name} (${redactUrl(canonical)}) has no SSH key in ${where}`,
      {
        hint: "set IOTVAULT_SFTP_KEY_FILE to the private key file the storage-gateway logs in with",
      },
    );
  }
  const privateKey = await readSecretFile(keyFile, "IOTVAULT_SFTP_KEY_FILE", name);
  const passphrase = await secret(source, "IOTVAULT_SFTP_KEY_PASSPHRASE", name);
  return new SftpStore({
    host: target.host,
    port: target.port,
    username: target.user,
    root: target.path,
    privateKey,
    ...(passphrase ? { passphrase } : {}),
    hostKey: await hostKeyPolicy(name, target, source),
  });
}

/** A pinned fingerprint (URL) or the known_hosts file; SFTP without either is refused. */
async function hostKeyPolicy(name: string, target: SftpTarget, env: Env): Promise<HostKeyPolicy> {
  if (target.fingerprint) return { fingerprints: [target.fingerprint] };
  const configured = env["IOTVAULT_SFTP_KNOWN_HOSTS"];
  const fallback = env["HOME"] ? join(env["HOME"], ".ssh", "known_hosts") : undefined;
  const file = configured || (fallback && existsSync(fallback) ? fallback : undefined);
  if (!file) {
    throw new IotvaultError(
      "FAILED_PRECONDITION",
      `repository ${name}: no way to check the host key of ${target.host}:${target.port}`,
      {
        hint: "pin it in the URL (?fingerprint=SHA256:..., from `ssh-keygen -lf` of the server's host key) or set IOTVAULT_SFTP_KNOWN_HOSTS to a known_hosts file",
      },
    );
  }
  const text = await readFile(file, "utf8").catch((err: unknown) => {
    throw new IotvaultError(
      "FAILED_PRECONDITION",
      `repository ${name}: cannot read the known_hosts file ${file}: ${(err as Error).message}`,
      {
        hint: "check IOTVAULT_SFTP_KNOWN_HOSTS and the file's permissions",
      },
    );
  });
  return { knownHosts: text, knownHostsSource: file };
}

/** A secret from `NAME`, else from the file named by `NAME_FILE` (one trailing newline dropped). */
async function secret(env: Env, variable: string, repository: string): Promise<string | undefined> {
  const direct = env[variable];
  if (direct) return direct;
  const file = env[`${variable}_FILE`];
  if (!file) return undefined;
  return (await readSecretFile(file, `${variable}_FILE`, repository)).toString("utf8").replace(/\r?\n$/, "");
}

async function readSecretFile(path: string, variable: string, repository: string): Promise<Buffer> {
  try {
    if ((await stat(path)).size > 64 * 1024) throw new Error("larger than 64 KiB");
    const data = await readFile(path);
    if (data.length === 0) throw new Error("empty");
    return data;
  } catch (err) {
    throw new IotvaultError(
      "FAILED_PRECONDITION",
      `repository ${repository}: cannot use the file named by ${variable}: ${(err as Error).message}`,
      {
        hint: `check the path in ${variable} and that the storage-gateway's user may read it`,
      },
    );
  }
}

/**
 * A repository's credentials file: `NAME=value` lines (blank lines and `#` comments
 * allowed) with the names of STORAGE_CREDENTIAL_ENV (and their _FILE forms). A file that
 * other users can read is used, with a warning.
 */
async function readCredentialsFile(path: string, repository: string, logger: Logger | undefined): Promise<Env> {
  const fail = (why: string) =>
    new IotvaultError("FAILED_PRECONDITION", `repository ${repository}: credentials file ${path}: ${why}`, {
      hint: "write NAME=value lines, e.g. IOTVAULT_S3_ACCESS_KEY=... and IOTVAULT_S3_SECRET_KEY=..., readable by the storage-gateway only (chmod 600)",
    });
  let text: string;
  try {
    const info = await stat(path);
    if ((info.mode & 0o004) !== 0)
      logger?.warn("a storage credentials file is readable by every user", { repository, file: path });
    text = await readFile(path, "utf8");
  } catch (err) {
    throw fail((err as Error).message);
  }
  const values: Record<string, string> = {};
  text.split(/\r?\n/).forEach((raw, index) => {
    const line = raw.trim();
    if (line === "" || line.startsWith("#")) return;
    const at = line.indexOf("=");
    const name = at > 0 ? line.slice(0, at).trim() : "";
    if (!CREDENTIAL_NAMES.has(name))
      throw fail(`line ${index + 1}: expected NAME=value with a storage credential name`);
    const value = line.slice(at + 1).trim();
    // A relative path is taken from the credentials file's directory.
    values[name] = PATH_VARIABLES.has(name) && !isAbsolute(value) ? join(dirname(path), value) : value;
  });
  return values;
}

/** Makes a new repository's target usable: a directory is created, a bucket must exist. */
async function prepareTarget(canonical: string, store: ObjectStore): Promise<void> {
  if (store instanceof S3Store) await store.checkBucket();
  else if (store instanceof SftpStore) await store.ensureRoot();
  else await ensureDirectory(canonical);
}

async function closeStore(store: ObjectStore): Promise<void> {
  if (store instanceof S3Store || store instanceof SftpStore) await store.close().catch(() => undefined);
}

/** Closes a repository's journal (when replicated) and its targets' stores. */
async function closeRepository(repository: Repository): Promise<void> {
  if (repository.replication) await repository.replication.close().catch(() => undefined);
  await Promise.all(repository.targetStores.map((store) => closeStore(store)));
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

/**
 * A file:// repository asked for over gRPC must lie under one of the allowed roots, after
 * resolving symlinks (so that a link cannot point the gateway at /etc or ~/.ssh), and must be
 * missing, empty, or already an iotvault repository (so that an existing directory is never
 * taken over).
 */
async function checkLocalTarget(path: string, allowedRoots: readonly string[]): Promise<void> {
  const real = await realpathOfDeepestExisting(path);
  const roots = await Promise.all(allowedRoots.map((r) => realpathOfDeepestExisting(r)));
  const inside = roots.some((root) => real === root || real.startsWith(root.endsWith(sep) ? root : root + sep));
  if (!inside || roots.includes(real)) {
    throw new IotvaultError(
      "PERMISSION_DENIED",
      `refusing to place a repository at ${path}: not under an allowed root`,
      {
        hint: `choose a directory under ${allowedRoots.join(", ")}, or add its parent to storage.allowedRoots (IOTVAULT_STORAGE_ROOTS) of the storage-gateway`,
      },
    );
  }
  let entries: string[];
  try {
    entries = await readdir(real);
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === "ENOENT") return;
    throw err;
  }
  if (entries.length > 0 && !entries.includes("config")) {
    throw new IotvaultError(
      "FAILED_PRECONDITION",
      `refusing to place a repository at ${path}: the directory is not empty and holds no iotvault repository`,
      {
        hint: "choose a new or empty directory",
      },
    );
  }
}

/** realpath of the deepest existing ancestor, with the missing rest appended. */
async function realpathOfDeepestExisting(path: string): Promise<string> {
  const rest: string[] = [];
  let current = resolve(path);
  for (;;) {
    try {
      return join(await realpath(current), ...rest.reverse());
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== "ENOENT") throw err;
      const parent = dirname(current);
      if (parent === current) return resolve(path);
      rest.push(basename(current));
      current = parent;
    }
  }
}

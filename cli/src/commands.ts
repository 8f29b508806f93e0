/**
 * The commands of `iotvault`. Each takes its arguments (after the command words) and a Context.
 */
import { randomBytes } from "node:crypto";
import { mkdtemp, writeFile } from "node:fs/promises";
import { resolve } from "node:path";
import { readKeyFile, readRepositoryPassword, readRepositorySecret } from "@iotvault/config";
import { IotvaultError } from "@iotvault/errors";
import {
  BackupType,
  CreateJobRequest,
  Job,
  Run,
  RunStatus,
  type RetentionPolicy,
  Snapshot,
  backupTypeFromJSON,
  backupTypeToJSON,
  runStatusToJSON,
  RestoreResult,
  VerifyResult,
} from "@iotvault/proto";
import type { RepositorySecret } from "@iotvault/repo";
import { GatewayObjectStore, callServerStream, callUnary } from "@iotvault/rpc/client";
import { flag, list, parse, required, str, type Parsed } from "./args.js";
import type { Context } from "./context.js";
import { ProgressBar, formatBytes, formatDuration, formatTime, table } from "./output.js";
import type { stackStatus } from "./stack.js";

/**
 * The repository library (zstd binding, worker pool, 30-odd modules) is loaded by the two
 * commands that open a repository in the CLI process (`repo init`, `key`), not by the ones that
 * only call the services (`restore`, `backup`, ...): 0.2 s off each of those.
 */
const repositoryLibrary = () => import("@iotvault/repo");

const short = (id: string) => id.slice(0, 12);

/** A source given as a plain path means the file system. */
function sourceUrl(source: string): string {
  return /^[a-z][a-z0-9+.-]*:/.test(source) ? source : `fs:${resolve(source)}`;
}

/** `--option key=value` as a pair. */
function splitOption(text: string): [string, string] {
  const at = text.indexOf("=");
  if (at <= 0) throw new IotvaultError("INVALID_ARGUMENT", `--option ${text}: expected KEY=VALUE`);
  return [text.slice(0, at), text.slice(at + 1)];
}

/** A positive number option (--limit, --timeout), with a clear error otherwise. */
function positive(value: string | undefined, name: string, fallback: number): number {
  if (value === undefined) return fallback;
  const n = Number(value);
  if (!Number.isFinite(n) || n <= 0)
    throw new IotvaultError("INVALID_ARGUMENT", `${name} must be a positive number, got "${value}"`);
  return n;
}

function parseType(value: string | undefined): BackupType {
  if (!value) return BackupType.BACKUP_TYPE_UNSPECIFIED;
  const t = backupTypeFromJSON(`BACKUP_TYPE_${value.toUpperCase()}`);
  if (t === BackupType.UNRECOGNIZED || t === BackupType.BACKUP_TYPE_UNSPECIFIED) {
    throw new IotvaultError("INVALID_ARGUMENT", `unknown backup type "${value}"`, {
      hint: "use full, incremental or differential",
    });
  }
  return t;
}

const typeName = (t: BackupType) => backupTypeToJSON(t).replace("BACKUP_TYPE_", "").toLowerCase();
const statusName = (s: RunStatus) => runStatusToJSON(s).replace("RUN_STATUS_", "").toLowerCase();

// ---------------------------------------------------------------------------------------------- stack

export async function stack(ctx: Context, argv: string[]): Promise<void> {
  const usage = "iotvault stack up|down|status [--json]";
  const p = parse(argv, {}, usage);
  const sub = required(p.positionals[0], "stack command (up, down or status)", usage);
  const log = (line: string) => ctx.info(line);
  const { stackDown, stackStatus, stackUp } = await import("./stack.js");
  if (sub === "up") {
    const status = await stackUp(ctx.config, ctx.env, log);
    ctx.print(
      { home: ctx.config.home, components: status },
      () => renderStatus(status) + `\n\nIOTVAULT_HOME=${ctx.config.home}`,
    );
  } else if (sub === "down") {
    const stopped = await stackDown(ctx.config, log);
    ctx.print({ stopped }, () =>
      stopped.length
        ? `stopped: ${stopped.join(", ")}`
        : "nothing to stop (no process started by `stack up` is running)",
    );
  } else if (sub === "status") {
    const status = await stackStatus(ctx.config);
    ctx.print({ home: ctx.config.home, components: status }, () => renderStatus(status));
    if (status.some((s) => s.kind === "service" && s.state !== "running")) process.exitCode = 3;
  } else {
    throw new IotvaultError("INVALID_ARGUMENT", `unknown stack command "${sub}"`, { hint: `usage: ${usage}` });
  }
}

function renderStatus(status: Awaited<ReturnType<typeof stackStatus>>): string {
  return table(
    ["COMPONENT", "STATE", "ADDRESS", "PID"],
    status.map((s) => [
      s.name,
      s.state + (s.kind !== "service" && s.state === "external" ? " (not started by iotvault)" : ""),
      s.address,
      s.pid ? String(s.pid) : "-",
    ]),
  );
}

// ---------------------------------------------------------------------------------------------- repo

function password(ctx: Context): RepositorySecret {
  return readRepositorySecret(ctx.env, ctx.config.repository);
}

function openStore(ctx: Context, repository: string): GatewayObjectStore {
  return new GatewayObjectStore(ctx.gateway, repository, { address: ctx.config.addressOf("storage-gateway") });
}

export async function repo(ctx: Context, argv: string[]): Promise<void> {
  const usage = "iotvault repo init <name> --url <url> [--replica <url>]... | repo list";
  const p = parse(argv, { url: { type: "string" }, replica: { type: "string", multiple: true } }, usage);
  const sub = required(p.positionals[0], "repo command (init or list)", usage);
  if (sub === "list") {
    const res = await callUnary(ctx.gateway, "listRepositories", {});
    const repositories = res.repositories.map((r) => ({
      name: r.name,
      targets: r.targets,
      targetStatus: r.targetStatus.map((t) => ({
        url: t.url,
        available: t.available,
        pendingCopies: Number(t.pendingCopies),
        lastError: t.lastError,
      })),
    }));
    ctx.print(repositories, () => renderRepositories(repositories));
    return;
  }
  if (sub !== "init")
    throw new IotvaultError("INVALID_ARGUMENT", `unknown repo command "${sub}"`, { hint: `usage: ${usage}` });
  const name = required(p.positionals[1], "repository name", usage);
  const url = required(str(p, "url"), "--url", usage);
  const replicas = list(p, "replica");
  const secret = password(ctx);
  const created = await callUnary(ctx.gateway, "createRepository", { name, url, replicas });
  const store = openStore(ctx, name);
  const { Repository } = await repositoryLibrary();
  if (await Repository.exists(store)) {
    throw new IotvaultError("ALREADY_EXISTS", `${url} already holds an iotvault repository`, {
      hint: "use it as it is (jobs can name it), or choose another URL",
    });
  }
  const repository = await Repository.init(store, secret, { scryptLogN: ctx.config.repository.scryptLogN });
  await repository.close();
  ctx.print(
    { name, id: repository.id, targets: created.repository?.targets ?? [] },
    () =>
      `repository ${name} initialised at ${url}${replicas.length > 0 ? ` with ${replicas.length} replica(s) (${replicas.join(", ")})` : ""} (id ${short(repository.id)})\nkeep the passphrase safe: without it the data cannot be read`,
  );
}

/** One row per target: primary first, then replicas, with availability and the copy backlog. */
function renderRepositories(
  repositories: {
    name: string;
    targetStatus: { url: string; available: boolean; pendingCopies: number; lastError: string }[];
  }[],
): string {
  return table(
    ["NAME", "TARGET", "ROLE", "STATE", "PENDING", "LAST ERROR"],
    repositories.flatMap((r) =>
      r.targetStatus.map((t, i) => [
        i === 0 ? r.name : "",
        t.url,
        i === 0 ? "primary" : "replica",
        t.available ? "up" : "down",
        String(t.pendingCopies),
        t.lastError || "-",
      ]),
    ),
  );
}

// ---------------------------------------------------------------------------------------------- key

export async function key(ctx: Context, argv: string[]): Promise<void> {
  const usage =
    "iotvault key list --repo R | key add --repo R (--new-passphrase-file F | --key-file F | --new-key-file F) | key remove <slot> --repo R | key rotate --repo R [--keep-passphrase-file F]... [--keep-key-file F]... [--drop-other-slots]";
  const p = parse(
    argv,
    {
      repo: { type: "string" },
      "new-passphrase-file": { type: "string" },
      "key-file": { type: "string" },
      "new-key-file": { type: "string" },
      "keep-passphrase-file": { type: "string", multiple: true },
      "keep-key-file": { type: "string", multiple: true },
      "drop-other-slots": { type: "boolean" },
    },
    usage,
  );
  const sub = required(p.positionals[0], "key command (list, add, remove or rotate)", usage);
  const repoName = required(str(p, "repo"), "--repo", usage);
  const secret = password(ctx);
  const { Repository } = await repositoryLibrary();
  const repository = await Repository.open(openStore(ctx, repoName), secret, {
    scryptLogN: ctx.config.repository.scryptLogN,
    workers: 1,
  });
  try {
    if (sub === "list") {
      const keys = await repository.listKeys();
      ctx.print(keys, () =>
        [
          table(
            ["SLOT", "TYPE", "CREATED", "IN USE"],
            keys.slots.map((s) => [
              s.id.slice(0, 16),
              s.type,
              s.createdAt.replace("T", " ").slice(0, 19),
              s.inUse ? "yes" : "",
            ]),
          ),
          "",
          table(
            ["DATA KEY", "CREATED", "CURRENT"],
            keys.dataKeys.map((k) => [
              k.id.toString(16).padStart(8, "0"),
              k.createdAt.replace("T", " ").slice(0, 19),
              k.current ? "yes" : "",
            ]),
          ),
        ].join("\n"),
      );
    } else if (sub === "add") {
      const newPass = str(p, "new-passphrase-file");
      const keyFile = str(p, "key-file");
      const newKeyFile = str(p, "new-key-file");
      if ([newPass, keyFile, newKeyFile].filter(Boolean).length !== 1) {
        throw new IotvaultError(
          "INVALID_ARGUMENT",
          "give exactly one of --new-passphrase-file, --key-file, --new-key-file",
          { hint: `usage: ${usage}` },
        );
      }
      let added: RepositorySecret;
      if (newPass) added = readRepositoryPassword({ IOTVAULT_PASSWORD_FILE: newPass }).password;
      else if (keyFile) added = { keyFile: readKeyFile(keyFile, "--key-file") };
      else {
        const bytes = randomBytes(64);
        await writeFile(newKeyFile!, bytes, { mode: 0o600, flag: "wx" }).catch((err: NodeJS.ErrnoException) => {
          throw new IotvaultError(
            err.code === "EEXIST" ? "ALREADY_EXISTS" : "INVALID_ARGUMENT",
            `cannot create the key file ${newKeyFile}: ${err.message}`,
            {
              hint: "name a file that does not exist yet",
            },
          );
        });
        added = { keyFile: bytes };
      }
      const id = await repository.addKey(added);
      ctx.print(
        { slot: id },
        () =>
          `key slot ${id.slice(0, 16)} added${newKeyFile ? `; key file written to ${newKeyFile} (mode 0600) — store it safely` : ""}`,
      );
    } else if (sub === "remove") {
      const slot = required(p.positionals[1], "slot id", usage);
      await repository.removeKey(slot);
      ctx.print({ removed: slot }, () => `key slot ${slot} removed`);
    } else if (sub === "rotate") {
      const keep: RepositorySecret[] = [
        ...list(p, "keep-passphrase-file").map((f) => readRepositoryPassword({ IOTVAULT_PASSWORD_FILE: f }).password),
        ...list(p, "keep-key-file").map((f) => ({ keyFile: readKeyFile(f, "--keep-key-file") })),
      ];
      const r = await repository.rotateKeys({ current: secret, keep, dropOtherSlots: flag(p, "drop-other-slots") });
      ctx.print(
        r,
        () =>
          `new data key ${r.dataKeyId.toString(16).padStart(8, "0")} is current; new master key; ${r.slots.length} slot(s) re-made, ${r.removedSlots.length} old slot(s) removed\nexisting packs were not rewritten: old snapshots stay readable`,
      );
    } else {
      throw new IotvaultError("INVALID_ARGUMENT", `unknown key command "${sub}"`, { hint: `usage: ${usage}` });
    }
  } finally {
    await repository.close();
  }
}

// ---------------------------------------------------------------------------------------------- retention flags

export const RETENTION_OPTIONS = {
  "keep-last": { type: "string" },
  "keep-hourly": { type: "string" },
  "keep-daily": { type: "string" },
  "keep-weekly": { type: "string" },
  "keep-monthly": { type: "string" },
  "keep-yearly": { type: "string" },
  "retention-days": { type: "string" },
} as const;

/** The retention flags as a policy (0 = rule not used). */
export function retentionOf(p: Parsed): RetentionPolicy {
  const n = (name: keyof typeof RETENTION_OPTIONS) => {
    const v = str(p, name);
    if (v === undefined) return 0;
    const x = Number(v);
    if (!Number.isInteger(x) || x < 0)
      throw new IotvaultError("INVALID_ARGUMENT", `--${name} must be a whole number, got "${v}"`);
    return x;
  };
  return {
    keepLast: n("keep-last"),
    keepHourly: n("keep-hourly"),
    keepDaily: n("keep-daily"),
    keepWeekly: n("keep-weekly"),
    keepMonthly: n("keep-monthly"),
    keepYearly: n("keep-yearly"),
    retentionDays: n("retention-days"),
  };
}

/** The retention fields whose flag was given (so that `job update` changes only those). */
function nonZero(policy: RetentionPolicy, p: Parsed): Partial<RetentionPolicy> {
  const map: Record<keyof typeof RETENTION_OPTIONS, keyof RetentionPolicy> = {
    "keep-last": "keepLast",
    "keep-hourly": "keepHourly",
    "keep-daily": "keepDaily",
    "keep-weekly": "keepWeekly",
    "keep-monthly": "keepMonthly",
    "keep-yearly": "keepYearly",
    "retention-days": "retentionDays",
  };
  const out: Partial<RetentionPolicy> = {};
  for (const [flagName, field] of Object.entries(map)) if (p.values[flagName] !== undefined) out[field] = policy[field];
  return out;
}

export function describeRetention(r: RetentionPolicy | undefined): string {
  if (!r) return "-";
  const parts = [
    r.keepLast && `last ${r.keepLast}`,
    r.keepHourly && `hourly ${r.keepHourly}`,
    r.keepDaily && `daily ${r.keepDaily}`,
    r.keepWeekly && `weekly ${r.keepWeekly}`,
    r.keepMonthly && `monthly ${r.keepMonthly}`,
    r.keepYearly && `yearly ${r.keepYearly}`,
    r.retentionDays && `${r.retentionDays} days`,
  ].filter(Boolean);
  return parts.length ? parts.join(", ") : "-";
}

// ---------------------------------------------------------------------------------------------- job

export async function job(ctx: Context, argv: string[]): Promise<void> {
  const usage =
    "iotvault job create <name> --source <url> --repo <name> [--schedule CRON] [--tz ZONE] [--type full|incremental|differential] [--site S] [--include GLOB]... [--exclude GLOB]... [--keep-last N] [--keep-hourly N] [--keep-daily N] [--keep-weekly N] [--keep-monthly N] [--keep-yearly N] [--retention-days N] [--group-source URL]... | job update <job> [the same flags] | job list | job show <job> | job delete <job>";
  const p = parse(
    argv,
    {
      source: { type: "string" },
      repo: { type: "string" },
      schedule: { type: "string" },
      tz: { type: "string" },
      type: { type: "string" },
      site: { type: "string" },
      include: { type: "string", multiple: true },
      exclude: { type: "string", multiple: true },
      ...RETENTION_OPTIONS,
      "group-source": { type: "string", multiple: true },
    },
    usage,
  );
  const sub = required(p.positionals[0], "job command (create, update, list, show or delete)", usage);
  const s = ctx.scheduler;
  if (sub === "create") {
    const name = required(p.positionals[1], "job name", usage);
    const source = required(str(p, "source"), "--source", usage);
    const repository = required(str(p, "repo"), "--repo", usage);
    const req = CreateJobRequest.fromPartial({
      job: {
        name,
        source: /^[a-z][a-z0-9+.-]*:/.test(source) ? source : `fs:${resolve(source)}`,
        repository,
        schedule: str(p, "schedule") ?? "",
        timeZone: str(p, "tz") ?? "",
        backupType: parseType(str(p, "type")),
        site: str(p, "site") ?? "",
        include: list(p, "include"),
        exclude: list(p, "exclude"),
        retention: retentionOf(p),
        groupSources: list(p, "group-source").map(sourceUrl),
      },
    });
    const res = await callUnary(s, "createJob", req);
    ctx.print(Job.toJSON(res.job!), () => `job ${res.job!.name} created (id ${res.job!.id})`);
  } else if (sub === "list") {
    const res = await callUnary(s, "listJobs", {});
    ctx.print(
      res.jobs.map((j) => Job.toJSON(j)),
      () =>
        table(
          ["NAME", "SOURCE", "REPOSITORY", "SCHEDULE", "TYPE", "SITE", "KEEP"],
          res.jobs.map((j) => [
            j.name,
            j.source,
            j.repository,
            j.schedule ? `${j.schedule} (${j.timeZone})` : "-",
            typeName(j.backupType),
            j.site,
            describeRetention(j.retention),
          ]),
        ),
    );
  } else if (sub === "update") {
    // Only the flags given change; the rest of the job stays as it is.
    const current = (await callUnary(s, "getJob", { job: required(p.positionals[1], "job", usage) })).job!;
    const source = str(p, "source");
    const given = (name: string) => p.values[name] !== undefined;
    const retentionGiven = Object.keys(RETENTION_OPTIONS).some(given);
    const res = await callUnary(s, "updateJob", {
      job: {
        ...current,
        ...(source !== undefined
          ? { source: /^[a-z][a-z0-9+.-]*:/.test(source) ? source : `fs:${resolve(source)}` }
          : {}),
        ...(given("repo") ? { repository: str(p, "repo")! } : {}),
        ...(given("schedule") ? { schedule: str(p, "schedule")! } : {}),
        ...(given("tz") ? { timeZone: str(p, "tz")! } : {}),
        ...(given("type") ? { backupType: parseType(str(p, "type")) } : {}),
        ...(given("site") ? { site: str(p, "site")! } : {}),
        ...(given("include") ? { include: list(p, "include") } : {}),
        ...(given("exclude") ? { exclude: list(p, "exclude") } : {}),
        ...(given("group-source") ? { groupSources: list(p, "group-source").map(sourceUrl) } : {}),
        ...(retentionGiven
          ? {
              retention: {
                ...(current.retention ?? retentionOf({ values: {}, positionals: [] })),
                ...nonZero(retentionOf(p), p),
              },
            }
          : {}),
      },
    });
    ctx.print(Job.toJSON(res.job!), () => `job ${res.job!.name} updated`);
  } else if (sub === "show") {
    const res = await callUnary(s, "getJob", { job: required(p.positionals[1], "job", usage) });
    ctx.print(Job.toJSON(res.job!), () => JSON.stringify(Job.toJSON(res.job!), null, 2));
  } else if (sub === "delete") {
    const jobName = required(p.positionals[1], "job", usage);
    await callUnary(s, "deleteJob", { job: jobName });
    ctx.print({ deleted: jobName }, () => `job ${jobName} deleted (its snapshots stay in the repository)`);
  } else {
    throw new IotvaultError("INVALID_ARGUMENT", `unknown job command "${sub}"`, { hint: `usage: ${usage}` });
  }
}

// ---------------------------------------------------------------------------------------------- backup

export async function backup(ctx: Context, argv: string[]): Promise<void> {
  const usage = "iotvault backup <job> [--type full|incremental|differential] [--wait] [--timeout SECONDS]";
  const p = parse(argv, { type: { type: "string" }, wait: { type: "boolean" }, timeout: { type: "string" } }, usage);
  const jobName = required(p.positionals[0], "job", usage);
  const s = ctx.scheduler;
  const res = await callUnary(s, "triggerBackup", {
    job: jobName,
    backupType: parseType(str(p, "type")),
    requestedBy: `cli:${process.env["USER"] ?? "unknown"}`,
  });
  if (!flag(p, "wait")) {
    ctx.print(
      { runId: res.runId, scheduledAt: res.scheduledAt, duplicate: res.duplicate, traceId: res.traceId },
      () =>
        `run ${res.runId} queued${res.duplicate ? " (already queued before)" : ""}\ntrace ${res.traceId}\nfollow it with: iotvault runs --job ${jobName}`,
    );
    return;
  }
  const timeoutMs = positive(str(p, "timeout"), "--timeout", 3600) * 1000;
  const run = await waitForRun(ctx, res.runId, timeoutMs);
  const stats = run.stats;
  ctx.print(Run.toJSON(run), () => {
    const lines = [
      `run        ${run.runId}  ${statusName(run.status)}`,
      `snapshot   ${run.snapshotId || "-"}`,
      `trace      ${run.traceId || res.traceId}`,
    ];
    if (stats) {
      lines.push(
        `files      ${Number(stats.filesNew)} new, ${Number(stats.filesChanged)} changed, ${Number(stats.filesUnchanged)} unchanged, ${Number(stats.dirs)} dirs, ${Number(stats.symlinks)} symlinks`,
        `size       ${formatBytes(stats.totalBytes)} in the snapshot, ${formatBytes(stats.bytesRead)} read`,
        `added      ${formatBytes(stats.bytesNew)} of new data, ${formatBytes(stats.bytesStored)} stored (compressed, encrypted)`,
        `duration   ${formatDuration(stats.durationMs)}`,
      );
    }
    if (stats && stats.warnings > 0n) {
      lines.push(`warnings   ${Number(stats.warnings)} item(s) could not be backed up; the executor's log names them`);
    }
    if (run.error)
      lines.push(`error      ${run.error.message}${run.error.hint ? `\nhint       ${run.error.hint}` : ""}`);
    return lines.join("\n");
  });
  if (run.status !== RunStatus.RUN_STATUS_SUCCEEDED) process.exitCode = 1;
}

/**
 * How long `backup --wait` sleeps between two looks at the run when it polls (a catalog without
 * WatchRun): a run's end is seen on average half an interval late, which counts in a backup of a
 * few seconds and not in one of an hour.
 */
function pollIntervalMs(elapsedMs: number): number {
  return elapsedMs < 60_000 ? 100 : 500;
}

const TERMINAL = [RunStatus.RUN_STATUS_SUCCEEDED, RunStatus.RUN_STATUS_FAILED, RunStatus.RUN_STATUS_CANCELLED];

/**
 * Follows the run until it is over, with a progress bar on a TTY: through the catalog's WatchRun
 * stream (the run's end is seen as soon as the catalog applied it), or by polling GetRun when the
 * catalog does not offer WatchRun or the stream ends early (a catalog restarting).
 */
async function waitForRun(ctx: Context, runId: string, timeoutMs: number): Promise<Run> {
  const bar = new ProgressBar();
  const deadline = Date.now() + timeoutMs;
  const timedOut = (err: unknown): never => {
    throw err instanceof IotvaultError && err.code === "DEADLINE_EXCEEDED"
      ? new IotvaultError("DEADLINE_EXCEEDED", `run ${runId} did not finish within ${timeoutMs / 1000} s`, {
          hint: "it may still be running: check `iotvault runs`; is an executor up for the job's site?",
        })
      : err;
  };
  const show = (run: Run | undefined): void =>
    bar.update({
      done: Number(run?.bytesDone ?? 0),
      total: 0,
      label: run ? `backup ${short(runId)}` : `queued ${short(runId)}`,
      detail: run ? `${Number(run.filesDone)} files` : "waiting for an executor",
    });
  try {
    show(undefined);
    return (
      (await watchRun(ctx, runId, deadline, show).catch(timedOut)) ??
      (await pollRun(ctx, runId, deadline, show).catch(timedOut))
    );
  } finally {
    bar.done();
  }
}

/** The run once over, through WatchRun; undefined when the catalog cannot be watched. */
async function watchRun(
  ctx: Context,
  runId: string,
  deadline: number,
  show: (run: Run) => void,
): Promise<Run | undefined> {
  const deadlineMs = Math.max(0, deadline - Date.now());
  try {
    for await (const { run } of callServerStream(ctx.catalog, "watchRun", { runId }, { deadlineMs })) {
      if (!run) continue;
      if (TERMINAL.includes(run.status)) return run;
      show(run);
    }
  } catch (err) {
    // An older catalog (UNIMPLEMENTED) or one that went away meanwhile: polling says what is true.
    if (!(err instanceof IotvaultError && ["UNIMPLEMENTED", "UNAVAILABLE"].includes(err.code))) throw err;
  }
  return undefined;
}

/** Polls GetRun until the run is over. */
async function pollRun(
  ctx: Context,
  runId: string,
  deadline: number,
  show: (run: Run | undefined) => void,
): Promise<Run> {
  const started = Date.now();
  while (Date.now() < deadline) {
    const run = await callUnary(ctx.catalog, "getRun", { runId }).then(
      (r) => r.run,
      (err: unknown) => {
        if (err instanceof IotvaultError && err.code === "NOT_FOUND") return undefined; // queued, not started yet
        throw err;
      },
    );
    if (run && TERMINAL.includes(run.status)) return run;
    show(run);
    await new Promise((r) => setTimeout(r, pollIntervalMs(Date.now() - started)));
  }
  throw new IotvaultError("DEADLINE_EXCEEDED", `run ${runId} is not over`);
}

// ---------------------------------------------------------------------------------------------- runs, snapshots

export async function runs(ctx: Context, argv: string[]): Promise<void> {
  const usage = "iotvault runs [--job J] [--limit N]";
  const p = parse(argv, { job: { type: "string" }, limit: { type: "string" } }, usage);
  const c = ctx.catalog;
  const res = await callUnary(c, "listRuns", {
    job: str(p, "job") ?? "",
    status: 0,
    limit: positive(str(p, "limit"), "--limit", 20),
  });
  ctx.print(
    res.runs.map((r) => Run.toJSON(r)),
    () =>
      table(
        ["RUN", "JOB", "STATUS", "TYPE", "STARTED", "DURATION", "ADDED", "SNAPSHOT"],
        res.runs.map((r) => [
          r.runId,
          r.jobName,
          statusName(r.status),
          typeName(r.backupType),
          formatTime(r.startedAt),
          r.stats ? formatDuration(r.stats.durationMs) : "-",
          r.stats ? formatBytes(r.stats.bytesStored) : "-",
          r.snapshotId ? short(r.snapshotId) : "-",
        ]),
      ),
  );
}

export async function snapshots(ctx: Context, argv: string[]): Promise<void> {
  const usage = "iotvault snapshots [--job J] [--repo R] [--group RUN] [--limit N]";
  const p = parse(
    argv,
    { job: { type: "string" }, repo: { type: "string" }, limit: { type: "string" }, group: { type: "string" } },
    usage,
  );
  const c = ctx.catalog;
  const res = await callUnary(c, "listSnapshots", {
    job: str(p, "job") ?? "",
    repository: str(p, "repo") ?? "",
    limit: positive(str(p, "limit"), "--limit", 50),
    groupId: str(p, "group") ?? "",
  });
  ctx.print(
    res.snapshots.map((s) => Snapshot.toJSON(s)),
    () =>
      table(
        ["SNAPSHOT", "TIME", "JOB", "REPOSITORY", "TYPE", "SIZE", "FILES"],
        res.snapshots.map((s) => [
          short(s.snapshotId),
          formatTime(s.time),
          s.jobName,
          s.repository,
          typeName(s.backupType),
          s.stats ? formatBytes(s.stats.totalBytes) : "-",
          s.stats ? String(Number(s.stats.filesNew + s.stats.filesChanged + s.stats.filesUnchanged)) : "-",
        ]),
      ),
  );
}

// ---------------------------------------------------------------------------------------------- restore, verify

async function repositoryOf(
  ctx: Context,
  snapshotId: string,
  given: string | undefined,
): Promise<{ repository: string; snapshotId: string }> {
  if (given) return { repository: given, snapshotId };
  const c = ctx.catalog;
  const res = await callUnary(c, "getSnapshot", { snapshotId });
  return { repository: res.snapshot!.repository, snapshotId: res.snapshot!.snapshotId };
}

export async function restore(ctx: Context, argv: string[]): Promise<void> {
  const usage =
    "iotvault restore <snapshot> --to <dir|target-url> [--repo R] [--include GLOB]... [--overwrite] [--no-verify] [--allow-external-symlinks] [--option KEY=VALUE]...";
  const p = parse(
    argv,
    {
      to: { type: "string" },
      repo: { type: "string" },
      include: { type: "string", multiple: true },
      overwrite: { type: "boolean" },
      "no-verify": { type: "boolean" },
      "allow-external-symlinks": { type: "boolean" },
      option: { type: "string", multiple: true },
    },
    usage,
  );
  const to = required(str(p, "to"), "--to", usage);
  // A directory, or a URL target of the snapshot's kind of source (postgres://..., kv:bucket).
  const targetUrl = /^[a-z][a-z0-9+.-]*:/.test(to) && !/^[a-zA-Z]:[\\/]/.test(to) ? to : undefined;
  const target = targetUrl ? "" : resolve(to);
  const { repository, snapshotId } = await repositoryOf(
    ctx,
    required(p.positionals[0], "snapshot", usage),
    str(p, "repo"),
  );
  const bar = new ProgressBar();
  let result: RestoreResult | undefined;
  try {
    const stream = callServerStream(ctx.restore, "restore", {
      repository,
      snapshotId,
      targetDir: target,
      include: list(p, "include"),
      overwrite: flag(p, "overwrite"),
      verify: !flag(p, "no-verify"),
      allowExternalSymlinks: flag(p, "allow-external-symlinks"),
      target: targetUrl ?? "",
      options: Object.fromEntries(list(p, "option").map(splitOption)),
    });
    for await (const msg of stream) {
      if (msg.message?.$case === "progress") {
        const pr = msg.message.value;
        bar.update({
          done: Number(pr.bytesDone),
          total: Number(pr.bytesTotal),
          label: "restore",
          detail: `${Number(pr.filesDone)}/${Number(pr.filesTotal)} files`,
        });
      } else if (msg.message?.$case === "result") result = msg.message.value;
    }
  } finally {
    bar.done();
  }
  if (!result) throw new IotvaultError("INTERNAL", "the restore service ended the call without a result");
  const r = result;
  ctx.print(RestoreResult.toJSON(r), () =>
    [
      `restored snapshot ${short(r.snapshotId)} to ${r.targetDir}`,
      `${Number(r.files)} files, ${Number(r.dirs)} dirs, ${Number(r.symlinks)} symlinks, ${formatBytes(r.bytes)} in ${formatDuration(r.durationMs)}`,
      r.verified ? "verified: every restored file matches its checksum" : "not verified (--no-verify)",
      ...describeDetails(r.details),
      `trace ${r.traceId}`,
    ].join("\n"),
  );
  const shacl = parseDetails(r.details)["shacl"] as { conforms?: boolean } | undefined;
  if (shacl && shacl.conforms === false) process.exitCode = 1;
}

function parseDetails(text: string): Record<string, unknown> {
  try {
    const v: unknown = text ? JSON.parse(text) : {};
    return v !== null && typeof v === "object" ? (v as Record<string, unknown>) : {};
  } catch {
    return {};
  }
}

/** Human lines for what a source's restore checked beyond checksums (SHACL, row counts, ...). */
function describeDetails(text: string): string[] {
  const d = parseDetails(text);
  const lines: string[] = [];
  const shacl = d["shacl"] as
    | {
        conforms: boolean;
        violations: number;
        results: number;
        shapes: string;
        details?: { focusNode?: string; message?: string[] | string; path?: string }[];
      }
    | undefined;
  if (shacl) {
    lines.push(
      shacl.conforms
        ? `SHACL: conforms to ${shacl.shapes}`
        : `SHACL: ${shacl.violations} violation(s) of ${shacl.shapes} (${shacl.results} result(s))`,
    );
    for (const v of (shacl.details ?? []).slice(0, 10)) {
      const msg = Array.isArray(v.message) ? v.message.join("; ") : (v.message ?? "");
      lines.push(`  ${v.focusNode ?? "?"}${v.path ? ` ${v.path}` : ""}: ${msg}`);
    }
  }
  for (const [key, value] of Object.entries(d)) {
    if (key === "shacl") continue;
    if (typeof value === "string" || typeof value === "number" || typeof value === "boolean")
      lines.push(`${key}: ${String(value)}`);
  }
  return lines;
}

export async function verify(ctx: Context, argv: string[]): Promise<void> {
  const usage = "iotvault verify <snapshot> | --all --repo R [--read-data[=PCT]]";
  const normalized = argv.map((a) => (a === "--read-data" ? "--read-data=100" : a));
  const p = parse(
    normalized,
    { repo: { type: "string" }, all: { type: "boolean" }, "read-data": { type: "string" } },
    usage,
  );
  const pct = str(p, "read-data");
  const percent = pct === undefined ? 0 : Number(pct.replace(/%$/, ""));
  if (pct !== undefined && !(percent > 0 && percent <= 100)) {
    throw new IotvaultError("INVALID_ARGUMENT", `--read-data=${pct} is not a percentage in (0, 100]`);
  }
  let repository = str(p, "repo");
  let snapshotId = "";
  if (!flag(p, "all")) {
    ({ repository, snapshotId } = await repositoryOf(
      ctx,
      required(p.positionals[0], "snapshot (or --all)", usage),
      repository,
    ));
  }
  if (!repository) throw new IotvaultError("INVALID_ARGUMENT", "--all needs --repo", { hint: `usage: ${usage}` });
  const bar = new ProgressBar();
  let result: VerifyResult | undefined;
  try {
    const stream = callServerStream(ctx.restore, "verify", {
      repository,
      snapshotId,
      readData: pct !== undefined,
      readDataPercent: percent,
    });
    for await (const msg of stream) {
      if (msg.message?.$case === "progress") {
        const pr = msg.message.value;
        bar.update({
          done: Number(pr.filesDone),
          total: Number(pr.filesTotal),
          label: `verify ${pr.current}`,
          unit: "items",
        });
      } else if (msg.message?.$case === "result") result = msg.message.value;
    }
  } finally {
    bar.done();
  }
  if (!result) throw new IotvaultError("INTERNAL", "the restore service ended the call without a result");
  const r = result;
  ctx.print(VerifyResult.toJSON(r), () => {
    const head = `${r.ok ? "OK" : "PROBLEMS FOUND"}: ${Number(r.snapshotsChecked)} snapshots, ${Number(r.packsChecked)} packs, ${Number(r.chunksChecked)} chunks checked, ${formatBytes(r.bytesRead)} read${r.readData ? ` (read-data ${r.readDataPercent}%)` : " (metadata only)"}`;
    const problems = r.problems.map(
      (x) =>
        `  ${x.kind} ${x.object}: ${x.message}${x.paths.length ? `\n    affects: ${x.paths.slice(0, 10).join(", ")}${x.paths.length > 10 ? ", …" : ""}` : ""}`,
    );
    return [head, ...problems].join("\n");
  });
  if (!r.ok) process.exitCode = 1;
}

// ---------------------------------------------------------------------------------------------- trace, sample

export async function traceCmd(ctx: Context, argv: string[]): Promise<void> {
  const usage = "iotvault trace <run-id | trace-id>";
  const p = parse(argv, {}, usage);
  const id = required(p.positionals[0], "run id or trace id", usage);
  let traceId = id;
  if (!/^[0-9a-f]{32}$/.test(id)) {
    const c = ctx.catalog;
    const res = await callUnary(c, "getRun", { runId: id });
    traceId = res.run!.traceId;
    if (!traceId) throw new IotvaultError("NOT_FOUND", `run ${id} has no trace id recorded`);
  }
  const { readSpans, renderTraceTree } = await import("@iotvault/telemetry");
  const spans = await readSpans(ctx.config.paths.traces, traceId);
  if (spans.length === 0) {
    throw new IotvaultError("NOT_FOUND", `no spans of trace ${traceId} under ${ctx.config.paths.traces}`, {
      hint: "spans are kept locally when telemetry.keepSpans is on; with OTLP export, look the trace up in your tracing backend",
    });
  }
  ctx.print(
    { traceId, spans },
    () =>
      `trace ${traceId} (${spans.length} spans, ${new Set(spans.map((s) => s.service)).size} services)\n` +
      renderTraceTree(spans, { color: process.stdout.isTTY === true }),
  );
}

export async function sample(ctx: Context, argv: string[]): Promise<void> {
  const usage = "iotvault sample <dir> [--size-mib N] [--seed N]";
  const p = parse(argv, { "size-mib": { type: "string" }, seed: { type: "string" } }, usage);
  const dir = resolve(p.positionals[0] ?? (await mkdtemp("/tmp/iotvault-sample-")));
  const sizeMiB = positive(str(p, "size-mib"), "--size-mib", 32);
  const { makeGatewayTree } = await import("@iotvault/sample");
  const summary = await makeGatewayTree(dir, {
    sizeBytes: Math.round(sizeMiB * 1048576),
    seed: positive(str(p, "seed"), "--seed", 1),
  });
  ctx.print(
    { dir, ...summary },
    () =>
      `sample IoT gateway tree in ${dir}: ${summary.files} files, ${summary.dirs} dirs, ${summary.symlinks} symlinks, ${formatBytes(summary.bytes)}`,
  );
}

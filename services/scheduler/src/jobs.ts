/**
 * Job definitions, kept in the NATS KV bucket `iotvault_jobs` so that every scheduler replica
 * sees the same jobs: `job.<id>` holds the job (proto3 JSON), `name.<name>` reserves a name.
 */
import { randomUUID } from "node:crypto";
import { IotvaultError } from "@iotvault/errors";
import { BackupType, Job } from "@iotvault/proto";
import { Kvm, type KV } from "@nats-io/kv";
import { Cron } from "croner";
import { validateSourceUrl } from "@iotvault/sources/core";
import { checkDrillSchedule } from "./drills.js";

export const JOBS_BUCKET = "iotvault_jobs";
const NAME = /^[a-z0-9][a-z0-9._-]{0,62}$/;

export class JobStore {
  private constructor(private readonly kv: KV) {}

  static async open(nc: ConstructorParameters<typeof Kvm>[0]): Promise<JobStore> {
    const kv = await new Kvm(nc).create(JOBS_BUCKET, { history: 5 });
    return new JobStore(kv);
  }

  async create(input: Job, defaults: { site: string }, now = new Date()): Promise<Job> {
    const job = validateJob({ ...input, id: randomUUID(), createdAt: now, updatedAt: now }, defaults);
    try {
      await this.kv.create(`name.${job.name}`, job.id);
    } catch (err) {
      // The name is taken, unless it points at a job that no longer exists (a half-done delete).
      const owner = await this.kv.get(`name.${job.name}`);
      const ownerId = owner?.operation === "PUT" ? owner.string() : undefined;
      if (ownerId && (await this.find(ownerId))) {
        throw new IotvaultError("ALREADY_EXISTS", `a job named ${job.name} already exists`, {
          hint: "choose another name, or change the job with `iotvault job update`",
          cause: err,
        });
      }
      await this.kv.put(`name.${job.name}`, job.id);
    }
    await this.kv.put(`job.${job.id}`, JSON.stringify(Job.toJSON(job)));
    return job;
  }

  /** A job by id or by name; undefined when there is none. */
  async find(idOrName: string): Promise<Job | undefined> {
    if (!idOrName || !/^[A-Za-z0-9._-]+$/.test(idOrName)) return undefined;
    const byId = await this.kv.get(`job.${idOrName}`);
    if (byId?.operation === "PUT") return Job.fromJSON(byId.json());
    const name = await this.kv.get(`name.${idOrName}`);
    if (name?.operation !== "PUT") return undefined;
    const job = await this.kv.get(`job.${name.string()}`);
    return job?.operation === "PUT" ? Job.fromJSON(job.json()) : undefined;
  }

  async get(idOrName: string): Promise<Job> {
    const job = await this.find(idOrName);
    if (!job) {
      throw new IotvaultError("NOT_FOUND", `no job named ${idOrName}`, { hint: "list jobs with `iotvault job list`" });
    }
    return job;
  }

  async list(): Promise<Job[]> {
    const jobs: Job[] = [];
    const keys = await this.kv.keys("job.>");
    for await (const key of keys) {
      const e = await this.kv.get(key);
      if (e?.operation === "PUT") jobs.push(Job.fromJSON(e.json()));
    }
    return jobs.sort((a, b) => a.name.localeCompare(b.name));
  }

  async update(input: Job, defaults: { site: string }, now = new Date()): Promise<Job> {
    const current = await this.get(input.id || input.name);
    const job = validateJob({ ...input, id: current.id, createdAt: current.createdAt, updatedAt: now }, defaults);
    if (job.name !== current.name) {
      try {
        await this.kv.create(`name.${job.name}`, job.id);
      } catch (err) {
        throw new IotvaultError("ALREADY_EXISTS", `a job named ${job.name} already exists`, { cause: err });
      }
      await this.kv.delete(`name.${current.name}`);
    }
    await this.kv.put(`job.${job.id}`, JSON.stringify(Job.toJSON(job)));
    return job;
  }

  async delete(idOrName: string): Promise<Job> {
    const job = await this.get(idOrName);
    await this.kv.delete(`job.${job.id}`);
    await this.kv.delete(`name.${job.name}`);
    return job;
  }

  /** Calls back with every job now and on every later change (put or delete). */
  async watch(onChange: (id: string, job: Job | undefined) => void, signal: AbortSignal): Promise<void> {
    const iter = await this.kv.watch({ key: "job.>" });
    signal.addEventListener("abort", () => iter.stop(), { once: true });
    for await (const e of iter) {
      const id = e.key.slice("job.".length);
      if (e.operation === "PUT") {
        try {
          onChange(id, Job.fromJSON(e.json()));
        } catch {
          onChange(id, undefined);
        }
      } else onChange(id, undefined);
    }
  }
}

/** Checks a job definition; every error names the field. */
export function validateJob(job: Job, defaults: { site: string }): Job & { id: string } {
  const bad = (field: string, message: string, hint?: string) =>
    new IotvaultError("INVALID_ARGUMENT", `job ${field}: ${message}`, { hint });
  if (!NAME.test(job.name))
    throw bad("name", `"${job.name}" is not a valid name`, "use [a-z0-9][a-z0-9._-]*, at most 63 characters");
  if (!NAME.test(job.repository)) throw bad("repository", `"${job.repository}" is not a valid repository name`);
  checkSource(job.source);
  for (const member of job.groupSources) checkSource(member);
  if (new Set([job.source, ...job.groupSources]).size !== 1 + job.groupSources.length) {
    throw bad("group_sources", "a consistency group names a source twice");
  }
  const site = job.site || defaults.site;
  if (!NAME.test(site)) throw bad("site", `"${site}" is not a valid site name`);
  const timeZone = job.timeZone || "UTC";
  try {
    new Intl.DateTimeFormat("en", { timeZone });
  } catch {
    throw bad("time_zone", `unknown time zone "${timeZone}"`, "use an IANA name such as Europe/Paris");
  }
  if (job.schedule) {
    try {
      new Cron(job.schedule, { timezone: timeZone, paused: true });
    } catch (err) {
      throw bad(
        "schedule",
        `"${job.schedule}" is not a valid cron expression: ${(err as Error).message}`,
        'e.g. "0 2 * * *" for 02:00 every day',
      );
    }
  }
  checkDrillSchedule(job, timeZone);
  for (const [field, patterns] of [
    ["include", job.include],
    ["exclude", job.exclude],
  ] as const) {
    for (const p of patterns) if (!p || p.includes("\0")) throw bad(field, `invalid pattern ${JSON.stringify(p)}`);
  }
  return {
    ...job,
    id: job.id,
    site,
    timeZone,
    backupType:
      job.backupType === BackupType.BACKUP_TYPE_UNSPECIFIED ? BackupType.BACKUP_TYPE_INCREMENTAL : job.backupType,
  };
}

function checkSource(source: string): void {
  try {
    validateSourceUrl(source);
  } catch (err) {
    const e = err as IotvaultError;
    throw new IotvaultError("INVALID_ARGUMENT", `job source: ${e.message}`, { hint: e.hint });
  }
}

/**
 * The SchedulerService RPCs: job CRUD (with job.* events) and TriggerBackup.
 */
import type { Bus } from "@iotvault/bus";
import { IotvaultError } from "@iotvault/errors";
import {
  JobCreated,
  JobDeleted,
  JobUpdated,
  SUBJECTS,
  TriggerKind,
  type SchedulerServiceServer,
} from "@iotvault/proto";
import { unary } from "@iotvault/rpc";
import type { JobStore } from "./jobs.js";
import { publishRun } from "./trigger.js";

export function schedulerService(deps: { jobs: JobStore; bus: Bus; site: string }): SchedulerServiceServer {
  const { jobs, bus } = deps;
  const defaults = { site: deps.site };
  return {
    createJob: unary(async (req) => {
      if (!req.job) throw new IotvaultError("INVALID_ARGUMENT", "CreateJob needs a job");
      const job = await jobs.create(req.job, defaults);
      await bus.publish(SUBJECTS.jobCreated, JobCreated, { job }, { msgId: `job:${job.id}:created` });
      return { job };
    }),
    getJob: unary(async (req) => ({ job: await jobs.get(req.job) })),
    listJobs: unary(async () => ({ jobs: await jobs.list() })),
    updateJob: unary(async (req) => {
      if (!req.job) throw new IotvaultError("INVALID_ARGUMENT", "UpdateJob needs a job");
      const job = await jobs.update(req.job, defaults);
      await bus.publish(
        SUBJECTS.jobUpdated,
        JobUpdated,
        { job },
        { msgId: `job:${job.id}:updated:${job.updatedAt?.toISOString()}` },
      );
      return { job };
    }),
    deleteJob: unary(async (req) => {
      const job = await jobs.delete(req.job);
      await bus.publish(
        SUBJECTS.jobDeleted,
        JobDeleted,
        { jobId: job.id, jobName: job.name, deletedAt: new Date() },
        { msgId: `job:${job.id}:deleted` },
      );
      return {};
    }),
    triggerBackup: unary(async (req) => {
      const job = await jobs.get(req.job);
      const scheduledAt = req.scheduledAt ?? new Date();
      const res = await publishRun(bus, job, {
        scheduledAt,
        trigger: TriggerKind.TRIGGER_KIND_MANUAL,
        backupType: req.backupType,
        requestedBy: req.requestedBy || "grpc",
      });
      return { runId: res.runId, scheduledAt: res.scheduledAt, duplicate: res.duplicate, traceId: res.traceId };
    }),
  };
}

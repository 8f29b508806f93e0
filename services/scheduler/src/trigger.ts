/**
 * Publishing a run: the work item goes to iotvault.work.backup.<site> with the message id
 * `<jobId>:<scheduledAt>`, so that a second publish of the same run (another scheduler
 * replica, a retried RPC) is dropped by the server's duplicate window. The run id is derived
 * from the same pair, so every replica names the run alike.
 */
import { createHash } from "node:crypto";
import { SpanKind, trace } from "@opentelemetry/api";
import type { Bus } from "@iotvault/bus";
import { BackupRequested, BackupType, SUBJECTS, type Job, type TriggerKind } from "@iotvault/proto";

export interface TriggerResult {
  runId: string;
  scheduledAt: Date;
  duplicate: boolean;
  traceId: string;
}

export function runIdFor(jobId: string, scheduledAt: Date): string {
  const stamp = scheduledAt
    .toISOString()
    .replace(/[-:]/g, "")
    .replace(/\.\d+Z$/, "Z");
  const hash = createHash("sha256").update(`${jobId}:${scheduledAt.toISOString()}`).digest("hex").slice(0, 10);
  return `r-${stamp}-${hash}`;
}

export function workMessageId(jobId: string, scheduledAt: Date): string {
  return `${jobId}:${scheduledAt.toISOString()}`;
}

export async function publishRun(
  bus: Bus,
  job: Job,
  options: { scheduledAt: Date; trigger: TriggerKind; backupType?: BackupType; requestedBy: string },
): Promise<TriggerResult> {
  const tracer = trace.getTracer("iotvault.scheduler");
  const runId = runIdFor(job.id, options.scheduledAt);
  return tracer.startActiveSpan(
    "scheduler.publish-run",
    { kind: SpanKind.PRODUCER, attributes: { "iotvault.run_id": runId, "iotvault.job": job.name } },
    async (span) => {
      try {
        const backupType =
          options.backupType !== undefined && options.backupType !== BackupType.BACKUP_TYPE_UNSPECIFIED
            ? options.backupType
            : job.backupType;
        const ack = await bus.publish(
          SUBJECTS.workBackup(job.site),
          BackupRequested,
          {
            runId,
            job,
            backupType,
            trigger: options.trigger,
            scheduledAt: options.scheduledAt,
            requestedAt: new Date(),
            requestedBy: options.requestedBy,
          },
          { msgId: workMessageId(job.id, options.scheduledAt) },
        );
        span.setAttribute("iotvault.duplicate", ack.duplicate);
        return {
          runId,
          scheduledAt: options.scheduledAt,
          duplicate: ack.duplicate,
          traceId: span.spanContext().traceId,
        };
      } finally {
        span.end();
      }
    },
  );
}

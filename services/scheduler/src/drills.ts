/**
 * Scheduled restore drills: a job with a `drill_schedule` (cron, in the job's time zone) gets
 * RestoreService.Drill called on its newest snapshot each time the schedule fires.
 *
 * Several scheduler replicas evaluate the same schedules: each fire first claims the drill in
 * the NATS KV bucket `iotvault_drills` (key `<job id>.<scheduled time>`, created once; the
 * bucket forgets keys after a day), so exactly one replica calls the restore service. The call
 * runs in the background (a drill takes minutes; other schedules keep firing); a job whose
 * previous drill still runs skips the fire. The verdict is published by the restore service
 * (iotvault.events.drill.completed), not here.
 */
import { IotvaultError } from "@iotvault/errors";
import type { Job, RestoreServiceClient } from "@iotvault/proto";
import { callServerStream } from "@iotvault/rpc";
import type { Logger } from "@iotvault/telemetry";
import { Kvm, type KV } from "@nats-io/kv";
import { Cron } from "croner";
import { CronLoop } from "./cron.js";

export const DRILLS_BUCKET = "iotvault_drills";

/** Checks a job's drill schedule (empty: none). INVALID_ARGUMENT naming the field otherwise. */
export function checkDrillSchedule(job: Job, timeZone: string): void {
  if (!job.drillSchedule) return;
  try {
    new Cron(job.drillSchedule, { timezone: timeZone, paused: true });
  } catch (err) {
    throw new IotvaultError(
      "INVALID_ARGUMENT",
      `job drill_schedule: "${job.drillSchedule}" is not a valid cron expression: ${(err as Error).message}`,
      {
        hint: 'e.g. "0 4 * * 0" for 04:00 every Sunday',
      },
    );
  }
}

export interface DrillSchedulerOptions {
  nc: ConstructorParameters<typeof Kvm>[0];
  restore: RestoreServiceClient;
  logger: Logger;
  tickMs?: number;
}

export class DrillScheduler {
  private readonly running = new Map<string, AbortController>();
  private readonly loop: CronLoop;

  private constructor(
    private readonly kv: KV,
    private readonly options: DrillSchedulerOptions,
  ) {
    this.loop = new CronLoop({
      fire: (job, at) => this.fire(job, at),
      onError: (job, err) =>
        options.logger.warn("could not start a scheduled drill; retrying", { job: job.name, error: String(err) }),
      ...(options.tickMs !== undefined ? { tickMs: options.tickMs } : {}),
    });
  }

  static async open(options: DrillSchedulerOptions): Promise<DrillScheduler> {
    const kv = await new Kvm(options.nc).create(DRILLS_BUCKET, { history: 1, ttl: 24 * 3600_000 });
    return new DrillScheduler(kv, options);
  }

  /** Follows a job change (the jobs watch calls it like CronLoop.set). */
  set(id: string, job: Job | undefined): void {
    this.loop.set(id, job?.drillSchedule ? { ...job, schedule: job.drillSchedule } : undefined);
  }

  start(): void {
    this.loop.start();
  }

  /** Stops firing and cancels the drills this replica runs. */
  stop(): void {
    this.loop.stop();
    for (const c of this.running.values()) c.abort();
  }

  /** Claims the scheduled drill and starts it in the background. */
  async fire(job: Job, at: Date): Promise<void> {
    if (this.running.has(job.id)) {
      this.options.logger.warn("scheduled drill skipped: the previous one still runs", { job: job.name });
      return;
    }
    try {
      await this.kv.create(`${job.id}.${at.getTime()}`, new Date().toISOString());
    } catch {
      return; // another replica claimed it
    }
    const controller = new AbortController();
    this.running.set(job.id, controller);
    void this.run(job, controller.signal).finally(() => this.running.delete(job.id));
  }

  private async run(job: Job, signal: AbortSignal): Promise<void> {
    const log = this.options.logger.child({ job: job.name });
    try {
      const stream = callServerStream(
        this.options.restore,
        "drill",
        {
          repository: job.repository,
          jobId: job.id,
          jobName: job.name,
          snapshotId: "",
          requestedBy: "scheduler",
          keep: false,
          options: {},
        },
        { signal },
      );
      for await (const msg of stream) {
        if (msg.message?.$case === "result") {
          const r = msg.message.value;
          log.info("scheduled drill finished", { drill_id: r.drillId, ok: r.ok, snapshot_id: r.snapshotId });
        }
      }
    } catch (err) {
      log.warn("scheduled drill failed to run", { error: String(err) });
    }
  }
}

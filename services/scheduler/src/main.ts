/**
 * The scheduler service: owns job definitions (NATS KV bucket iotvault_jobs), serves the
 * SchedulerService over gRPC, and publishes a BackupRequested work item when a job's cron
 * schedule fires or TriggerBackup is called. Several replicas may run: each fires every due
 * run, and the JetStream duplicate window keeps exactly one (same message id per run).
 */
import { SpanKind, trace } from "@opentelemetry/api";
import { Bus } from "@iotvault/bus";
import { loadConfig } from "@iotvault/config";
import { RestoreServiceClient, SchedulerServiceService, TriggerKind } from "@iotvault/proto";
import { createClient, startGrpcServer } from "@iotvault/rpc";
import { createLogger, startTelemetry, exitOnStartupError } from "@iotvault/telemetry";
import { CronLoop } from "./cron.js";
import { DrillScheduler } from "./drills.js";
import { JobStore } from "./jobs.js";
import { schedulerService } from "./service.js";
import { publishRun } from "./trigger.js";

async function main(): Promise<void> {
  const config = loadConfig(process.env);
  const logger = createLogger({ service: "scheduler", level: config.log.level });
  const telemetry = startTelemetry({
    serviceName: "scheduler",
    spansDir: config.telemetry.keepSpans ? config.paths.traces : undefined,
    otlpEndpoint: config.telemetry.otlpEndpoint,
  });
  const bus = await Bus.connect({
    url: config.nats.url,
    name: "iotvault-scheduler",
    credsFile: config.nats.credsFile,
    logger,
  });
  await bus.ensureStreams({
    duplicateWindowMs: config.bus.duplicateWindowMs,
    eventsMaxAgeDays: config.bus.eventsMaxAgeDays,
  });
  const jobs = await JobStore.open(bus.nc);

  const tracer = trace.getTracer("iotvault.scheduler");
  const cron = new CronLoop({
    fire: (job, scheduledAt) =>
      tracer.startActiveSpan("scheduler.cron-fire", { kind: SpanKind.INTERNAL, root: true }, async (span) => {
        try {
          const r = await publishRun(bus, job, {
            scheduledAt,
            trigger: TriggerKind.TRIGGER_KIND_SCHEDULE,
            requestedBy: "scheduler",
          });
          logger.info("scheduled run published", {
            job: job.name,
            run_id: r.runId,
            scheduled_at: scheduledAt.toISOString(),
            duplicate: r.duplicate,
          });
        } finally {
          span.end();
        }
      }),
    onError: (job, err) =>
      logger.warn("could not publish a scheduled run; retrying", { job: job.name, error: String(err) }),
    onSkipped: (job, skipped, fired) =>
      logger.warn("runs missed during a stall were skipped", { job: job.name, skipped, fired: fired.toISOString() }),
  });
  // Scheduled restore drills (Job.drill_schedule) call the restore service.
  const restore = createClient(RestoreServiceClient, config.addressOf("restore"));
  const drills = await DrillScheduler.open({ nc: bus.nc, restore, logger });
  const watching = new AbortController();
  /** Follows job changes; a watch that ends (a NATS restart, an error) is started again. */
  async function watchJobs(): Promise<void> {
    while (!watching.signal.aborted) {
      try {
        await jobs.watch((id, job) => {
          cron.set(id, job);
          drills.set(id, job);
        }, watching.signal);
      } catch (err) {
        logger.warn("job watch ended; restarting it", { error: String(err) });
      }
      if (!watching.signal.aborted) await new Promise((r) => setTimeout(r, 1000));
    }
  }
  void watchJobs();
  cron.start();
  drills.start();

  const server = await startGrpcServer({
    listen: config.services.scheduler.listen,
    serviceName: "scheduler",
    logger,
    services: [
      {
        name: "iotvault.v1.SchedulerService",
        definition: SchedulerServiceService,
        implementation: schedulerService({ jobs, bus, site: config.site }),
      },
    ],
  });
  logger.info("scheduler ready", { grpc: server.address, nats: config.nats.url });

  let stopping = false;
  async function shutdown(signal: string): Promise<void> {
    if (stopping) return;
    stopping = true;
    logger.info("shutting down", { signal });
    cron.stop();
    drills.stop();
    restore.close();
    watching.abort();
    await server.shutdown(5000);
    await bus.close();
    await telemetry.shutdown();
    process.exit(0);
  }
  process.once("SIGTERM", () => void shutdown("SIGTERM"));
  process.once("SIGINT", () => void shutdown("SIGINT"));
}

main().catch((err: unknown) => exitOnStartupError("scheduler", err));

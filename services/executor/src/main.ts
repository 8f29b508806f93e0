/**
 * The executor service: pulls backup work items of its site from IOTVAULT_WORK, runs them
 * (source -> repository pipeline -> storage-gateway), acks each only after its snapshot is
 * committed. Serves gRPC health checks. SIGTERM/SIGINT: stop taking work, let the run in
 * progress be redelivered elsewhere (it resumes from its indexed packs), exit.
 */
import { Bus } from "@iotvault/bus";
import { loadConfig, readRepositorySecret, repositoryOptionsOf } from "@iotvault/config";
import {
  BackupRequested,
  JobCreated,
  JobUpdated,
  STREAMS,
  SUBJECTS,
  StorageGatewayServiceClient,
} from "@iotvault/proto";
import { KeyPreparer, keepWorkerThreadsReady, workerThreadsOf } from "@iotvault/repo";
import { GatewayObjectStore, createClient, prepareGatewayKeys, startGrpcServer } from "@iotvault/rpc";
import { createLogger, startTelemetry, exitOnStartupError } from "@iotvault/telemetry";
import { announceDeadLetteredRun, runBackup } from "./backup-run.js";

async function main(): Promise<void> {
  const config = loadConfig(process.env);
  const logger = createLogger({ service: "executor", level: config.log.level });
  // The next operation's worker threads start now rather than when it arrives (IOTVAULT_WORKERS=1: none).
  keepWorkerThreadsReady(workerThreadsOf(repositoryOptionsOf(config).workers));
  const telemetry = startTelemetry({
    serviceName: "executor",
    spansDir: config.telemetry.keepSpans ? config.paths.traces : undefined,
    otlpEndpoint: config.telemetry.otlpEndpoint,
  });

  const bus = await Bus.connect({
    url: config.nats.url,
    name: `iotvault-executor-${config.site}`,
    credsFile: config.nats.credsFile,
    logger,
  });
  await bus.ensureStreams({
    duplicateWindowMs: config.bus.duplicateWindowMs,
    eventsMaxAgeDays: config.bus.eventsMaxAgeDays,
  });
  const gatewayAddress = config.addressOf("storage-gateway");
  const gateway = createClient(StorageGatewayServiceClient, gatewayAddress);
  const storeFor = (repository: string) => new GatewayObjectStore(gateway, repository, { address: gatewayAddress });

  const consumer = await bus.consume({
    stream: STREAMS.work.name,
    durable: `executor-${config.site}`,
    filterSubject: SUBJECTS.workBackup(config.site),
    accept: [BackupRequested],
    ackWaitMs: config.bus.ackWaitMs,
    maxDeliver: config.bus.maxDeliver,
    spanName: () => "executor.run",
    logger,
    onDeadLetter: (letter) => announceDeadLetteredRun(bus, letter),
    handler: (msg) =>
      runBackup(
        {
          bus,
          storeFor,
          password: () => readRepositorySecret(process.env, config.repository),
          repositoryOptions: repositoryOptionsOf(config),
          maxDeliver: config.bus.maxDeliver,
          progressIntervalMs: config.bus.progressIntervalMs,
          logger,
          sourceServices: { bus },
        },
        msg,
      ),
  });

  const server = await startGrpcServer({
    listen: config.services.executor.listen,
    services: [],
    serviceName: "executor",
    logger,
  });
  logger.info("executor ready", { site: config.site, grpc: server.address, nats: config.nats.url });
  // Keys derived ahead (~0.4 s of scrypt each) rather than by the first run that needs one: of
  // the repositories there at start, and of each job's repository when a job of this site is
  // created or changed. Best effort.
  const keys = new KeyPreparer(storeFor, () => readRepositorySecret(process.env, config.repository), {
    onPrepared: (info) => logger.info("repository key prepared", info),
  });
  void prepareGatewayKeys(gateway, (names) => keys.prepare(names, "service start"), logger);
  const jobOfThisSite = (reason: string) => (e: { job?: { repository: string; site: string } | undefined }) => {
    if (e.job?.site === config.site) void keys.prepare([e.job.repository], reason);
  };
  const unwatch = [
    bus.watch(SUBJECTS.jobCreated, JobCreated, jobOfThisSite("job created")),
    bus.watch(SUBJECTS.jobUpdated, JobUpdated, jobOfThisSite("job updated")),
  ];

  let stopping = false;
  async function shutdown(signal: string): Promise<void> {
    if (stopping) return;
    stopping = true;
    logger.info("shutting down", { signal });
    for (const stop of unwatch) stop();
    await consumer.stop();
    await server.shutdown(5000);
    gateway.close();
    await bus.close();
    await telemetry.shutdown();
    process.exit(0);
  }
  process.once("SIGTERM", () => void shutdown("SIGTERM"));
  process.once("SIGINT", () => void shutdown("SIGINT"));
}

main().catch((err: unknown) => exitOnStartupError("executor", err));

/**
 * The catalog service: keeps jobs, runs, snapshots, restores and verifications in PostgreSQL
 * from the events on IOTVAULT_EVENTS (durable consumer "catalog", idempotent per event id),
 * and answers queries over gRPC.
 */
import { Bus } from "@iotvault/bus";
import { loadConfig } from "@iotvault/config";
import { CatalogServiceService, STREAMS } from "@iotvault/proto";
import { startGrpcServer } from "@iotvault/rpc";
import { createLogger, startTelemetry, exitOnStartupError } from "@iotvault/telemetry";
import { catalogService } from "./service.js";
import { CatalogStore } from "./store.js";
import { RunWatches, runIdOf } from "./watch.js";

async function main(): Promise<void> {
  const config = loadConfig(process.env);
  const logger = createLogger({ service: "catalog", level: config.log.level });
  const telemetry = startTelemetry({
    serviceName: "catalog",
    spansDir: config.telemetry.keepSpans ? config.paths.traces : undefined,
    otlpEndpoint: config.telemetry.otlpEndpoint,
  });
  const store = await CatalogStore.open(config.database.url, { passwordFile: config.database.passwordFile });
  const watches = new RunWatches((runId) => store.getRun(runId));
  const bus = await Bus.connect({
    url: config.nats.url,
    name: "iotvault-catalog",
    credsFile: config.nats.credsFile,
    logger,
  });
  await bus.ensureStreams({
    duplicateWindowMs: config.bus.duplicateWindowMs,
    eventsMaxAgeDays: config.bus.eventsMaxAgeDays,
  });

  const consumer = await bus.consume({
    stream: STREAMS.events.name,
    durable: "catalog",
    filterSubject: "iotvault.events.>",
    accept: "any-event",
    ackWaitMs: config.bus.ackWaitMs,
    maxDeliver: config.bus.eventsMaxDeliver,
    spanName: (subject) => `catalog.apply ${subject.replace(/^iotvault\.events\./, "")}`,
    logger,
    handler: async (msg) => {
      await store.applyEvent(msg.type, msg.payload, {
        eventId: msg.msgId ?? `seq:${msg.streamSequence}`,
        subject: msg.subject,
        streamSequence: msg.streamSequence,
      });
      // WatchRun calls following this run look at it again now.
      const runId = runIdOf(msg.payload);
      if (runId) watches.changed(runId);
    },
  });

  // Event ids are kept as long as the stream may still deliver them, then forgotten.
  const pruneEvents = () =>
    store
      .pruneProcessedEvents(config.bus.eventsMaxAgeDays + 1)
      .then((n) => n > 0 && logger.info("forgot old processed event ids", { count: n }))
      .catch((err: unknown) => logger.warn("could not prune processed event ids", { error: String(err) }));
  void pruneEvents();
  const pruneTimer = setInterval(() => void pruneEvents(), 24 * 3600_000);
  pruneTimer.unref();

  const server = await startGrpcServer({
    listen: config.services.catalog.listen,
    serviceName: "catalog",
    logger,
    services: [
      {
        name: "iotvault.v1.CatalogService",
        definition: CatalogServiceService,
        implementation: catalogService(store, watches),
      },
    ],
  });
  logger.info("catalog ready", { grpc: server.address });

  let stopping = false;
  async function shutdown(signal: string): Promise<void> {
    if (stopping) return;
    stopping = true;
    logger.info("shutting down", { signal });
    clearInterval(pruneTimer);
    await consumer.stop();
    watches.close();
    await server.shutdown(5000);
    await bus.close();
    await store.close();
    await telemetry.shutdown();
    process.exit(0);
  }
  process.once("SIGTERM", () => void shutdown("SIGTERM"));
  process.once("SIGINT", () => void shutdown("SIGINT"));
}

main().catch((err: unknown) => exitOnStartupError("catalog", err));

/**
 * The storage-gateway process: `node services/storage-gateway/dist/main.js`.
 *
 * Reads the configuration (`loadConfig(process.env)`: IOTVAULT_HOME, IOTVAULT_CONFIG and the
 * IOTVAULT_* overrides, plus the gateway's own IOTVAULT_GATEWAY_*), starts telemetry and the
 * logger, serves the StorageGatewayService and gRPC health on
 * `services.storageGateway.listen`, and drains on SIGTERM / SIGINT: health goes NOT_SERVING,
 * no new calls are accepted, calls in flight finish (up to IOTVAULT_GATEWAY_DRAIN_MS), then the
 * process exits 0. A second signal stops at once (exit 1).
 *
 * ```sh
 * IOTVAULT_HOME=/var/lib/iotvault IOTVAULT_STORAGE_GATEWAY_LISTEN=127.0.0.1:7603 node dist/main.js
 * ```
 */
import { loadConfig } from "@iotvault/config";
import { toIotvaultError } from "@iotvault/errors";
import { createLogger, exitOnStartupError, startTelemetry, type Logger } from "@iotvault/telemetry";
import { gatewayOptionsFromEnv } from "./config.js";
import { startStorageGateway } from "./server.js";

const SERVICE = "storage-gateway";

async function main(): Promise<void> {
  const config = loadConfig(process.env);
  const options = gatewayOptionsFromEnv(process.env);
  const logger = createLogger({ service: SERVICE, level: config.log.level });
  const telemetry = startTelemetry({
    serviceName: SERVICE,
    spansDir: config.telemetry.keepSpans ? config.paths.traces : undefined,
    otlpEndpoint: config.telemetry.otlpEndpoint,
  });
  let running;
  try {
    running = await startStorageGateway({
      listen: config.services.storageGateway.listen,
      stateDir: config.paths.gatewayState,
      repositories: config.storage.repositories,
      allowedRoots: config.storage.allowedRoots,
      env: process.env,
      options,
      logger,
    });
  } catch (err) {
    await telemetry.shutdown();
    throw err;
  }
  const gateway = running;
  logger.info("storage-gateway serving", {
    address: gateway.address,
    repositories: gateway.registry.list().map((r) => r.name),
    maxObjectBytes: options.maxObjectBytes,
  });

  let draining = false;
  const onSignal = (signal: NodeJS.Signals): void => {
    if (draining) {
      logger.warn("second signal while draining: stopping now", { signal });
      process.exit(1);
    }
    draining = true;
    logger.info("draining: no new calls, waiting for calls in flight", { signal, graceMs: options.drainGraceMs });
    void drain(gateway.shutdown(options.drainGraceMs), telemetry.shutdown.bind(telemetry), logger);
  };
  process.on("SIGTERM", onSignal);
  process.on("SIGINT", onSignal);
}

async function drain(serverStopped: Promise<void>, stopTelemetry: () => Promise<void>, logger: Logger): Promise<void> {
  try {
    await serverStopped;
    logger.info("storage-gateway stopped");
    await stopTelemetry();
    process.exit(0);
  } catch (err) {
    logger.error("shutdown failed", { error: toIotvaultError(err).message });
    process.exit(1);
  }
}

main().catch((err: unknown) => exitOnStartupError(SERVICE, err));

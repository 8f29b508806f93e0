/**
 * The restore service: gRPC Restore and Verify. Reads snapshots and packs through the
 * storage-gateway, checks every chunk, writes restores into directories on this host, and
 * publishes restore.* and verify.* events.
 */
import { Bus } from "@iotvault/bus";
import { loadConfig, readRepositorySecret } from "@iotvault/config";
import {
  RestoreServiceService,
  StorageGatewayServiceClient,
  type RestoreRequest,
  type RestoreResponse,
  type VerifyRequest,
  type VerifyResponse,
} from "@iotvault/proto";
import { GatewayObjectStore, createClient, serverStream, startGrpcServer } from "@iotvault/rpc";
import { createLogger, startTelemetry } from "@iotvault/telemetry";
import { restoreOperation, verifyOperation, type OperationDeps } from "./operations.js";

const config = loadConfig(process.env);
const logger = createLogger({ service: "restore", level: config.log.level });
const telemetry = startTelemetry({
  serviceName: "restore",
  spansDir: config.telemetry.keepSpans ? config.paths.traces : undefined,
  otlpEndpoint: config.telemetry.otlpEndpoint,
});
const bus = await Bus.connect({
  url: config.nats.url,
  name: "iotvault-restore",
  credsFile: config.nats.credsFile,
  logger,
});
await bus.ensureStreams({
  duplicateWindowMs: config.bus.duplicateWindowMs,
  eventsMaxAgeDays: config.bus.eventsMaxAgeDays,
});
const gatewayAddress = config.addressOf("storage-gateway");
const gateway = createClient(StorageGatewayServiceClient, gatewayAddress);

const deps: OperationDeps = {
  bus,
  storeFor: (repository) => new GatewayObjectStore(gateway, repository, { address: gatewayAddress }),
  password: () => readRepositorySecret(process.env, config.repository),
  repositoryOptions: { scryptLogN: config.repository.scryptLogN, workers: config.repository.workers },
  logger,
};

const server = await startGrpcServer({
  listen: config.services.restore.listen,
  serviceName: "restore",
  logger,
  services: [
    {
      name: "iotvault.v1.RestoreService",
      definition: RestoreServiceService,
      implementation: {
        restore: serverStream<RestoreRequest, RestoreResponse>(
          async function* (req, _call, signal): AsyncGenerator<RestoreResponse> {
            for await (const u of restoreOperation(deps, req, signal)) {
              yield {
                message:
                  "progress" in u ? { $case: "progress", value: u.progress } : { $case: "result", value: u.result },
              };
            }
          },
        ),
        verify: serverStream<VerifyRequest, VerifyResponse>(
          async function* (req, _call, signal): AsyncGenerator<VerifyResponse> {
            for await (const u of verifyOperation(deps, req, signal)) {
              yield {
                message:
                  "progress" in u ? { $case: "progress", value: u.progress } : { $case: "result", value: u.result },
              };
            }
          },
        ),
      },
    },
  ],
});
logger.info("restore service ready", { grpc: server.address });

let stopping = false;
async function shutdown(signal: string): Promise<void> {
  if (stopping) return;
  stopping = true;
  logger.info("shutting down", { signal });
  await server.shutdown(10_000);
  gateway.close();
  await bus.close();
  await telemetry.shutdown();
  process.exit(0);
}
process.once("SIGTERM", () => void shutdown("SIGTERM"));
process.once("SIGINT", () => void shutdown("SIGINT"));

/**
 * The restore service: gRPC Restore and Verify. Reads snapshots and packs through the
 * storage-gateway, checks every chunk, writes restores into directories on this host, and
 * publishes restore.* and verify.* events.
 */
import { Bus } from "@iotvault/bus";
import { loadConfig, readRepositorySecret, repositoryOptionsOf } from "@iotvault/config";
import {
  BackupCompleted,
  RestoreServiceService,
  SUBJECTS,
  StorageGatewayServiceClient,
  type RestoreRequest,
  type RestoreResponse,
  type DiffRequest,
  type DiffResponse,
  type DrillRequest,
  type DrillResponse,
  type VerifyRequest,
  type VerifyResponse,
} from "@iotvault/proto";
import { KeyPreparer, keepWorkerThreadsReady, workerThreadsOf } from "@iotvault/repo";
import {
  GatewayObjectStore,
  createClient,
  prepareGatewayKeys,
  serverStream,
  startGrpcServer,
  unary,
} from "@iotvault/rpc";
import { createLogger, startTelemetry, exitOnStartupError } from "@iotvault/telemetry";
import { restoreOperation, verifyOperation, type OperationDeps } from "./operations.js";
import { diffOperation } from "./diff.js";
import { drillOperation, type DrillDeps } from "./drill.js";
import { gatewayRestoreCommand, type WalFetchCommand } from "@iotvault/sources/core";

async function main(): Promise<void> {
  const config = loadConfig(process.env);
  const logger = createLogger({ service: "restore", level: config.log.level });
  // The next operation's worker threads start now rather than when it arrives (IOTVAULT_WORKERS=1: none).
  keepWorkerThreadsReady(workerThreadsOf(repositoryOptionsOf(config).workers));
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
    repositoryOptions: repositoryOptionsOf(config),
    logger,
    sourceServices: { bus },
  };
  // PostgreSQL: how restored clusters fetch WAL (restore_command), for restores and drills.
  const walFetch = walFetchCommand(process.env, gatewayAddress, config.repository);
  const restoreCommand = (location: string, systemId: string) => gatewayRestoreCommand(walFetch, location, systemId);
  deps.sourceServices = { ...deps.sourceServices, postgres: { restoreCommand } };
  const drillDeps: DrillDeps = {
    ...deps,
    restoreCommand,
    scratchRoot: process.env["IOTVAULT_DRILL_DIR"] || undefined,
    osUser: process.env["IOTVAULT_PG_OS_USER"] || undefined,
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
          diff: unary<DiffRequest, DiffResponse>((req, _call, signal) => diffOperation(deps, req, signal)),
          drill: serverStream<DrillRequest, DrillResponse>(
            async function* (req, _call, signal): AsyncGenerator<DrillResponse> {
              for await (const u of drillOperation(drillDeps, req, signal)) {
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
  // Keys derived ahead: of the repositories there now, and of each one a backup completes into
  // (a new repository's first restore would otherwise wait for scrypt).
  const keys = new KeyPreparer(
    (name) => deps.storeFor(name),
    () => deps.password(),
    {
      onPrepared: (info) => logger.info("repository key prepared", info),
    },
  );
  void prepareGatewayKeys(gateway, (names) => keys.prepare(names, "service start"), logger);
  const unwatch = bus.watch(SUBJECTS.backupCompleted, BackupCompleted, (e) => {
    void keys.prepare([e.repository], "backup completed");
  });

  let stopping = false;
  async function shutdown(signal: string): Promise<void> {
    if (stopping) return;
    stopping = true;
    logger.info("shutting down", { signal });
    unwatch();
    await server.shutdown(10_000);
    gateway.close();
    await bus.close();
    await telemetry.shutdown();
    process.exit(0);
  }
  process.once("SIGTERM", () => void shutdown("SIGTERM"));
  process.once("SIGINT", () => void shutdown("SIGINT"));
}

/**
 * restore_command of restored PostgreSQL clusters: `iotvault wal-fetch` (IOTVAULT_COMMAND, e.g.
 * "/usr/bin/node /opt/iotvault/cli/bin/iotvault.js") with the gateway's address and the path of
 * a secret the PostgreSQL OS user may read: IOTVAULT_WAL_KEY_FILE, else this service's key file
 * or passphrase file. Paths only: a passphrase itself never goes into postgresql.auto.conf.
 */
function walFetchCommand(
  env: NodeJS.ProcessEnv,
  gatewayAddress: string,
  repository: { keyFile?: string | undefined; passwordFile?: string | undefined },
): WalFetchCommand {
  const keyFile = env["IOTVAULT_WAL_KEY_FILE"] || env["IOTVAULT_KEY_FILE"] || repository.keyFile;
  const passwordFile = env["IOTVAULT_PASSWORD_FILE"] || repository.passwordFile;
  const secret: Record<string, string> = keyFile
    ? { IOTVAULT_KEY_FILE: keyFile }
    : passwordFile
      ? { IOTVAULT_PASSWORD_FILE: passwordFile }
      : {};
  return {
    command: env["IOTVAULT_COMMAND"] || "iotvault",
    env: {
      IOTVAULT_STORAGE_GATEWAY_ADDRESS: gatewayAddress,
      ...secret,
      ...(env["IOTVAULT_CONFIG"] ? { IOTVAULT_CONFIG: env["IOTVAULT_CONFIG"] } : {}),
    },
  };
}

main().catch((err: unknown) => exitOnStartupError("restore", err));

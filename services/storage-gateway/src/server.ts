import {
  StorageGatewayServiceService,
  type GetObjectResponse,
  type StorageGatewayServiceServer,
} from "@iotvault/proto";
import {
  clientStream,
  encodeBytesMessage,
  serverStream,
  startGrpcServer,
  unary,
  type ServiceBinding,
} from "@iotvault/rpc";
import type { Logger } from "@iotvault/telemetry";
import type { GatewayOptions } from "./config.js";
import { StorageGateway } from "./gateway.js";
import { RepositoryRegistry, type ConfiguredRepository } from "./repositories.js";
import { SelfHealer } from "./self-heal.js";

export const STORAGE_GATEWAY_SERVICE_NAME = "iotvault.v1.StorageGatewayService";

/** The gRPC binding of a StorageGateway, through the promise adapters of @iotvault/rpc. */
export function storageGatewayService(gateway: StorageGateway): ServiceBinding {
  const implementation: StorageGatewayServiceServer = {
    putObject: clientStream((requests, _call, signal) => gateway.putObject(requests, signal)),
    getObject: serverStream((request, _call, signal) => gateway.getObject(request, signal)),
    statObject: unary((request) => gateway.statObject(request)),
    listObjects: serverStream((request, _call, signal) => gateway.listObjects(request, signal)),
    deleteObject: unary((request) => gateway.deleteObject(request)),
    createRepository: unary((request) => gateway.createRepository(request)),
    listRepositories: unary(() => gateway.listRepositories()),
  };
  // GetObject answers carry the restore's data: encoded in one copy instead of the generated
  // encoder's three (same bytes on the wire; the test of this binding decodes them generically).
  const definition = {
    ...StorageGatewayServiceService,
    getObject: {
      ...StorageGatewayServiceService.getObject,
      responseSerialize: (value: GetObjectResponse): Buffer => encodeBytesMessage(0x0a, value.data),
    },
  };
  return { definition, implementation, name: STORAGE_GATEWAY_SERVICE_NAME };
}

export interface StartStorageGatewayOptions {
  /** "host:port" to listen on (port 0 picks a free one). */
  listen: string;
  /** Where the gateway keeps its state (repositories.json, the copy journals). */
  stateDir: string;
  /** Repositories of the configuration file (`config.storage.repositories`): url, replicas, credentialsFile. */
  repositories?: Readonly<Record<string, ConfiguredRepository>> | undefined;
  /** `config.storage.allowedRoots`: where CreateRepository may place file:// repositories. */
  allowedRoots?: readonly string[] | undefined;
  /** Where storage credentials come from (default process.env). */
  env?: Readonly<Record<string, string | undefined>> | undefined;
  options?: Partial<GatewayOptions> | undefined;
  logger?: Logger | undefined;
}

export interface RunningStorageGateway {
  /** Where clients connect ("127.0.0.1:<port>"). */
  address: string;
  port: number;
  registry: RepositoryRegistry;
  gateway: StorageGateway;
  /** The background task that copies what replicas missed (see SelfHealer). */
  healer: SelfHealer;
  /**
   * Drains: health NOT_SERVING, no new calls, calls in flight may finish within `graceMs`
   * (then they are cancelled and their uploads leave nothing behind).
   */
  shutdown(graceMs?: number): Promise<void>;
}

/**
 * Opens the repository registry and serves the StorageGatewayService (plus the standard gRPC
 * health service) on `listen`. main.ts runs it with the process configuration; tests run it
 * in-process on 127.0.0.1:0.
 *
 * ```ts
 * const running = await startStorageGateway({ listen: "127.0.0.1:0", stateDir, repositories: { main: { url } } });
 * // ... StorageGatewayServiceClient(running.address, ...)
 * await running.shutdown(5000);
 * ```
 */
export async function startStorageGateway(options: StartStorageGatewayOptions): Promise<RunningStorageGateway> {
  const registry = await RepositoryRegistry.open({
    configured: options.repositories,
    stateDir: options.stateDir,
    logger: options.logger,
    allowedRoots: options.allowedRoots,
    env: options.env,
  });
  const gateway = new StorageGateway(registry, options.options, options.logger);
  // Leftovers of writers that died (temp files, unfinished multipart uploads) are removed at
  // start and every hour; they are never visible as objects in the meantime.
  const sweep = () => void sweepLeftovers(registry, options.logger);
  sweep();
  const sweeper = setInterval(sweep, 3600_000);
  sweeper.unref();
  const healer = new SelfHealer(registry, {
    intervalMs: gateway.options.healIntervalMs,
    maxIntervalMs: gateway.options.healMaxIntervalMs,
    logger: options.logger,
  });
  healer.start();
  const server = await startGrpcServer({
    listen: options.listen,
    serviceName: "storage-gateway",
    services: [storageGatewayService(gateway)],
    logger: options.logger,
  });
  return {
    address: server.address,
    port: server.port,
    registry,
    gateway,
    healer,
    shutdown: async (graceMs = gateway.options.drainGraceMs) => {
      clearInterval(sweeper);
      await healer.close(); // a copy in flight is cancelled; its journal entry stays
      await server.shutdown(graceMs);
      await registry.close(); // open SFTP sessions would keep the process alive
    },
  };
}

interface Sweepable {
  cleanupTemp?: (o: { olderThanMs?: number }) => Promise<{ removed: number }>;
  abortIncompleteUploads?: (o: { olderThanMs?: number }) => Promise<{ aborted: number }>;
}

/** Removes temp files older than an hour and multipart uploads older than a day, per target. */
export async function sweepLeftovers(registry: RepositoryRegistry, logger: Logger | undefined): Promise<void> {
  for (const repository of registry.list()) {
    for (const target of repository.targetStores) await sweepTarget(repository.name, target as Sweepable, logger);
  }
}

async function sweepTarget(repository: string, store: Sweepable, logger: Logger | undefined): Promise<void> {
  try {
    const temp = store.cleanupTemp ? await store.cleanupTemp({ olderThanMs: 3600_000 }) : undefined;
    const uploads = store.abortIncompleteUploads
      ? await store.abortIncompleteUploads({ olderThanMs: 24 * 3600_000 })
      : undefined;
    if ((temp?.removed ?? 0) + (uploads?.aborted ?? 0) > 0) {
      logger?.info("removed leftovers of interrupted writes", {
        repository,
        tempFiles: temp?.removed ?? 0,
        multipartUploads: uploads?.aborted ?? 0,
      });
    }
  } catch (err) {
    // A target that is down is swept the next time.
    logger?.warn("could not sweep leftovers of interrupted writes", { repository, error: String(err) });
  }
}

import { StorageGatewayServiceService, type StorageGatewayServiceServer } from "@iotvault/proto";
import { clientStream, serverStream, startGrpcServer, unary, type ServiceBinding } from "@iotvault/rpc";
import type { Logger } from "@iotvault/telemetry";
import type { GatewayOptions } from "./config.js";
import { StorageGateway } from "./gateway.js";
import { RepositoryRegistry } from "./repositories.js";

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
  return { definition: StorageGatewayServiceService, implementation, name: STORAGE_GATEWAY_SERVICE_NAME };
}

export interface StartStorageGatewayOptions {
  /** "host:port" to listen on (port 0 picks a free one). */
  listen: string;
  /** Where the gateway keeps its state (repositories.json). */
  stateDir: string;
  /** Repositories of the configuration file (`config.storage.repositories`). */
  repositories?: Readonly<Record<string, { url: string }>> | undefined;
  options?: Partial<GatewayOptions> | undefined;
  logger?: Logger | undefined;
}

export interface RunningStorageGateway {
  /** Where clients connect ("127.0.0.1:<port>"). */
  address: string;
  port: number;
  registry: RepositoryRegistry;
  gateway: StorageGateway;
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
  });
  const gateway = new StorageGateway(registry, options.options, options.logger);
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
    shutdown: (graceMs = gateway.options.drainGraceMs) => server.shutdown(graceMs),
  };
}

/**
 * @iotvault/storage-gateway — the only iotvault service that touches storage: a gRPC API
 * (StorageGatewayService) over named repositories, each an ObjectStore on one target (a local
 * or NFS directory, S3, SFTP) or a ReplicatedStore over a primary and replicas, healed in the
 * background by SelfHealer. `main.ts` is the process; this entry exposes the pieces for tests
 * and for running the gateway inside another process (single-node deployments).
 *
 * ```ts
 * import { startStorageGateway } from "@iotvault/storage-gateway";
 * const gateway = await startStorageGateway({
 *   listen: "127.0.0.1:0", stateDir,
 *   repositories: { main: { url: "file:///srv/iotvault/main", replicas: ["s3://backups/main?endpoint=minio:9000"] } },
 * });
 * console.log(gateway.address);
 * await gateway.shutdown(5000);
 * ```
 */
export {
  startStorageGateway,
  storageGatewayService,
  STORAGE_GATEWAY_SERVICE_NAME,
  type RunningStorageGateway,
  type StartStorageGatewayOptions,
} from "./server.js";
export { StorageGateway, GATEWAY_TRACER_NAME } from "./gateway.js";
export {
  RepositoryRegistry,
  canonicalUrl,
  redactUrl,
  REPOSITORY_NAME,
  REPOSITORIES_FILE,
  JOURNALS_DIR,
  type ConfiguredRepository,
  type Repository,
  type RepositoryRegistryOptions,
} from "./repositories.js";
export { SelfHealer, type SelfHealOptions } from "./self-heal.js";
export { DEFAULT_GATEWAY_OPTIONS, GATEWAY_ENV, gatewayOptionsFromEnv, type GatewayOptions } from "./config.js";

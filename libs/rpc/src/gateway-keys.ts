import type { StorageGatewayServiceClient } from "@iotvault/proto";
import type { Logger } from "@iotvault/telemetry";
import { callUnary } from "./client.js";

/**
 * At a service's start: hands the names of the repositories the storage-gateway serves to
 * `prepare` (the service's KeyPreparer, so that its first operation on each does not wait ~0.4 s
 * for scrypt) and logs how many keys it derived. Best effort: a gateway that is not up yet only
 * means the first operation on each repository derives its key itself.
 */
export async function prepareGatewayKeys(
  gateway: StorageGatewayServiceClient,
  prepare: (repositories: string[]) => Promise<string[]>,
  logger: Pick<Logger, "info">,
): Promise<void> {
  const started = Date.now();
  try {
    const { repositories } = await callUnary(gateway, "listRepositories", {}, { deadlineMs: 10_000 });
    const prepared = await prepare(repositories.map((r) => r.name));
    logger.info("repository keys prepared", {
      repositories: prepared.length,
      listed: repositories.length,
      ms: Date.now() - started,
    });
  } catch (err) {
    logger.info("repository keys not prepared ahead; the first operation on each derives its own", {
      reason: err instanceof Error ? err.message : String(err),
    });
  }
}

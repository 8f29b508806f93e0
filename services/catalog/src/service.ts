/**
 * The CatalogService RPCs: queries over runs and snapshots.
 */
import type { CatalogServiceServer } from "@iotvault/proto";
import { unary } from "@iotvault/rpc";
import type { CatalogStore } from "./store.js";

export function catalogService(store: CatalogStore): CatalogServiceServer {
  return {
    listRuns: unary(async (req) => ({
      runs: await store.listRuns({ job: req.job, status: req.status, limit: req.limit }),
    })),
    getRun: unary(async (req) => ({ run: await store.getRun(req.runId) })),
    listSnapshots: unary(async (req) => ({
      snapshots: await store.listSnapshots({ job: req.job, repository: req.repository, limit: req.limit }),
    })),
    getSnapshot: unary(async (req) => ({ snapshot: await store.getSnapshot(req.snapshotId) })),
  };
}

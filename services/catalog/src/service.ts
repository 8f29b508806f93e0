/**
 * The CatalogService RPCs: queries over runs and snapshots.
 */
import { IotvaultError } from "@iotvault/errors";
import type { CatalogServiceServer, RebuildRepositoryRequest, Snapshot } from "@iotvault/proto";
import { clientStream, serverStream, unary } from "@iotvault/rpc";
import type { CatalogStore } from "./store.js";
import type { RunWatches } from "./watch.js";

export function catalogService(store: CatalogStore, watches: RunWatches): CatalogServiceServer {
  return {
    listRuns: unary(async (req) => ({
      runs: await store.listRuns({ job: req.job, status: req.status, limit: req.limit }),
    })),
    getRun: unary(async (req) => ({ run: await store.getRun(req.runId) })),
    watchRun: serverStream(async function* (req, _call, signal) {
      if (!req.runId) throw new IotvaultError("INVALID_ARGUMENT", "WatchRun: run_id is required");
      for await (const run of watches.watch(req.runId, signal)) yield { run };
    }),
    listSnapshots: unary(async (req) => ({
      snapshots: await store.listSnapshots({
        job: req.job,
        repository: req.repository,
        limit: req.limit,
        groupId: req.groupId,
      }),
    })),
    getSnapshot: unary(async (req) => ({ snapshot: await store.getSnapshot(req.snapshotId) })),
    rebuildRepository: clientStream<
      RebuildRepositoryRequest,
      { snapshotsSeen: bigint; snapshotsAdded: bigint; snapshotsForgotten: bigint }
    >(async (requests) => {
      const it = requests[Symbol.asyncIterator]();
      const first = await it.next();
      if (first.done || first.value.part?.$case !== "repository" || !first.value.part.value) {
        throw new IotvaultError("INVALID_ARGUMENT", "RebuildRepository: the first message must name the repository");
      }
      const repository = first.value.part.value;
      async function* snapshots(): AsyncGenerator<Snapshot> {
        for (let n = await it.next(); !n.done; n = await it.next()) {
          if (n.value.part?.$case !== "snapshot")
            throw new IotvaultError("INVALID_ARGUMENT", "RebuildRepository: only snapshots may follow the header");
          yield n.value.part.value;
        }
      }
      const r = await store.rebuildRepository(repository, snapshots());
      return {
        snapshotsSeen: BigInt(r.seen),
        snapshotsAdded: BigInt(r.added),
        snapshotsForgotten: BigInt(r.forgotten),
      };
    }),
  };
}

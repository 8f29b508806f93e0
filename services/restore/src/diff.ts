/**
 * The Diff RPC: opens the repository through the gateway (under a shared lock, so that a prune
 * does not remove packs while they are read), loads both snapshots and compares them with
 * `diffSnapshots` from @iotvault/sources (files for every source; graphs, triples and ontology
 * versions for semantic sources).
 *
 * ```ts
 * const response = await diffOperation(deps, { repository: "main", snapshotA: "3f9a2c", snapshotB: "7be01d", sampleSize: 5, maxItems: 0 }, signal);
 * ```
 */
import { trace } from "@opentelemetry/api";
import { IotvaultError, toIotvaultError } from "@iotvault/errors";
import type { DiffRequest, DiffResponse } from "@iotvault/proto";
import type { SnapshotManifest } from "@iotvault/repo";
import type { SnapshotDiff } from "@iotvault/sources";
import { openLocked, type OperationDeps } from "./operations.js";

const tracer = () => trace.getTracer("iotvault.restore");

export async function diffOperation(deps: OperationDeps, req: DiffRequest, signal: AbortSignal): Promise<DiffResponse> {
  if (!req.repository || !req.snapshotA || !req.snapshotB) {
    throw new IotvaultError("INVALID_ARGUMENT", "diff needs a repository and two snapshots", {
      hint: "iotvault diff <snapshotA> <snapshotB> [--repo R]",
    });
  }
  return tracer().startActiveSpan("restore.diff", async (span) => {
    try {
      const { repo, lock, snapshots } = await openLocked(
        deps,
        req.repository,
        { purpose: "diff", waitMs: 60_000, signal },
        [req.snapshotA, req.snapshotB],
      );
      try {
        const [a, b] = snapshots as [SnapshotManifest, SnapshotManifest];
        // Loaded here: the semantic libraries it needs stay out of a restore service that never diffs.
        const { diffSnapshots } = await import("@iotvault/sources");
        const d = await diffSnapshots(repo, a, b, {
          sampleSize: req.sampleSize || undefined,
          maxItems: req.maxItems || undefined,
          signal,
        });
        span.setAttributes({ "iotvault.graphs_changed": d.graphs.length, "iotvault.files_changed": d.filesChanged });
        return toResponse(d, span.spanContext().traceId);
      } finally {
        await lock.release().catch(() => undefined);
        await repo.close();
      }
    } catch (err) {
      throw toIotvaultError(err, "diff failed");
    } finally {
      span.end();
    }
  });
}

const n = (v: number) => BigInt(Math.max(0, Math.round(v)));

export function toResponse(d: SnapshotDiff, traceId: string): DiffResponse {
  return {
    snapshotA: d.snapshotA,
    snapshotB: d.snapshotB,
    sourceA: d.sourceA,
    sourceB: d.sourceB,
    graphs: d.graphs.map((g) => ({
      graph: g.graph,
      path: g.path,
      change: g.change,
      triplesBefore: n(g.triplesBefore),
      triplesAfter: n(g.triplesAfter),
      triplesAdded: n(g.triplesAdded),
      triplesRemoved: n(g.triplesRemoved),
      hashBefore: g.hashBefore,
      hashAfter: g.hashAfter,
      sampleAdded: g.sampleAdded,
      sampleRemoved: g.sampleRemoved,
    })),
    graphsUnchanged: n(d.graphsUnchanged),
    triplesAdded: n(d.triplesAdded),
    triplesRemoved: n(d.triplesRemoved),
    ontologyChanges: d.ontologyChanges.map((o) => ({
      graph: o.graph,
      ontology: o.ontology,
      change: o.change,
      versionIriBefore: o.before?.versionIri ?? "",
      versionIriAfter: o.after?.versionIri ?? "",
      versionInfoBefore: o.before?.versionInfo ?? "",
      versionInfoAfter: o.after?.versionInfo ?? "",
    })),
    files: d.files.map((f) => ({
      path: f.path,
      change: f.change,
      sizeBefore: n(f.sizeBefore),
      sizeAfter: n(f.sizeAfter),
    })),
    filesAdded: n(d.filesAdded),
    filesRemoved: n(d.filesRemoved),
    filesChanged: n(d.filesChanged),
    filesUnchanged: n(d.filesUnchanged),
    truncated: d.truncated,
    traceId,
  };
}

/**
 * Helpers for the semantic source tests (not exported from the package): run an adapter's
 * backup into a repository and commit it, and run its restore, the way the executor and the
 * restore service do.
 */
import type { Repository, SnapshotManifest, BackupStatsInfo } from "@iotvault/repo";
import type { BackupSourceResult, RestoreTargetResult, SourceWarning } from "../adapter.js";
import { sourceAdapterFor } from "../registry.js";

export interface BackupRun {
  snapshot: SnapshotManifest;
  stats: BackupStatsInfo;
  result: BackupSourceResult;
  warnings: SourceWarning[];
}

export async function runBackup(
  repo: Repository,
  source: string,
  options: {
    runId: string;
    parent?: SnapshotManifest | undefined;
    include?: string[];
    exclude?: string[];
    services?: Record<string, unknown>;
  },
): Promise<BackupRun> {
  const adapter = sourceAdapterFor(source);
  adapter.validate(source);
  const writer = await repo.startBackup({ runId: options.runId, parent: options.parent });
  const warnings: SourceWarning[] = [];
  let result: BackupSourceResult;
  try {
    result = await adapter.backup({
      repo,
      writer,
      job: {
        id: "job",
        name: "semantic-test",
        source,
        include: options.include ?? [],
        exclude: options.exclude ?? [],
        labels: {},
      },
      backupType: options.parent ? "incremental" : "full",
      parent: options.parent,
      services: options.services ?? {},
      signal: new AbortController().signal,
      onProgress: () => undefined,
      onWarning: (w) => warnings.push(w),
    });
  } catch (err) {
    await writer.abort();
    throw err;
  }
  const { snapshot, stats } = await writer.commit({
    jobId: "job",
    jobName: "semantic-test",
    source,
    backupType: options.parent ? "incremental" : "full",
    metadata: result.metadata,
  });
  return { snapshot, stats, result, warnings };
}

export function runRestore(
  repo: Repository,
  snapshot: SnapshotManifest,
  target: string,
  options: {
    include?: string[];
    options?: Record<string, string>;
    overwrite?: boolean;
    verify?: boolean;
    services?: Record<string, unknown>;
  } = {},
): Promise<RestoreTargetResult> {
  return sourceAdapterFor(snapshot.source).restore({
    repo,
    snapshot,
    target,
    include: options.include ?? [],
    overwrite: options.overwrite ?? false,
    verify: options.verify ?? true,
    allowExternalSymlinks: false,
    options: options.options ?? {},
    services: options.services ?? {},
    signal: new AbortController().signal,
    onProgress: () => undefined,
  });
}

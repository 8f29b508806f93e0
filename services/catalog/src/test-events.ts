/** Events about a run, as the executor publishes them, for the catalog's tests. */
import { BackupType, TriggerKind } from "@iotvault/proto";

export const stats = {
  filesNew: 3n,
  filesChanged: 1n,
  filesUnchanged: 6n,
  dirs: 2n,
  symlinks: 1n,
  totalBytes: 1000n,
  bytesRead: 400n,
  bytesNew: 300n,
  bytesStored: 120n,
  chunksTotal: 10n,
  chunksNew: 3n,
  packsWritten: 1n,
  durationMs: 42n,
  warnings: 0n,
};

export const started = (runId: string, attempt = 1) => ({
  runId,
  jobId: "job-1",
  jobName: "gateway",
  repository: "main",
  source: "fs:/srv/gw",
  backupType: BackupType.BACKUP_TYPE_INCREMENTAL,
  trigger: TriggerKind.TRIGGER_KIND_MANUAL,
  site: "default",
  executor: "host:1",
  attempt,
  parentSnapshotId: "",
  scheduledAt: new Date("2026-01-01T00:00:00Z"),
  startedAt: new Date("2026-01-01T00:00:01Z"),
  traceId: "0af7651916cd43dd8448eb211c80319c",
});

export const completed = (runId: string, snapshotId: string) => ({
  runId,
  jobId: "job-1",
  jobName: "gateway",
  repository: "main",
  snapshotId,
  parentSnapshotId: "",
  backupType: BackupType.BACKUP_TYPE_INCREMENTAL,
  source: "fs:/srv/gw",
  site: "default",
  executor: "host:1",
  stats,
  startedAt: new Date("2026-01-01T00:00:01Z"),
  finishedAt: new Date("2026-01-01T00:00:05Z"),
  traceId: "0af7651916cd43dd8448eb211c80319c",
  snapshotTime: new Date("2026-01-01T00:00:01Z"),
  hostname: "gw-01",
  degraded: false,
  missingTargets: [] as string[],
  groupMembers: [] as { snapshotId: string; source: string; restoreOptions: Record<string, string> }[],
});

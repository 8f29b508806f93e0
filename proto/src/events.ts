/**
 * The public subject catalog (docs/events.md). Subjects and payload types are an API with
 * versions: add, never rename.
 */
import {
  BackupCancelled,
  BackupCompleted,
  BackupFailed,
  BackupProgress,
  BackupRequested,
  BackupStarted,
  DeadLetter,
  DrillCompleted,
  JobCreated,
  PruneCompleted,
  SnapshotHold,
  SnapshotsForgotten,
  JobDeleted,
  JobUpdated,
  RestoreCompleted,
  RestoreFailed,
  RestoreProgress,
  RestoreRequested,
  RestoreStarted,
  VerifyCompleted,
  VerifyFailed,
  WalArchived,
} from "./gen/index.js";
import type { MessageFns } from "./gen/iotvault/v1/common.js";

/** JetStream streams iotvault creates (idempotently) at start-up. */
export const STREAMS = {
  /** Work queue: each work item is delivered to one consumer of its subject. */
  work: { name: "IOTVAULT_WORK", subjects: ["iotvault.work.>"] },
  /** Limits stream: every event, for the catalog and any other subscriber. */
  events: { name: "IOTVAULT_EVENTS", subjects: ["iotvault.events.>"] },
  /** Messages no consumer could handle, with the reason. */
  deadLetter: { name: "IOTVAULT_DLQ", subjects: ["iotvault.dlq.>"] },
} as const;

export const SUBJECTS = {
  workBackup: (site: string) => `iotvault.work.backup.${site}`,
  workRestore: (site: string) => `iotvault.work.restore.${site}`,
  deadLetter: (subject: string) => `iotvault.dlq.${subject}`,
  jobCreated: "iotvault.events.job.created",
  jobUpdated: "iotvault.events.job.updated",
  jobDeleted: "iotvault.events.job.deleted",
  backupStarted: "iotvault.events.backup.started",
  backupProgress: "iotvault.events.backup.progress",
  backupCompleted: "iotvault.events.backup.completed",
  backupFailed: "iotvault.events.backup.failed",
  backupCancelled: "iotvault.events.backup.cancelled",
  restoreStarted: "iotvault.events.restore.started",
  restoreProgress: "iotvault.events.restore.progress",
  restoreCompleted: "iotvault.events.restore.completed",
  restoreFailed: "iotvault.events.restore.failed",
  verifyCompleted: "iotvault.events.verify.completed",
  verifyFailed: "iotvault.events.verify.failed",
  walArchived: "iotvault.events.wal.archived",
  drillCompleted: "iotvault.events.drill.completed",
  snapshotForgotten: "iotvault.events.snapshot.forgotten",
  snapshotHeld: "iotvault.events.snapshot.held",
  snapshotReleased: "iotvault.events.snapshot.released",
  pruneCompleted: "iotvault.events.prune.completed",
} as const;

/** Every payload type, by its full protobuf name (the Iotvault-Event-Type header). */
export const EVENT_TYPES = {
  "iotvault.v1.BackupRequested": BackupRequested,
  "iotvault.v1.RestoreRequested": RestoreRequested,
  "iotvault.v1.JobCreated": JobCreated,
  "iotvault.v1.JobUpdated": JobUpdated,
  "iotvault.v1.JobDeleted": JobDeleted,
  "iotvault.v1.BackupStarted": BackupStarted,
  "iotvault.v1.BackupProgress": BackupProgress,
  "iotvault.v1.BackupCompleted": BackupCompleted,
  "iotvault.v1.BackupFailed": BackupFailed,
  "iotvault.v1.BackupCancelled": BackupCancelled,
  "iotvault.v1.RestoreStarted": RestoreStarted,
  "iotvault.v1.RestoreProgress": RestoreProgress,
  "iotvault.v1.RestoreCompleted": RestoreCompleted,
  "iotvault.v1.RestoreFailed": RestoreFailed,
  "iotvault.v1.VerifyCompleted": VerifyCompleted,
  "iotvault.v1.VerifyFailed": VerifyFailed,
  "iotvault.v1.WalArchived": WalArchived,
  "iotvault.v1.DrillCompleted": DrillCompleted,
  "iotvault.v1.SnapshotsForgotten": SnapshotsForgotten,
  "iotvault.v1.SnapshotHold": SnapshotHold,
  "iotvault.v1.PruneCompleted": PruneCompleted,
  "iotvault.v1.DeadLetter": DeadLetter,
} as const satisfies Record<string, MessageFns<any>>; // eslint-disable-line @typescript-eslint/no-explicit-any

export type EventName = keyof typeof EVENT_TYPES;

/** The full protobuf name of a payload codec from EVENT_TYPES. */
export function eventTypeOf(codec: unknown): EventName {
  for (const [name, fns] of Object.entries(EVENT_TYPES)) {
    if (fns === codec) return name as EventName;
  }
  throw new TypeError("not an iotvault event payload type");
}

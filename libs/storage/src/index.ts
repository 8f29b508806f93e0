/**
 * @iotvault/storage — the ObjectStore interface, its implementations (a local or NFS
 * directory, memory). The conformance suite every implementation runs is a separate entry,
 * `@iotvault/storage/conformance`, so that services never load node:test.
 *
 * ```ts
 * import { LocalDirectoryStore, putFromStream } from "@iotvault/storage";
 * const store = new LocalDirectoryStore("/srv/iotvault/main");
 * await store.put("config", bytes, { ifAbsent: true });
 * const data = await store.get("data/ab/pack", { offset: 0, length: 4096 });
 * await putFromStream(store, "data/cd/pack", chunks, { expectedSize, expectedSha256 });
 *
 * // S3-compatible (MinIO, Ceph radosgw) and SFTP targets, for the storage-gateway:
 * const s3 = new S3Store({ endpoint: "minio:9000", tls: false, bucket: "backups", accessKey, secretKey });
 * const sftp = new SftpStore({ host: "nas", username: "backup", root: "/srv/iotvault", privateKey,
 *   hostKey: { knownHosts } });
 *
 * // One repository on several targets (writes to all, reads fall back, a journal for self-heal):
 * const replicated = await ReplicatedStore.open([{ url: "file:///srv/a", store }, { url: "s3://...", store: s3 }],
 *   { journalPath: "/var/lib/iotvault/gateway/journals/main.journal" });
 * ```
 */
export {
  KEY_PATTERN,
  isStreamingStore,
  type ByteRange,
  type GetStreamOptions,
  type ObjectInfo,
  type ObjectReader,
  type ObjectStore,
  type ObjectWriter,
  type PutOptions,
  type PutStreamOptions,
  type PutStreamResult,
  type StreamingObjectStore,
} from "./object-store.js";
export { checkKey, checkPrefix, resolveRange } from "./keys.js";
export { MemoryStore } from "./memory-store.js";
export {
  LocalDirectoryStore,
  LOCAL_TEMP_PREFIX,
  DEFAULT_TEMP_MAX_AGE_MS,
  type LocalDirectoryStoreOptions,
} from "./local-directory-store.js";
export { nodeFs, type LocalFs, type LocalFileHandle } from "./local-fs.js";
export {
  S3Store,
  S3_DEFAULT_PART_BYTES,
  S3_MIN_PART_BYTES,
  S3_MAX_PARTS,
  type IncompleteUpload,
  type S3StoreOptions,
} from "./s3-store.js";
export { SftpStore, SFTP_TEMP_PREFIX, type SftpStoreOptions } from "./sftp-store.js";
export {
  checkHostKey,
  FINGERPRINT_PATTERN,
  parseKnownHosts,
  sshFingerprint,
  type HostKeyPolicy,
  type HostKeyVerdict,
  type KnownHostEntry,
} from "./host-keys.js";
export { withRetry, backoffDelay, DEFAULT_RETRY_POLICY, type RetryOptions, type RetryPolicy } from "./retry.js";
export {
  putFromStream,
  readObjectStream,
  abortable,
  ContentCheck,
  DEFAULT_BUFFERED_PUT_LIMIT_BYTES,
  DEFAULT_CHUNK_BYTES,
} from "./streams.js";
export {
  ReplicatedStore,
  missingTargetsOf,
  type ReplicatedPutResult,
  type ReplicatedStoreOptions,
  type TargetStatusInfo,
} from "./replicated-store.js";
export { isUnavailability, packIdOf, type ReplicaTarget, type ReplicationLogger } from "./replica-set.js";
export type { HealOptions, HealResult, ReconcileResult } from "./replica-heal.js";
export {
  CopyJournal,
  type CopyJournalOpenReport,
  type CopyJournalOptions,
  type CopyOperation,
  type JournalEntry,
} from "./copy-journal.js";
export { fanOut, type FanOut, type FanOutOptions } from "./fan-out.js";
export { KeyedLock } from "./keyed-lock.js";

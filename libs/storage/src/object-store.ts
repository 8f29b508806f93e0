/**
 * The one storage interface of iotvault. A repository is a flat namespace of objects with
 * slash-separated keys (`config`, `keys/<id>`, `data/ab/<pack id>`, `index/<id>`,
 * `snapshots/<id>`). Local directories, NFS, S3 and SFTP implement it in the storage-gateway;
 * the repository code reaches it through a gRPC client that implements it too.
 *
 * Contract, for every implementation (checked by the conformance suite in this package):
 * - Keys match KEY_PATTERN; anything else (`..`, a leading `/`, empty segments) is refused
 *   with INVALID_ARGUMENT before storage is touched.
 * - put() is atomic: readers see the whole object or nothing, also when the writer dies
 *   mid-way; a failed put leaves no visible partial object. With `ifAbsent`, an existing
 *   object is kept and `existed: true` is returned.
 * - get() of a missing object throws NOT_FOUND; a range past the end is clamped; a stored
 *   object shorter than expected is not padded.
 * - stat() returns undefined for a missing object (it does not throw).
 * - list() yields every object under the prefix exactly once, in no particular order, and
 *   never a temporary file.
 * - delete() of a missing object returns false.
 * - Errors are IotvaultErrors: NOT_FOUND, UNAVAILABLE (retryable), RESOURCE_EXHAUSTED (disk
 *   full), PERMISSION_DENIED (read-only mount, permissions), INVALID_ARGUMENT.
 */
export interface ObjectInfo {
  key: string;
  size: number;
  modifiedAt: Date;
}

export interface ByteRange {
  offset: number;
  /** Bytes to read from offset; undefined means to the end. */
  length?: number | undefined;
}

export interface PutOptions {
  /** Keep an existing object instead of replacing it. */
  ifAbsent?: boolean | undefined;
  signal?: AbortSignal | undefined;
}

export interface ObjectReader {
  get(key: string, range?: ByteRange, signal?: AbortSignal): Promise<Buffer>;
  stat(key: string): Promise<ObjectInfo | undefined>;
  list(prefix: string): AsyncIterable<ObjectInfo>;
}

export interface ObjectWriter {
  put(key: string, data: Uint8Array, options?: PutOptions): Promise<{ existed: boolean }>;
  delete(key: string): Promise<boolean>;
}

export interface ObjectStore extends ObjectReader, ObjectWriter {
  /** Human-readable location without credentials, for messages (e.g. "file:///srv/repo"). */
  readonly location: string;
}

/** Keys are 1-8 segments of [A-Za-z0-9._-], no segment `.` or `..`, no leading or trailing `/`. */
export const KEY_PATTERN = /^(?!.*(?:^|\/)\.{1,2}(?:\/|$))[A-Za-z0-9._-]+(?:\/[A-Za-z0-9._-]+){0,7}$/;

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
 *   object shorter than expected is not padded. Offsets and lengths are non-negative integers
 *   (anything else is INVALID_ARGUMENT); pass `length: undefined`, not 0, to read to the end
 *   (remote stores map a length of 0 to "to the end", as the gRPC API does).
 * - stat() returns undefined for a missing object (it does not throw).
 * - list() yields every object under the prefix exactly once, in no particular order, and
 *   never a temporary file. The prefix is a plain string prefix of keys (`data/a` matches
 *   `data/ab/x`); a prefix that no key could start with (`../`, `/x`) is INVALID_ARGUMENT.
 * - delete() of a missing object returns false.
 * - Errors are IotvaultErrors: NOT_FOUND, UNAVAILABLE (retryable), RESOURCE_EXHAUSTED (disk
 *   full), PERMISSION_DENIED (read-only mount, permissions), INVALID_ARGUMENT,
 *   FAILED_PRECONDITION (the repository's directory or bucket is missing), CANCELLED (the
 *   operation's AbortSignal fired).
 *
 * Stores that can move objects without holding them in memory also implement
 * StreamingObjectStore; `putFromStream` / `readObjectStream` use it when it is there.
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

export interface PutStreamOptions extends PutOptions {
  /** The exact byte count of the stream; another count fails with INVALID_ARGUMENT, nothing written. */
  expectedSize?: number | undefined;
  /** Lower-case hex SHA-256 the content must have; a mismatch fails with DATA_CORRUPT, nothing written. */
  expectedSha256?: string | undefined;
  /** Refuse a stream longer than this with RESOURCE_EXHAUSTED (not retryable), nothing written. */
  maxBytes?: number | undefined;
}

export interface PutStreamResult {
  /** True when `ifAbsent` was set and an object was already there (nothing was written). */
  existed: boolean;
  /** Bytes written, or the size of the existing object when `existed`. */
  size: number;
  /** Lower-case hex SHA-256 of what was written (absent when `existed`). */
  sha256?: string | undefined;
}

export interface GetStreamOptions {
  /** Largest chunk yielded (default 1 MiB). */
  chunkBytes?: number | undefined;
  signal?: AbortSignal | undefined;
}

/**
 * An ObjectStore that streams objects in and out with bounded memory. `putStream` has the
 * same atomicity as put(): the object appears whole when the promise resolves, or not at all
 * (also when the source throws, the signal fires, or a size / sha256 check fails).
 * `getStream` reads one consistent version of the object, even if it is replaced meanwhile.
 */
export interface StreamingObjectStore extends ObjectStore {
  putStream(key: string, chunks: AsyncIterable<Uint8Array>, options?: PutStreamOptions): Promise<PutStreamResult>;
  getStream(key: string, range?: ByteRange, options?: GetStreamOptions): AsyncIterable<Buffer>;
}

/** True when the store implements StreamingObjectStore. */
export function isStreamingStore(store: ObjectStore): store is StreamingObjectStore {
  const s = store as Partial<StreamingObjectStore>;
  return typeof s.putStream === "function" && typeof s.getStream === "function";
}

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
  putFromStream,
  readObjectStream,
  abortable,
  ContentCheck,
  DEFAULT_BUFFERED_PUT_LIMIT_BYTES,
  DEFAULT_CHUNK_BYTES,
} from "./streams.js";

/**
 * @iotvault/storage — the ObjectStore interface and its implementations.
 */
export {
  KEY_PATTERN,
  type ByteRange,
  type ObjectInfo,
  type ObjectReader,
  type ObjectStore,
  type ObjectWriter,
  type PutOptions,
} from "./object-store.js";
export { MemoryStore, checkKey } from "./memory-store.js";

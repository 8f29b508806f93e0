/**
 * `@iotvault/storage/contract`: the ObjectStore contract and the key checks, without any
 * backend (the main entry loads the S3 and SFTP clients too). For clients of a remote store,
 * such as the storage-gateway's.
 */
export type { ByteRange, ObjectInfo, ObjectStore, PutOptions } from "./object-store.js";
export { checkKey, checkPrefix, resolveRange } from "./keys.js";

import { IotvaultError } from "@iotvault/errors";
import { checkKey, checkPrefix, resolveRange } from "./keys.js";
import { type ByteRange, type ObjectInfo, type ObjectStore, type PutOptions } from "./object-store.js";
import { cancelledError } from "./streams.js";

export { checkKey } from "./keys.js";

/**
 * An in-memory ObjectStore for fast unit tests (like restic's mem backend). It follows the
 * same contract as the real stores and runs the same conformance suite.
 *
 * ```ts
 * const store = new MemoryStore();
 * await store.put("config", Buffer.from("{}"));
 * ```
 */
export class MemoryStore implements ObjectStore {
  readonly location = "memory:";
  private readonly objects = new Map<string, { data: Buffer; modifiedAt: Date }>();

  async put(key: string, data: Uint8Array, options: PutOptions = {}): Promise<{ existed: boolean }> {
    checkKey(key);
    if (options.signal?.aborted) throw cancelledError(`put of ${key} to ${this.location}`, options.signal);
    if (options.ifAbsent && this.objects.has(key)) return { existed: true };
    this.objects.set(key, { data: Buffer.from(data), modifiedAt: new Date() });
    return { existed: false };
  }

  async get(key: string, range?: ByteRange, signal?: AbortSignal): Promise<Buffer> {
    checkKey(key);
    if (signal?.aborted) throw cancelledError(`read of ${key} from ${this.location}`, signal);
    const obj = this.objects.get(key);
    if (!obj) throw new IotvaultError("NOT_FOUND", `object ${key} not found in ${this.location}`);
    const { start, end } = resolveRange(obj.data.length, range);
    return Buffer.from(obj.data.subarray(start, end));
  }

  async stat(key: string): Promise<ObjectInfo | undefined> {
    checkKey(key);
    const obj = this.objects.get(key);
    return obj ? { key, size: obj.data.length, modifiedAt: obj.modifiedAt } : undefined;
  }

  async *list(prefix: string): AsyncIterable<ObjectInfo> {
    checkPrefix(prefix);
    // A snapshot of the keys: writes during the listing neither repeat nor break it.
    for (const [key, obj] of [...this.objects]) {
      if (key.startsWith(prefix)) yield { key, size: obj.data.length, modifiedAt: obj.modifiedAt };
    }
  }

  async delete(key: string): Promise<boolean> {
    checkKey(key);
    return this.objects.delete(key);
  }

  /** Test helper: the raw stored bytes, to corrupt or truncate an object on purpose. */
  raw(key: string): Buffer | undefined {
    return this.objects.get(key)?.data;
  }

  /** Test helper: replaces the stored bytes without any check. */
  overwrite(key: string, data: Uint8Array): void {
    this.objects.set(key, { data: Buffer.from(data), modifiedAt: new Date() });
  }
}

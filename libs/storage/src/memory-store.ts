import { IotvaultError } from "@iotvault/errors";
import { KEY_PATTERN, type ByteRange, type ObjectInfo, type ObjectStore, type PutOptions } from "./object-store.js";

/**
 * An in-memory ObjectStore for fast unit tests (like restic's mem backend). It follows the
 * same contract as the real stores and runs the same conformance suite.
 */
export class MemoryStore implements ObjectStore {
  readonly location = "memory:";
  private readonly objects = new Map<string, { data: Buffer; modifiedAt: Date }>();

  async put(key: string, data: Uint8Array, options: PutOptions = {}): Promise<{ existed: boolean }> {
    checkKey(key);
    options.signal?.throwIfAborted();
    if (options.ifAbsent && this.objects.has(key)) return { existed: true };
    this.objects.set(key, { data: Buffer.from(data), modifiedAt: new Date() });
    return { existed: false };
  }

  async get(key: string, range?: ByteRange): Promise<Buffer> {
    checkKey(key);
    const obj = this.objects.get(key);
    if (!obj) throw new IotvaultError("NOT_FOUND", `object ${key} not found in ${this.location}`);
    if (!range) return Buffer.from(obj.data);
    const end = range.length === undefined ? obj.data.length : range.offset + range.length;
    return Buffer.from(obj.data.subarray(range.offset, end));
  }

  async stat(key: string): Promise<ObjectInfo | undefined> {
    checkKey(key);
    const obj = this.objects.get(key);
    return obj ? { key, size: obj.data.length, modifiedAt: obj.modifiedAt } : undefined;
  }

  async *list(prefix: string): AsyncIterable<ObjectInfo> {
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

export function checkKey(key: string): void {
  if (!KEY_PATTERN.test(key)) {
    throw new IotvaultError("INVALID_ARGUMENT", `invalid object key ${JSON.stringify(key)}`, {
      hint: "keys are slash-separated segments of letters, digits, '.', '_' and '-', without '..'",
    });
  }
}

import { createHash } from "node:crypto";
import { IotvaultError, isNotFound } from "@iotvault/errors";
import type { PutObjectRequest, StorageGatewayServiceClient } from "@iotvault/proto";
import {
  checkKey,
  checkPrefix,
  type ByteRange,
  type ObjectInfo,
  type ObjectStore,
  type PutOptions,
} from "@iotvault/storage";
import { callClientStream, callServerStream, callUnary, registerClient } from "./client.js";

/** Data messages of a put carry at most this many bytes (the gateway's limit per message). */
export const GATEWAY_CHUNK_BYTES = 1024 * 1024;

export interface GatewayObjectStoreOptions {
  /** The gateway's address, for `location` and error messages. */
  address: string;
  /** Deadline of stat and delete calls (default 60 s); streams have none (use the signal). */
  unaryDeadlineMs?: number | undefined;
  /** Bytes per data message of a put (default and maximum 1 MiB). */
  chunkBytes?: number | undefined;
}

function checkRange(range: ByteRange | undefined): void {
  if (!range) return;
  const { offset, length } = range;
  if (
    !Number.isSafeInteger(offset) ||
    offset < 0 ||
    (length !== undefined && (!Number.isSafeInteger(length) || length < 0))
  ) {
    throw new IotvaultError("INVALID_ARGUMENT", `invalid byte range offset=${offset} length=${String(length)}`, {
      hint: "offset and length are non-negative integers; leave length out to read to the end",
    });
  }
}

function cancelled(key: string, operation: string): IotvaultError {
  return new IotvaultError("CANCELLED", `${operation} of object ${key} was cancelled`);
}

/**
 * The ObjectStore of one repository, reached through the storage-gateway's gRPC API: the way
 * executors and the restore service read and write a repository without holding storage
 * credentials.
 *
 * ```ts
 * const client = createClient(StorageGatewayServiceClient, "127.0.0.1:50052");
 * const store = new GatewayObjectStore(client, "main", { address: "127.0.0.1:50052" });
 * await store.put("config", bytes, { ifAbsent: true });
 * ```
 *
 * `put` streams a header (size, sha256, ifAbsent) then data messages of at most 1 MiB; `get`
 * collects the server stream (with the range) into one Buffer; `list` flattens the batches.
 * Keys and prefixes are checked before any call. Errors are IotvaultErrors.
 */
export class GatewayObjectStore implements ObjectStore {
  readonly location: string;
  private readonly unaryDeadlineMs: number;
  private readonly chunkBytes: number;

  constructor(
    private readonly client: StorageGatewayServiceClient,
    readonly repository: string,
    options: GatewayObjectStoreOptions,
  ) {
    if (repository === "") {
      throw new IotvaultError("INVALID_ARGUMENT", "a GatewayObjectStore needs a repository name", {
        hint: "pass the repository name registered on the gateway (`iotvault repo init <name> ...`)",
      });
    }
    this.location = `gateway://${options.address}/${repository}`;
    this.unaryDeadlineMs = options.unaryDeadlineMs ?? 60_000;
    this.chunkBytes = Math.max(1, Math.min(options.chunkBytes ?? GATEWAY_CHUNK_BYTES, GATEWAY_CHUNK_BYTES));
    registerClient(client, { service: "storage-gateway", address: options.address });
  }

  async put(key: string, data: Uint8Array, options: PutOptions = {}): Promise<{ existed: boolean }> {
    checkKey(key);
    if (options.signal?.aborted) throw cancelled(key, "put");
    const bytes = Buffer.from(data.buffer, data.byteOffset, data.byteLength);
    const sha256 = createHash("sha256").update(bytes).digest("hex");
    const { repository, chunkBytes } = this;
    function* messages(): Generator<PutObjectRequest> {
      yield {
        part: {
          $case: "header",
          value: { repository, key, size: BigInt(bytes.length), sha256, ifAbsent: options.ifAbsent ?? false },
        },
      };
      for (let offset = 0; offset < bytes.length; offset += chunkBytes) {
        yield { part: { $case: "data", value: bytes.subarray(offset, offset + chunkBytes) } };
      }
    }
    const response = await callClientStream(this.client, "putObject", messages(), { signal: options.signal });
    return { existed: response.existed };
  }

  async get(key: string, range?: ByteRange, signal?: AbortSignal): Promise<Buffer> {
    checkKey(key);
    checkRange(range);
    if (signal?.aborted) throw cancelled(key, "get");
    const request = {
      repository: this.repository,
      key,
      offset: BigInt(range?.offset ?? 0),
      length: BigInt(range?.length ?? 0),
    };
    const chunks: Buffer[] = [];
    for await (const message of callServerStream(this.client, "getObject", request, { signal })) {
      chunks.push(message.data);
    }
    return Buffer.concat(chunks);
  }

  async stat(key: string): Promise<ObjectInfo | undefined> {
    checkKey(key);
    try {
      const { info } = await callUnary(
        this.client,
        "statObject",
        { repository: this.repository, key },
        { deadlineMs: this.unaryDeadlineMs },
      );
      if (!info) return undefined;
      return { key: info.key || key, size: Number(info.size), modifiedAt: info.modifiedAt ?? new Date(0) };
    } catch (err) {
      if (isNotFound(err)) return undefined;
      throw err;
    }
  }

  async *list(prefix: string): AsyncIterable<ObjectInfo> {
    checkPrefix(prefix);
    for await (const batch of callServerStream(this.client, "listObjects", { repository: this.repository, prefix })) {
      for (const info of batch.objects) {
        yield { key: info.key, size: Number(info.size), modifiedAt: info.modifiedAt ?? new Date(0) };
      }
    }
  }

  async delete(key: string): Promise<boolean> {
    checkKey(key);
    const { deleted } = await callUnary(
      this.client,
      "deleteObject",
      { repository: this.repository, key },
      { deadlineMs: this.unaryDeadlineMs },
    );
    return deleted;
  }
}

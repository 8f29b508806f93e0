import { createHash } from "node:crypto";
import { IotvaultError, isNotFound } from "@iotvault/errors";
import { Metadata } from "@grpc/grpc-js";
import {
  GetObjectRequest,
  PutObjectRequest,
  PutObjectResponse,
  type StorageGatewayServiceClient,
} from "@iotvault/proto";
import {
  checkKey,
  checkPrefix,
  type ByteRange,
  type ObjectInfo,
  type ObjectStore,
  type PutOptions,
} from "@iotvault/storage/contract";
import {
  callClientStream,
  callServerStream,
  callUnary,
  registerClient,
  type ClientStreamMethod,
  type ServerStreamMethod,
} from "./client.js";

/** Data messages of a put carry at most this many bytes (the gateway's limit per message). */
export const GATEWAY_CHUNK_BYTES = 1024 * 1024;

/**
 * A put option a caller MAY add when it knows the lower-case hex SHA-256 of the data (a
 * repository knows it for a pack: it is the pack's id): the store then does not hash the data
 * again. The gateway still checks the received bytes against it.
 */
export interface KnownSha256 {
  sha256?: string | undefined;
}

const PUT_PATH = "/iotvault.v1.StorageGatewayService/PutObject";
const GET_PATH = "/iotvault.v1.StorageGatewayService/GetObject";
const SHA256_HEX = /^[0-9a-f]{64}$/;

/**
 * A protobuf message whose only set field is one `bytes` field, encoded by hand in one copy:
 * the tag byte (field number << 3 | 2), the varint length, the bytes. The generated encoders
 * copy each MiB three or four times (writer chunks, finish, Buffer.from). Used for
 * PutObjectRequest data messages (field 2, tag 0x12) and GetObjectResponse (field 1, tag 0x0a).
 */
export function encodeBytesMessage(tag: number, data: Uint8Array): Buffer {
  let n = data.length;
  const varint: number[] = [];
  do {
    varint.push((n & 0x7f) | (n > 0x7f ? 0x80 : 0));
    n = Math.floor(n / 128);
  } while (n > 0);
  const out = Buffer.allocUnsafe(1 + varint.length + data.length);
  out[0] = tag;
  for (let i = 0; i < varint.length; i++) out[1 + i] = varint[i]!;
  out.set(data, 1 + varint.length);
  return out;
}

const encodeDataMessage = (data: Uint8Array): Buffer => encodeBytesMessage(0x12, data);

/**
 * The data of a GetObjectResponse as a view of the received message (no copy): field 1 (bytes)
 * = tag 0x0a, varint length, the bytes; other fields are skipped as protobuf allows.
 */
function decodeGetResponse(message: Buffer): { data: Buffer } {
  let data = message.subarray(0, 0);
  let pos = 0;
  const varint = (): number => {
    let value = 0;
    for (let shift = 1; pos < message.length; shift *= 128) {
      const b = message[pos++]!;
      value += (b & 0x7f) * shift;
      if (b < 0x80) return value;
    }
    throw new IotvaultError("DATA_CORRUPT", "a GetObject message from the gateway is malformed");
  };
  while (pos < message.length) {
    const tag = varint();
    const wire = tag & 7;
    if (wire === 2) {
      const length = varint();
      if (pos + length > message.length) throw new IotvaultError("DATA_CORRUPT", "a GetObject message is cut off");
      if (tag >>> 3 === 1) data = message.subarray(pos, pos + length);
      pos += length;
    } else if (wire === 0) varint();
    else if (wire === 1) pos += 8;
    else if (wire === 5) pos += 4;
    else throw new IotvaultError("DATA_CORRUPT", "a GetObject message from the gateway is malformed");
  }
  return { data };
}

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
 *
 * A repository with replicas answers a put that a target missed (it was down; the gateway
 * copies the object later) with that target in `missing_targets`; the store keeps the union of
 * those it saw, `missingTargets()`, so that a backup run can report itself degraded.
 */
/** Streams get a deadline of this plus 1 s per MB expected (they must move at least 1 MB/s). */
const STREAM_DEADLINE_BASE_MS = 120_000;
/** A listing of a huge repository may take a while; it still ends. */
const LIST_DEADLINE_MS = 30 * 60_000;

export class GatewayObjectStore implements ObjectStore {
  readonly location: string;
  private readonly unaryDeadlineMs: number;
  private readonly chunkBytes: number;
  private readonly missing = new Set<string>();

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

  async put(key: string, data: Uint8Array, options: PutOptions & KnownSha256 = {}): Promise<{ existed: boolean }> {
    checkKey(key);
    if (options.signal?.aborted) throw cancelled(key, "put");
    const bytes = Buffer.from(data.buffer, data.byteOffset, data.byteLength);
    const known = options.sha256 !== undefined && SHA256_HEX.test(options.sha256) ? options.sha256 : undefined;
    const sha256 = known ?? createHash("sha256").update(bytes).digest("hex");
    const { repository, chunkBytes } = this;
    const header: PutObjectRequest = {
      part: {
        $case: "header",
        value: { repository, key, size: BigInt(bytes.length), sha256, ifAbsent: options.ifAbsent ?? false },
      },
    };
    // Messages are serialized here (data messages by hand, in one copy), so the call writes Buffers.
    function* messages(): Generator<Buffer> {
      yield Buffer.from(PutObjectRequest.encode(header).finish());
      for (let offset = 0; offset < bytes.length; offset += chunkBytes) {
        yield encodeDataMessage(bytes.subarray(offset, offset + chunkBytes));
      }
    }
    const client = this.client;
    const putObject: ClientStreamMethod<Buffer, PutObjectResponse> = (metadata, callOptions, callback) =>
      client.makeClientStreamRequest(
        PUT_PATH,
        (b: Buffer) => b,
        (b: Buffer) => PutObjectResponse.decode(b),
        metadata,
        callOptions,
        (err, value) => callback(err, value as PutObjectResponse),
      );
    // A hung target (a wedged NFS mount, a stalled network) must not hold a backup forever: the
    // call gets a deadline of 2 minutes plus 1 s per MB.
    const response = await callClientStream(this.client, putObject, messages(), {
      signal: options.signal,
      deadlineMs: STREAM_DEADLINE_BASE_MS + Math.ceil(bytes.length / 1000),
    });
    for (const target of response.missingTargets) this.missing.add(target);
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
    const client = this.client;
    const getObject: ServerStreamMethod<typeof request, { data: Buffer }> = (req, metadata, callOptions) =>
      client.makeServerStreamRequest(
        GET_PATH,
        (r: typeof request) => Buffer.from(GetObjectRequest.encode(r).finish()),
        decodeGetResponse,
        req,
        metadata ?? new Metadata(),
        callOptions ?? {},
      );
    const chunks: Buffer[] = [];
    const expected = range?.length ?? 256 * 1024 * 1024;
    for await (const message of callServerStream(this.client, getObject, request, {
      signal,
      deadlineMs: STREAM_DEADLINE_BASE_MS + Math.ceil(expected / 1000),
    })) {
      chunks.push(message.data);
    }
    return chunks.length === 1 ? Buffer.from(chunks[0]!) : Buffer.concat(chunks);
  }

  /** Targets of the repository that missed at least one put of this store (sorted, without credentials). */
  missingTargets(): string[] {
    return [...this.missing].sort();
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
      // A missing object is "absent"; an unknown repository is an error (not "no repository here").
      if (isNotFound(err) && !/unknown repository/.test(err.message)) return undefined;
      throw err;
    }
  }

  async *list(prefix: string): AsyncIterable<ObjectInfo> {
    checkPrefix(prefix);
    const calls = { deadlineMs: LIST_DEADLINE_MS };
    for await (const batch of callServerStream(
      this.client,
      "listObjects",
      { repository: this.repository, prefix },
      calls,
    )) {
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

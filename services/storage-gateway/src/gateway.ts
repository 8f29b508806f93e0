import { trace, type Attributes, type Span } from "@opentelemetry/api";
import { IotvaultError } from "@iotvault/errors";
import type {
  CreateRepositoryRequest,
  CreateRepositoryResponse,
  DeleteObjectRequest,
  DeleteObjectResponse,
  GetObjectRequest,
  GetObjectResponse,
  ListObjectsRequest,
  ListObjectsResponse,
  ListRepositoriesResponse,
  ObjectInfo as ProtoObjectInfo,
  PutObjectHeader,
  PutObjectRequest,
  PutObjectResponse,
  RepositoryInfo,
  StatObjectRequest,
  TargetStatus,
  StatObjectResponse,
} from "@iotvault/proto";
import {
  checkKey,
  checkPrefix,
  missingTargetsOf,
  putFromStream,
  readObjectStream,
  type ObjectInfo,
  type ObjectStore,
} from "@iotvault/storage";
import { recordError, type Logger } from "@iotvault/telemetry";
import { DEFAULT_GATEWAY_OPTIONS, type GatewayOptions } from "./config.js";
import { redactUrl, type Repository, type RepositoryRegistry } from "./repositories.js";

/** The tracer of the gateway's storage I/O spans (`gateway.write`, `gateway.read`). */
export const GATEWAY_TRACER_NAME = "iotvault.storage-gateway";

const tracer = () => trace.getTracer(GATEWAY_TRACER_NAME);

/**
 * The StorageGatewayService, independent of gRPC: each method takes the decoded request (or
 * the stream of requests) and the call's AbortSignal. `storageGatewayService()` (server.ts)
 * binds it to grpc-js through the adapters of @iotvault/rpc, which also map the thrown
 * IotvaultErrors to gRPC statuses.
 *
 * ```ts
 * const gateway = new StorageGateway(registry, { maxObjectBytes: 64 << 20 });
 * const { size } = await gateway.putObject(requests, signal);
 * for await (const { data } of gateway.getObject({ repository, key, offset: 0n, length: 0n })) ...
 * ```
 */
export class StorageGateway {
  readonly options: Readonly<GatewayOptions>;

  constructor(
    readonly registry: RepositoryRegistry,
    options: Partial<GatewayOptions> = {},
    private readonly logger?: Logger,
  ) {
    this.options = { ...DEFAULT_GATEWAY_OPTIONS, ...options };
  }

  /**
   * Client stream: the header, then data. The bytes stream into the store's atomic write;
   * a wrong total size or sha256 fails the call before the object becomes visible.
   */
  async putObject(requests: AsyncIterable<PutObjectRequest>, signal?: AbortSignal): Promise<PutObjectResponse> {
    const iterator = requests[Symbol.asyncIterator]();
    const header = await this.readHeader(iterator);
    const store = this.registry.store(header.repository);
    checkKey(header.key);
    const size = toSafeNumber(header.size, "header.size");
    const { maxObjectBytes } = this.options;
    if (size > maxObjectBytes) {
      throw new IotvaultError(
        "RESOURCE_EXHAUSTED",
        `object ${header.key} (${size} bytes) exceeds the gateway's limit of ${maxObjectBytes} bytes`,
        { retryable: false, hint: "split the data into smaller objects, or raise IOTVAULT_GATEWAY_MAX_OBJECT_MIB" },
      );
    }
    const attributes = ioAttributes(header.repository, header.key, { "iotvault.operation": "put" });
    return inSpan("gateway.write", attributes, async (span) => {
      const result = await putFromStream(store, header.key, dataMessages(iterator), {
        expectedSize: size,
        expectedSha256: header.sha256 === "" ? undefined : header.sha256.toLowerCase(),
        ifAbsent: header.ifAbsent,
        maxBytes: maxObjectBytes,
        signal,
      });
      // A replicated repository reports the targets that were down (the write is degraded).
      const missingTargets = missingTargetsOf(result);
      span.setAttributes({
        "iotvault.bytes": result.existed ? 0 : result.size,
        "iotvault.existed": result.existed,
        "iotvault.missing_targets": missingTargets.length,
      });
      return { size: BigInt(result.size), existed: result.existed, missingTargets };
    });
  }

  /** Server stream of the object's bytes (or the range asked for) in bounded messages. */
  async *getObject(request: GetObjectRequest, signal?: AbortSignal): AsyncGenerator<GetObjectResponse> {
    const store = this.registry.store(request.repository);
    checkKey(request.key);
    const offset = toSafeNumber(request.offset, "offset");
    const length = toSafeNumber(request.length, "length");
    const range = length === 0 ? { offset } : { offset, length };
    const span = tracer().startSpan("gateway.read", {
      attributes: ioAttributes(request.repository, request.key, {
        "iotvault.operation": "get",
        "iotvault.offset": offset,
        "iotvault.length": length,
      }),
    });
    let bytes = 0;
    try {
      const chunkBytes = this.options.getChunkBytes;
      // A bounded range (a restore reads packs in ranges of a few MiB) is read with one call
      // into one buffer and sent as views of it: no allocation and no thread-pool hop per message.
      const chunks =
        length > 0 && length <= BUFFERED_GET_BYTES
          ? slices(await store.get(request.key, range, signal), chunkBytes)
          : readObjectStream(store, request.key, range, { chunkBytes, signal });
      for await (const data of chunks) {
        bytes += data.length;
        yield { data };
      }
    } catch (err) {
      recordError(span, err);
      throw err;
    } finally {
      span.setAttribute("iotvault.bytes", bytes);
      span.end();
    }
  }

  async statObject(request: StatObjectRequest): Promise<StatObjectResponse> {
    const store = this.registry.store(request.repository);
    checkKey(request.key);
    const attributes = ioAttributes(request.repository, request.key, { "iotvault.operation": "stat" });
    return inSpan("gateway.read", attributes, async (span) => {
      const info = await store.stat(request.key);
      span.setAttribute("iotvault.found", info !== undefined);
      return { info: info ? toProtoInfo(info) : undefined };
    });
  }

  /** Server stream of batches of at most `listBatchSize` objects. */
  async *listObjects(request: ListObjectsRequest, signal?: AbortSignal): AsyncGenerator<ListObjectsResponse> {
    const store = this.registry.store(request.repository);
    checkPrefix(request.prefix);
    const span = tracer().startSpan("gateway.read", {
      attributes: {
        "iotvault.repository": request.repository,
        "iotvault.prefix": request.prefix,
        "iotvault.operation": "list",
      },
    });
    let count = 0;
    try {
      for await (const batch of batches(store, request.prefix, this.options.listBatchSize, signal)) {
        count += batch.length;
        yield { objects: batch };
      }
    } catch (err) {
      recordError(span, err);
      throw err;
    } finally {
      span.setAttribute("iotvault.objects", count);
      span.end();
    }
  }

  async deleteObject(request: DeleteObjectRequest): Promise<DeleteObjectResponse> {
    const store = this.registry.store(request.repository);
    checkKey(request.key);
    const attributes = ioAttributes(request.repository, request.key, { "iotvault.operation": "delete" });
    return inSpan("gateway.write", attributes, async (span) => {
      const deleted = await store.delete(request.key);
      span.setAttribute("iotvault.deleted", deleted);
      return { deleted };
    });
  }

  async createRepository(request: CreateRepositoryRequest): Promise<CreateRepositoryResponse> {
    const { repository, created } = await this.registry.create(request.name, request.url, request.replicas);
    if (created) {
      this.logger?.info("repository created", {
        repository: repository.name,
        url: redactUrl(repository.url),
        replicas: repository.replicas.map((replica) => redactUrl(replica)),
      });
    }
    return { repository: toRepositoryInfo(repository) };
  }

  async listRepositories(): Promise<ListRepositoriesResponse> {
    return { repositories: this.registry.list().map(toRepositoryInfo) };
  }

  private async readHeader(iterator: AsyncIterator<PutObjectRequest>): Promise<PutObjectHeader> {
    const first = await iterator.next();
    const part = first.done ? undefined : first.value.part;
    if (part?.$case !== "header") {
      throw new IotvaultError("INVALID_ARGUMENT", "the first message of PutObject must be the header", {
        hint: "send a PutObjectHeader (repository, key, size, sha256) before the data",
      });
    }
    return part.value;
  }
}

/** Ranges up to this size are read in one call (see getObject). */
const BUFFERED_GET_BYTES = 16 * 1024 * 1024;

function* slices(data: Buffer, size: number): Generator<Buffer> {
  for (let at = 0; at < data.length; at += size) yield data.subarray(at, at + size);
}

/** The data messages after the header; a second header or an empty message is refused. */
async function* dataMessages(iterator: AsyncIterator<PutObjectRequest>): AsyncGenerator<Uint8Array> {
  for (;;) {
    const next = await iterator.next();
    if (next.done) return;
    const part = next.value.part;
    if (part?.$case !== "data") {
      throw new IotvaultError("INVALID_ARGUMENT", "PutObject: only the first message may be a header, the rest data", {
        hint: "send one header message, then data messages",
      });
    }
    yield part.value;
  }
}

async function* batches(
  store: ObjectStore,
  prefix: string,
  size: number,
  signal: AbortSignal | undefined,
): AsyncGenerator<ProtoObjectInfo[]> {
  let batch: ProtoObjectInfo[] = [];
  for await (const info of store.list(prefix)) {
    if (signal?.aborted) throw new IotvaultError("CANCELLED", `listing ${prefix} was cancelled`);
    batch.push(toProtoInfo(info));
    if (batch.length >= size) {
      yield batch;
      batch = [];
    }
  }
  if (batch.length > 0) yield batch;
}

/** Runs `fn` in an active child span; records a failure on it. */
async function inSpan<T>(name: string, attributes: Attributes, fn: (span: Span) => Promise<T>): Promise<T> {
  return tracer().startActiveSpan(name, { attributes }, async (span) => {
    try {
      return await fn(span);
    } catch (err) {
      recordError(span, err);
      throw err;
    } finally {
      span.end();
    }
  });
}

function ioAttributes(repository: string, key: string, more: Attributes): Attributes {
  return { "iotvault.repository": repository, "iotvault.key": key, ...more };
}

function toSafeNumber(value: bigint, field: string): number {
  if (value < 0n || value > BigInt(Number.MAX_SAFE_INTEGER)) {
    throw new IotvaultError("INVALID_ARGUMENT", `${field} ${value} is out of range`, {
      hint: `${field} must be between 0 and ${Number.MAX_SAFE_INTEGER}`,
    });
  }
  return Number(value);
}

function toProtoInfo(info: ObjectInfo): ProtoObjectInfo {
  return { key: info.key, size: BigInt(info.size), modifiedAt: info.modifiedAt };
}

/**
 * Targets without credentials, primary first, with their status. A repository with one target
 * is not watched (no journal, nothing to heal): its target is reported available.
 */
function toRepositoryInfo(repository: Repository): RepositoryInfo {
  const targets = [repository.url, ...repository.replicas].map((url) => redactUrl(url));
  const status: TargetStatus[] = repository.replication
    ? repository.replication.targetStatus().map((t) => ({
        url: t.url,
        available: t.available,
        pendingCopies: BigInt(t.pendingCopies),
        lastError: t.lastError,
      }))
    : [{ url: targets[0]!, available: true, pendingCopies: 0n, lastError: "" }];
  return { name: repository.name, targets, targetStatus: status };
}

import * as http from "node:http";
import * as https from "node:https";
import { IotvaultError } from "@iotvault/errors";
import type { Client, ClientOptions } from "minio";
import { checkKey, checkPrefix, resolveRange } from "./keys.js";
import {
  KEY_PATTERN,
  type ByteRange,
  type GetStreamOptions,
  type ObjectInfo,
  type PutOptions,
  type PutStreamOptions,
  type PutStreamResult,
  type StreamingObjectStore,
} from "./object-store.js";
import { fixedSizeParts } from "./parts.js";
import { DEFAULT_RETRY_POLICY, withRetry, type RetryPolicy } from "./retry.js";
import { classifyS3Error, s3CodeOf } from "./s3-errors.js";
import { createS3Transport, inRequestContext, type S3RequestContext } from "./s3-transport.js";
import { abortable, cancelledError, ContentCheck, DEFAULT_CHUNK_BYTES } from "./streams.js";

/** S3's smallest part (all parts of a multipart upload but the last must be at least this big). */
export const S3_MIN_PART_BYTES = 5 * 1024 * 1024;
/** Default part size: objects up to this size are one PUT, larger ones a multipart upload. */
export const S3_DEFAULT_PART_BYTES = 8 * 1024 * 1024;
/** S3 allows at most 10,000 parts per upload. */
export const S3_MAX_PARTS = 10_000;

export interface S3StoreOptions {
  /** "host:port" (or "host": port 443 with TLS, 80 without). */
  endpoint: string;
  bucket: string;
  /** Key prefix inside the bucket ("" or segments like "site-a/main", no leading or trailing "/"). */
  prefix?: string | undefined;
  /** HTTPS (default true). */
  tls?: boolean | undefined;
  /** Region used in the SigV4 signature (default "us-east-1"). */
  region?: string | undefined;
  accessKey: string;
  secretKey: string;
  /** Part size of multipart uploads (default 8 MiB, at least 5 MiB). */
  partSizeBytes?: number | undefined;
  /** Parts of one upload sent at the same time (default 2); memory is about (this + 1) parts. */
  partConcurrency?: number | undefined;
  /** A request that makes no progress for this long is abandoned and retried (default 30 s). */
  requestTimeoutMs?: number | undefined;
  /** Retries of failed requests (5xx, timeouts, network errors); default DEFAULT_RETRY_POLICY. */
  retry?: Partial<RetryPolicy> | undefined;
  /** Objects per ListObjectsV2 page (default 1000, the S3 maximum). */
  listPageSize?: number | undefined;
}

/** An upload that was started but neither completed nor aborted (a writer that died). */
export interface IncompleteUpload {
  key: string;
  uploadId: string;
  initiated: Date;
}

interface Endpoint {
  host: string;
  port: number;
}

/**
 * An ObjectStore on an S3-compatible server (MinIO, Ceph radosgw, AWS S3) through the `minio`
 * client: SigV4, path-style requests, one PUT per object up to the part size and a multipart
 * upload above it, retries with backoff on 5xx answers, timeouts and network errors.
 *
 * - **Atomic visibility** comes from S3: an object appears when its PUT or its
 *   CompleteMultipartUpload succeeds. A failed or cancelled multipart upload is aborted, so
 *   its parts disappear too (`incompleteUploads()` / `abortIncompleteUploads()` find the ones
 *   of a writer that died).
 * - **ifAbsent**: a single PUT carries `If-None-Match: *`, which the server checks atomically
 *   (412 = the object exists). CompleteMultipartUpload ignores that header on Ceph 16, so a
 *   multipart `ifAbsent` put checks with HEAD just before completing: two such writers racing
 *   within that window may both write (the later one wins). Repository objects written with
 *   ifAbsent (config, keys, locks) are small, so they take the atomic path.
 * - **Errors**: wrong credentials are PERMISSION_DENIED naming the endpoint and bucket, a
 *   missing bucket FAILED_PRECONDITION, an unreachable endpoint UNAVAILABLE (retryable).
 *
 * ```ts
 * const store = new S3Store({ endpoint: "minio:9000", tls: false, bucket: "backups", prefix: "site-a",
 *   accessKey, secretKey });
 * await store.put("config", bytes, { ifAbsent: true });
 * ```
 */
export class S3Store implements StreamingObjectStore {
  readonly location: string;
  readonly bucket: string;
  readonly prefix: string;
  private readonly endpoint: Endpoint;
  // JS-private (#): the credentials in them never show in JSON.stringify or util.inspect.
  readonly #clientOptions: ClientOptions;
  #loadedClient: Client | undefined;
  #loadingClient: Promise<void> | undefined;
  private readonly agent: http.Agent;
  private readonly partBytes: number;
  private readonly partConcurrency: number;
  private readonly retry: RetryPolicy;
  private readonly listPageSize: number;
  private bucketChecked: Promise<void> | undefined;

  constructor(options: S3StoreOptions) {
    const tls = options.tls ?? true;
    this.endpoint = parseEndpoint(options.endpoint, tls);
    this.bucket = options.bucket;
    this.prefix = checkStorePrefix(options.prefix ?? "");
    const region = options.region ?? "us-east-1";
    const endpointText = `${this.endpoint.host}:${this.endpoint.port}`;
    this.location =
      `s3://${this.bucket}${this.prefix ? `/${this.prefix}` : ""}` +
      `?endpoint=${endpointText}&region=${region}&tls=${String(tls)}`;
    this.partBytes = options.partSizeBytes ?? S3_DEFAULT_PART_BYTES;
    if (!Number.isSafeInteger(this.partBytes) || this.partBytes < S3_MIN_PART_BYTES) {
      throw new IotvaultError("INVALID_ARGUMENT", `S3 part size ${this.partBytes} is below the minimum of 5 MiB`, {
        hint: "use a part size of at least 5 MiB (S3 refuses smaller parts)",
      });
    }
    this.partConcurrency = Math.max(1, options.partConcurrency ?? 2);
    this.retry = { ...DEFAULT_RETRY_POLICY, ...options.retry };
    this.listPageSize = Math.min(1000, Math.max(1, options.listPageSize ?? 1000));
    this.agent = tls ? new https.Agent({ keepAlive: true }) : new http.Agent({ keepAlive: true });
    this.#clientOptions = {
      endPoint: this.endpoint.host,
      port: this.endpoint.port,
      useSSL: tls,
      accessKey: options.accessKey,
      secretKey: options.secretKey,
      region,
      pathStyle: true,
      transport: createS3Transport({ tls, timeoutMs: options.requestTimeoutMs ?? 30_000 }),
      transportAgent: this.agent,
      // Our own retry (withRetry) classifies errors first; minio's would hide the S3 error.
      retryOptions: { disableRetry: true },
    };
  }

  async put(key: string, data: Uint8Array, options: PutOptions = {}): Promise<{ existed: boolean }> {
    const { existed } = await this.putStream(key, once(data), { ...options, expectedSize: data.length });
    return { existed };
  }

  async putStream(
    key: string,
    chunks: AsyncIterable<Uint8Array>,
    options: PutStreamOptions = {},
  ): Promise<PutStreamResult> {
    checkKey(key);
    const { signal } = options;
    const what = `put of ${key} to ${this.location}`;
    if (signal?.aborted) throw cancelledError(what, signal);
    const check = new ContentCheck(key, options);
    if (options.ifAbsent) {
      const existing = await this.stat(key);
      if (existing) return { existed: true, size: existing.size };
    }
    const parts = fixedSizeParts(checked(abortable(chunks, signal, what), check), this.partBytes);
    const iterator = parts[Symbol.asyncIterator]();
    const first = await iterator.next();
    const firstPart = first.done ? Buffer.alloc(0) : first.value;
    const single =
      firstPart.length < this.partBytes ||
      (options.expectedSize !== undefined && options.expectedSize <= this.partBytes);
    if (!single) return this.putMultipart(key, firstPart, iterator, check, options);
    if (!first.done) await iterator.next(); // the source ends here (ContentCheck refuses more bytes)
    const { size, sha256 } = check.finish();
    const existed = await this.putSingle(key, firstPart, options);
    return existed ? { existed, size: (await this.stat(key))?.size ?? 0 } : { existed, size, sha256 };
  }

  async get(key: string, range?: ByteRange, signal?: AbortSignal): Promise<Buffer> {
    checkKey(key);
    const header = rangeHeader(range);
    if (header === EMPTY_RANGE) return this.emptyRead(key);
    return this.attempt(`read of ${key} from ${this.location}`, key, signal, async () => {
      const res = await this.getResponse(key, header);
      return res ? readBody(res) : Buffer.alloc(0);
    });
  }

  async *getStream(key: string, range?: ByteRange, options: GetStreamOptions = {}): AsyncGenerator<Buffer> {
    checkKey(key);
    const { signal } = options;
    const what = `read of ${key} from ${this.location}`;
    const chunkBytes = Math.max(1, options.chunkBytes ?? DEFAULT_CHUNK_BYTES);
    const header = rangeHeader(range);
    if (header === EMPTY_RANGE) {
      await this.emptyRead(key);
      return;
    }
    // The request carries the signal (see attempt), so an abort also ends the body.
    const res = await this.attempt(what, key, signal, () => this.getResponse(key, header));
    if (!res) return;
    try {
      for await (const chunk of res as AsyncIterable<Buffer>) {
        for (let at = 0; at < chunk.length; at += chunkBytes) yield chunk.subarray(at, at + chunkBytes);
      }
    } catch (err) {
      throw classifyS3Error(err, { ...this.errorContext(what, key), signal });
    } finally {
      res.destroy();
    }
  }

  async stat(key: string): Promise<ObjectInfo | undefined> {
    checkKey(key);
    await this.checkBucket();
    return this.attempt(`stat of ${key} in ${this.location}`, key, undefined, async () => {
      try {
        const info = await this.client.statObject(this.bucket, this.objectName(key));
        return { key, size: info.size, modifiedAt: info.lastModified };
      } catch (err) {
        if (s3CodeOf(err) === "NotFound" || s3CodeOf(err) === "NoSuchKey") return undefined;
        throw err;
      }
    });
  }

  async *list(prefix: string): AsyncIterable<ObjectInfo> {
    checkPrefix(prefix);
    const base = this.prefix ? `${this.prefix}/` : "";
    let token = "";
    for (;;) {
      const page = await this.attempt(`list of ${prefix || "/"} in ${this.location}`, undefined, undefined, () =>
        this.client.listObjectsV2Query(this.bucket, base + prefix, token, "", this.listPageSize, ""),
      );
      for (const item of page.objects) {
        if (item.name === undefined || !item.name.startsWith(base)) continue;
        const key = item.name.slice(base.length);
        if (KEY_PATTERN.test(key)) yield { key, size: Number(item.size), modifiedAt: item.lastModified };
      }
      const truncated = String(page.isTruncated) === "true";
      if (!truncated || !page.nextContinuationToken) return;
      token = page.nextContinuationToken;
    }
  }

  async delete(key: string): Promise<boolean> {
    checkKey(key);
    if (!(await this.stat(key))) return false;
    await this.attempt(`delete of ${key} from ${this.location}`, key, undefined, () =>
      this.client.removeObject(this.bucket, this.objectName(key)),
    );
    return true;
  }

  /**
   * Checks once that the bucket exists and the credentials may use it (HEAD bucket):
   * FAILED_PRECONDITION when it is missing, PERMISSION_DENIED when access is refused. A HEAD
   * of a missing object cannot tell "no object" from "no bucket", so stat() calls this first;
   * a success is remembered.
   */
  async checkBucket(): Promise<void> {
    this.bucketChecked ??= this.headBucket().catch((err: unknown) => {
      this.bucketChecked = undefined;
      throw err;
    });
    return this.bucketChecked;
  }

  /** Multipart uploads under this store's prefix that were neither completed nor aborted. */
  async incompleteUploads(): Promise<IncompleteUpload[]> {
    const base = this.prefix ? `${this.prefix}/` : "";
    const uploads: IncompleteUpload[] = [];
    let keyMarker = "";
    let uploadIdMarker = "";
    for (;;) {
      const page = await this.attempt(`list of incomplete uploads in ${this.location}`, undefined, undefined, () =>
        this.client.listIncompleteUploadsQuery(this.bucket, base, keyMarker, uploadIdMarker, ""),
      );
      for (const upload of page.uploads) {
        if (upload.key.startsWith(base)) {
          uploads.push({ key: upload.key.slice(base.length), uploadId: upload.uploadId, initiated: upload.initiated });
        }
      }
      if (String(page.isTruncated) !== "true" || !page.nextKeyMarker) return uploads;
      keyMarker = page.nextKeyMarker;
      uploadIdMarker = page.nextUploadIdMarker;
    }
  }

  /**
   * Aborts the incomplete multipart uploads older than `olderThanMs` (default one hour: younger
   * ones may belong to uploads still running), freeing the space of their parts.
   */
  async abortIncompleteUploads(options: { olderThanMs?: number; signal?: AbortSignal } = {}): Promise<{
    aborted: number;
  }> {
    const cutoff = Date.now() - (options.olderThanMs ?? 3600_000);
    let aborted = 0;
    for (const upload of await this.incompleteUploads()) {
      if (options.signal?.aborted) throw cancelledError(`clean-up of ${this.location}`, options.signal);
      if (upload.initiated.getTime() > cutoff) continue;
      await this.abortUpload(upload.key, upload.uploadId);
      aborted++;
    }
    return { aborted };
  }

  /** Closes idle keep-alive connections. The store stays usable (new connections are opened). */
  async close(): Promise<void> {
    this.agent.destroy();
  }

  private objectName(key: string): string {
    return this.prefix ? `${this.prefix}/${key}` : key;
  }

  private errorContext(what: string, key: string | undefined) {
    return { what, key, endpoint: `${this.endpoint.host}:${this.endpoint.port}`, bucket: this.bucket };
  }

  /** The minio client, loaded on first use (importing minio costs about 140 ms). */
  private get client(): Client {
    if (!this.#loadedClient) throw new Error("BUG: the minio client is used before attempt() loaded it");
    return this.#loadedClient;
  }

  private async loadClient(): Promise<void> {
    this.#loadingClient ??= import("minio").then(({ Client }) => {
      this.#loadedClient = new Client(this.#clientOptions);
    });
    await this.#loadingClient;
  }

  /** One store operation: retried on retryable errors, each attempt's error classified. */
  private attempt<T>(
    what: string,
    key: string | undefined,
    signal: AbortSignal | undefined,
    operation: () => Promise<T>,
  ): Promise<T> {
    return withRetry(
      async () => {
        const context: S3RequestContext = { signal };
        try {
          await this.loadClient();
          return await inRequestContext(context, operation);
        } catch (err) {
          throw classifyS3Error(err, { ...this.errorContext(what, key), status: context.status, signal });
        }
      },
      { ...this.retry, signal, what },
    );
  }

  private async headBucket(): Promise<void> {
    await this.attempt(`access check of ${this.location}`, undefined, undefined, async () => {
      try {
        await this.client.makeRequestAsyncOmit({ method: "HEAD", bucketName: this.bucket }, "", [200]);
      } catch (err) {
        if (s3CodeOf(err) === "NotFound") throw Object.assign(new Error("no such bucket"), { code: "NoSuchBucket" });
        throw err;
      }
    });
  }

  /** GET of an object or range; undefined when the range starts at or past the end. */
  private async getResponse(key: string, range: string | undefined): Promise<http.IncomingMessage | undefined> {
    try {
      return await this.client.makeRequestAsync(
        { method: "GET", bucketName: this.bucket, objectName: this.objectName(key), headers: range ? { range } : {} },
        "",
        [200, 206],
      );
    } catch (err) {
      if (s3CodeOf(err) === "InvalidRange") return undefined; // the object exists but is shorter
      throw err;
    }
  }

  /** A zero-length read: NOT_FOUND for a missing object, else nothing. */
  private async emptyRead(key: string): Promise<Buffer> {
    if (!(await this.stat(key))) {
      throw new IotvaultError("NOT_FOUND", `object ${key} not found in ${this.location}`, {
        details: { key, location: this.location },
      });
    }
    return Buffer.alloc(0);
  }

  /** One PUT; with ifAbsent, `If-None-Match: *` makes the server refuse to replace (returns true). */
  private async putSingle(key: string, data: Buffer, options: PutOptions): Promise<boolean> {
    const headers: Record<string, string> = { "content-type": "application/octet-stream" };
    if (options.ifAbsent) headers["if-none-match"] = "*";
    return this.attempt(`put of ${key} to ${this.location}`, key, options.signal, async () => {
      try {
        const objectName = this.objectName(key);
        await this.client.makeRequestAsyncOmit({ method: "PUT", bucketName: this.bucket, objectName, headers }, data);
        return false;
      } catch (err) {
        if (options.ifAbsent && s3CodeOf(err) === "PreconditionFailed") return true;
        throw err;
      }
    });
  }

  private async putMultipart(
    key: string,
    firstPart: Buffer,
    rest: AsyncIterator<Buffer>,
    check: ContentCheck,
    options: PutStreamOptions,
  ): Promise<PutStreamResult> {
    // The requests of a multipart upload do not take the signal: a part cut off mid-request
    // may still be stored by the server after our abort, which brings the upload back as a
    // "ghost" (seen with Ceph 16). Cancellation stops reading the source instead; the parts
    // in flight finish (at most partConcurrency of them), then the upload is aborted.
    const objectName = this.objectName(key);
    const uploadId = await this.attempt(
      `start of the multipart upload of ${key} to ${this.location}`,
      key,
      undefined,
      () =>
        this.client.initiateNewMultipartUpload(this.bucket, objectName, { "content-type": "application/octet-stream" }),
    );
    try {
      if (options.signal?.aborted) throw cancelledError(`put of ${key} to ${this.location}`, options.signal);
      const etags = await this.uploadParts(key, uploadId, firstPart, rest);
      const { size, sha256 } = check.finish();
      if (options.ifAbsent) {
        const existing = await this.stat(key);
        if (existing) {
          await this.abortUpload(key, uploadId);
          return { existed: true, size: existing.size };
        }
      }
      await this.completeUpload(key, uploadId, etags, size);
      return { existed: false, size, sha256 };
    } catch (err) {
      await this.abortUpload(key, uploadId);
      throw err;
    } finally {
      await rest.return?.().catch(() => undefined);
    }
  }

  /** Uploads the parts, at most `partConcurrency` at a time; resolves with their ETags in order. */
  private async uploadParts(
    key: string,
    uploadId: string,
    firstPart: Buffer,
    rest: AsyncIterator<Buffer>,
  ): Promise<{ part: number; etag: string }[]> {
    const etags: { part: number; etag: string }[] = [];
    const inFlight = new Set<Promise<void>>();
    const state: { failure?: { error: unknown } } = {};
    const start = (part: number, data: Buffer) => {
      const upload = this.uploadPart(key, uploadId, part, data).then(
        (etag) => void etags.push({ part, etag }),
        (error: unknown) => void (state.failure ??= { error }),
      );
      const tracked = upload.finally(() => inFlight.delete(tracked));
      inFlight.add(tracked);
    };
    start(1, firstPart);
    for (let part = 2; ; part++) {
      if (inFlight.size >= this.partConcurrency) await Promise.race(inFlight);
      if (state.failure) break;
      const next = await rest.next().catch(async (error: unknown) => {
        await Promise.all(inFlight); // no part upload outlives the put
        throw error;
      });
      if (next.done) break;
      if (part > S3_MAX_PARTS) {
        state.failure = { error: this.tooManyParts(key) };
        break;
      }
      start(part, next.value);
    }
    await Promise.all(inFlight);
    if (state.failure) throw state.failure.error;
    return etags.sort((a, b) => a.part - b.part);
  }

  private uploadPart(key: string, uploadId: string, part: number, data: Buffer): Promise<string> {
    const what = `upload of part ${part} of ${key} to ${this.location}`;
    return this.attempt(what, key, undefined, async () => {
      const objectName = this.objectName(key);
      const config = { bucketName: this.bucket, objectName, uploadID: uploadId, partNumber: part, headers: {} };
      return (await this.client.uploadPart(config, data)).etag;
    });
  }

  private async completeUpload(
    key: string,
    uploadId: string,
    etags: { part: number; etag: string }[],
    size: number,
  ): Promise<void> {
    let attempts = 0;
    await this.attempt(`completion of the upload of ${key} to ${this.location}`, key, undefined, async () => {
      attempts++;
      try {
        await this.client.completeMultipartUpload(this.bucket, this.objectName(key), uploadId, etags);
      } catch (err) {
        // A retry after a lost answer: the first attempt may have completed the upload.
        if (attempts > 1 && s3CodeOf(err) === "NoSuchUpload") {
          const info = await this.client.statObject(this.bucket, this.objectName(key)).catch(() => undefined);
          if (info?.size === size) return;
        }
        throw err;
      }
    });
  }

  /** Best effort: an upload that cannot be aborted now is found later by abortIncompleteUploads(). */
  private async abortUpload(key: string, uploadId: string): Promise<void> {
    await this.attempt(`abort of the upload of ${key} to ${this.location}`, key, undefined, async () => {
      try {
        await this.client.abortMultipartUpload(this.bucket, this.objectName(key), uploadId);
      } catch (err) {
        if (s3CodeOf(err) !== "NoSuchUpload") throw err;
      }
    }).catch(() => undefined);
  }

  private tooManyParts(key: string): IotvaultError {
    return new IotvaultError(
      "RESOURCE_EXHAUSTED",
      `object ${key} needs more than ${S3_MAX_PARTS} parts of ${this.partBytes} bytes; nothing was written`,
      { retryable: false, hint: "raise the S3 part size or split the data into smaller objects" },
    );
  }
}

function parseEndpoint(endpoint: string, tls: boolean): Endpoint {
  const match = /^([A-Za-z0-9.-]+|\[[0-9A-Fa-f:]+\])(?::(\d{1,5}))?$/.exec(endpoint);
  const port = match?.[2] === undefined ? (tls ? 443 : 80) : Number(match[2]);
  if (!match?.[1] || port < 1 || port > 65535) {
    throw new IotvaultError("INVALID_ARGUMENT", `invalid S3 endpoint ${JSON.stringify(endpoint)}`, {
      hint: "use host:port, e.g. minio.example:9000",
    });
  }
  return { host: match[1], port };
}

function checkStorePrefix(prefix: string): string {
  if (prefix !== "" && !KEY_PATTERN.test(prefix)) {
    throw new IotvaultError("INVALID_ARGUMENT", `invalid S3 key prefix ${JSON.stringify(prefix)}`, {
      hint: "use slash-separated segments of letters, digits, '.', '_' and '-', without leading or trailing '/'",
    });
  }
  return prefix;
}

const EMPTY_RANGE = Symbol("empty range");

/** The HTTP Range header of a range; undefined for the whole object, EMPTY_RANGE for length 0. */
function rangeHeader(range: ByteRange | undefined): string | typeof EMPTY_RANGE | undefined {
  resolveRange(Number.MAX_SAFE_INTEGER, range); // validates offset and length (INVALID_ARGUMENT)
  if (!range) return undefined;
  if (range.length === 0) return EMPTY_RANGE;
  if (range.length === undefined) return range.offset === 0 ? undefined : `bytes=${range.offset}-`;
  return `bytes=${range.offset}-${range.offset + range.length - 1}`;
}

async function readBody(res: http.IncomingMessage): Promise<Buffer> {
  const chunks: Buffer[] = [];
  for await (const chunk of res as AsyncIterable<Buffer>) chunks.push(chunk);
  return Buffer.concat(chunks);
}

async function* checked(source: AsyncIterable<Uint8Array>, check: ContentCheck): AsyncGenerator<Uint8Array> {
  for await (const chunk of source) {
    check.update(chunk);
    yield chunk;
  }
}

async function* once(data: Uint8Array): AsyncGenerator<Uint8Array> {
  yield data;
}

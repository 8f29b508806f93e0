import assert from "node:assert/strict";
import { createHash, randomBytes } from "node:crypto";
import { Writable } from "node:stream";
import { after, test } from "node:test";
import { setTimeout as sleep } from "node:timers/promises";
import { IotvaultError, isCode } from "@iotvault/errors";
import {
  StorageGatewayServiceClient,
  StorageGatewayServiceService,
  type PutObjectHeader,
  type PutObjectRequest,
  type StorageGatewayServiceServer,
} from "@iotvault/proto";
import { MemoryStore } from "@iotvault/storage";
import { runObjectStoreConformance } from "@iotvault/storage/conformance";
import { createLogger } from "@iotvault/telemetry";
import {
  callClientStream,
  clientStream,
  createClient,
  GatewayObjectStore,
  serverStream,
  startGrpcServer,
  unary,
  type GrpcServerHandle,
} from "./index.js";

const MiB = 1024 * 1024;

/** A tiny StorageGatewayService over MemoryStores (the real gateway lives in its own service). */
class TestGateway {
  readonly repositories = new Map<string, MemoryStore>();
  readonly chunkSizes: number[] = [];
  readonly headers: PutObjectHeader[] = [];
  /** What PutObject reports as missing targets, per repository (a replicated repository degraded). */
  readonly missingTargets = new Map<string, string[]>();
  runningPuts = 0;

  private repo(name: string): MemoryStore {
    const store = this.repositories.get(name);
    if (!store) {
      throw new IotvaultError("NOT_FOUND", `repository ${name} is not registered on this gateway`, {
        hint: "create it with `iotvault repo init <name> --url <url>`",
      });
    }
    return store;
  }

  private async receive(requests: AsyncIterable<PutObjectRequest>): Promise<{ header: PutObjectHeader; data: Buffer }> {
    let header: PutObjectHeader | undefined;
    const chunks: Buffer[] = [];
    for await (const request of requests) {
      const part = request.part;
      if (!header) {
        if (part?.$case !== "header") throw new IotvaultError("INVALID_ARGUMENT", "a put must start with its header");
        header = part.value;
        this.headers.push(header);
      } else if (part?.$case === "data") {
        this.chunkSizes.push(part.value.length);
        chunks.push(part.value);
      } else {
        throw new IotvaultError("INVALID_ARGUMENT", "a put has exactly one header, first");
      }
    }
    if (!header) throw new IotvaultError("INVALID_ARGUMENT", "empty put stream");
    return { header, data: Buffer.concat(chunks) };
  }

  implementation(): StorageGatewayServiceServer {
    return {
      putObject: clientStream(async (requests) => {
        this.runningPuts += 1;
        try {
          const { header, data } = await this.receive(requests);
          if (BigInt(data.length) !== header.size) {
            throw new IotvaultError("INVALID_ARGUMENT", `got ${data.length} bytes, ${header.size} announced`);
          }
          if (header.sha256 && createHash("sha256").update(data).digest("hex") !== header.sha256) {
            throw new IotvaultError("DATA_CORRUPT", `object ${header.key}: sha256 mismatch`);
          }
          const { existed } = await this.repo(header.repository).put(header.key, data, { ifAbsent: header.ifAbsent });
          return {
            size: BigInt(data.length),
            existed,
            missingTargets: this.missingTargets.get(header.repository) ?? [],
          };
        } finally {
          this.runningPuts -= 1;
        }
      }),
      getObject: serverStream(async function* (this: void, request) {
        const data = await gateway.repo(request.repository).get(request.key, {
          offset: Number(request.offset),
          length: request.length === 0n ? undefined : Number(request.length),
        });
        for (let offset = 0; offset < data.length; offset += MiB) yield { data: data.subarray(offset, offset + MiB) };
      }),
      statObject: unary(async (request) => {
        const info = await this.repo(request.repository).stat(request.key);
        if (!info) throw new IotvaultError("NOT_FOUND", `object ${request.key} not found`);
        return { info: { key: info.key, size: BigInt(info.size), modifiedAt: info.modifiedAt } };
      }),
      listObjects: serverStream(async function* (this: void, request) {
        let batch = [];
        for await (const info of gateway.repo(request.repository).list(request.prefix)) {
          batch.push({ key: info.key, size: BigInt(info.size), modifiedAt: info.modifiedAt });
          if (batch.length === 3) {
            yield { objects: batch };
            batch = [];
          }
        }
        if (batch.length > 0) yield { objects: batch };
      }),
      deleteObject: unary(async (request) => ({ deleted: await this.repo(request.repository).delete(request.key) })),
      createRepository: unary(async () => {
        throw new IotvaultError("UNIMPLEMENTED", "not in the test gateway");
      }),
      listRepositories: unary(async () => ({ repositories: [] })),
    };
  }
}

const gateway = new TestGateway();
let server: GrpcServerHandle | undefined;
let client: StorageGatewayServiceClient | undefined;
let repoCount = 0;

async function connect(): Promise<{ handle: GrpcServerHandle; client: StorageGatewayServiceClient }> {
  server ??= await startGrpcServer({
    listen: "127.0.0.1:0",
    serviceName: "storage-gateway",
    logger: createLogger({ service: "storage-gateway", stream: new Writable({ write: (_c, _e, done) => done() }) }),
    services: [
      {
        name: "iotvault.v1.StorageGatewayService",
        definition: StorageGatewayServiceService,
        implementation: gateway.implementation(),
      },
    ],
  });
  client ??= createClient(StorageGatewayServiceClient, server.address);
  return { handle: server, client };
}

async function freshStore(): Promise<GatewayObjectStore> {
  const { handle, client: c } = await connect();
  repoCount += 1;
  const name = `repo-${repoCount}`;
  gateway.repositories.set(name, new MemoryStore());
  return new GatewayObjectStore(c, name, { address: handle.address });
}

after(async () => {
  client?.close();
  await server?.shutdown(500);
});

async function waitForPuts(): Promise<void> {
  for (let i = 0; i < 200 && gateway.runningPuts > 0; i++) await sleep(10);
}

runObjectStoreConformance("GatewayObjectStore", async () => {
  const store = await freshStore();
  return {
    store,
    cleanup: async () => {
      gateway.repositories.delete(store.repository);
    },
    // A writer cancelled half-way through its stream (the executor died, or its signal fired).
    interruptPut: async (key: string, data: Uint8Array) => {
      const { client: c } = await connect();
      const controller = new AbortController();
      async function* messages(): AsyncGenerator<PutObjectRequest> {
        yield {
          part: {
            $case: "header",
            value: { repository: store.repository, key, size: BigInt(data.length), sha256: "", ifAbsent: false },
          },
        };
        yield { part: { $case: "data", value: Buffer.from(data.subarray(0, data.length / 2)) } };
        await sleep(30);
        controller.abort();
      }
      await callClientStream(c, "putObject", messages(), { signal: controller.signal }).catch((err: unknown) => {
        assert.ok(isCode(err, "CANCELLED"), String(err));
      });
      await waitForPuts();
    },
  };
});

void test(
  "put sends one header with size and sha256, then data messages of at most 1 MiB",
  { timeout: 20_000 },
  async () => {
    const store = await freshStore();
    const data = randomBytes(3.5 * MiB);
    gateway.chunkSizes.length = 0;
    gateway.headers.length = 0;
    await store.put("data/ab/pack", data);
    assert.deepEqual(gateway.chunkSizes, [MiB, MiB, MiB, MiB / 2]);
    assert.equal(gateway.headers.length, 1);
    assert.equal(gateway.headers[0]?.size, BigInt(data.length));
    assert.equal(gateway.headers[0]?.sha256, createHash("sha256").update(data).digest("hex"));
    assert.equal(gateway.headers[0]?.ifAbsent, false);
    assert.deepEqual(
      await store.get("data/ab/pack", { offset: MiB - 10, length: 20 }),
      data.subarray(MiB - 10, MiB + 10),
    );
    assert.match(store.location, /^gateway:\/\/127\.0\.0\.1:\d+\/repo-\d+$/);
  },
);

void test("errors come back as IotvaultErrors, with the gateway's hint", { timeout: 20_000 }, async () => {
  const { handle, client: c } = await connect();
  const missing = new GatewayObjectStore(c, "no-such-repo", { address: handle.address });
  await assert.rejects(missing.put("config", Buffer.from("x")), (err: unknown) => {
    assert.ok(isCode(err, "NOT_FOUND"));
    assert.equal(err.message, "repository no-such-repo is not registered on this gateway");
    assert.equal(err.hint, "create it with `iotvault repo init <name> --url <url>`");
    return true;
  });
  await assert.rejects(
    async () => {
      for await (const _ of missing.list("")) assert.fail("nothing to list");
    },
    (err: unknown) => isCode(err, "NOT_FOUND"),
  );
  const store = await freshStore();
  await assert.rejects(store.get("x", { offset: -1 }), (err: unknown) => isCode(err, "INVALID_ARGUMENT"));
  const aborted = AbortSignal.abort();
  await assert.rejects(store.put("x", Buffer.from("x"), { signal: aborted }), (err: unknown) =>
    isCode(err, "CANCELLED"),
  );
  await assert.rejects(store.get("x", undefined, aborted), (err: unknown) => isCode(err, "CANCELLED"));
  assert.throws(() => new GatewayObjectStore(c, "", { address: handle.address }), /needs a repository name/);
});

void test("a gateway that is down is UNAVAILABLE with a hint to start it", { timeout: 20_000 }, async () => {
  const down = await startGrpcServer({ listen: "127.0.0.1:0", serviceName: "storage-gateway", services: [] });
  const address = down.address;
  await down.shutdown(100);
  const c = createClient(StorageGatewayServiceClient, address);
  const store = new GatewayObjectStore(c, "main", { address });
  try {
    await assert.rejects(store.stat("config"), (err: unknown) => {
      assert.ok(isCode(err, "UNAVAILABLE"));
      assert.equal(err.message, `cannot reach the storage-gateway service at ${address}`);
      assert.equal(err.hint, "start it with `iotvault stack up`, or check `iotvault stack status`");
      assert.equal(err.retryable, true);
      return true;
    });
    await assert.rejects(store.put("config", Buffer.from("x")), (err: unknown) => isCode(err, "UNAVAILABLE"));
  } finally {
    c.close();
  }
});

void test("missingTargets() is the union of the targets the gateway reported missing, per store", async () => {
  const store = await freshStore();
  const down = ["s3://backups/main?endpoint=minio:9000&region=us-east-1&tls=false", "file:///srv/replica"];
  assert.deepEqual(store.missingTargets(), []);
  await store.put("config", Buffer.from("all targets up"));
  assert.deepEqual(store.missingTargets(), []);
  gateway.missingTargets.set(store.repository, [down[1]!]);
  await store.put("data/ab/p1", randomBytes(10));
  gateway.missingTargets.set(store.repository, [down[0]!, down[1]!]);
  await store.put("data/ab/p2", randomBytes(10));
  gateway.missingTargets.delete(store.repository);
  await store.put("data/ab/p3", randomBytes(10));
  assert.deepEqual(store.missingTargets(), [...down].sort(), "kept after later complete puts, each once");
  const other = new GatewayObjectStore(client!, store.repository, { address: server!.address });
  assert.deepEqual(other.missingTargets(), [], "each store (each backup run) starts clean");
});

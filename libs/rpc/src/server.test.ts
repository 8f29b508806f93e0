import assert from "node:assert/strict";
import { createServer } from "node:net";
import { Writable } from "node:stream";
import { after, before, test } from "node:test";
import { setTimeout as sleep } from "node:timers/promises";
import * as grpc from "@grpc/grpc-js";
import { IotvaultError, isCode } from "@iotvault/errors";
import { createLogger } from "@iotvault/telemetry";
import { DEFAULT_FLOW_CONTROL_WINDOW_BYTES } from "./client.js";
import { EchoClient, EchoService, ECHO_SERVICE_NAME, type EchoReply, type EchoRequest } from "./echo.fixture.js";
import {
  bidiStream,
  callClientStream,
  callServerStream,
  callUnary,
  checkHealth,
  clientStream,
  createClient,
  healthName,
  serverStream,
  startGrpcServer,
  unary,
  type GrpcServerHandle,
} from "./index.js";

/** What the server side saw, for assertions. */
const seen = { produced: 0, streamStopped: false, unaryAborted: false };
let serverLog = "";

function fail(request: EchoRequest): void {
  switch (request.fail) {
    case "known":
      throw new IotvaultError("FAILED_PRECONDITION", `repository ${request.text} is locked — by müller`, {
        hint: "wait for the backup to finish — or run `iotvault unlock` (100% safe when none runs)",
        retryable: true,
        details: { lock: "locks/1" },
      });
    case "unknown":
      throw new TypeError("connect to postgres://app:hunter2@db failed: secret sauce");
    case "status":
      throw Object.assign(new Error("no such thing"), { code: grpc.status.NOT_FOUND, details: "no such thing" });
    case "string":
      // eslint-disable-next-line @typescript-eslint/only-throw-error -- a handler that throws a non-Error
      throw "plain string";
    default:
  }
}

const implementation = {
  unary: unary<EchoRequest, EchoReply>(async (request, _call, signal) => {
    fail(request);
    if (request.delayMs) {
      signal.addEventListener("abort", () => (seen.unaryAborted = true));
      await sleep(request.delayMs, undefined, { signal }).catch(() => undefined);
    }
    return { text: request.text.toUpperCase() };
  }),
  serverStream: serverStream<EchoRequest, EchoReply>(async function* (request) {
    seen.produced = 0;
    seen.streamStopped = false;
    const payload = "x".repeat(request.size ?? 0);
    try {
      for (let index = 0; index < (request.count ?? 1); index++) {
        if (index === 2) fail(request);
        seen.produced += 1;
        yield { text: request.text, index, payload };
      }
    } finally {
      seen.streamStopped = true;
    }
  }),
  clientStream: clientStream<EchoRequest, EchoReply>(async (requests) => {
    const texts: string[] = [];
    for await (const request of requests) {
      fail(request);
      texts.push(request.text);
    }
    return { text: texts.join(",") };
  }),
  bidi: bidiStream<EchoRequest, EchoReply>(async function* (requests) {
    for await (const request of requests) {
      fail(request);
      yield { text: `${request.text}!` };
    }
  }),
};

const LIMIT = { timeout: 20_000 };
let handle: GrpcServerHandle;
let client: EchoClient;

before(async () => {
  const stream = new Writable({
    write(chunk: Buffer, _encoding, done) {
      serverLog += chunk.toString();
      done();
    },
  });
  handle = await startGrpcServer({
    listen: "127.0.0.1:0",
    serviceName: "catalog",
    logger: createLogger({ service: "catalog", stream }),
    maxMessageBytes: 1024 * 1024,
    services: [{ name: ECHO_SERVICE_NAME, definition: EchoService, implementation }],
  });
  client = createClient(EchoClient, handle.address, { maxMessageBytes: 4 * 1024 * 1024 });
});

after(async () => {
  client.close();
  await handle.shutdown(1000);
});

async function collect<T>(source: AsyncIterable<T>): Promise<T[]> {
  const out: T[] = [];
  for await (const item of source) out.push(item);
  return out;
}

function hasCode(code: string, check?: (err: IotvaultError) => void): (err: unknown) => boolean {
  return (err) => {
    assert.ok(err instanceof IotvaultError, `expected an IotvaultError, got ${String(err)}`);
    assert.equal(err.code, code, err.message);
    check?.(err);
    return true;
  };
}

void test("every handler kind round-trips through the adapters", LIMIT, async () => {
  assert.match(handle.address, /^127\.0\.0\.1:\d+$/);
  assert.equal(handle.address, `127.0.0.1:${handle.port}`);
  assert.deepEqual(await callUnary(client, "unary", { text: "hello" }), { text: "HELLO" });
  assert.deepEqual(await callUnary(client, client.unary.bind(client), { text: "bound" }), { text: "BOUND" });
  const replies = await collect(callServerStream(client, "serverStream", { text: "s", count: 5 }));
  assert.deepEqual(
    replies.map((r) => r.index),
    [0, 1, 2, 3, 4],
  );
  assert.deepEqual(await callClientStream(client, "clientStream", [{ text: "a" }, { text: "b" }, { text: "c" }]), {
    text: "a,b,c",
  });
  async function* slowly(): AsyncGenerator<EchoRequest> {
    for (const text of ["x", "y"]) {
      await sleep(5);
      yield { text };
    }
  }
  assert.deepEqual(await callClientStream(client, "clientStream", slowly()), { text: "x,y" });

  const bidi = client.bidi();
  bidi.write({ text: "one" });
  bidi.write({ text: "two" });
  bidi.end();
  assert.deepEqual(
    (await collect<EchoReply>(bidi)).map((r) => r.text),
    ["one!", "two!"],
  );
});

void test(
  "an IotvaultError thrown on the server arrives with its code, message, hint and retryable",
  LIMIT,
  async () => {
    const check = (err: IotvaultError): void => {
      assert.equal(err.message, "repository r1 is locked — by müller");
      assert.equal(err.hint, "wait for the backup to finish — or run `iotvault unlock` (100% safe when none runs)");
      assert.equal(err.retryable, true);
      assert.deepEqual(err.details, { lock: "locks/1" });
    };
    await assert.rejects(
      callUnary(client, "unary", { text: "r1", fail: "known" }),
      hasCode("FAILED_PRECONDITION", check),
    );
    await assert.rejects(
      collect(callServerStream(client, "serverStream", { text: "r1", count: 5, fail: "known" })),
      hasCode("FAILED_PRECONDITION", check),
    );
    await assert.rejects(
      callClientStream(client, "clientStream", [{ text: "ok" }, { text: "r1", fail: "known" }]),
      hasCode("FAILED_PRECONDITION", check),
    );
    const bidi = client.bidi();
    bidi.write({ text: "r1", fail: "known" });
    bidi.end();
    await assert.rejects(collect(bidi), (err: grpc.ServiceError) => {
      assert.equal(err.code, grpc.status.FAILED_PRECONDITION);
      assert.equal(err.metadata.get("iotvault-error-code")[0], "FAILED_PRECONDITION");
      return true;
    });
  },
);

void test("a gRPC status thrown on purpose keeps its code", LIMIT, async () => {
  await assert.rejects(
    callUnary(client, "unary", { text: "x", fail: "status" }),
    hasCode("NOT_FOUND", (err) => assert.equal(err.message, "no such thing")),
  );
});

void test(
  "an unknown error becomes INTERNAL without its message; the server logs it with the stack",
  LIMIT,
  async () => {
    serverLog = "";
    for (const fail of ["unknown", "string"] as const) {
      await assert.rejects(
        callUnary(client, "unary", { text: "x", fail }),
        hasCode("INTERNAL", (err) => {
          assert.equal(err.message, "internal error in the catalog service (EchoService/Unary)");
          assert.match(err.hint ?? "", /catalog log has the details$/, "no trace id without tracing");
          assert.doesNotMatch(
            `${err.message} ${err.hint} ${JSON.stringify(err.details)}`,
            /hunter2|secret sauce|plain string/,
          );
        }),
      );
    }
    await assert.rejects(
      collect(callServerStream(client, "serverStream", { text: "x", count: 5, fail: "unknown" })),
      hasCode("INTERNAL", (err) => assert.doesNotMatch(err.message, /secret sauce/)),
    );
    const lines = serverLog
      .trim()
      .split("\n")
      .map((l) => JSON.parse(l) as Record<string, unknown>);
    assert.equal(lines.length, 3);
    assert.equal(lines[0]?.["level"], "error");
    assert.equal(lines[0]?.["msg"], "unexpected error in EchoService/Unary");
    assert.deepEqual(lines[0]?.["error"], {
      name: "TypeError",
      message: "connect to postgres://app:***@db failed: secret sauce",
    });
    assert.match(String(lines[0]?.["stack"]), /at .*server\.test\.js/);
    assert.equal(lines[2]?.["msg"], "unexpected error in EchoService/ServerStream");
    assert.doesNotMatch(serverLog, /hunter2/);
  },
);

void test("raw (callback-style) handlers are wrapped too", LIMIT, async (t) => {
  const raw = await startGrpcServer({
    listen: "127.0.0.1:0",
    serviceName: "restore",
    logger: createLogger({ service: "restore", stream: new Writable({ write: (_c, _e, done) => done() }) }),
    services: [
      {
        name: ECHO_SERVICE_NAME,
        definition: EchoService,
        implementation: {
          unary: () => {
            throw new IotvaultError("WRONG_KEY", "the key does not open repository main", {
              hint: "check the key file",
            });
          },
          serverStream: (call: grpc.ServerWritableStream<EchoRequest, EchoReply>) => {
            call.write({ text: "first" });
            call.emit("error", new IotvaultError("DATA_CORRUPT", "pack 12 failed its hash check"));
          },
          // Handlers that return a promise (raw style, on purpose): the wrapper catches the rejection.
          // eslint-disable-next-line @typescript-eslint/no-misused-promises
          clientStream: async (_call: unknown, callback: grpc.sendUnaryData<EchoReply>) => {
            await sleep(1);
            callback(new IotvaultError("ALREADY_EXISTS", "job nightly exists") as unknown as grpc.ServerErrorResponse);
          },
          // eslint-disable-next-line @typescript-eslint/no-misused-promises
          bidi: () => Promise.reject(new IotvaultError("UNIMPLEMENTED", "not yet")),
        },
      },
    ],
  });
  const rawClient = createClient(EchoClient, raw.address);
  t.after(async () => {
    rawClient.close();
    await raw.shutdown(100);
  });
  await assert.rejects(
    callUnary(rawClient, "unary", { text: "x" }),
    hasCode("WRONG_KEY", (e) => assert.equal(e.hint, "check the key file")),
  );
  const received: string[] = [];
  await assert.rejects(async () => {
    for await (const reply of callServerStream(rawClient, "serverStream", { text: "x" })) received.push(reply.text);
  }, hasCode("DATA_CORRUPT"));
  assert.deepEqual(received, ["first"]);
  await assert.rejects(callClientStream(rawClient, "clientStream", [{ text: "x" }]), hasCode("ALREADY_EXISTS"));
  const bidi = rawClient.bidi();
  bidi.end();
  await assert.rejects(collect(bidi), (err: grpc.ServiceError) => err.code === grpc.status.UNIMPLEMENTED);
});

void test(
  "health: SERVING for the server and each bound service, changeable, UNREACHABLE on a closed port",
  LIMIT,
  async () => {
    assert.equal(await checkHealth(handle.address), "SERVING");
    assert.equal(await checkHealth(handle.address, { service: ECHO_SERVICE_NAME }), "SERVING");
    assert.equal(await checkHealth(handle.address, { service: "iotvault.v1.Nope" }), "SERVICE_UNKNOWN");
    // The server says which iotvault service it is; it is not any other.
    assert.equal(await checkHealth(handle.address, { service: healthName("catalog") }), "SERVING");
    assert.equal(await checkHealth(handle.address, { service: healthName("restore") }), "SERVICE_UNKNOWN");
    handle.health.setStatus(ECHO_SERVICE_NAME, "NOT_SERVING");
    assert.equal(await checkHealth(handle.address, { service: ECHO_SERVICE_NAME }), "NOT_SERVING");
    handle.health.setStatus(ECHO_SERVICE_NAME, "SERVING");

    const closedPort = await new Promise<number>((resolve) => {
      const probe = createServer().listen(0, "127.0.0.1", () => {
        const { port } = probe.address() as { port: number };
        probe.close(() => resolve(port));
      });
    });
    const started = Date.now();
    assert.equal(await checkHealth(`127.0.0.1:${closedPort}`), "UNREACHABLE");
    assert.ok(Date.now() - started < 2000, "a closed port fails fast");
    await assert.rejects(
      callUnary(createClient(EchoClient, `127.0.0.1:${closedPort}`), "unary", { text: "x" }),
      hasCode("UNAVAILABLE", (err) => {
        assert.equal(err.message, `cannot reach the echo service at 127.0.0.1:${closedPort}`);
        assert.equal(err.hint, "start it with `iotvault stack up`, or check `iotvault stack status`");
        assert.equal(err.retryable, true);
      }),
    );
  },
);

void test("a deadline gives DEADLINE_EXCEEDED and aborts the handler's signal", LIMIT, async () => {
  seen.unaryAborted = false;
  const started = Date.now();
  await assert.rejects(
    callUnary(client, "unary", { text: "slow", delayMs: 5000 }, { deadlineMs: 150 }),
    hasCode("DEADLINE_EXCEEDED", (err) => assert.equal(err.retryable, true)),
  );
  assert.ok(Date.now() - started < 2000);
  await sleep(50);
  assert.equal(seen.unaryAborted, true, "the server handler saw the cancellation");
});

void test("an AbortSignal cancels a call", LIMIT, async () => {
  const controller = new AbortController();
  setTimeout(() => controller.abort(), 50);
  await assert.rejects(
    callUnary(client, "unary", { text: "slow", delayMs: 5000 }, { signal: controller.signal }),
    hasCode("CANCELLED"),
  );
  await assert.rejects(callUnary(client, "unary", { text: "x" }, { signal: controller.signal }), hasCode("CANCELLED"));
  const streaming = new AbortController();
  const got: number[] = [];
  await assert.rejects(async () => {
    for await (const reply of callServerStream(
      client,
      "serverStream",
      { text: "s", count: 100_000, size: 1000 },
      { signal: streaming.signal },
    )) {
      got.push(reply.index ?? -1);
      if (got.length === 3) streaming.abort();
    }
  }, hasCode("CANCELLED"));
  assert.equal(got.length, 3);
});

void test(
  "server streams respect backpressure: a slow reader does not make the server buffer everything",
  LIMIT,
  async () => {
    const count = 2000;
    const size = 64 * 1024; // 2000 x 64 KiB = 125 MiB if it were all produced at once
    const iterator = callServerStream(client, "serverStream", { text: "big", count, size })[Symbol.asyncIterator]();
    const first = await iterator.next();
    assert.equal(first.value?.index, 0);
    await sleep(300); // the reader stalls
    const producedWhileStalled = seen.produced;
    // What the client's receive window lets through (16 MiB), plus the server's own buffers.
    const bound = (DEFAULT_FLOW_CONTROL_WINDOW_BYTES + 4 * 1024 * 1024) / size;
    assert.ok(
      producedWhileStalled < bound,
      `the server produced ${producedWhileStalled} of ${count} messages for a stalled reader (bound ${bound})`,
    );
    let read = 1;
    for (let r = await iterator.next(); !r.done && read < 500; r = await iterator.next()) read += 1;
    assert.equal(read, 500);
    assert.ok(seen.produced > producedWhileStalled, "reading resumes the stream");
    await iterator.return?.(); // the reader stops: the call is cancelled and the generator closed
    await sleep(100);
    assert.equal(seen.streamStopped, true);
    assert.ok(seen.produced < count, `the server stopped after ${seen.produced} messages`);
  },
);

void test("a message over the limit is RESOURCE_EXHAUSTED", LIMIT, async () => {
  await assert.rejects(
    callUnary(client, "unary", { text: "x".repeat(2 * 1024 * 1024) }),
    hasCode("RESOURCE_EXHAUSTED"),
  );
  assert.deepEqual(await callUnary(client, "unary", { text: "small" }), { text: "SMALL" });
});

void test("shutdown sets NOT_SERVING, drains running calls, then closes the port", LIMIT, async () => {
  const server = await startGrpcServer({
    listen: "127.0.0.1:0",
    serviceName: "scheduler",
    services: [{ name: ECHO_SERVICE_NAME, definition: EchoService, implementation }],
  });
  const c = createClient(EchoClient, server.address);
  const running = callUnary(c, "unary", { text: "drain", delayMs: 200 });
  await sleep(50);
  const stopping = server.shutdown(5000);
  assert.equal(server.shutdown(), stopping, "shutdown is idempotent");
  assert.deepEqual(await running, { text: "DRAIN" }, "a running call finishes within the grace period");
  await stopping;
  assert.equal(await checkHealth(server.address, { deadlineMs: 500 }), "UNREACHABLE");
  c.close();

  const forced = await startGrpcServer({
    listen: "127.0.0.1:0",
    serviceName: "scheduler",
    services: [{ name: ECHO_SERVICE_NAME, definition: EchoService, implementation }],
  });
  const fc = createClient(EchoClient, forced.address);
  const stuck = callUnary(fc, "unary", { text: "stuck", delayMs: 10_000 }).then(
    () => undefined,
    (err: unknown) => err,
  );
  await sleep(50);
  const started = Date.now();
  await forced.shutdown(100);
  assert.ok(Date.now() - started < 2000, "calls past the grace period are cut");
  const err = await stuck;
  assert.ok(isCode(err, "UNAVAILABLE") || isCode(err, "CANCELLED"), String(err));
  fc.close();
});

void test("a port in use is a clear FAILED_PRECONDITION", LIMIT, async () => {
  await assert.rejects(
    startGrpcServer({ listen: handle.address, serviceName: "catalog", services: [] }),
    hasCode("FAILED_PRECONDITION", (err) => assert.match(err.message, /cannot listen for gRPC on 127\.0\.0\.1:\d+/)),
  );
});

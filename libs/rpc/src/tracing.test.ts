import assert from "node:assert/strict";
import { Writable } from "node:stream";
import { after, before, test } from "node:test";
import * as grpc from "@grpc/grpc-js";
import { SpanKind, SpanStatusCode, trace } from "@opentelemetry/api";
import { IotvaultError } from "@iotvault/errors";
import { createLogger, startTelemetry, withSpan, type Telemetry } from "@iotvault/telemetry";
import { EchoClient, EchoService, ECHO_SERVICE_NAME, type EchoReply, type EchoRequest } from "./echo.fixture.js";
import {
  callClientStream,
  callServerStream,
  callUnary,
  clientStream,
  createClient,
  serverStream,
  startGrpcServer,
  unary,
  type GrpcServerHandle,
} from "./index.js";

type ReadableSpan = ReturnType<NonNullable<Telemetry["memoryExporter"]>["getFinishedSpans"]>[number];

const LIMIT = { timeout: 20_000 };
let telemetry: Telemetry;
let handle: GrpcServerHandle;
let client: EchoClient;

before(async () => {
  telemetry = startTelemetry({ serviceName: "storage-gateway", inMemory: true });
  handle = await startGrpcServer({
    listen: "127.0.0.1:0",
    serviceName: "storage-gateway",
    logger: createLogger({ service: "storage-gateway", stream: new Writable({ write: (_c, _e, done) => done() }) }),
    services: [
      {
        name: ECHO_SERVICE_NAME,
        definition: EchoService,
        implementation: {
          unary: unary<EchoRequest, EchoReply>(async (request) => {
            if (request.fail === "known") throw new IotvaultError("NOT_FOUND", `object ${request.text} not found`);
            if (request.fail === "unknown") throw new Error("token=abc123 rejected");
            return withSpan("gateway.write", async () => ({ text: request.text }));
          }),
          serverStream: serverStream<EchoRequest, EchoReply>(async function* (request) {
            for (let index = 0; index < (request.count ?? 1); index++) yield { text: request.text, index };
          }),
          clientStream: clientStream<EchoRequest, EchoReply>(async (requests) => {
            let n = 0;
            for await (const _ of requests) n += 1;
            return { text: String(n) };
          }),
        },
      },
    ],
  });
  client = createClient(EchoClient, handle.address);
});

after(async () => {
  client.close();
  await handle.shutdown(500);
  await telemetry.shutdown();
});

function spans(): ReadableSpan[] {
  return telemetry.memoryExporter!.getFinishedSpans();
}

function only(list: ReadableSpan[], name: string, kind: SpanKind): ReadableSpan {
  const found = list.filter((s) => s.name === name && s.kind === kind);
  assert.equal(found.length, 1, `one ${SpanKind[kind]} span ${name} in ${list.map((s) => s.name).join(", ")}`);
  return found[0]!;
}

void test("the server span's parent is the client span, under the caller's span, in one trace", LIMIT, async () => {
  telemetry.memoryExporter!.reset();
  await withSpan("backup.run", async () => {
    assert.deepEqual(await callUnary(client, "unary", { text: "pack-1" }), { text: "pack-1" });
  });
  const list = spans();
  const caller = only(list, "backup.run", SpanKind.INTERNAL);
  const clientSpan = only(list, "EchoService/Unary", SpanKind.CLIENT);
  const serverSpan = only(list, "EchoService/Unary", SpanKind.SERVER);
  const inner = only(list, "gateway.write", SpanKind.INTERNAL);
  const traceId = caller.spanContext().traceId;
  for (const span of [clientSpan, serverSpan, inner]) assert.equal(span.spanContext().traceId, traceId, span.name);
  assert.equal(clientSpan.parentSpanContext?.spanId, caller.spanContext().spanId);
  assert.equal(serverSpan.parentSpanContext?.spanId, clientSpan.spanContext().spanId);
  assert.equal(serverSpan.parentSpanContext?.isRemote, true, "the server got its parent from the metadata");
  assert.equal(inner.parentSpanContext?.spanId, serverSpan.spanContext().spanId, "the handler runs in the server span");
  assert.deepEqual(
    {
      system: serverSpan.attributes["rpc.system"],
      service: serverSpan.attributes["rpc.service"],
      method: serverSpan.attributes["rpc.method"],
      iotvault: serverSpan.attributes["iotvault.service"],
      status: serverSpan.attributes["rpc.grpc.status_code"],
    },
    { system: "grpc", service: ECHO_SERVICE_NAME, method: "Unary", iotvault: "storage-gateway", status: 0 },
  );
  assert.equal(clientSpan.attributes["rpc.grpc.status_code"], 0);
});

void test("a traceparent sent by any client is honoured", LIMIT, async (t) => {
  telemetry.memoryExporter!.reset();
  const plain = new EchoClient(handle.address, grpc.credentials.createInsecure());
  t.after(() => plain.close());
  const traceId = "4bf92f3577b34da6a3ce929d0e0e4736";
  const parentId = "00f067aa0ba902b7";
  const metadata = new grpc.Metadata();
  metadata.set("traceparent", `00-${traceId}-${parentId}-01`);
  await new Promise<void>((resolve, reject) => {
    plain.unary({ text: "x" }, metadata, {}, (err) => (err ? reject(err) : resolve()));
  });
  const serverSpan = only(spans(), "EchoService/Unary", SpanKind.SERVER);
  assert.equal(serverSpan.spanContext().traceId, traceId);
  assert.equal(serverSpan.parentSpanContext?.spanId, parentId);

  telemetry.memoryExporter!.reset();
  await new Promise<void>((resolve, reject) => {
    plain.unary({ text: "y" }, new grpc.Metadata(), {}, (err) => (err ? reject(err) : resolve()));
  });
  const root = only(spans(), "EchoService/Unary", SpanKind.SERVER);
  assert.equal(root.parentSpanContext, undefined, "no traceparent: the server span starts a trace");
  assert.notEqual(root.spanContext().traceId, traceId);
});

void test("streaming calls are traced across the call too", LIMIT, async () => {
  telemetry.memoryExporter!.reset();
  await withSpan("restore.run", async () => {
    for await (const _ of callServerStream(client, "serverStream", { text: "s", count: 3 })) {
      // drain
    }
    await callClientStream(client, "clientStream", [{ text: "a" }, { text: "b" }]);
  });
  const list = spans();
  const caller = only(list, "restore.run", SpanKind.INTERNAL);
  for (const method of ["ServerStream", "ClientStream"]) {
    const c = only(list, `EchoService/${method}`, SpanKind.CLIENT);
    const s = only(list, `EchoService/${method}`, SpanKind.SERVER);
    assert.equal(c.parentSpanContext?.spanId, caller.spanContext().spanId);
    assert.equal(s.parentSpanContext?.spanId, c.spanContext().spanId);
    assert.equal(s.spanContext().traceId, caller.spanContext().traceId);
  }
});

void test("failed calls mark both spans; an unknown error's text stays out of the client's view", LIMIT, async () => {
  telemetry.memoryExporter!.reset();
  await assert.rejects(callUnary(client, "unary", { text: "k1", fail: "known" }));
  let list = spans();
  const server = only(list, "EchoService/Unary", SpanKind.SERVER);
  assert.equal(server.status.code, SpanStatusCode.ERROR);
  assert.equal(server.status.message, "object k1 not found");
  assert.equal(server.attributes["rpc.grpc.status_code"], grpc.status.NOT_FOUND);
  const clientSpan = only(list, "EchoService/Unary", SpanKind.CLIENT);
  assert.equal(clientSpan.status.code, SpanStatusCode.ERROR);
  assert.equal(clientSpan.attributes["rpc.grpc.status_code"], grpc.status.NOT_FOUND);

  telemetry.memoryExporter!.reset();
  await assert.rejects(callUnary(client, "unary", { text: "x", fail: "unknown" }), (err: unknown) => {
    assert.ok(err instanceof IotvaultError);
    assert.match(err.hint ?? "", /\(trace [0-9a-f]{32}\)$/);
    return true;
  });
  list = spans();
  const failed = only(list, "EchoService/Unary", SpanKind.SERVER);
  assert.equal(failed.status.code, SpanStatusCode.ERROR);
  assert.equal(failed.attributes["rpc.grpc.status_code"], grpc.status.INTERNAL);
  assert.doesNotMatch(String(only(list, "EchoService/Unary", SpanKind.CLIENT).status.message), /abc123/);
  assert.equal(failed.status.message, "internal error in the storage-gateway service (EchoService/Unary)");
  assert.ok(
    String(only(list, "EchoService/Unary", SpanKind.CLIENT).status.message).includes("internal error"),
    "the client span shows the generic message",
  );
  const exception = failed.events.find((e) => e.name === "exception");
  assert.equal(
    exception?.attributes?.["exception.message"],
    "token=*** rejected",
    "the server-side span keeps a scrubbed message",
  );
  assert.match(String(exception?.attributes?.["exception.stacktrace"]), /tracing\.test\.js/);
});

void test("without an active span the client span starts a new trace", LIMIT, async () => {
  telemetry.memoryExporter!.reset();
  assert.equal(trace.getActiveSpan(), undefined);
  await callUnary(client, "unary", { text: "solo" });
  const clientSpan = only(spans(), "EchoService/Unary", SpanKind.CLIENT);
  assert.equal(clientSpan.parentSpanContext, undefined);
  const serverSpan = only(spans(), "EchoService/Unary", SpanKind.SERVER);
  assert.equal(serverSpan.parentSpanContext?.spanId, clientSpan.spanContext().spanId);
});

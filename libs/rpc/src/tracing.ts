import * as grpc from "@grpc/grpc-js";
import {
  context,
  propagation,
  ROOT_CONTEXT,
  SpanKind,
  SpanStatusCode,
  trace,
  type Context,
  type Span,
  type TextMapGetter,
  type TextMapSetter,
} from "@opentelemetry/api";

/** Tracer name of the spans this package creates. */
export const RPC_TRACER_NAME = "@iotvault/rpc";

export const metadataSetter: TextMapSetter<grpc.Metadata> = {
  set: (metadata, key, value) => metadata.set(key, value),
};

export const metadataGetter: TextMapGetter<grpc.Metadata> = {
  get: (metadata, key) => {
    const values = metadata.get(key).map((v) => (typeof v === "string" ? v : v.toString("utf8")));
    if (values.length === 0) return undefined;
    return values.length === 1 ? values[0] : values;
  },
  keys: (metadata) => Object.keys(metadata.getMap()),
};

/** The trace context a caller sent in the call's metadata (`traceparent`, `baggage`). */
export function extractContext(metadata: grpc.Metadata): Context {
  return propagation.extract(ROOT_CONTEXT, metadata, metadataGetter);
}

/** `/iotvault.v1.CatalogService/GetRun` -> full service name, short span name `CatalogService/GetRun`. */
export function describePath(path: string): { service: string; method: string; spanName: string } {
  const [, service = "unknown", method = "unknown"] = path.split("/");
  const short = service.slice(service.lastIndexOf(".") + 1);
  return { service, method, spanName: `${short}/${method}` };
}

export function rpcAttributes(path: string): Record<string, string> {
  const { service, method } = describePath(path);
  return { "rpc.system": "grpc", "rpc.service": service, "rpc.method": method };
}

function endClientSpan(span: Span, status: grpc.StatusObject): void {
  span.setAttribute("rpc.grpc.status_code", status.code);
  if (status.code !== grpc.status.OK) {
    span.setStatus({ code: SpanStatusCode.ERROR, message: `${grpc.status[status.code]}: ${status.details}` });
  }
  span.end();
}

/**
 * Client interceptor: opens a CLIENT span `<Service>/<Method>` under the caller's active
 * context, injects its `traceparent` into the call's metadata, and ends the span with the
 * call's status.
 */
export const traceInterceptor: grpc.Interceptor = (options, nextCall) => {
  const path = options.method_definition.path;
  const parent = context.active();
  const span = trace
    .getTracer(RPC_TRACER_NAME)
    .startSpan(describePath(path).spanName, { kind: SpanKind.CLIENT, attributes: rpcAttributes(path) }, parent);
  const callContext = trace.setSpan(parent, span);
  return new grpc.InterceptingCall(nextCall(options), {
    start(metadata, listener, next) {
      propagation.inject(callContext, metadata, metadataSetter);
      next(metadata, {
        onReceiveStatus(status, nextStatus) {
          endClientSpan(span, status);
          nextStatus(status);
        },
      });
    },
  });
};

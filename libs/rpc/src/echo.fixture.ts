/**
 * A small JSON-encoded service with the four handler kinds, for this package's tests (the
 * iotvault protos have no bidi method). Not exported from the package entry.
 */
import * as grpc from "@grpc/grpc-js";

export interface EchoRequest {
  text: string;
  count?: number;
  /** Bytes of payload per reply. */
  size?: number;
  delayMs?: number;
  fail?: "known" | "unknown" | "status" | "string";
}

export interface EchoReply {
  text: string;
  index?: number;
  payload?: string;
}

const serialize = (value: unknown): Buffer => Buffer.from(JSON.stringify(value));
const deserialize = <T>(bytes: Buffer): T => JSON.parse(bytes.toString()) as T;

function method(name: string, requestStream: boolean, responseStream: boolean) {
  return {
    path: `/iotvault.test.EchoService/${name}`,
    requestStream,
    responseStream,
    requestSerialize: serialize,
    requestDeserialize: (b: Buffer) => deserialize<EchoRequest>(b),
    responseSerialize: serialize,
    responseDeserialize: (b: Buffer) => deserialize<EchoReply>(b),
  };
}

export const EchoService = {
  unary: method("Unary", false, false),
  serverStream: method("ServerStream", false, true),
  clientStream: method("ClientStream", true, false),
  bidi: method("Bidi", true, true),
} satisfies grpc.ServiceDefinition;

export const ECHO_SERVICE_NAME = "iotvault.test.EchoService";

export interface EchoClient extends grpc.Client {
  unary(
    request: EchoRequest,
    metadata: grpc.Metadata,
    options: Partial<grpc.CallOptions>,
    callback: (err: grpc.ServiceError | null, response: EchoReply) => void,
  ): grpc.ClientUnaryCall;
  serverStream(
    request: EchoRequest,
    metadata?: grpc.Metadata,
    options?: Partial<grpc.CallOptions>,
  ): grpc.ClientReadableStream<EchoReply>;
  clientStream(
    metadata: grpc.Metadata,
    options: Partial<grpc.CallOptions>,
    callback: (err: grpc.ServiceError | null, response: EchoReply) => void,
  ): grpc.ClientWritableStream<EchoRequest>;
  bidi(metadata?: grpc.Metadata, options?: Partial<grpc.CallOptions>): grpc.ClientDuplexStream<EchoRequest, EchoReply>;
}

export const EchoClient = grpc.makeGenericClientConstructor(EchoService, ECHO_SERVICE_NAME) as unknown as {
  new (address: string, credentials: grpc.ChannelCredentials, options?: Partial<grpc.ClientOptions>): EchoClient;
  serviceName: string;
};

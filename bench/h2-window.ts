/**
 * An experiment, not part of iotvault: preloaded into the services by `backup.js --h2-window N`
 * (`node --import`), it raises the HTTP/2 flow-control windows of every gRPC server and client
 * session to N bytes. grpc-js leaves them at the protocol default of 64 KiB, so a stream carries
 * 64 KiB per round trip between two event loops; when the receiver is busy (an executor sealing
 * packs, a restore creating files) a transfer slows to a crawl. Clients made by @iotvault/rpc's
 * createClient now open 16 MiB themselves (DEFAULT_FLOW_CONTROL_WINDOW_BYTES); what this still
 * changes is the servers' receive window (uploads), where it made no measurable difference
 * (docs/performance.md).
 */
import http2 from "node:http2";

const window = Number(process.env["IOTVAULT_BENCH_H2_WINDOW"] ?? 0);

function widen(session: http2.Http2Session): void {
  try {
    session.setLocalWindowSize(window);
  } catch {
    // a session closing meanwhile
  }
}

if (Number.isInteger(window) && window > 65_535) {
  const settings = <T extends { settings?: http2.Settings | undefined }>(options: T | undefined): T =>
    ({
      ...options,
      settings: { ...options?.settings, initialWindowSize: Math.min(window, 2 ** 31 - 1) },
    }) as T;
  const createServer = http2.createServer.bind(http2);
  const patchedServer = (options?: http2.ServerOptions, listener?: Parameters<typeof http2.createServer>[1]) => {
    const server = listener ? createServer(settings(options), listener) : createServer(settings(options));
    server.on("session", widen);
    return server;
  };
  const connect = http2.connect.bind(http2);
  const patchedConnect = (authority: string | URL, options?: http2.ClientSessionOptions, listener?: () => void) => {
    const session = connect(authority, settings(options), listener);
    session.once("connect", () => widen(session));
    return session;
  };
  Object.assign(http2, { createServer: patchedServer, connect: patchedConnect });
}

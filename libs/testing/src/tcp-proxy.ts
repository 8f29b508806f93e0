import { connect, createServer, type Socket } from "node:net";

/** A TCP forwarder on a loopback port whose connections a test can cut, like a network failure. */
export interface TcpProxyHandle {
  readonly host: string;
  readonly port: number;
  /** Connections accepted so far. */
  readonly accepted: number;
  /** Connections open now. */
  readonly open: number;
  /** Destroys every open connection (both sides), as a dropped network link would; new ones are accepted. */
  dropConnections(): void;
  /** Stops accepting and drops every connection. */
  close(): Promise<void>;
}

/**
 * Forwards 127.0.0.1:<free port> to `target`. Use it between a client and a real server to
 * test reconnection: `dropConnections()` cuts the link mid-transfer.
 *
 * ```ts
 * const proxy = await startTcpProxy({ host: "127.0.0.1", port: sshd.port });
 * // ... connect the client to proxy.port, start a transfer, then:
 * proxy.dropConnections();
 * ```
 */
export async function startTcpProxy(target: { host: string; port: number }): Promise<TcpProxyHandle> {
  const pairs = new Set<[Socket, Socket]>();
  let accepted = 0;
  const server = createServer((client) => {
    accepted++;
    const upstream = connect({ host: target.host, port: target.port });
    const pair: [Socket, Socket] = [client, upstream];
    pairs.add(pair);
    const end = () => {
      pairs.delete(pair);
      client.destroy();
      upstream.destroy();
    };
    client.on("error", end).on("close", end);
    upstream.on("error", end).on("close", end);
    client.pipe(upstream);
    upstream.pipe(client);
  });
  server.unref();
  const port = await new Promise<number>((resolve, reject) => {
    server.once("error", reject);
    server.listen(0, "127.0.0.1", () => {
      const address = server.address();
      resolve(typeof address === "object" && address ? address.port : 0);
    });
  });
  const dropConnections = () => {
    for (const [client, upstream] of [...pairs]) {
      client.destroy();
      upstream.destroy();
    }
    pairs.clear();
  };
  return {
    host: "127.0.0.1",
    port,
    get accepted() {
      return accepted;
    },
    get open() {
      return pairs.size;
    },
    dropConnections,
    close: () =>
      new Promise<void>((resolve) => {
        dropConnections();
        server.close(() => resolve());
      }),
  };
}

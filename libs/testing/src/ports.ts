import { createServer } from "node:net";

/**
 * A TCP port that was free a moment ago on `host` (default 127.0.0.1), found by binding port 0.
 * Another process may take it before you bind it: servers started by this kit retry on a new port.
 */
export async function freePort(host = "127.0.0.1"): Promise<number> {
  return new Promise<number>((resolve, reject) => {
    const server = createServer();
    server.unref();
    server.once("error", reject);
    server.listen({ host, port: 0, exclusive: true }, () => {
      const address = server.address();
      const port = typeof address === "object" && address !== null ? address.port : 0;
      server.close(() => (port > 0 ? resolve(port) : reject(new Error(`no port bound on ${host}`))));
    });
  });
}

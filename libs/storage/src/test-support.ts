/**
 * Helpers of this package's replication tests (not part of the package entry): a TCP proxy
 * that can be switched off and on again on the same port (a storage server going down and
 * coming back), a file-system layer that refuses writes with a chosen errno, and a digest of
 * a directory tree to compare targets byte for byte.
 */
import { createHash } from "node:crypto";
import { readdir, readFile } from "node:fs/promises";
import { connect, createServer, type Server, type Socket } from "node:net";
import { join, relative } from "node:path";
import { LOCAL_TEMP_PREFIX } from "./local-directory-store.js";
import { nodeFs, type LocalFs } from "./local-fs.js";

export interface SwitchableProxy {
  readonly port: number;
  /** Drops every connection and stops listening: new connections are refused. */
  down(): Promise<void>;
  /** Listens again on the same port. */
  up(): Promise<void>;
  close(): Promise<void>;
}

/** A loopback TCP forwarder to `target` that a test can switch off (ECONNREFUSED) and on. */
export async function switchableProxy(target: { host: string; port: number }): Promise<SwitchableProxy> {
  const sockets = new Set<Socket>();
  let server: Server | undefined;
  let port = 0;
  const listen = async () => {
    const s = createServer((client) => {
      const upstream = connect({ host: target.host, port: target.port });
      for (const socket of [client, upstream]) {
        sockets.add(socket);
        socket.on("error", () => socket.destroy());
        socket.on("close", () => {
          sockets.delete(socket);
          client.destroy();
          upstream.destroy();
        });
      }
      client.pipe(upstream);
      upstream.pipe(client);
    });
    await new Promise<void>((resolve, reject) => {
      s.once("error", reject);
      s.listen(port, "127.0.0.1", () => resolve());
    });
    const address = s.address();
    port = typeof address === "object" && address ? address.port : port;
    server = s;
  };
  const down = async () => {
    const s = server;
    server = undefined;
    for (const socket of [...sockets]) socket.destroy();
    if (s) await new Promise<void>((resolve) => s.close(() => resolve()));
  };
  await listen();
  return {
    get port() {
      return port;
    },
    down,
    up: async () => {
      if (!server) await listen();
    },
    close: down,
  };
}

/** A LocalFs that fails opening files for writing with `errno` while `failing()` says so. */
export function refusingWrites(errno: string, failing: () => boolean): LocalFs {
  return {
    ...nodeFs,
    open: async (path, flags, mode) => {
      if (failing() && flags !== "r") {
        throw Object.assign(new Error(`${errno}: injected, open '${path}'`), { code: errno });
      }
      return nodeFs.open(path, flags, mode);
    },
  };
}

/** relative path -> sha256 of every file under `dir`, temp files left out. */
export async function treeDigest(dir: string): Promise<Record<string, string>> {
  const out: Record<string, string> = {};
  const entries = await readdir(dir, { recursive: true, withFileTypes: true });
  for (const entry of entries) {
    if (!entry.isFile() || entry.name.startsWith(LOCAL_TEMP_PREFIX)) continue;
    const path = join(entry.parentPath, entry.name);
    out[relative(dir, path)] = createHash("sha256")
      .update(await readFile(path))
      .digest("hex");
  }
  return Object.fromEntries(Object.entries(out).sort(([a], [b]) => (a < b ? -1 : 1)));
}

/** A pack key and content: `data/<xx>/<sha256 of the content>`. */
export function packOf(content: Buffer): { key: string; data: Buffer } {
  const id = createHash("sha256").update(content).digest("hex");
  return { key: `data/${id.slice(0, 2)}/${id}`, data: content };
}

import { readFileSync } from "node:fs";
import { createServer } from "node:net";

/** Where freePort looks: below the kernel's ephemeral range, at least from LOWEST. */
const LOWEST = 10_000;

/**
 * The first port of the kernel's ephemeral range (ports it hands to port-0 listeners and to
 * outgoing connections), or undefined when it cannot be read or leaves too little room below.
 */
function ephemeralStart(): number | undefined {
  try {
    const first = Number(readFileSync("/proc/sys/net/ipv4/ip_local_port_range", "utf8").trim().split(/\s+/)[0]);
    return Number.isInteger(first) && first > LOWEST + 1000 ? first : undefined;
  } catch {
    return undefined;
  }
}

function tryListen(host: string, port: number): Promise<number | undefined> {
  return new Promise<number | undefined>((resolve) => {
    const server = createServer();
    server.unref();
    server.once("error", () => resolve(undefined));
    server.listen({ host, port, exclusive: true }, () => {
      const address = server.address();
      const bound = typeof address === "object" && address !== null ? address.port : 0;
      server.close(() => resolve(bound > 0 ? bound : undefined));
    });
  });
}

/**
 * A TCP port that was free a moment ago on `host` (default 127.0.0.1). It is picked at random
 * below the kernel's ephemeral range: the ports the kernel hands out meanwhile (to the port-0
 * listeners and the outgoing connections of tests running in parallel) are never this one.
 * Another freePort caller may still pick it before you bind it: servers started by this kit
 * retry on a new port. Falls back to a port the kernel picks (port 0) when the range is unknown.
 */
export async function freePort(host = "127.0.0.1"): Promise<number> {
  const end = ephemeralStart();
  if (end !== undefined) {
    for (let attempt = 0; attempt < 50; attempt++) {
      const port = await tryListen(host, LOWEST + Math.floor(Math.random() * (end - LOWEST)));
      if (port !== undefined) return port;
    }
  }
  const port = await tryListen(host, 0);
  if (port === undefined) throw new Error(`no port bound on ${host}`);
  return port;
}

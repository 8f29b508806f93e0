import assert from "node:assert/strict";
import http2 from "node:http2";
import type { AddressInfo } from "node:net";
import { test } from "node:test";
import { isCode } from "@iotvault/errors";
import { StorageGatewayServiceClient } from "@iotvault/proto";
import { DEFAULT_FLOW_CONTROL_WINDOW_BYTES, callUnary, createClient, type CreateClientOptions } from "./client.js";

interface SeenWindows {
  /** What the client's SETTINGS frame asked for each stream. */
  streamWindow: number | undefined;
  /** The connection window the client granted (after its WINDOW_UPDATE), as the server sees it. */
  connectionWindow: number;
}

/**
 * The windows a client made by createClient opens, read off a plain HTTP/2 server (a real
 * grpc-js client, a real HTTP/2 session): the server answers every call UNIMPLEMENTED.
 */
async function windowsOf(options: CreateClientOptions): Promise<SeenWindows> {
  let seen: SeenWindows | undefined;
  const server = http2.createServer();
  server.on("stream", (stream) => {
    seen = {
      streamWindow: stream.session?.remoteSettings.initialWindowSize,
      connectionWindow: stream.session?.state.remoteWindowSize ?? 0,
    };
    stream.respond({ ":status": 200, "content-type": "application/grpc", "grpc-status": "12" }, { endStream: true });
  });
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
  const address = `127.0.0.1:${(server.address() as AddressInfo).port}`;
  const client = createClient(StorageGatewayServiceClient, address, options);
  try {
    // The connection-level WINDOW_UPDATE follows the client's SETTINGS; a second call sees it.
    for (let i = 0; i < 2; i++) {
      await assert.rejects(
        callUnary(client, "statObject", { repository: "r", key: "k" }, { deadlineMs: 5000 }),
        (err: unknown) => isCode(err, "UNIMPLEMENTED"),
      );
    }
  } finally {
    client.close();
    await new Promise((resolve) => server.close(resolve));
  }
  assert.ok(seen, "the server saw no call");
  return seen;
}

void test("a client opens a 16 MiB receive window, so a streamed answer does not wait on 64 KiB grants", async () => {
  const seen = await windowsOf({});
  assert.equal(DEFAULT_FLOW_CONTROL_WINDOW_BYTES, 16 * 1024 * 1024);
  assert.equal(seen.streamWindow, DEFAULT_FLOW_CONTROL_WINDOW_BYTES);
  assert.equal(seen.connectionWindow, DEFAULT_FLOW_CONTROL_WINDOW_BYTES);
});

void test("the receive window can be chosen, and is never below the protocol's 64 KiB", async () => {
  const chosen = await windowsOf({ flowControlWindowBytes: 1024 * 1024 });
  assert.equal(chosen.streamWindow, 1024 * 1024);
  assert.equal(chosen.connectionWindow, 1024 * 1024);
  const tiny = await windowsOf({ flowControlWindowBytes: 1000 });
  assert.equal(tiny.streamWindow, 65_535);
});

/**
 * Helpers for the gateway's own tests (not part of the package entry): an in-process gateway
 * on 127.0.0.1:0 with a temp state directory and one configured repository, and a client.
 */
import { mkdir, mkdtemp, readdir, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { pathToFileURL } from "node:url";
import { StorageGatewayServiceClient, type PutObjectHeader, type PutObjectRequest } from "@iotvault/proto";
import { callClientStream, createClient } from "@iotvault/rpc";
import type { GatewayOptions } from "./config.js";
import { startStorageGateway, type RunningStorageGateway } from "./server.js";

export interface TestGateway {
  root: string;
  stateDir: string;
  /** The directory of the configured repository "main". */
  repoDir: string;
  running: RunningStorageGateway;
  client: StorageGatewayServiceClient;
  /** Stops the server (the state directory stays) and starts a new one on it. */
  restart(): Promise<void>;
  close(): Promise<void>;
}

export async function startTestGateway(options: Partial<GatewayOptions> = {}): Promise<TestGateway> {
  const root = await mkdtemp(join(tmpdir(), "iotvault-gateway-"));
  const stateDir = join(root, "state");
  const repoDir = join(root, "repos", "main");
  await mkdir(repoDir, { recursive: true });
  const start = () =>
    startStorageGateway({
      listen: "127.0.0.1:0",
      stateDir,
      repositories: { main: { url: pathToFileURL(repoDir).href } },
      options,
    });
  const gw: TestGateway = {
    root,
    stateDir,
    repoDir,
    running: await start(),
    client: undefined as unknown as StorageGatewayServiceClient,
    restart: async () => {
      gw.client.close();
      await gw.running.shutdown(1000);
      gw.running = await start();
      gw.client = createClient(StorageGatewayServiceClient, gw.running.address);
    },
    close: async () => {
      gw.client.close();
      await gw.running.shutdown(1000);
      await rm(root, { recursive: true, force: true });
    },
  };
  gw.client = createClient(StorageGatewayServiceClient, gw.running.address);
  return gw;
}

/** A PutObject stream: the header, then `data` in messages of `chunk` bytes. */
export function* putMessages(
  header: Partial<PutObjectHeader> & { repository: string; key: string },
  data: Uint8Array,
  chunk = 1 << 20,
): Generator<PutObjectRequest> {
  yield {
    part: {
      $case: "header",
      value: { size: BigInt(data.length), sha256: "", ifAbsent: false, ...header },
    },
  };
  for (let at = 0; at < data.length; at += chunk)
    yield { part: { $case: "data", value: Buffer.from(data.subarray(at, at + chunk)) } };
}

export function putObject(
  client: StorageGatewayServiceClient,
  messages: Iterable<PutObjectRequest> | AsyncIterable<PutObjectRequest>,
) {
  return callClientStream(client, "putObject", messages);
}

/** Every file under `dir` (relative paths), temp files included. */
export async function filesUnder(dir: string): Promise<string[]> {
  const entries = await readdir(dir, { recursive: true, withFileTypes: true });
  return entries
    .filter((e) => e.isFile())
    .map((e) => join(e.parentPath, e.name).slice(dir.length + 1))
    .sort();
}

/** Polls `check` every 10 ms until it returns true or `timeoutMs` passes. */
export async function waitFor(check: () => Promise<boolean>, timeoutMs: number, what: string): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!(await check())) {
    if (Date.now() > deadline) throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}`);
    await new Promise((resolve) => setTimeout(resolve, 10));
  }
}

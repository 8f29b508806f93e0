/**
 * What every command needs: the configuration, the service clients (created on first use), and
 * output helpers that honour --json.
 */
import { loadConfig, type IotvaultConfig, type ServiceName } from "@iotvault/config";
import {
  CatalogServiceClient,
  RestoreServiceClient,
  SchedulerServiceClient,
  StorageGatewayServiceClient,
} from "@iotvault/proto";
import { createClient } from "@iotvault/rpc/client";
import type { Bus } from "@iotvault/bus";
import type * as grpc from "@grpc/grpc-js";

type ClientCtor<C> = new (address: string, creds: grpc.ChannelCredentials, options?: grpc.ClientOptions) => C;

export class Context {
  readonly config: IotvaultConfig;
  private readonly clients = new Map<ServiceName, grpc.Client>();
  private busConnection: Promise<Bus> | undefined;

  constructor(
    readonly env: NodeJS.ProcessEnv,
    readonly json: boolean,
  ) {
    this.config = loadConfig(env);
  }

  private client<C extends grpc.Client>(service: ServiceName, Ctor: ClientCtor<C>): C {
    let c = this.clients.get(service);
    if (!c) {
      c = createClient(Ctor, this.config.addressOf(service));
      this.clients.set(service, c);
    }
    return c as C;
  }

  get scheduler(): SchedulerServiceClient {
    return this.client("scheduler", SchedulerServiceClient);
  }
  get catalog(): CatalogServiceClient {
    return this.client("catalog", CatalogServiceClient);
  }
  get restore(): RestoreServiceClient {
    return this.client("restore", RestoreServiceClient);
  }
  get gateway(): StorageGatewayServiceClient {
    return this.client("storage-gateway", StorageGatewayServiceClient);
  }

  /** The NATS connection, for commands that publish events (forget, prune, hold). */
  bus(): Promise<Bus> {
    this.busConnection ??= import("@iotvault/bus").then(({ Bus }) =>
      Bus.connect({
        url: this.config.nats.url,
        name: "iotvault-cli",
        credsFile: this.config.nats.credsFile,
        logger: { info: () => undefined, warn: () => undefined, error: () => undefined },
      }),
    );
    return this.busConnection;
  }

  /** Prints a value: as JSON with --json, else as the text `human` returns. */
  print(value: unknown, human: () => string): void {
    if (this.json) process.stdout.write(JSON.stringify(value, jsonReplacer, 2) + "\n");
    else process.stdout.write(human() + "\n");
  }

  /** A line of human progress on stderr, silent with --json. */
  info(line: string): void {
    if (!this.json) process.stderr.write(line + "\n");
  }

  async close(): Promise<void> {
    for (const c of this.clients.values()) c.close();
    if (this.busConnection) await (await this.busConnection.catch(() => undefined))?.close();
  }
}

export function jsonReplacer(_key: string, value: unknown): unknown {
  return typeof value === "bigint"
    ? Number(value) <= Number.MAX_SAFE_INTEGER
      ? Number(value)
      : value.toString()
    : value;
}

import { readFile } from "node:fs/promises";
import {
  jetstreamManager,
  type JetStreamClient,
  type JetStreamManager,
  type JetStreamPublishOptions,
} from "@nats-io/jetstream";
import {
  connect,
  credsAuthenticator,
  headers,
  type NatsConnection,
  type NodeConnectionOptions,
} from "@nats-io/transport-node";
import { SpanKind } from "@opentelemetry/api";
import { DeadLetter, STREAMS, SUBJECTS, type MessageFns } from "@iotvault/proto";
import { IotvaultError } from "@iotvault/errors";
import { BusConsumer, type DeadLetterInput } from "./consumer.js";
import { errorFields, stderrLogger } from "./logger.js";
import { redactUrl, toBusError } from "./nats-errors.js";
import { decodePayload, encodePayload, EVENT_TYPE_HEADER, typeNameOf } from "./payload.js";
import { desiredStreams, ensureStream } from "./streams.js";
import { injectTraceContext, inSpan } from "./trace.js";
import type {
  BusLogger,
  BusOptions,
  ConsumeOptions,
  ConsumerHandle,
  EnsureStreamsOptions,
  PublishOptions,
  PublishResult,
} from "./types.js";

const SUBJECT_PATTERN = /^[^\s*>]+$/;

/**
 * One NATS connection with JetStream for an iotvault process: creates the streams, publishes
 * payloads as canonical proto3 JSON with type, idempotency and trace headers, and runs durable
 * pull consumers that ack, retry or dead-letter each message.
 */
export class Bus {
  private readonly consumers = new Set<ConsumerHandle>();
  private readonly statusLoop: Promise<void>;
  private closing: Promise<void> | undefined;

  private constructor(
    readonly nc: NatsConnection,
    readonly js: JetStreamClient,
    readonly jsm: JetStreamManager,
    private readonly url: string,
    private readonly logger: BusLogger,
  ) {
    this.statusLoop = this.watchStatus().catch((err: unknown) =>
      this.logger.error("NATS status watch ended", { url: this.url, ...errorFields(err) }),
    );
  }

  /** Connects (UNAVAILABLE "cannot reach NATS at <url>: ..." when it cannot) and checks that JetStream is enabled. */
  static async connect(options: BusOptions): Promise<Bus> {
    const url = redactUrl(options.url);
    const connectOptions: NodeConnectionOptions = {
      ...serversWithCredentials(options.url),
      name: options.name,
      timeout: options.connectTimeoutMs ?? 5000,
      maxReconnectAttempts: -1,
      reconnectTimeWait: 1000,
    };
    if (options.credsFile) connectOptions.authenticator = credsAuthenticator(await readCreds(options.credsFile));
    let nc: NatsConnection;
    try {
      nc = await connect(connectOptions);
    } catch (err) {
      throw connectError(err, url);
    }
    let jsm: JetStreamManager;
    try {
      jsm = await jetstreamManager(nc);
    } catch (err) {
      await nc.close().catch(() => undefined);
      throw new IotvaultError(
        "FAILED_PRECONDITION",
        `JetStream is not available on the NATS server at ${url}: ${(err as Error).message}`,
        {
          cause: err,
          hint: "enable JetStream on the server (nats-server -js, or a `jetstream {}` block in its config) and for this account",
        },
      );
    }
    return new Bus(nc, jsm.jetstream(), jsm, url, options.logger ?? stderrLogger);
  }

  /** Creates or updates IOTVAULT_WORK (workqueue), IOTVAULT_EVENTS (limits, max age), IOTVAULT_DLQ (limits) idempotently. */
  async ensureStreams(options: EnsureStreamsOptions = {}): Promise<void> {
    const streams = desiredStreams(options);
    if ((options.replicas ?? 1) > 1 && !this.nc.info?.cluster) {
      // A standalone 2.9 server rejects R3 on create but silently stores it on update: refuse both.
      throw new IotvaultError(
        "FAILED_PRECONDITION",
        `cannot keep ${options.replicas} stream replicas: the NATS server at ${this.url} is not clustered`,
        {
          hint: "replicas > 1 needs a JetStream cluster with as many servers; use replicas: 1 on a single server",
        },
      );
    }
    for (const desired of streams) await ensureStream(this.jsm, desired);
  }

  /**
   * Publishes `payload` in canonical proto3 JSON with the headers Iotvault-Event-Type,
   * Nats-Msg-Id (= msgId) and traceparent/tracestate of the active OpenTelemetry context, in a
   * PRODUCER span. A repeated msgId within the duplicate window returns `duplicate: true`.
   */
  async publish<T>(subject: string, codec: MessageFns<T>, payload: T, options: PublishOptions): Promise<PublishResult> {
    if (!SUBJECT_PATTERN.test(subject)) {
      throw new IotvaultError(
        "INVALID_ARGUMENT",
        `cannot publish to ${JSON.stringify(subject)}: not a concrete subject`,
        { hint: "publish to a subject without spaces or wildcards" },
      );
    }
    if (!options.msgId) {
      throw new IotvaultError("INVALID_ARGUMENT", `publish to ${subject}: msgId is empty`, {
        hint: "pass a stable idempotency key (e.g. <runId>:<event>)",
      });
    }
    const type = typeNameOf(codec);
    const data = encodePayload(codec, payload);
    const attributes = {
      "messaging.system": "nats",
      "messaging.operation": "publish",
      "messaging.destination.name": subject,
      "messaging.message.id": options.msgId,
    };
    return inSpan(`publish ${subject}`, SpanKind.PRODUCER, attributes, async () => {
      const h = headers();
      h.set(EVENT_TYPE_HEADER, type);
      injectTraceContext(h);
      const publishOptions: Partial<JetStreamPublishOptions> = { msgID: options.msgId, headers: h };
      if (options.expectStream) publishOptions.expect = { streamName: options.expectStream };
      if (options.timeoutMs) publishOptions.timeout = options.timeoutMs;
      try {
        const ack = await this.js.publish(subject, data, publishOptions);
        return { seq: ack.seq, duplicate: ack.duplicate, stream: ack.stream };
      } catch (err) {
        throw toBusError(err, `cannot publish ${type} to ${subject}`);
      }
    });
  }

  /** Starts a durable pull consumer (explicit acks) that runs `options.handler` for each message. */
  async consume<T>(options: ConsumeOptions<T>): Promise<ConsumerHandle> {
    if (this.closing)
      throw new IotvaultError("FAILED_PRECONDITION", "consume() on a closed bus", { hint: "connect a new Bus" });
    const deps = {
      nc: this.nc,
      js: this.js,
      jsm: this.jsm,
      deadLetter: (letter: DeadLetterInput) => this.deadLetter(letter),
    };
    const consumer = new BusConsumer<T>(deps, options, (c) => this.consumers.delete(c));
    await consumer.start();
    this.consumers.add(consumer);
    return consumer;
  }

  /**
   * Follows the events published on `subject` with a plain NATS subscription: no consumer, no
   * acks, nothing replayed. For hints a process can afford to miss while it is down or
   * disconnected (which repository's key to derive ahead); anything that must be handled goes
   * through `consume`. An event of another type (its Iotvault-Event-Type header) or one that does
   * not decode as `codec` is skipped with a warning; what `handler` throws is logged. Returns a
   * function that ends the subscription; closing the bus ends it too.
   */
  watch<T>(subject: string, codec: MessageFns<T>, handler: (payload: T) => void): () => void {
    const type = typeNameOf(codec);
    const sub = this.nc.subscribe(subject, {
      callback: (err, msg) => {
        if (err) return;
        const sent = msg.headers?.get(EVENT_TYPE_HEADER);
        let payload: T;
        try {
          if (sent && sent !== type) throw new Error(`an event of type ${sent}, expected ${type}`);
          payload = decodePayload(codec, msg.data);
        } catch (e) {
          this.logger.warn("skipping an event that does not decode", { subject: msg.subject, ...errorFields(e) });
          return;
        }
        try {
          handler(payload);
        } catch (e) {
          this.logger.warn("an event watcher failed", { subject: msg.subject, ...errorFields(e) });
        }
      },
    });
    return () => sub.unsubscribe();
  }

  /** Stops every consumer (waiting for their handlers), then drains and closes the connection. */
  async close(): Promise<void> {
    this.closing ??= this.shutdown();
    return this.closing;
  }

  private async shutdown(): Promise<void> {
    await Promise.allSettled([...this.consumers].map((c) => c.stop()));
    if (!this.nc.isClosed()) {
      await this.nc
        .drain()
        .catch((err: unknown) => this.logger.warn("NATS drain failed", { url: this.url, ...errorFields(err) }));
    }
    await this.statusLoop;
  }

  /** Publishes a DeadLetter for a message; its msgId makes copies from several consumers collapse into one. */
  private async deadLetter(input: DeadLetterInput): Promise<void> {
    const letter: DeadLetter = {
      subject: input.subject,
      stream: input.stream,
      streamSequence: BigInt(input.seq),
      consumer: input.consumer,
      deliveries: input.deliveries,
      reason: input.reason,
      payload: Buffer.from(input.data),
      headers: input.headers,
      at: new Date(),
    };
    await this.publish(SUBJECTS.deadLetter(input.subject), DeadLetter, letter, {
      msgId: `dlq:${input.stream}:${input.seq}`,
      expectStream: STREAMS.deadLetter.name,
    });
  }

  private async watchStatus(): Promise<void> {
    for await (const status of this.nc.status()) {
      switch (status.type) {
        case "disconnect":
          this.logger.warn("disconnected from NATS, reconnecting", { url: this.url });
          break;
        case "reconnect":
          this.logger.info("reconnected to NATS", { url: this.url });
          break;
        case "error":
          this.logger.error("NATS connection error", { url: this.url, ...errorFields(status.error) });
          break;
        default:
          break;
      }
    }
  }
}

/**
 * The server list of a (comma-separated) URL, with user:password@ or token@ taken out of the
 * URLs and passed as connection options: the NATS client ignores credentials inside a URL.
 */
function serversWithCredentials(url: string): Pick<NodeConnectionOptions, "servers" | "user" | "pass" | "token"> {
  const out: Pick<NodeConnectionOptions, "servers" | "user" | "pass" | "token"> = { servers: [] };
  const servers: string[] = [];
  for (const raw of url.split(",").map((s) => s.trim())) {
    let parsed: URL;
    try {
      parsed = new URL(raw.includes("://") ? raw : `nats://${raw}`);
    } catch {
      throw new IotvaultError("CONFIG_INVALID", `invalid NATS URL ${redactUrl(raw)}`, {
        hint: "use nats://host:port (several separated by commas)",
      });
    }
    const user = decodeURIComponent(parsed.username);
    const pass = decodeURIComponent(parsed.password);
    if (user && pass) Object.assign(out, { user, pass });
    else if (user) out.token = user;
    servers.push(`${parsed.protocol}//${parsed.host}`);
  }
  out.servers = servers;
  return out;
}

async function readCreds(path: string): Promise<Uint8Array> {
  try {
    return await readFile(path);
  } catch (err) {
    throw new IotvaultError(
      "CONFIG_INVALID",
      `cannot read the NATS credentials file ${path}: ${(err as NodeJS.ErrnoException).code ?? "error"}`,
      {
        cause: err,
        hint: "check the credsFile path in the configuration and the file's permissions",
      },
    );
  }
}

function connectError(err: unknown, url: string): IotvaultError {
  const e = toBusError(err, `cannot reach NATS at ${url}`);
  if (e.code === "PERMISSION_DENIED") return e;
  return new IotvaultError("UNAVAILABLE", e.message, {
    cause: err,
    hint: `check that nats-server is running and listening at ${url} (the bus URL setting), and that no firewall blocks it`,
  });
}

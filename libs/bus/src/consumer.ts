import { setTimeout as sleep } from "node:timers/promises";
import {
  AckPolicy,
  DeliverPolicy,
  RetentionPolicy,
  type Consumer,
  type ConsumerMessages,
  type JetStreamClient,
  type JetStreamManager,
  type JsMsg,
} from "@nats-io/jetstream";
import { nanos, type Msg, type MsgHdrs, type NatsConnection, type Subscription } from "@nats-io/transport-node";
import type { Span } from "@opentelemetry/api";
import type { MessageFns } from "@iotvault/proto";
import { IotvaultError, isRetryable, toIotvaultError } from "@iotvault/errors";
import { errorFields, stderrLogger } from "./logger.js";
import { apiCode, JsCode, toBusError } from "./nats-errors.js";
import { acceptedTypes, decodePayload, EVENT_TYPE_HEADER, MalformedPayload } from "./payload.js";
import { inConsumerSpan, recordError } from "./trace.js";
import type { BusLogger, BusMessage, ConsumeOptions, ConsumerHandle, DeadLetterNotice } from "./types.js";

/** What a consumer needs from the Bus that owns it. */
export interface ConsumerDeps {
  nc: NatsConnection;
  js: JetStreamClient;
  jsm: JetStreamManager;
  deadLetter: (letter: DeadLetterInput) => Promise<void>;
}

export interface DeadLetterInput {
  subject: string;
  stream: string;
  seq: number;
  consumer: string;
  deliveries: number;
  reason: string;
  data: Uint8Array;
  headers: Record<string, string>;
}

/** 1 s, 2 s, 4 s ... capped at 30 s: the delay before redelivering a retryable failure. */
export function defaultRetryDelayMs(deliveryCount: number): number {
  return Math.min(30_000, 1000 * 2 ** Math.max(0, deliveryCount - 1));
}

const FETCH_EXPIRES_MS = 5000;
const NAME_PATTERN = /^[^.*>\s]+$/;
const MAX_REASON = 2000;

interface Settings<T> {
  stream: string;
  durable: string;
  filterSubject: string;
  types: ReadonlyMap<string, MessageFns<T>>;
  ackWaitMs: number;
  maxDeliver: number;
  concurrency: number;
  handler: (message: BusMessage<T>) => Promise<void>;
  spanName: (subject: string) => string;
  retryDelayMs: (deliveryCount: number) => number;
  onDeadLetter: ((letter: DeadLetterNotice<T>) => Promise<void>) | undefined;
  logger: BusLogger;
}

function compile<T>(options: ConsumeOptions<T>): Settings<T> {
  const invalid = (what: string): never => {
    throw new IotvaultError("INVALID_ARGUMENT", `consume(): ${what}`, {
      hint: "fix the consumer options in the calling service",
    });
  };
  if (!NAME_PATTERN.test(options.stream)) invalid(`invalid stream name ${JSON.stringify(options.stream)}`);
  if (!NAME_PATTERN.test(options.durable))
    invalid(`invalid durable name ${JSON.stringify(options.durable)} (no ".", "*", ">" or spaces)`);
  if (!/^[^\s]+$/.test(options.filterSubject))
    invalid(`invalid filterSubject ${JSON.stringify(options.filterSubject)}`);
  if (!Number.isInteger(options.ackWaitMs) || options.ackWaitMs < 100)
    invalid(`ackWaitMs must be an integer >= 100, got ${options.ackWaitMs}`);
  if (!Number.isInteger(options.maxDeliver) || options.maxDeliver < 1)
    invalid(`maxDeliver must be an integer >= 1, got ${options.maxDeliver}`);
  const concurrency = options.concurrency ?? 1;
  if (!Number.isInteger(concurrency) || concurrency < 1)
    invalid(`concurrency must be an integer >= 1, got ${concurrency}`);
  return {
    stream: options.stream,
    durable: options.durable,
    filterSubject: options.filterSubject,
    types: acceptedTypes(options.accept),
    ackWaitMs: options.ackWaitMs,
    maxDeliver: options.maxDeliver,
    concurrency,
    handler: options.handler,
    spanName: options.spanName ?? ((subject) => `consume ${subject}`),
    retryDelayMs: options.retryDelayMs ?? defaultRetryDelayMs,
    onDeadLetter: options.onDeadLetter,
    logger: options.logger ?? stderrLogger,
  };
}

function headerRecord(headers: MsgHdrs | undefined): Record<string, string> {
  const out: Record<string, string> = {};
  for (const key of headers?.keys() ?? []) out[key] = headers?.values(key).join(", ") ?? "";
  return out;
}

function describe(err: unknown): string {
  const e = toIotvaultError(err);
  return `${e.code}: ${e.message}${e.hint ? ` (hint: ${e.hint})` : ""}`;
}

/**
 * A durable pull consumer with a handler: fetches only as many messages as it has free
 * handler slots, keeps each one alive with in-progress acks, and turns the handler's outcome
 * into ack / nak(delay) / dead letter + term. See the package README for the full semantics.
 */
export class BusConsumer<T> implements ConsumerHandle {
  private readonly settings: Settings<T>;
  private readonly abort = new AbortController();
  private readonly inflight = new Set<Promise<void>>();
  private readonly background = new Set<Promise<void>>();
  private slotFreed: (() => void) | undefined;
  private fetching: ConsumerMessages | undefined;
  private advisories: Subscription | undefined;
  private loop: Promise<void> | undefined;
  private stopping: Promise<void> | undefined;
  private workQueue = false;

  constructor(
    private readonly deps: ConsumerDeps,
    options: ConsumeOptions<T>,
    private readonly onStopped: (consumer: ConsumerHandle) => void,
  ) {
    this.settings = compile(options);
  }

  /** Creates or updates the durable consumer, subscribes to its max-deliveries advisory, starts fetching. */
  async start(): Promise<void> {
    const { stream, durable } = this.settings;
    await this.ensureConsumer();
    // Subscribe before the first pull: the server emits the advisory when it tries to redeliver.
    this.advisories = this.deps.nc.subscribe(`$JS.EVENT.ADVISORY.CONSUMER.MAX_DELIVERIES.${stream}.${durable}`, {
      queue: `iotvault-dlq-${stream}-${durable}`,
      callback: (err, msg) => {
        if (err)
          this.settings.logger.warn("max-deliveries advisory subscription failed", {
            stream,
            durable,
            ...errorFields(err),
          });
        else this.track(this.background, this.onMaxDeliveries(msg));
      },
    });
    let consumer: Consumer;
    try {
      consumer = await this.deps.js.consumers.get(stream, durable);
    } catch (err) {
      this.advisories.unsubscribe();
      throw toBusError(err, `cannot bind consumer ${durable} of stream ${stream}`);
    }
    this.loop = this.run(consumer).catch((err: unknown) =>
      this.settings.logger.error("bus consumer: fetch loop ended unexpectedly", {
        stream,
        durable,
        ...errorFields(err),
      }),
    );
  }

  async stop(): Promise<void> {
    this.stopping ??= this.shutdown();
    return this.stopping;
  }

  private async shutdown(): Promise<void> {
    this.abort.abort(new IotvaultError("CANCELLED", `consumer ${this.settings.durable} is stopping`));
    this.fetching?.stop();
    this.wake();
    await this.loop;
    await Promise.allSettled([...this.inflight]);
    this.advisories?.unsubscribe();
    await Promise.allSettled([...this.background]);
    this.onStopped(this);
  }

  private get stopped(): boolean {
    return this.abort.signal.aborted;
  }

  private track(set: Set<Promise<void>>, work: Promise<void>): void {
    const tracked = work
      .catch((err: unknown) =>
        this.settings.logger.error("bus consumer: unexpected failure", {
          durable: this.settings.durable,
          ...errorFields(err),
        }),
      )
      .finally(() => {
        set.delete(tracked);
        this.wake();
      });
    set.add(tracked);
  }

  private wake(): void {
    const resolve = this.slotFreed;
    this.slotFreed = undefined;
    resolve?.();
  }

  private async freeSlots(): Promise<number> {
    while (!this.stopped && this.inflight.size >= this.settings.concurrency) {
      await new Promise<void>((resolve) => (this.slotFreed = resolve));
    }
    return this.settings.concurrency - this.inflight.size;
  }

  // -------------------------------------------------------------------------------------------
  // Consumer configuration

  private async ensureConsumer(): Promise<void> {
    const { stream, durable, filterSubject, ackWaitMs, maxDeliver } = this.settings;
    const { jsm } = this.deps;
    try {
      const info = await jsm.streams.info(stream);
      this.workQueue = info.config.retention === RetentionPolicy.Workqueue;
    } catch (err) {
      if (apiCode(err) === JsCode.StreamNotFound) {
        throw new IotvaultError("FAILED_PRECONDITION", `stream ${stream} does not exist`, {
          cause: err,
          hint: "call Bus.ensureStreams() at start-up, before consume()",
        });
      }
      throw toBusError(err, `cannot read stream ${stream}`);
    }
    const config = { ack_wait: nanos(ackWaitMs), max_deliver: maxDeliver, filter_subject: filterSubject };
    try {
      const existing = await jsm.consumers.info(stream, durable).catch((err: unknown) => {
        if (apiCode(err) === JsCode.ConsumerNotFound) return undefined;
        throw err;
      });
      if (existing?.config.deliver_subject) {
        throw new IotvaultError("FAILED_PRECONDITION", `consumer ${durable} of stream ${stream} is a push consumer`, {
          hint: `the bus uses pull consumers: delete it (nats consumer rm ${stream} ${durable}) or choose another durable name`,
        });
      }
      if (existing) await jsm.consumers.update(stream, durable, config);
      else
        await jsm.consumers.add(stream, {
          ...config,
          durable_name: durable,
          ack_policy: AckPolicy.Explicit,
          deliver_policy: DeliverPolicy.All,
        });
    } catch (err) {
      throw this.consumerError(err);
    }
  }

  private consumerError(err: unknown): IotvaultError {
    const { stream, durable, filterSubject } = this.settings;
    if (apiCode(err) === JsCode.FilterNotUnique) {
      return new IotvaultError(
        "FAILED_PRECONDITION",
        `consumer ${durable}: filter ${filterSubject} overlaps the filter of another consumer of work-queue stream ${stream}`,
        {
          cause: err,
          hint: "a work-queue subject has exactly one durable consumer: share the durable name between replicas, or use disjoint filters (see `nats consumer ls`)",
        },
      );
    }
    return toBusError(err, `cannot create or update consumer ${durable} of stream ${stream}`);
  }

  // -------------------------------------------------------------------------------------------
  // Fetch loop

  private async run(consumer: Consumer): Promise<void> {
    let failures = 0;
    while (!this.stopped && !this.deps.nc.isClosed()) {
      const slots = await this.freeSlots();
      if (this.stopped) break;
      try {
        this.fetching = await consumer.fetch({ max_messages: slots, expires: FETCH_EXPIRES_MS });
        if (this.stopped) this.fetching.stop();
        for await (const msg of this.fetching) this.dispatch(msg);
        failures = 0;
      } catch (err) {
        if (this.stopped || this.deps.nc.isClosed()) break;
        failures++;
        await this.recoverFetch(err, failures);
      } finally {
        this.fetching = undefined;
      }
    }
  }

  private async recoverFetch(err: unknown, failures: number): Promise<void> {
    const { stream, durable, logger } = this.settings;
    const delayMs = Math.min(10_000, 250 * 2 ** Math.min(failures, 6));
    logger.warn("fetch failed, retrying", { stream, durable, delayMs, ...errorFields(err) });
    await sleep(delayMs, undefined, { signal: this.abort.signal }).catch(() => undefined);
    if (this.stopped) return;
    // On 2.9 a deleted consumer shows up as missed heartbeats: look, and create it again.
    try {
      await this.deps.jsm.consumers.info(stream, durable);
    } catch (infoErr) {
      if (apiCode(infoErr) !== JsCode.ConsumerNotFound) return; // e.g. still reconnecting
      try {
        await this.ensureConsumer();
        logger.warn("the durable consumer was deleted; created it again", { stream, durable });
      } catch (e) {
        logger.error("cannot create the deleted consumer again", { stream, durable, ...errorFields(e) });
      }
    }
  }

  private dispatch(msg: JsMsg): void {
    if (this.stopped) {
      // Fetched but never started: give it back at once for another consumer.
      msg.nak();
      return;
    }
    this.track(this.inflight, this.process(msg));
  }

  // -------------------------------------------------------------------------------------------
  // One message

  private async process(msg: JsMsg): Promise<void> {
    const { stream, durable, ackWaitMs } = this.settings;
    const heartbeat = setInterval(() => working(msg), Math.max(50, Math.floor(ackWaitMs / 3)));
    const attributes = {
      "messaging.system": "nats",
      "messaging.operation": "process",
      "messaging.destination.name": msg.subject,
      "messaging.consumer.group.name": durable,
      "messaging.message.id": msg.headers?.get("Nats-Msg-Id") ?? "",
      "messaging.nats.stream": stream,
      "messaging.nats.stream_sequence": msg.seq,
      "messaging.nats.delivery_count": msg.info.deliveryCount,
    };
    try {
      await inConsumerSpan(this.settings.spanName(msg.subject), msg.headers, attributes, (span) =>
        this.handle(msg, span),
      );
    } finally {
      clearInterval(heartbeat);
    }
  }

  private async handle(msg: JsMsg, span: Span): Promise<void> {
    let message: BusMessage<T>;
    try {
      message = this.toBusMessage(msg);
    } catch (err) {
      if (!(err instanceof MalformedPayload)) throw err;
      span.setAttribute("iotvault.bus.outcome", "malformed");
      await this.deadLetterAndTerm(msg, `malformed payload: ${err.message}`);
      return;
    }
    try {
      await this.settings.handler(message);
    } catch (err) {
      recordError(span, err);
      await this.onHandlerError(msg, err, span);
      return;
    }
    span.setAttribute("iotvault.bus.outcome", "ack");
    // The confirmation may take up to the request timeout (e.g. across a reconnect): wait for it
    // outside the handler slot, so that the next message does not wait behind it.
    this.track(this.background, this.ack(msg));
  }

  private toBusMessage(msg: JsMsg): BusMessage<T> {
    const type = msg.headers?.get(EVENT_TYPE_HEADER) ?? "";
    if (type === "") throw new MalformedPayload(`no ${EVENT_TYPE_HEADER} header`);
    const codec = this.settings.types.get(type);
    if (!codec) throw new MalformedPayload(`unexpected event type ${type}`);
    const payload = decodePayload(codec, msg.data);
    const msgId = msg.headers?.get("Nats-Msg-Id");
    return {
      subject: msg.subject,
      type,
      payload,
      msgId: msgId || undefined,
      deliveryCount: msg.info.deliveryCount,
      streamSequence: msg.seq,
      headers: headerRecord(msg.headers),
      signal: this.abort.signal,
      working: () => working(msg),
    };
  }

  private async ack(msg: JsMsg): Promise<void> {
    try {
      await msg.ackAck({ timeout: Math.min(5000, this.settings.ackWaitMs) });
    } catch (err) {
      this.settings.logger.warn(
        "ack not confirmed by the server; the message may be delivered again",
        this.fields(msg, errorFields(err)),
      );
    }
  }

  private async onHandlerError(msg: JsMsg, err: unknown, span: Span): Promise<void> {
    const { maxDeliver, logger } = this.settings;
    const deliveries = msg.info.deliveryCount;
    if (this.stopped) {
      // Unfinished because we are stopping: no ack of any kind, the server redelivers after ackWait.
      span.setAttribute("iotvault.bus.outcome", "abandoned");
      logger.info("handler did not finish before stop; left for redelivery", this.fields(msg, errorFields(err)));
      return;
    }
    if (isRetryable(err) && deliveries < maxDeliver) {
      const delayMs = this.settings.retryDelayMs(deliveries);
      span.setAttribute("iotvault.bus.outcome", "nak");
      msg.nak(delayMs);
      logger.warn("handler failed, will retry", this.fields(msg, { delayMs, ...errorFields(err) }));
      return;
    }
    span.setAttribute("iotvault.bus.outcome", "dead-letter");
    const reason = isRetryable(err)
      ? `retryable error on the last delivery (${deliveries} of ${maxDeliver}): ${describe(err)}`
      : `permanent error: ${describe(err)}`;
    await this.deadLetterAndTerm(msg, reason);
  }

  private async deadLetterAndTerm(msg: JsMsg, reason: string): Promise<void> {
    const { stream, durable, logger } = this.settings;
    const deliveries = msg.info.deliveryCount;
    try {
      await this.deps.deadLetter({
        subject: msg.subject,
        stream,
        seq: msg.seq,
        consumer: durable,
        deliveries,
        reason: reason.slice(0, MAX_REASON),
        data: msg.data,
        headers: headerRecord(msg.headers),
      });
    } catch (err) {
      // Nothing may be lost: keep the message. On the last delivery the max-deliveries advisory retries the dead letter.
      const delayMs = this.settings.retryDelayMs(deliveries);
      msg.nak(delayMs);
      logger.error(
        "cannot write the dead letter; the message is kept",
        this.fields(msg, { reason, delayMs, ...errorFields(err) }),
      );
      return;
    }
    msg.term();
    logger.warn("message dead-lettered", this.fields(msg, { reason }));
    await this.notifyDeadLetter(msg.subject, reason, deliveries, msg.data, headerRecord(msg.headers));
  }

  /** Tells the service a message was dead-lettered (see ConsumeOptions.onDeadLetter). */
  private async notifyDeadLetter(
    subject: string,
    reason: string,
    deliveries: number,
    data: Uint8Array,
    headers: Record<string, string>,
  ): Promise<void> {
    const hook = this.settings.onDeadLetter;
    if (!hook) return;
    let payload: T | undefined;
    const codec = this.settings.types.get(headers[EVENT_TYPE_HEADER] ?? "");
    if (codec) {
      try {
        payload = decodePayload(codec, data);
      } catch {
        payload = undefined;
      }
    }
    try {
      await hook({ subject, reason, deliveries, payload, headers });
    } catch (err) {
      this.settings.logger.error("the dead-letter hook failed", { subject, ...errorFields(err) });
    }
  }

  private fields(msg: JsMsg, extra: Record<string, unknown>): Record<string, unknown> {
    return {
      stream: this.settings.stream,
      durable: this.settings.durable,
      subject: msg.subject,
      seq: msg.seq,
      deliveries: msg.info.deliveryCount,
      ...extra,
    };
  }

  // -------------------------------------------------------------------------------------------
  // Max deliveries without a verdict (a worker died on the last delivery, or never acked)

  private async onMaxDeliveries(msg: Msg): Promise<void> {
    const { stream, durable, logger } = this.settings;
    const advisory = parseAdvisory(msg);
    if (!advisory || advisory.stream !== stream || advisory.consumer !== durable) {
      logger.warn("ignoring an unreadable max-deliveries advisory", { stream, durable });
      return;
    }
    const { seq, deliveries } = advisory;
    const stored = await this.deps.jsm.streams.getMessage(stream, { seq }).catch((err: unknown) => {
      if (apiCode(err) === JsCode.NoMessageFound) return null;
      throw err;
    });
    if (!stored) {
      logger.info("max deliveries reached, but the message is already gone", { stream, durable, seq });
      return;
    }
    const reason = `max deliveries reached (${deliveries}) without a verdict from a handler: the worker crashed, was stopped, or did not ack within ackWait`;
    await inConsumerSpan(
      `dead-letter ${stored.subject}`,
      stored.header,
      { "messaging.system": "nats", "messaging.nats.stream_sequence": seq },
      async () => {
        await this.deps.deadLetter({
          subject: stored.subject,
          stream,
          seq,
          consumer: durable,
          deliveries,
          reason,
          data: stored.data,
          headers: headerRecord(stored.header),
        });
      },
    );
    // A work item is done once dead-lettered (term() would have removed it too).
    if (this.workQueue) await this.deps.jsm.streams.deleteMessage(stream, seq, false).catch(() => false);
    logger.warn("message dead-lettered after max deliveries", {
      stream,
      durable,
      subject: stored.subject,
      seq,
      deliveries,
    });
    await this.notifyDeadLetter(stored.subject, reason, deliveries, stored.data, headerRecord(stored.header));
  }
}

function working(msg: JsMsg): void {
  try {
    msg.working();
  } catch {
    // The connection is closed; the server will redeliver after ackWait.
  }
}

function parseAdvisory(msg: Msg): { stream: string; consumer: string; seq: number; deliveries: number } | undefined {
  try {
    const body = msg.json<{ stream?: unknown; consumer?: unknown; stream_seq?: unknown; deliveries?: unknown }>();
    const { stream, consumer, stream_seq: seq, deliveries } = body;
    if (typeof stream !== "string" || typeof consumer !== "string" || typeof seq !== "number" || seq < 1)
      return undefined;
    return { stream, consumer, seq, deliveries: typeof deliveries === "number" ? deliveries : 0 };
  } catch {
    return undefined;
  }
}

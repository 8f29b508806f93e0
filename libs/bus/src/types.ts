import type { MessageFns } from "@iotvault/proto";

/** Where and how to connect. */
export interface BusOptions {
  /** NATS server URL(s), comma-separated for a cluster: "nats://127.0.0.1:4222". */
  url: string;
  /** Connection name shown by the server (`nats server report connections`): the service id. */
  name: string;
  /** A NATS user credentials file (.creds: JWT + NKey seed). Never logged. */
  credsFile?: string | undefined;
  /** How long the first connection may take (default 5000 ms). */
  connectTimeoutMs?: number;
  /** Receives connection events (disconnect, reconnect). Default: warnings and errors to stderr as JSON. */
  logger?: BusLogger | undefined;
}

/** The structured logger the bus writes to (a service passes its own). */
export interface BusLogger {
  info(msg: string, fields?: Record<string, unknown>): void;
  warn(msg: string, fields?: Record<string, unknown>): void;
  error(msg: string, fields?: Record<string, unknown>): void;
}

export interface EnsureStreamsOptions {
  /** Window in which a repeated Nats-Msg-Id is dropped by the server (default 120000 ms). */
  duplicateWindowMs?: number;
  /** How long IOTVAULT_EVENTS keeps events (default 7 days). */
  eventsMaxAgeDays?: number;
  /** How long IOTVAULT_DLQ keeps dead letters (default 30 days). */
  deadLetterMaxAgeDays?: number;
  /** Stream replicas: 1 on a single server, 3 on a JetStream cluster (default 1). */
  replicas?: number;
}

export interface PublishOptions {
  /** Idempotency key, sent as Nats-Msg-Id: a second publish within the window is dropped. */
  msgId: string;
  /** The stream that must store the subject (the server rejects the publish otherwise). */
  expectStream?: string;
  /** How long to wait for the server's acknowledgement (default 5000 ms). */
  timeoutMs?: number;
}

export interface PublishResult {
  /** Stream sequence of the message (of the first copy when duplicate). */
  seq: number;
  /** True when the server had already stored a message with this msgId. */
  duplicate: boolean;
  /** The stream that stored it. */
  stream: string;
}

export interface ConsumeOptions<T> {
  stream: string;
  /** Durable consumer name, shared by every replica of the service (they split the work). */
  durable: string;
  /** Subjects this consumer receives; on a work-queue stream it must not overlap another consumer's. */
  filterSubject: string;
  /** Payload types accepted (others are dead-lettered as "unexpected event type X"). */
  accept: readonly MessageFns<T>[] | "any-event";
  /** Redelivery timeout of an unacknowledged message; heartbeats are sent every ackWaitMs/3. */
  ackWaitMs: number;
  /** Deliveries before a failing message is dead-lettered (>= 1). */
  maxDeliver: number;
  /** Called inside the extracted trace context, in an active CONSUMER span. */
  handler: (message: BusMessage<T>) => Promise<void>;
  /** Span name for a message subject (default `consume <subject>`). */
  spanName?: (subject: string) => string;
  /** Messages handled at once by this process (default 1). */
  concurrency?: number;
  /** Delay before a retryable failure is redelivered (default 1 s, 2 s, 4 s ... capped at 30 s). */
  retryDelayMs?: (deliveryCount: number) => number;
  /**
   * Called after a message was dead-lettered (malformed, permanent failure, last delivery, or a
   * worker that died on its last delivery), e.g. to announce that a run is over. `payload` is
   * undefined when the message could not be decoded. Errors are logged, never thrown.
   */
  onDeadLetter?: (letter: DeadLetterNotice<T>) => Promise<void>;
  logger?: BusLogger;
}

export interface DeadLetterNotice<T> {
  subject: string;
  reason: string;
  deliveries: number;
  payload: T | undefined;
  headers: Record<string, string>;
}

export interface BusMessage<T> {
  subject: string;
  /** Full protobuf name of the payload type (the Iotvault-Event-Type header). */
  type: string;
  payload: T;
  msgId: string | undefined;
  /** 1 on the first delivery. */
  deliveryCount: number;
  streamSequence: number;
  /** Message headers; a header sent several times has its values joined with ", ". */
  headers: Record<string, string>;
  /** Aborted when the consumer stops: finish quickly or throw. */
  signal: AbortSignal;
  /** Tells the server the work is still going (in-progress ack); called automatically every ackWait/3 while the handler runs. */
  working(): void;
}

export interface ConsumerHandle {
  /** Stops fetching, aborts the handlers' signal and waits for them; unfinished messages are not acked. */
  stop(): Promise<void>;
}

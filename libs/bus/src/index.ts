/**
 * @iotvault/bus — NATS JetStream for iotvault: the three streams (work queue, events, dead
 * letters), publishing protobuf payloads as canonical proto3 JSON with type, idempotency and
 * trace headers, and durable pull consumers that ack, retry with backoff or dead-letter each
 * message, with in-progress heartbeats for long work and trace context carried across.
 *
 * ```ts
 * import { Bus } from "@iotvault/bus";
 * import { BackupRequested, SUBJECTS, STREAMS } from "@iotvault/proto";
 *
 * const bus = await Bus.connect({ url: "nats://127.0.0.1:4222", name: "executor@host" });
 * await bus.ensureStreams();
 * await bus.publish(SUBJECTS.workBackup("site1"), BackupRequested, request, { msgId: `${jobId}:${at}` });
 * const consumer = await bus.consume({
 *   stream: STREAMS.work.name, durable: "executor-site1", filterSubject: SUBJECTS.workBackup("site1"),
 *   accept: [BackupRequested], ackWaitMs: 30_000, maxDeliver: 5,
 *   handler: async ({ payload, signal }) => runBackup(payload, signal),   // resolve = ack
 * });
 * // on SIGTERM:
 * await consumer.stop();
 * await bus.close();
 * ```
 */
export { Bus } from "./bus.js";
export { defaultRetryDelayMs } from "./consumer.js";
export { EVENT_TYPE_HEADER } from "./payload.js";
export type {
  BusLogger,
  BusMessage,
  BusOptions,
  ConsumeOptions,
  ConsumerHandle,
  DeadLetterNotice,
  EnsureStreamsOptions,
  PublishOptions,
  PublishResult,
} from "./types.js";

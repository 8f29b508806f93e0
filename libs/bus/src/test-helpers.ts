/**
 * Shared pieces of the bus's own tests (not exported by the package): a server + bus per test,
 * sample payloads, a recording logger and a reader of the dead-letter stream.
 */
import { headers } from "@nats-io/transport-node";
import { BackupRequested, BackupType, DeadLetter, STREAMS, SUBJECTS, TriggerKind } from "@iotvault/proto";
import { startNats, type NatsServerHandle } from "@iotvault/testing";
import { Bus } from "./bus.js";
import type { BusLogger, ConsumeOptions } from "./types.js";

export interface LogEntry {
  level: "info" | "warn" | "error";
  msg: string;
  fields: Record<string, unknown> | undefined;
}

/** A logger that keeps every entry, so tests can assert on what the bus reported. */
export function recordingLogger(): BusLogger & { entries: LogEntry[] } {
  const entries: LogEntry[] = [];
  const log =
    (level: LogEntry["level"]) =>
    (msg: string, fields?: Record<string, unknown>): void => {
      entries.push({ level, msg, fields });
    };
  return { entries, info: log("info"), warn: log("warn"), error: log("error") };
}

export interface BusFixture {
  nats: NatsServerHandle;
  bus: Bus;
  logger: ReturnType<typeof recordingLogger>;
  /** Another connection to the same server (a second process, as far as the server knows). */
  connect(name: string): Promise<Bus>;
  close(): Promise<void>;
}

/** A fresh nats-server, a connected bus and the three streams. Call close() in `finally`. */
export async function busFixture(): Promise<BusFixture> {
  const nats = await startNats();
  const logger = recordingLogger();
  const extra: Bus[] = [];
  let bus: Bus | undefined;
  try {
    bus = await Bus.connect({ url: nats.url, name: "bus-test", logger });
    await bus.ensureStreams();
    const main = bus;
    return {
      nats,
      bus: main,
      logger,
      async connect(name) {
        const other = await Bus.connect({ url: nats.url, name, logger });
        extra.push(other);
        return other;
      },
      async close() {
        await Promise.allSettled([main.close(), ...extra.map((b) => b.close())]);
        await nats.stop();
      },
    };
  } catch (err) {
    await bus?.close();
    await nats.stop();
    throw err;
  }
}

export function backupRequest(runId: string): BackupRequested {
  return BackupRequested.fromPartial({
    runId,
    job: {
      id: "job-1",
      name: "plant-db",
      source: "fs:/srv/plant",
      repository: "main",
      site: "site1",
      include: ["*.csv"],
      labels: { tier: "gold" },
    },
    backupType: BackupType.BACKUP_TYPE_FULL,
    trigger: TriggerKind.TRIGGER_KIND_MANUAL,
    requestedAt: new Date("2026-11-25T10:00:00Z"),
    requestedBy: "test",
  });
}

/** Every message of IOTVAULT_DLQ, decoded. */
export async function deadLetters(bus: Bus): Promise<DeadLetter[]> {
  const info = await bus.jsm.streams.info(STREAMS.deadLetter.name);
  const letters: DeadLetter[] = [];
  for (let seq = info.state.first_seq; seq <= info.state.last_seq && info.state.messages > 0; seq++) {
    const stored = await bus.jsm.streams.getMessage(STREAMS.deadLetter.name, { seq });
    if (stored) letters.push(DeadLetter.fromJSON(stored.json()));
  }
  return letters;
}

/** Messages currently stored in a stream. */
export async function storedCount(bus: Bus, stream: string): Promise<number> {
  return (await bus.jsm.streams.info(stream)).state.messages;
}

/** Defaults for a work-queue consumer of site1 in tests; override what a test is about. */
export function workConsumer(
  overrides: Partial<ConsumeOptions<BackupRequested>> & Pick<ConsumeOptions<BackupRequested>, "handler">,
): ConsumeOptions<BackupRequested> {
  return {
    stream: STREAMS.work.name,
    durable: "executor-site1",
    filterSubject: SUBJECTS.workBackup("site1"),
    accept: [BackupRequested],
    ackWaitMs: 1000,
    maxDeliver: 3,
    retryDelayMs: () => 100,
    logger: recordingLogger(),
    ...overrides,
  };
}

/** Publishes a work item for site1. */
export async function publishWork(bus: Bus, runId: string): Promise<number> {
  const ack = await bus.publish(SUBJECTS.workBackup("site1"), BackupRequested, backupRequest(runId), { msgId: runId });
  return ack.seq;
}

/** Raw bytes with raw headers, as a foreign or broken publisher would send them. */
export async function publishRaw(
  bus: Bus,
  subject: string,
  data: string,
  headerValues: Record<string, string>,
): Promise<number> {
  const h = headers();
  for (const [key, value] of Object.entries(headerValues)) h.set(key, value);
  return (await bus.js.publish(subject, new TextEncoder().encode(data), { headers: h })).seq;
}

/** A promise with its resolve function, to hold a handler until the test lets it go. */
export function gate(): { promise: Promise<void>; open(): void } {
  let open!: () => void;
  const promise = new Promise<void>((resolve) => (open = resolve));
  return { promise, open };
}

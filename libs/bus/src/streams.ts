import {
  DiscardPolicy,
  RetentionPolicy,
  StorageType,
  type JetStreamManager,
  type StreamConfig,
  type StreamInfo,
} from "@nats-io/jetstream";
import { nanos } from "@nats-io/transport-node";
import { STREAMS } from "@iotvault/proto";
import { IotvaultError } from "@iotvault/errors";
import { apiCode, JsCode, toBusError } from "./nats-errors.js";
import type { EnsureStreamsOptions } from "./types.js";

const DAY_MS = 24 * 60 * 60 * 1000;

type Desired = Pick<
  StreamConfig,
  | "name"
  | "subjects"
  | "retention"
  | "storage"
  | "discard"
  | "max_age"
  | "duplicate_window"
  | "num_replicas"
  | "description"
>;

function positive(name: string, value: number, integer: boolean): number {
  if (!Number.isFinite(value) || value <= 0 || (integer && !Number.isInteger(value))) {
    throw new IotvaultError(
      "INVALID_ARGUMENT",
      `ensureStreams(): ${name} must be a positive ${integer ? "integer" : "number"}, got ${value}`,
    );
  }
  return value;
}

/** The three iotvault streams as the server should have them. */
export function desiredStreams(options: EnsureStreamsOptions = {}): Desired[] {
  const duplicateWindowMs = positive("duplicateWindowMs", options.duplicateWindowMs ?? 120_000, true);
  const eventsMaxAgeMs = positive("eventsMaxAgeDays", options.eventsMaxAgeDays ?? 7, false) * DAY_MS;
  const deadLetterMaxAgeMs = positive("deadLetterMaxAgeDays", options.deadLetterMaxAgeDays ?? 30, false) * DAY_MS;
  const replicas = positive("replicas", options.replicas ?? 1, true);
  // The duplicate window may not exceed a stream's max age.
  const window = (maxAgeMs: number): number => nanos(Math.min(duplicateWindowMs, maxAgeMs));
  const common = { storage: StorageType.File, discard: DiscardPolicy.Old, num_replicas: replicas };
  return [
    {
      ...common,
      name: STREAMS.work.name,
      subjects: [...STREAMS.work.subjects],
      retention: RetentionPolicy.Workqueue,
      max_age: 0,
      duplicate_window: nanos(duplicateWindowMs),
      description: "iotvault work items: each is delivered to one consumer of its subject",
    },
    {
      ...common,
      name: STREAMS.events.name,
      subjects: [...STREAMS.events.subjects],
      retention: RetentionPolicy.Limits,
      max_age: nanos(eventsMaxAgeMs),
      duplicate_window: window(eventsMaxAgeMs),
      description: "iotvault lifecycle events (public API)",
    },
    {
      ...common,
      name: STREAMS.deadLetter.name,
      subjects: [...STREAMS.deadLetter.subjects],
      retention: RetentionPolicy.Limits,
      max_age: nanos(deadLetterMaxAgeMs),
      duplicate_window: window(deadLetterMaxAgeMs),
      description: "iotvault messages no consumer could handle, with the reason",
    },
  ];
}

/** Creates the stream, or updates it to the desired configuration; safe to run concurrently. */
export async function ensureStream(jsm: JetStreamManager, desired: Desired): Promise<StreamInfo> {
  const existing = await streamInfo(jsm, desired.name);
  if (!existing) {
    try {
      return await jsm.streams.add(desired);
    } catch (err) {
      // Another process created it at the same moment with a different config: update it.
      if (apiCode(err) !== JsCode.StreamNameInUse) throw streamError(err, desired);
    }
  } else if (existing.config.retention !== desired.retention) {
    throw new IotvaultError(
      "FAILED_PRECONDITION",
      `stream ${desired.name} exists with retention "${existing.config.retention}", iotvault needs "${desired.retention}"`,
      {
        hint: `a stream's retention cannot change: move its messages away, delete it (nats stream rm ${desired.name}) and start again`,
      },
    );
  }
  try {
    const { name, ...update } = desired;
    return await jsm.streams.update(name, update);
  } catch (err) {
    throw streamError(err, desired);
  }
}

async function streamInfo(jsm: JetStreamManager, name: string): Promise<StreamInfo | undefined> {
  try {
    return await jsm.streams.info(name);
  } catch (err) {
    if (apiCode(err) === JsCode.StreamNotFound) return undefined;
    throw toBusError(err, `cannot read stream ${name}`);
  }
}

function streamError(err: unknown, desired: Desired): IotvaultError {
  const e = toBusError(err, `cannot create or update stream ${desired.name}`);
  if (e.code !== "FAILED_PRECONDITION" || e.hint) return e;
  return new IotvaultError(e.code, e.message, {
    cause: err,
    hint: /replica/i.test(e.message)
      ? "replicas > 1 needs a JetStream cluster with as many servers; use replicas: 1 on a single server"
      : "another stream may already capture these subjects, or the server rejects the configuration; see `nats stream ls`",
  });
}

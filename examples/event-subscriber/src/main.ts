/**
 * An example subscriber: how another service of the IoT platform follows iotvault's backups.
 *
 * It reads `iotvault.events.backup.>` from the IOTVAULT_EVENTS stream with an ordered consumer
 * (no state on the server; use a durable consumer to resume after a restart), decodes each
 * payload from its canonical proto3 JSON with the generated types, and prints one line per event.
 *
 *   node dist/main.js [--url nats://127.0.0.1:4222] [--count N] [--since-start]
 *
 * Without @iotvault/proto, `JSON.parse(new TextDecoder().decode(msg.data))` gives the same
 * fields (lowerCamelCase, 64-bit integers as strings, timestamps as RFC 3339).
 */
import { parseArgs } from "node:util";
import { jetstream, DeliverPolicy } from "@nats-io/jetstream";
import { connect } from "@nats-io/transport-node";
import {
  type BackupCompleted,
  type BackupFailed,
  type BackupStarted,
  EVENT_TYPES,
  type EventName,
} from "@iotvault/proto";

const { values } = parseArgs({
  options: {
    url: { type: "string", default: process.env["NATS_URL"] ?? "nats://127.0.0.1:4222" },
    count: { type: "string" },
    "since-start": { type: "boolean", default: false },
  },
});
const limit = values.count ? Number(values.count) : Infinity;

const nc = await connect({ servers: values.url, name: "example-backup-watcher" });
const js = jetstream(nc);
const consumer = await js.consumers.get("IOTVAULT_EVENTS", {
  // A single subject as a string: multi-subject filters need NATS 2.10.
  filter_subjects: "iotvault.events.backup.>",
  deliver_policy: values["since-start"] ? DeliverPolicy.All : DeliverPolicy.New,
});

let seen = 0;
const messages = await consumer.consume();
for await (const msg of messages) {
  const type = msg.headers?.get("Iotvault-Event-Type") as EventName | undefined;
  const codec = type ? EVENT_TYPES[type] : undefined;
  if (!type || !codec) continue; // not an iotvault payload we know: skip it
  const payload: unknown = codec.fromJSON(msg.json());
  if (type === "iotvault.v1.BackupStarted") {
    const e = payload as BackupStarted;
    console.log(`started   run=${e.runId} job=${e.jobName} attempt=${e.attempt}`);
  } else if (type === "iotvault.v1.BackupCompleted") {
    const e = payload as BackupCompleted;
    console.log(
      `completed run=${e.runId} job=${e.jobName} snapshot=${e.snapshotId} stored=${e.stats?.bytesStored ?? 0n} bytes`,
    );
  } else if (type === "iotvault.v1.BackupFailed") {
    const e = payload as BackupFailed;
    console.log(`failed    run=${e.runId} job=${e.jobName} code=${e.error?.code} retry=${e.willRetry}`);
  } else {
    console.log(`${type.replace("iotvault.v1.", "").toLowerCase().padEnd(9)} ${msg.subject}`);
  }
  if (++seen >= limit) break;
}
await nc.close();

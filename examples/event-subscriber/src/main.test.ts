/**
 * The example subscriber of docs/events.md, run as a real process against a real NATS server:
 * it must print the events a backup produces.
 */
import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { once } from "node:events";
import { fileURLToPath } from "node:url";
import { after, before, describe, it } from "node:test";
import { Bus } from "@iotvault/bus";
import { BackupCompleted, BackupFailed, BackupStarted, BackupType, SUBJECTS, TriggerKind } from "@iotvault/proto";
import { startNats, type NatsServerHandle } from "@iotvault/testing";

const main = fileURLToPath(new URL("./main.js", import.meta.url));

describe("example event subscriber", () => {
  let nats: NatsServerHandle;
  let bus: Bus;
  before(async () => {
    nats = await startNats();
    bus = await Bus.connect({ url: nats.url, name: "example-test" });
    await bus.ensureStreams();
  });
  after(async () => {
    await bus?.close();
    await nats?.stop();
  });

  it("prints started, failed and completed events of backups", async () => {
    const runId = "r-20261125T000000Z-abcdef0123";
    await bus.publish(
      SUBJECTS.backupStarted,
      BackupStarted,
      BackupStarted.fromPartial({
        runId,
        jobName: "gateway",
        attempt: 1,
        backupType: BackupType.BACKUP_TYPE_FULL,
        trigger: TriggerKind.TRIGGER_KIND_MANUAL,
      }),
      { msgId: `${runId}:started:1` },
    );
    await bus.publish(
      SUBJECTS.backupFailed,
      BackupFailed,
      BackupFailed.fromPartial({
        runId,
        jobName: "gateway",
        attempt: 1,
        willRetry: true,
        error: { code: "UNAVAILABLE", message: "x", retryable: true, hint: "" },
      }),
      { msgId: `${runId}:failed:1` },
    );
    await bus.publish(
      SUBJECTS.backupCompleted,
      BackupCompleted,
      BackupCompleted.fromPartial({
        runId,
        jobName: "gateway",
        snapshotId: "ab".repeat(32),
        stats: { bytesStored: 1234n },
      }),
      { msgId: `${runId}:completed` },
    );
    // An event of another family is not selected by the example's filter.
    const child = spawn(process.execPath, [main, "--url", nats.url, "--count", "3", "--since-start"], {
      stdio: ["ignore", "pipe", "pipe"],
    });
    let out = "";
    let err = "";
    child.stdout.on("data", (d: Buffer) => (out += d.toString()));
    child.stderr.on("data", (d: Buffer) => (err += d.toString()));
    const timer = setTimeout(() => child.kill("SIGKILL"), 20_000);
    const [code] = (await once(child, "exit")) as [number];
    clearTimeout(timer);
    assert.equal(code, 0, err);
    const lines = out.trim().split("\n");
    assert.equal(lines.length, 3, out);
    assert.match(lines[0]!, /^started\s+run=r-20261125T000000Z-abcdef0123 job=gateway attempt=1$/);
    assert.match(lines[1]!, /^failed\s+run=.* code=UNAVAILABLE retry=true$/);
    assert.match(lines[2]!, new RegExp(`^completed run=.* snapshot=${"ab".repeat(32)} stored=1234 bytes$`));
  });
});

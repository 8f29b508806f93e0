import assert from "node:assert/strict";
import { test } from "node:test";
import { BackupCompleted, BackupRequested, DeadLetter, JobCreated } from "@iotvault/proto";
import { isCode } from "@iotvault/errors";
import { acceptedTypes, decodePayload, encodePayload, MalformedPayload, typeNameOf } from "./payload.js";
import { backupRequest } from "./test-helpers.js";

const bytes = (text: string): Uint8Array => new TextEncoder().encode(text);

function rejects(codec: Parameters<typeof decodePayload>[0], text: string | Uint8Array, reason: RegExp): void {
  assert.throws(
    () => decodePayload(codec, typeof text === "string" ? bytes(text) : text),
    (err: unknown) => err instanceof MalformedPayload && reason.test(err.message),
    `expected ${String(reason)} for ${String(text)}`,
  );
}

void test("a payload survives encode -> decode unchanged, in canonical proto3 JSON", () => {
  const request = backupRequest("run-1");
  const data = encodePayload(BackupRequested, request);
  const json = JSON.parse(new TextDecoder().decode(data)) as Record<string, unknown>;
  assert.equal(json["runId"], "run-1");
  assert.equal(json["backupType"], "BACKUP_TYPE_FULL");
  assert.equal(json["requestedAt"], "2026-11-25T10:00:00.000Z");
  assert.deepEqual(decodePayload(BackupRequested, data), request);
});

void test("bigint and bytes fields round-trip", () => {
  const letter = DeadLetter.fromPartial({
    subject: "a.b",
    streamSequence: 2n ** 60n,
    payload: Buffer.from([0, 1, 255]),
    headers: { k: "v" },
  });
  const decoded = decodePayload(DeadLetter, encodePayload(DeadLetter, letter));
  assert.equal(decoded.streamSequence, 2n ** 60n);
  assert.deepEqual([...decoded.payload], [0, 1, 255]);
  assert.deepEqual(decoded.headers, { k: "v" });
});

void test("snake_case field names and unknown fields are accepted (forward compatible)", () => {
  const decoded = decodePayload(
    BackupRequested,
    bytes('{"run_id":"r","requested_by":"me","fieldFromTheFuture":{"x":1}}'),
  );
  assert.equal(decoded.runId, "r");
  assert.equal(decoded.requestedBy, "me");
  assert.equal(decodePayload(BackupRequested, bytes("{}")).runId, "", "an empty object is all defaults");
  assert.equal(decodePayload(BackupRequested, bytes('{"runId":null}')).runId, "", "null means the default");
  const named = decodePayload(BackupRequested, bytes('{"backupType":"BACKUP_TYPE_FUTURE","job":{"backup_type":2}}'));
  assert.equal(named.backupType, -1, "an enum value from a newer schema decodes as UNRECOGNIZED");
  assert.equal(named.job?.backupType, 2);
});

void test("malformed payloads are rejected with a reason", () => {
  rejects(BackupRequested, "not json", /not UTF-8 JSON/);
  rejects(BackupRequested, new Uint8Array([0x7b, 0xff, 0x7d]), /not UTF-8 JSON/);
  rejects(BackupRequested, "[1,2]", /expected a JSON object, got an array/);
  rejects(BackupRequested, "null", /got null/);
  rejects(BackupRequested, '"text"', /got string/);
  rejects(BackupRequested, '{"runId":42}', /field runId: expected a string, got number/);
  rejects(BackupRequested, '{"job":{"include":"*.csv"}}', /field job.include: expected an array, got string/);
  rejects(BackupRequested, '{"job":{"labels":{"tier":1}}}', /field job.labels.tier: expected a string, got number/);
  rejects(BackupRequested, '{"job":{"include":["a",2]}}', /field job.include\[1\]: expected a string/);
  rejects(BackupRequested, '{"backupType":true}', /field backupType: expected a number or a string, got boolean/);
  rejects(BackupRequested, '{"requestedAt":"yesterday"}', /field requestedAt: not a valid RFC 3339 timestamp/);
  rejects(BackupRequested, '{"job":[1]}', /field job: expected an object, got array/);
  rejects(BackupRequested, '{"job":"plant"}', /field job: expected an object, got string/);
  rejects(BackupCompleted, '{"stats":{"bytesRead":"many"}}', /invalid field value/);
  rejects(BackupCompleted, '{"hostname":true}', /field hostname: expected a string, got boolean/);
  rejects(DeadLetter, '{"streamSequence":"1.5"}', /invalid field value/);
  rejects(DeadLetter, '{"streamSequence":true}', /field streamSequence: expected an integer/);
  rejects(DeadLetter, '{"deliveries":"lots"}', /field deliveries: not a number/);
  rejects(DeadLetter, '{"headers":["a"]}', /field headers: expected an object, got array/);
  rejects(DeadLetter, '{"payload":12}', /invalid field value/);
  rejects(DeadLetter, '{"payload":["AAE="]}', /field payload: expected a base64 string, got array/);
});

void test("typeNameOf and acceptedTypes map codecs to their full protobuf names", () => {
  assert.equal(typeNameOf(BackupRequested), "iotvault.v1.BackupRequested");
  assert.deepEqual(
    [...acceptedTypes([BackupRequested, JobCreated] as const).keys()],
    ["iotvault.v1.BackupRequested", "iotvault.v1.JobCreated"],
  );
  assert.ok(acceptedTypes("any-event").has("iotvault.v1.DeadLetter"));
  assert.throws(
    () => typeNameOf({ fromJSON: () => ({}) }),
    (err: unknown) => isCode(err, "INVALID_ARGUMENT"),
  );
  assert.throws(
    () => acceptedTypes([]),
    (err: unknown) => isCode(err, "INVALID_ARGUMENT"),
  );
});

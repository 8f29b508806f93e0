import { EVENT_TYPES, eventTypeOf, type MessageFns } from "@iotvault/proto";
import { IotvaultError } from "@iotvault/errors";

/** Header naming the payload type: the full protobuf message name ("iotvault.v1.BackupCompleted"). */
export const EVENT_TYPE_HEADER = "Iotvault-Event-Type";

/** A payload that no handler can make sense of; it is dead-lettered, never retried. */
export class MalformedPayload extends Error {
  override readonly name = "MalformedPayload";
}

const utf8 = new TextDecoder("utf-8", { fatal: true });
const encoder = new TextEncoder();
const MAX_DEPTH = 32;

/** The Iotvault-Event-Type name of a codec; INVALID_ARGUMENT for a codec that is no event payload. */
export function typeNameOf(codec: unknown): string {
  try {
    return eventTypeOf(codec);
  } catch {
    throw new IotvaultError("INVALID_ARGUMENT", "the codec is not an iotvault event payload type", {
      hint: "pass a message codec listed in EVENT_TYPES of @iotvault/proto (e.g. BackupRequested)",
    });
  }
}

/** The accepted types by name, for a consumer's `accept` option. */
export function acceptedTypes<T>(accept: readonly MessageFns<T>[] | "any-event"): ReadonlyMap<string, MessageFns<T>> {
  if (accept === "any-event") return new Map(Object.entries(EVENT_TYPES) as [string, MessageFns<T>][]);
  if (accept.length === 0) {
    throw new IotvaultError("INVALID_ARGUMENT", "consume(): accept lists no payload type", {
      hint: 'list the payload codecs the handler understands, or pass "any-event"',
    });
  }
  return new Map(accept.map((codec) => [typeNameOf(codec), codec]));
}

/** Canonical proto3 JSON bytes of a payload. */
export function encodePayload<T>(codec: MessageFns<T>, payload: T): Uint8Array {
  return encoder.encode(JSON.stringify(codec.toJSON(payload)));
}

/**
 * Decodes proto3 JSON bytes with `codec`, rejecting what ts-proto's lenient fromJSON would
 * silently turn into defaults: invalid UTF-8 or JSON, a non-object, a field (at any depth) whose
 * JSON type does not fit its protobuf type, numbers that do not parse, invalid timestamps.
 * Unknown fields are ignored (a newer publisher may add fields). Throws MalformedPayload.
 */
export function decodePayload<T>(codec: MessageFns<T>, data: Uint8Array): T {
  let json: unknown;
  try {
    json = JSON.parse(utf8.decode(data));
  } catch (err) {
    throw new MalformedPayload(`not UTF-8 JSON (${(err as Error).message})`);
  }
  if (!isObject(json)) {
    throw new MalformedPayload(
      `expected a JSON object, got ${Array.isArray(json) ? "an array" : json === null ? "null" : typeof json}`,
    );
  }
  let payload: T;
  try {
    payload = codec.fromJSON(json);
  } catch (err) {
    throw new MalformedPayload(`invalid field value (${(err as Error).message})`);
  }
  checkShape(json, payload, "", 0);
  return payload;
}

function isObject(value: unknown): value is Record<string, unknown> {
  return typeof value === "object" && value !== null && !Array.isArray(value);
}

function camel(key: string): string {
  return key.replace(/_([a-z0-9])/g, (_, c: string) => c.toUpperCase());
}

/**
 * Compares the JSON with what fromJSON made of it: the decoded value has the field's type
 * (string, number, bigint, boolean, Date, bytes, array, message or map), so a JSON value of
 * another kind was dropped or coerced by fromJSON and the payload is malformed.
 */
function checkShape(json: unknown, decoded: unknown, path: string, depth: number): void {
  if (depth > MAX_DEPTH) throw new MalformedPayload("nested too deeply");
  if (json === null || json === undefined || decoded === undefined || decoded === null) return;
  const problem = valueProblem(decoded, json);
  if (problem) throw new MalformedPayload(`field ${path}: ${problem}`);
  if (Array.isArray(decoded) && Array.isArray(json)) {
    decoded.forEach((item, i) => checkShape(json[i], item, `${path}[${i}]`, depth + 1));
  } else if (isObject(decoded) && !(decoded instanceof Date) && !(decoded instanceof Uint8Array) && isObject(json)) {
    for (const [key, value] of Object.entries(json)) {
      const field = Object.prototype.hasOwnProperty.call(decoded, key) ? key : camel(key);
      if (!Object.prototype.hasOwnProperty.call(decoded, field)) continue; // unknown field (or a oneof member)
      checkShape(value, decoded[field], path ? `${path}.${key}` : key, depth + 1);
    }
  }
}

/** Why `json` cannot be the proto3 JSON of a field that decoded to `decoded`, or undefined. */
function valueProblem(decoded: unknown, json: unknown): string | undefined {
  const got = Array.isArray(json) ? "array" : typeof json;
  const expect = (wanted: string, ok: boolean): string | undefined =>
    ok ? undefined : `expected ${wanted}, got ${got}`;
  if (typeof decoded === "string") return expect("a string", typeof json === "string");
  if (typeof decoded === "boolean") return expect("a boolean", typeof json === "boolean");
  if (typeof decoded === "number") {
    if (Number.isNaN(decoded)) return "not a number";
    return expect("a number or a string", typeof json === "number" || typeof json === "string");
  }
  if (typeof decoded === "bigint") {
    const ok =
      (typeof json === "number" && Number.isInteger(json)) || (typeof json === "string" && /^-?\d+$/.test(json));
    return ok ? undefined : `expected an integer (number or decimal string), got ${JSON.stringify(json)}`;
  }
  if (decoded instanceof Date) {
    if (Number.isNaN(decoded.getTime())) return "not a valid RFC 3339 timestamp";
    return expect("an RFC 3339 string", typeof json === "string" || isObject(json));
  }
  if (decoded instanceof Uint8Array) return expect("a base64 string", typeof json === "string");
  if (Array.isArray(decoded)) return expect("an array", Array.isArray(json));
  return expect("an object", isObject(json));
}

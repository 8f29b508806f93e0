import assert from "node:assert/strict";
import { test } from "node:test";
import { isCode } from "@iotvault/errors";
import { parseMaps } from "./group.js";

const sources = ["postgres://db@127.0.0.1:5432/iot?mode=logical", "kv:gateway-config", "kv:gateway", "rdf:/srv/model"];

void test("--map finds the member source even when source and target both hold '='", () => {
  const maps = parseMaps(
    [
      "postgres://db@127.0.0.1:5432/iot?mode=logical=postgres://db@127.0.0.1:5432/iot_restored?sslmode=disable",
      "kv:gateway-config=kv:restored-config",
      "kv:gateway=kv:restored",
    ],
    sources,
  );
  assert.equal(
    maps.get("postgres://db@127.0.0.1:5432/iot?mode=logical"),
    "postgres://db@127.0.0.1:5432/iot_restored?sslmode=disable",
  );
  assert.equal(maps.get("kv:gateway-config"), "kv:restored-config");
  assert.equal(maps.get("kv:gateway"), "kv:restored");
});

void test("--map naming no member, or with an empty target, is refused and names the members", () => {
  assert.throws(
    () => parseMaps(["kv:gatway=kv:x"], sources),
    (err: unknown) => {
      assert.ok(isCode(err, "INVALID_ARGUMENT"));
      assert.match(err.message, /names no member of the group/);
      assert.match(err.hint ?? "", /kv:gateway-config/);
      return true;
    },
  );
  assert.throws(
    () => parseMaps(["rdf:/srv/model="], sources),
    (err: unknown) => isCode(err, "INVALID_ARGUMENT"),
  );
});

import assert from "node:assert/strict";
import { test } from "node:test";
import { redactTarget } from "./operations.js";

test("restore targets shown in events and results never carry a password", () => {
  assert.equal(redactTarget("postgres://app:s3cret@db:5432/new"), "postgres://app:***@db:5432/new");
  assert.equal(
    redactTarget("sparql+http://store:8890/gsp?password=x&graph=g"),
    "sparql+http://store:8890/gsp?password=***&graph=g",
  );
  assert.equal(redactTarget("/srv/restore"), "/srv/restore");
  assert.equal(redactTarget("kv:config-bucket"), "kv:config-bucket");
});

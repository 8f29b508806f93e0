import assert from "node:assert/strict";
import { test } from "node:test";
import { isCode } from "@iotvault/errors";
import { parseRdf, validateShacl } from "./index.js";
import { sosaShapesTurtle, sosaTurtle } from "./testing/index.js";

void test("generated SOSA data conforms to its shapes", async () => {
  const data = await parseRdf(sosaTurtle({ sensors: 2, observationsPerSensor: 3 }), { format: "turtle" });
  const shapes = await parseRdf(sosaShapesTurtle(), { format: "turtle" });
  const v = await validateShacl(data, shapes);
  assert.equal(v.conforms, true);
  assert.equal(v.violations, 0);
  assert.equal(v.dataTriples, data.length);
});

void test("violations are counted and described (bounded)", async () => {
  const text = sosaTurtle({ sensors: 1, observationsPerSensor: 3 })
    .replace("ex:obs-0-0 a sosa:Observation ; sosa:madeBySensor ex:sensor0 ;", "ex:obs-0-0 a sosa:Observation ;")
    .replace("ex:obs-0-1 a sosa:Observation ; sosa:madeBySensor ex:sensor0 ;", "ex:obs-0-1 a sosa:Observation ;");
  const data = await parseRdf(text, { format: "turtle" });
  const shapes = await parseRdf(sosaShapesTurtle(), { format: "turtle" });
  const v = await validateShacl(data, shapes, { maxResults: 1 });
  assert.equal(v.conforms, false);
  assert.equal(v.violations, 2);
  assert.equal(v.details.length, 1);
  assert.equal(v.details[0]!.severity, "sh:Violation");
  assert.equal(v.details[0]!.path, "http://www.w3.org/ns/sosa/madeBySensor");
  assert.match(v.details[0]!.focusNode, /obs-0-[01]$/);
  await assert.rejects(validateShacl(data, []), (e: unknown) => isCode(e, "INVALID_ARGUMENT"));
});

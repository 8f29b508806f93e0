import assert from "node:assert/strict";
import { test } from "node:test";
import { diffGraphs, parseRdf } from "./index.js";
import { sosaTurtle } from "./testing/index.js";

const parse = (text: string) => parseRdf(text, { format: "turtle" });

void test("identical graphs with other blank node labels and order differ by nothing", async () => {
  const a = await parse(sosaTurtle({ sensors: 2, observationsPerSensor: 5 }));
  const b = [...a].reverse();
  assert.deepEqual(diffGraphs(a, b), { added: 0, removed: 0, sampleAdded: [], sampleRemoved: [] });
});

void test("a changed blank-node result counts its component's triples, nothing else", async () => {
  const before = await parse(sosaTurtle({ sensors: 1, observationsPerSensor: 3 }));
  const text = sosaTurtle({ sensors: 1, observationsPerSensor: 3 });
  const changed = text.replace(/qudt:numericValue "([0-9.]+)"/, 'qudt:numericValue "99.99"');
  const d = diffGraphs(before, await parse(changed), { sampleSize: 5 });
  // The result node: a qudt:QuantityValue, its value, its unit, and the hasResult link.
  assert.equal(d.added, 4);
  assert.equal(d.removed, 4);
  assert.ok(d.sampleAdded.some((l) => l.includes('"99.99"')));
});

void test("ground triples added and removed are counted and sampled", async () => {
  const a = await parse("@prefix ex: <http://ex/> . ex:a ex:p ex:b , ex:c . ex:d ex:p [ ex:q ex:r ] .");
  const b = await parse("@prefix ex: <http://ex/> . ex:a ex:p ex:b , ex:e , ex:f . ex:d ex:p [ ex:q ex:r ] .");
  const d = diffGraphs(a, b);
  assert.equal(d.added, 2);
  assert.equal(d.removed, 1);
  assert.deepEqual(d.sampleRemoved, ["<http://ex/a> <http://ex/p> <http://ex/c> ."]);
  assert.equal(d.sampleAdded.length, 2);
});

void test("cyclic and shared blank nodes fall back to RDFC-1.0 per component", async () => {
  const a = await parse(
    "@prefix ex: <http://ex/> . _:x ex:next _:y . _:y ex:next _:x . _:x ex:v 1 . ex:a ex:p _:x . ex:b ex:p _:y .",
  );
  const b = await parse(
    "@prefix ex: <http://ex/> . _:m ex:v 1 . _:n ex:next _:m . _:m ex:next _:n . ex:b ex:p _:n . ex:a ex:p _:m .",
  );
  assert.equal(diffGraphs(a, b).added, 0);
  const c = await parse(
    "@prefix ex: <http://ex/> . _:m ex:v 2 . _:n ex:next _:m . _:m ex:next _:n . ex:b ex:p _:n . ex:a ex:p _:m .",
  );
  const d = diffGraphs(a, c);
  assert.equal(d.added, 5);
  assert.equal(d.removed, 5);
});

void test("two identical blank-node structures count as two", async () => {
  const a = await parse("@prefix ex: <http://ex/> . ex:a ex:p [ ex:q 1 ] .");
  const b = await parse("@prefix ex: <http://ex/> . ex:a ex:p [ ex:q 1 ] , [ ex:q 1 ] .");
  const d = diffGraphs(a, b);
  assert.equal(d.added, 2);
  assert.equal(d.removed, 0);
});

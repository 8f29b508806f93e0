import assert from "node:assert/strict";
import { test } from "node:test";
import { canonicalize, describeGraphs, ontologiesOf, parseRdf, splitByGraph, valueForms } from "./index.js";
import { sosaTripleCount, sosaTurtle } from "./testing/index.js";

void test("the canonical hash ignores order, blank node labels, duplicates and the serialisation", async () => {
  const a = await parseRdf(sosaTurtle({ sensors: 2, observationsPerSensor: 3 }), { format: "turtle" });
  const ha = await canonicalize(a, { asGraph: true });
  assert.equal(ha.count, sosaTripleCount({ sensors: 2, observationsPerSensor: 3 }));
  // Same triples as N-Triples, reversed, blank nodes renamed, one duplicate added.
  const nt = ha.nquads.split("\n").filter(Boolean).reverse();
  const renamed =
    nt.map((l) => l.replace(/_:c14n(\d+)/g, "_:other$1")).join("\n") +
    "\n" +
    nt[0]!.replace(/_:c14n(\d+)/g, "_:other$1") +
    "\n";
  const b = await parseRdf(renamed, { format: "ntriples" });
  const hb = await canonicalize(b, { asGraph: true });
  assert.equal(hb.hash, ha.hash);
  assert.equal(hb.count, ha.count);
  // A different value changes it.
  const c = await parseRdf(sosaTurtle({ sensors: 2, observationsPerSensor: 3, seed: 9 }), { format: "turtle" });
  assert.notEqual((await canonicalize(c, { asGraph: true })).hash, ha.hash);
});

void test("Turtle, RDF/XML and JSON-LD forms of one graph have one canonical hash", async () => {
  const ttl = `@prefix ex: <http://example.org/> .\nex:s ex:p "o" ; ex:q [ ex:r ex:t ] .\n`;
  const xml = `<?xml version="1.0"?>
<rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#" xmlns:ex="http://example.org/">
  <rdf:Description rdf:about="http://example.org/s">
    <ex:q><rdf:Description><ex:r rdf:resource="http://example.org/t"/></rdf:Description></ex:q>
    <ex:p>o</ex:p>
  </rdf:Description>
</rdf:RDF>`;
  const json = JSON.stringify({
    "@context": { ex: "http://example.org/" },
    "@id": "ex:s",
    "ex:p": "o",
    "ex:q": { "ex:r": { "@id": "ex:t" } },
  });
  const hashes = await Promise.all(
    (
      [
        [ttl, "turtle"],
        [xml, "rdfxml"],
        [json, "jsonld"],
      ] as const
    ).map(async ([text, format]) => (await canonicalize(await parseRdf(text, { format }), { asGraph: true })).hash),
  );
  assert.equal(new Set(hashes).size, 1);
});

void test("describeGraphs: one record per named graph with counts and ontology versions", async () => {
  const trig = `@prefix ex: <http://example.org/> .
@prefix owl: <http://www.w3.org/2002/07/owl#> .
ex:a ex:p ex:b .
ex:g1 { ex:onto a owl:Ontology ; owl:versionIRI ex:onto-2 ; owl:versionInfo "2.0" . ex:x ex:y ex:z . }
ex:g2 { ex:s ex:p [ ex:q 1 ] . }
`;
  const quads = await parseRdf(trig, { format: "trig" });
  assert.deepEqual([...splitByGraph(quads).keys()], ["", "http://example.org/g1", "http://example.org/g2"]);
  const graphs = await describeGraphs(quads);
  assert.deepEqual(
    graphs.map((g) => [g.name, g.triples]),
    [
      ["", 1],
      ["http://example.org/g1", 4],
      ["http://example.org/g2", 2],
    ],
  );
  assert.deepEqual(graphs[1]!.ontologies, [
    { iri: "http://example.org/onto", versionIri: "http://example.org/onto-2", versionInfo: "2.0" },
  ]);
  assert.deepEqual(ontologiesOf(quads.filter((q) => q.graph.termType === "DefaultGraph")), []);
  assert.match(graphs[0]!.canonicalHash, /^[0-9a-f]{64}$/);
});

void test("N3 rules hash with their formulas; a reformatted rule file keeps its hash", async () => {
  const a = "@prefix : <http://ex/> .\n{ ?x :p ?y } => { ?y :q ?x } .\n";
  const b = "@prefix : <http://ex/> .\n\n{\n  ?x :p ?y .\n}\n=>\n{ ?y :q ?x . } .\n";
  const c = "@prefix : <http://ex/> .\n{ ?x :p ?y } => { ?x :q ?y } .\n";
  const [ga] = await describeGraphs(await parseRdf(a, { format: "n3" }));
  const [gb] = await describeGraphs(await parseRdf(b, { format: "n3" }));
  const [gc] = await describeGraphs(await parseRdf(c, { format: "n3" }));
  assert.equal(ga!.canonicalHash, gb!.canonicalHash);
  assert.notEqual(ga!.canonicalHash, gc!.canonicalHash);
  assert.equal(ga!.triples, 3);
});

void test("value forms tell a store's normalised literals from a real change", async () => {
  const x = "http://www.w3.org/2001/XMLSchema#";
  const file = await parseRdf(
    `<http://a> <http://p> "15.20"^^<${x}decimal> , "007"^^<${x}int> , "1.5e3"^^<${x}double> , "1"^^<${x}boolean> , "x" .\n`,
    { format: "turtle" },
  );
  const store = await parseRdf(
    `<http://a> <http://p> "15.2"^^<${x}decimal> , "7"^^<${x}integer> , "1500"^^<${x}double> , "true"^^<${x}boolean> , "x" .\n`,
    { format: "turtle" },
  );
  const hash = async (q: typeof file) => (await canonicalize(q, { asGraph: true })).hash;
  assert.notEqual(await hash(file), await hash(store));
  assert.equal(await hash(valueForms(file)), await hash(valueForms(store)));
  const changed = await parseRdf(`<http://a> <http://p> "15.3"^^<${x}decimal> .\n`, { format: "turtle" });
  const original = await parseRdf(`<http://a> <http://p> "15.30"^^<${x}decimal> .\n`, { format: "turtle" });
  assert.notEqual(
    await hash(valueForms(changed)),
    await hash(valueForms(await parseRdf(`<http://a> <http://p> "15.2"^^<${x}decimal> .\n`, { format: "turtle" }))),
  );
  assert.equal(await hash(valueForms(changed)), await hash(valueForms(original)));
});

import assert from "node:assert/strict";
import { test } from "node:test";
import { isCode } from "@iotvault/errors";
import { errorLine, formatOfMediaType, formatOfPath, localDocumentLoader, parseRdf, sniffRdfXml } from "./index.js";

const TTL = `@prefix ex: <http://example.org/> .
ex:s1 ex:p "v" ; ex:q [ ex:r 1 ] .
`;

void test("formats by file name and media type", () => {
  assert.equal(formatOfPath("models/sosa.ttl"), "turtle");
  assert.equal(formatOfPath("x/thing.td.jsonld"), "jsonld");
  assert.equal(formatOfPath("a.NQ"), "nquads");
  assert.equal(formatOfPath("o.owl"), "rdfxml");
  assert.equal(formatOfPath("shapes.shacl"), "turtle");
  assert.equal(formatOfPath("README"), undefined);
  assert.equal(formatOfPath("notes.txt"), undefined);
  assert.equal(formatOfMediaType("text/turtle; charset=utf-8"), "turtle");
  assert.equal(formatOfMediaType("application/n-triples"), "ntriples");
  assert.equal(formatOfMediaType("text/html"), undefined);
  assert.equal(sniffRdfXml('<?xml version="1.0"?>\n<rdf:RDF xmlns:rdf="x">'), true);
  assert.equal(sniffRdfXml("<html></html>"), false);
});

void test("parses every serialisation into quads", async () => {
  const nt = '<http://example.org/s> <http://example.org/p> "o" .\n';
  const nq = '<http://example.org/s> <http://example.org/p> "o" <http://example.org/g> .\n';
  const trig = "@prefix ex: <http://example.org/> .\nex:g { ex:s ex:p ex:o . }\nex:h { ex:s ex:p ex:o2 . }\n";
  const xml = `<?xml version="1.0"?>
<rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#" xmlns:ex="http://example.org/">
  <rdf:Description rdf:about="http://example.org/s"><ex:p>o</ex:p></rdf:Description>
</rdf:RDF>`;
  const json = JSON.stringify({ "@context": { ex: "http://example.org/" }, "@id": "ex:s", "ex:p": "o" });
  assert.equal((await parseRdf(TTL, { format: "turtle" })).length, 3);
  assert.equal((await parseRdf(Buffer.from(nt), { format: "ntriples" })).length, 1);
  const quads = await parseRdf(nq, { format: "nquads" });
  assert.equal(quads[0]!.graph.value, "http://example.org/g");
  assert.equal((await parseRdf(trig, { format: "trig" })).length, 2);
  assert.equal((await parseRdf(xml, { format: "rdfxml" })).length, 1);
  assert.equal((await parseRdf(json, { format: "jsonld" })).length, 1);
  const n3 = await parseRdf("@prefix : <http://ex/> .\n{ ?x :p ?y } => { ?y :q ?x } .\n", { format: "n3" });
  assert.equal(n3.length, 3);
});

void test("relative IRIs resolve against the base IRI", async () => {
  const quads = await parseRdf("<#a> <#p> <b> .\n", { format: "turtle", baseIri: "file:///models/x.ttl" });
  assert.equal(quads[0]!.subject.value, "file:///models/x.ttl#a");
  assert.equal(quads[0]!.object.value, "file:///models/b");
});

void test("a syntax error names the line of the first error", async () => {
  const bad = "@prefix ex: <http://example.org/> .\nex:a ex:b ex:c .\n\nex:d ex:e .\n";
  await assert.rejects(parseRdf(bad, { format: "turtle" }), (err: unknown) => {
    assert.ok(isCode(err, "INVALID_ARGUMENT"));
    assert.equal(errorLine(err), 4);
    assert.match((err as Error).message, /line 4/);
    return true;
  });
  const xml =
    '<?xml version="1.0"?>\n<rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#">\n<rdf:Description rdf:about="http://x/">\n</rdf:RDF>';
  await assert.rejects(parseRdf(xml, { format: "rdfxml" }), (err: unknown) => errorLine(err) === 4);
  await assert.rejects(
    parseRdf('{\n  "a": 1,\n  oops\n}', { format: "jsonld" }),
    (err: unknown) => errorLine(err) === 3,
  );
});

void test("a WoT Thing Description parses with the shipped TD 1.1 context; unknown contexts are refused offline", async () => {
  const td = {
    "@context": "https://www.w3.org/2022/wot/td/v1.1",
    id: "urn:uuid:0804d572-cce8-422a-bb7c-4412fcd56f06",
    title: "MyLampThing",
    securityDefinitions: { basic_sc: { scheme: "basic", in: "header" } },
    security: "basic_sc",
    properties: { status: { type: "string", forms: [{ href: "https://mylamp.example.com/status" }] } },
  };
  const quads = await parseRdf(JSON.stringify(td), { format: "jsonld", baseIri: "file:///things/lamp.td.jsonld" });
  const predicates = new Set(quads.map((q) => q.predicate.value));
  assert.ok(predicates.has("https://www.w3.org/2019/wot/td#title"));
  assert.ok(predicates.has("https://www.w3.org/2019/wot/td#hasPropertyAffordance"));
  assert.ok(predicates.has("https://www.w3.org/2019/wot/hypermedia#hasTarget"));
  const other = { "@context": "https://schema.org/", name: "x" };
  await assert.rejects(
    parseRdf(JSON.stringify(other), { format: "jsonld" }),
    /https:\/\/schema\.org\/ is not available locally/,
  );
  const extra = localDocumentLoader({ "https://schema.org/": { "@context": { name: "https://schema.org/name" } } });
  const q2 = await parseRdf(JSON.stringify({ ...other, "@id": "urn:x" }), { format: "jsonld", documentLoader: extra });
  assert.equal(q2[0]!.predicate.value, "https://schema.org/name");
});

void test("parsing honours an aborted signal", async () => {
  const ac = new AbortController();
  ac.abort();
  await assert.rejects(parseRdf(TTL, { format: "turtle", signal: ac.signal }), { name: "AbortError" });
});

import assert from "node:assert/strict";
import { test } from "node:test";
import { checkConfig, checkJenaRules, checkRules, configFormatOf, ruleKindOf } from "./index.js";

const JENA = `# Jena rules
@prefix ex: <http://example.org/> .
@include <RDFS>.

[transitive: (?a ex:partOf ?b), (?b ex:partOf ?c) -> (?a ex:partOf ?c)]
[alert: (?o ex:value ?v), greaterThan(?v, 30), notEqual(?o, ex:x) -> (?o rdf:type ex:Alert), print('alert', ?o)]
[backward: (?a ex:near ?b) <- (?b ex:near ?a)]
[nested: (?s rdf:type ex:Sensor) -> [(?s ex:ok 'true'^^xsd:boolean) <- (?s ex:value ?v)]]
(?x ex:a ?y) -> (?y ex:b ?x) .
// a comment
[typed: (?s ex:temp "21.5"^^xsd:decimal), (?s ex:label 'hall'@en) -> (?s ex:known 1.5e3)]
`;

void test("Jena rules: a valid file parses and its rules are counted", () => {
  assert.deepEqual(checkJenaRules(JENA), { ok: true, rules: 7 });
});

void test("Jena rules: the first error is reported with its line", () => {
  const cases: [string, number, RegExp][] = [
    [
      "@prefix ex: <http://example.org/> .\n[r1: (?a ex:p ?b) -> (?b ex:q ?a)\n[r2: (?a ex:p) -> (?a ex:q ?a)]\n",
      3,
      /3 nodes/,
    ],
    [
      "@prefix ex: <http://example.org/> .\n\n[r1: (?a ex:p ?b) -> (?b ex:q ?a)]\n[r2: (?a ex:p) -> (?a ex:q ?a)]\n",
      4,
      /3 nodes/,
    ],
    ["[r1: (?a foo:p ?b) -> (?b rdf:type ?a)]\n", 1, /undeclared prefix "foo:"/],
    ["@prefix ex: <http://example.org/> .\n[r1: (?a ex:p ?b) (?b ex:q ?a)]\n", 2, /expected "->" or "<-"/],
    ["[r1: (?a rdf:type 'open) -> (?a rdf:type ?a)]\n", 1, /unterminated string/],
    ["[r1: (?a rdf:type ?b), (?b rdf:type ?c) <- (?a rdf:type ?c)]\n", 1, /exactly one triple/],
  ];
  for (const [text, line, message] of cases) {
    const r = checkJenaRules(text);
    assert.equal(r.ok, false, text);
    assert.equal(r.error?.line, line, `${text} -> ${r.error?.message}`);
    assert.match(r.error?.message ?? "", message);
  }
});

void test("rule kinds by name and content", () => {
  assert.equal(ruleKindOf("rules/a.n3"), "n3");
  assert.equal(ruleKindOf("rules/infer.rules"), "jena");
  assert.equal(ruleKindOf("shapes/obs.shacl"), "shacl");
  assert.equal(ruleKindOf("shapes/obs.shapes.ttl"), "shacl");
  assert.equal(ruleKindOf("x.ttl", "@prefix sh: <http://www.w3.org/ns/shacl#> .\nex:S a sh:NodeShape ."), "shacl");
  assert.equal(ruleKindOf("x.owl", '<rdf:RDF xmlns:swrl="http://www.w3.org/2003/11/swrl#">'), "swrl");
  assert.equal(ruleKindOf("models/sosa.ttl", "@prefix ex: <http://ex/> ."), undefined);
});

void test("N3, SHACL and SWRL rule files are parse-checked, counted and hashed", async () => {
  const n3 = await checkRules(
    "r.n3",
    "@prefix : <http://ex/> .\n{ ?x :p ?y } => { ?y :q ?x } .\n{ ?x :q ?y } => { ?x :r ?y } .\n",
  );
  assert.equal(n3.ok, true);
  assert.equal(n3.rules, 2);
  assert.match(n3.canonicalHash ?? "", /^[0-9a-f]{64}$/);
  const badN3 = await checkRules("r.n3", "@prefix : <http://ex/> .\n{ ?x :p ?y } => { ?y :q ?x \n");
  assert.equal(badN3.ok, false);
  assert.equal(typeof badN3.error?.line, "number");
  const shacl = await checkRules(
    "s.shacl",
    "@prefix sh: <http://www.w3.org/ns/shacl#> .\n@prefix ex: <http://ex/> .\nex:S a sh:NodeShape ; sh:targetClass ex:C ; sh:rule [ a sh:TripleRule ; sh:subject sh:this ; sh:predicate ex:p ; sh:object ex:o ] .\n",
  );
  assert.deepEqual([shacl.ok, shacl.shapes, shacl.rules], [true, 1, 1]);
  const swrl = `@prefix swrl: <http://www.w3.org/2003/11/swrl#> .
@prefix ex: <http://ex/> .
ex:r1 a swrl:Imp ; swrl:body ex:b1 ; swrl:head ex:h1 .
ex:r2 a swrl:Imp ; swrl:body ex:b2 .
`;
  const s = await checkRules("rules.swrl.ttl", swrl, { kind: "swrl" });
  assert.equal(s.ok, false);
  assert.equal(s.rules, 2);
  assert.match(s.error!.message, /ex\/r2 has no swrl:head/);
});

void test("configuration files: YAML, JSON, TOML, INI and .conf", () => {
  assert.equal(configFormatOf("etc/app.yml"), "yaml");
  assert.equal(configFormatOf("etc/mosquitto.conf"), "conf");
  assert.equal(configFormatOf("etc/x.bin"), undefined);
  assert.deepEqual(checkConfig("a.yaml", "mqtt:\n  port: 1883\n"), { format: "yaml", ok: true });
  const y = checkConfig("a.yaml", "sensors:\n  - temp\n - hum\n");
  assert.equal(y.ok, false);
  assert.equal(y.error?.line, 3);
  const j = checkConfig("a.json", '{\n  "a": 1,\n  "b": \n}\n');
  assert.deepEqual([j.ok, j.error?.line], [false, 4]);
  const t = checkConfig("a.toml", 'title = "x"\n[server]\nport = = 1\n');
  assert.deepEqual([t.ok, t.error?.line], [false, 3]);
  assert.equal(checkConfig("a.toml", 'title = "x"\n[server]\nport = 1\n').ok, true);
  assert.equal(checkConfig("a.ini", "; c\n[main]\nkey = value\nother: 2\n").ok, true);
  const i = checkConfig("a.ini", "[main\nkey = value\n");
  assert.deepEqual([i.ok, i.error?.line], [false, 1]);
  assert.equal(checkConfig("a.conf", "listener 1883\nallow_anonymous false\n").ok, true);
  assert.equal(checkConfig("a.conf", Buffer.from([0xff, 0xfe, 0x00])).ok, false);
});

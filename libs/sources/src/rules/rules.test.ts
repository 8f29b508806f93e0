import assert from "node:assert/strict";
import { mkdir, writeFile } from "node:fs/promises";
import { join } from "node:path";
import { test } from "node:test";
import { describeTree, withSandbox } from "../test-util.js";
import { catalogSummaryOf, loadCatalog } from "../rdf/catalog.js";
import { runBackup, runRestore } from "../rdf/test-support.js";

const JENA = `@prefix ex: <http://example.org/> .
[overheat: (?o ex:value ?v), greaterThan(?v, 30) -> (?o ex:status ex:Alert)]
`;
const N3 = "@prefix : <http://example.org/> .\n{ ?x :partOf ?y . ?y :partOf ?z } => { ?x :partOf ?z } .\n";
const SWRL = `@prefix swrl: <http://www.w3.org/2003/11/swrl#> .
@prefix ex: <http://example.org/> .
ex:rule1 a swrl:Imp ; swrl:body ex:body1 ; swrl:head ex:head1 .
`;
const SHACL_AF = `@prefix sh: <http://www.w3.org/ns/shacl#> .
@prefix ex: <http://example.org/> .
ex:AlertShape a sh:NodeShape ; sh:targetClass ex:Reading ;
  sh:rule [ a sh:TripleRule ; sh:subject sh:this ; sh:predicate ex:checked ; sh:object true ] .
`;

async function makeRules(root: string): Promise<void> {
  await mkdir(join(root, "jena"), { recursive: true });
  await writeFile(join(root, "jena/alerts.rules"), JENA);
  await writeFile(join(root, "transitive.n3"), N3);
  await writeFile(join(root, "owl-rules.swrl.ttl"), SWRL);
  await writeFile(join(root, "alerts.shacl"), SHACL_AF);
}

void test("rules: every kind is parse-checked and counted; a broken file is stored and flagged by name and line", async () => {
  await withSandbox(async ({ dir, repo }) => {
    const src = dir("rules");
    await makeRules(src);
    await writeFile(
      join(src, "jena/broken.rules"),
      "@prefix ex: <http://example.org/> .\n\n[r: (?a ex:p) -> (?a ex:q ?a)]\n",
    );
    const { snapshot, warnings } = await runBackup(repo, `rules:${src}`, { runId: "r1" });
    assert.deepEqual(
      warnings.map((w) => [w.path, /line 3/.test(w.message)]),
      [["jena/broken.rules", true]],
    );
    const catalog = (await loadCatalog(repo, snapshot))!;
    const checks = Object.fromEntries(
      catalog.entries.map((e) => [e.path, [e.rules?.kind, e.rules?.ok, e.rules?.rules]]),
    );
    assert.deepEqual(checks, {
      "alerts.shacl": ["shacl", true, 1],
      "jena/alerts.rules": ["jena", true, 1],
      "jena/broken.rules": ["jena", false, 1],
      "owl-rules.swrl.ttl": ["swrl", true, 1],
      "transitive.n3": ["n3", true, 1],
    });
    const summary = catalogSummaryOf(snapshot)!;
    assert.deepEqual([summary.ruleFiles, summary.rules, summary.errors], [5, 5, 1]);
    assert.match(catalog.entries.find((e) => e.path === "transitive.n3")!.rules!.canonicalHash!, /^[0-9a-f]{64}$/);

    // Restorable alone (one file) or whole, byte for byte.
    const one = dir("one");
    await runRestore(repo, snapshot, one, { include: ["transitive.n3"] });
    assert.deepEqual(Object.keys(await describeTree(one)), ["transitive.n3"]);
    const all = dir("all");
    const r = await runRestore(repo, snapshot, all);
    assert.deepEqual(await describeTree(all), await describeTree(src));
    assert.deepEqual(r.details["flagged"], [
      { path: "jena/broken.rules", line: 3, message: "a triple pattern has 3 nodes, found 2" },
    ]);
  });
});

void test("rules: a reformatted N3 rule file is re-serialised, not changed", async () => {
  await withSandbox(async ({ dir, repo }) => {
    const src = dir("rules");
    await makeRules(src);
    const first = await runBackup(repo, `rules:${src}`, { runId: "r1" });
    await writeFile(
      join(src, "transitive.n3"),
      "@prefix : <http://example.org/> .\n\n{\n  ?x :partOf ?y .\n  ?y :partOf ?z .\n}\n=> { ?x :partOf ?z . } .\n",
    );
    await writeFile(join(src, "jena/alerts.rules"), JENA.replace("30", "35"));
    const second = await runBackup(repo, `rules:${src}`, { runId: "r2", parent: first.snapshot });
    const status = Object.fromEntries(
      (await loadCatalog(repo, second.snapshot))!.entries.map((e) => [e.path, e.status]),
    );
    assert.deepEqual(status, {
      "alerts.shacl": "unchanged",
      "jena/alerts.rules": "changed",
      "owl-rules.swrl.ttl": "unchanged",
      "transitive.n3": "reserialised",
    });
  });
});

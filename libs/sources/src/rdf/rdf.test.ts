import assert from "node:assert/strict";
import { mkdir, readFile, writeFile } from "node:fs/promises";
import { join } from "node:path";
import { test } from "node:test";
import { isCode } from "@iotvault/errors";
import { describeGraphs, parseRdf, toNTriples } from "@iotvault/semantic";
import { sosaShapesTurtle, sosaTurtle, startGraphStore } from "@iotvault/semantic/testing";
import { describeTree, withSandbox } from "../test-util.js";
import { catalogSummaryOf, loadCatalog } from "./catalog.js";
import { diffSnapshots } from "./diff.js";
import { POOL_MIN_BYTES } from "./file-tree.js";
import { runBackup, runRestore } from "./test-support.js";

const TD = JSON.stringify(
  {
    "@context": "https://www.w3.org/2022/wot/td/v1.1",
    id: "urn:dev:ops:32473-WoTLamp-1234",
    title: "MyLampThing",
    securityDefinitions: { nosec_sc: { scheme: "nosec" } },
    security: ["nosec_sc"],
    properties: { status: { type: "string", forms: [{ href: "https://mylamp.example.com/status" }] } },
  },
  null,
  2,
);

const TRIG = `@prefix ex: <http://example.org/> .
@prefix owl: <http://www.w3.org/2002/07/owl#> .
ex:devices { ex:d1 a ex:Device ; ex:serial "A1" . ex:d2 a ex:Device ; ex:serial "B2" . }
ex:vocab { ex:vocab a owl:Ontology ; owl:versionIRI ex:vocab-1.0 . ex:Device a owl:Class . }
`;

async function makeModel(root: string): Promise<void> {
  await mkdir(join(root, "models"), { recursive: true });
  await mkdir(join(root, "things"), { recursive: true });
  await mkdir(join(root, "shapes"), { recursive: true });
  await writeFile(join(root, "models/deployment.ttl"), sosaTurtle({ sensors: 3, observationsPerSensor: 5 }));
  await writeFile(join(root, "models/registry.trig"), TRIG);
  await writeFile(join(root, "things/lamp.td.jsonld"), TD);
  await writeFile(join(root, "shapes/observation.shacl"), sosaShapesTurtle());
  await writeFile(join(root, "README.md"), "not RDF, stored as is\n");
}

void test("rdf: backup records per-graph hashes, counts and ontology versions; restore is byte-identical", async () => {
  await withSandbox(async ({ dir, repo }) => {
    const src = dir("model");
    await makeModel(src);
    const { snapshot, warnings } = await runBackup(repo, `rdf:${src}`, { runId: "r1" });
    assert.deepEqual(warnings, []);
    const summary = catalogSummaryOf(snapshot)!;
    assert.equal(summary.kind, "rdf");
    assert.equal(summary.errors, 0);
    const catalog = (await loadCatalog(repo, snapshot))!;
    const byPath = new Map(catalog.entries.map((e) => [e.path, e]));
    assert.deepEqual(
      [...byPath.keys()],
      ["models/deployment.ttl", "models/registry.trig", "shapes/observation.shacl", "things/lamp.td.jsonld"],
    );
    const deployment = byPath.get("models/deployment.ttl")!;
    assert.equal(deployment.graphs![0]!.triples, 7 + 15 + 135);
    assert.deepEqual(deployment.graphs![0]!.ontologies, [
      { iri: "http://example.org/iot/ontology", versionIri: "http://example.org/iot/ontology/1.0", versionInfo: "1.0" },
    ]);
    assert.deepEqual(
      byPath.get("models/registry.trig")!.graphs!.map((g) => [g.name, g.triples]),
      [
        ["http://example.org/devices", 4],
        ["http://example.org/vocab", 3],
      ],
    );
    assert.ok(byPath.get("things/lamp.td.jsonld")!.graphs![0]!.triples > 5);
    assert.equal(byPath.get("shapes/observation.shacl")!.rules?.kind, "shacl");
    assert.equal(
      summary.triples,
      catalog.entries.reduce((n, e) => n + (e.graphs ?? []).reduce((m, g) => m + g.triples, 0), 0),
    );

    const dst = dir("restored");
    const r = await runRestore(repo, snapshot, dst);
    assert.equal(r.verified, true);
    assert.deepEqual(await describeTree(dst), await describeTree(src));
    assert.equal(r.details["graphs"], summary.graphs);
  });
});

void test("rdf: incremental keeps unchanged files, sees a re-serialised file as no graph change, and flags a bad file by line", async () => {
  await withSandbox(async ({ dir, repo }) => {
    const src = dir("model");
    await makeModel(src);
    const first = await runBackup(repo, `rdf:${src}`, { runId: "r1" });
    // Re-serialise deployment.ttl (same triples, another order and layout) and break the TD.
    const quads = await parseRdf(await readFile(join(src, "models/deployment.ttl")), { format: "turtle" });
    await writeFile(join(src, "models/deployment.ttl"), toNTriples([...quads].reverse()).replaceAll("_:", "_:x"));
    await writeFile(join(src, "things/lamp.td.jsonld"), TD.replace('"title"', '"title":'));
    await writeFile(join(src, "models/registry.trig"), TRIG.replace('"B2"', '"B3"').replace("vocab-1.0", "vocab-1.1"));
    const second = await runBackup(repo, `rdf:${src}`, { runId: "r2", parent: first.snapshot });
    assert.equal(second.warnings.length, 1);
    assert.equal(second.warnings[0]!.path, "things/lamp.td.jsonld");
    assert.match(second.warnings[0]!.message, /line 4/);
    const catalog = (await loadCatalog(repo, second.snapshot))!;
    const status = Object.fromEntries(catalog.entries.map((e) => [e.path, e.status]));
    assert.deepEqual(status, {
      "models/deployment.ttl": "reserialised",
      "models/registry.trig": "changed",
      "shapes/observation.shacl": "unchanged",
      "things/lamp.td.jsonld": "changed",
    });
    assert.equal(catalog.entries.find((e) => e.path === "things/lamp.td.jsonld")!.error?.line, 4);
    assert.equal(second.stats.filesUnchanged, 2); // README.md and the shapes
    assert.equal(catalogSummaryOf(second.snapshot)!.errors, 1);

    const d = await diffSnapshots(repo, first.snapshot, second.snapshot, { sampleSize: 3 });
    assert.deepEqual(
      d.graphs.map((g) => [g.graph, g.change, g.triplesAdded, g.triplesRemoved]),
      [
        ["models/registry.trig <http://example.org/devices>", "changed", 1, 1],
        ["models/registry.trig <http://example.org/vocab>", "changed", 1, 1],
        [
          "things/lamp.td.jsonld",
          "removed",
          0,
          d.graphs.find((g) => g.path === "things/lamp.td.jsonld")!.triplesBefore,
        ],
      ],
    );
    assert.deepEqual(d.graphs[0]!.sampleAdded, ['<http://example.org/d2> <http://example.org/serial> "B3" .']);
    assert.deepEqual(d.ontologyChanges, [
      {
        graph: "models/registry.trig <http://example.org/vocab>",
        ontology: "http://example.org/vocab",
        change: "changed",
        before: { versionIri: "http://example.org/vocab-1.0" },
        after: { versionIri: "http://example.org/vocab-1.1" },
      },
    ]);
    assert.deepEqual([d.filesChanged, d.filesUnchanged, d.filesAdded, d.filesRemoved], [3, 2, 0, 0]);
    assert.equal(d.graphsUnchanged, 2); // deployment.ttl (re-serialised) and the shapes
  });
});

void test("rdf: SHACL validation on restore gives the verdict and the violations", async () => {
  await withSandbox(async ({ dir, repo }) => {
    const src = dir("model");
    await makeModel(src);
    const good = await runBackup(repo, `rdf:${src}`, { runId: "r1" });
    const ok = await runRestore(repo, good.snapshot, dir("ok"), { options: { shacl: "shapes/observation.shacl" } });
    const shacl = ok.details["shacl"] as { conforms: boolean; violations: number; dataTriples: number };
    assert.equal(shacl.conforms, true);
    assert.ok(shacl.dataTriples > 150);

    const text = await readFile(join(src, "models/deployment.ttl"), "utf8");
    await writeFile(
      join(src, "models/deployment.ttl"),
      text.replace("ex:obs-1-2 a sosa:Observation ; sosa:madeBySensor ex:sensor1 ;", "ex:obs-1-2 a sosa:Observation ;"),
    );
    const bad = await runBackup(repo, `rdf:${src}`, { runId: "r2", parent: good.snapshot });
    const r = await runRestore(repo, bad.snapshot, dir("bad"), { options: { shacl: "shapes/observation.shacl" } });
    const verdict = r.details["shacl"] as {
      conforms: boolean;
      violations: number;
      details: { focusNode: string; path: string }[];
    };
    assert.equal(verdict.conforms, false);
    assert.equal(verdict.violations, 1);
    assert.equal(verdict.details[0]!.focusNode, "http://example.org/iot/obs-1-2");
    assert.equal(verdict.details[0]!.path, "http://www.w3.org/ns/sosa/madeBySensor");

    await assert.rejects(
      runRestore(repo, bad.snapshot, dir("none"), { options: { shacl: "shapes/missing.ttl" } }),
      (e: unknown) => isCode(e, "INVALID_ARGUMENT"),
    );
  });
});

void test("rdf: a single file source and include globs", async () => {
  await withSandbox(async ({ dir, repo }) => {
    const src = dir("model");
    await makeModel(src);
    const one = await runBackup(repo, `rdf:${join(src, "models/registry.trig")}`, { runId: "r1" });
    const catalog = (await loadCatalog(repo, one.snapshot))!;
    assert.deepEqual(
      catalog.entries.map((e) => e.path),
      ["registry.trig"],
    );
    const some = await runBackup(repo, `rdf:${src}`, { runId: "r2", include: ["models/**"] });
    assert.deepEqual(
      (await loadCatalog(repo, some.snapshot))!.entries.map((e) => e.path),
      ["models/deployment.ttl", "models/registry.trig"],
    );
    const dst = dir("dst");
    await runRestore(repo, some.snapshot, dst, { include: ["models/registry.trig"] });
    assert.deepEqual(Object.keys(await describeTree(dst)), ["models", "models/registry.trig"]);
  });
});

void test("rdf: a model restores into a SPARQL store, graph by graph or one graph alone", async () => {
  const store = await startGraphStore();
  try {
    await withSandbox(async ({ dir, repo }) => {
      const src = dir("model");
      await makeModel(src);
      const { snapshot } = await runBackup(repo, `rdf:${src}`, { runId: "r1" });
      const target = `sparql+${store.gspUrl}`;
      const one = await runRestore(repo, snapshot, target, { include: ["http://example.org/vocab"] });
      assert.equal(one.verified, true);
      assert.deepEqual(one.details["restored"], ["http://example.org/vocab"]);
      assert.equal(store.dump("http://example.org/devices"), "");
      await assert.rejects(runRestore(repo, snapshot, target), (e: unknown) => isCode(e, "ALREADY_EXISTS"));
      const all = await runRestore(repo, snapshot, target, {
        overwrite: true,
        options: { "graph-base": "http://example.org/files/", shacl: "shapes/observation.shacl" },
      });
      assert.equal(all.verified, true);
      // oxigraph keeps literal values ("21.50"^^xsd:decimal reads back as "21.5"): verified by value forms.
      assert.ok((all.details["literalValueForms"] as number) >= 1);
      assert.deepEqual((all.details["restored"] as string[]).sort(), [
        "http://example.org/devices",
        "http://example.org/files/models/deployment.ttl",
        "http://example.org/files/shapes/observation.shacl",
        "http://example.org/files/things/lamp.td.jsonld",
        "http://example.org/vocab",
      ]);
      const dumped = await parseRdf(store.dump("http://example.org/files/models/deployment.ttl"), {
        format: "ntriples",
      });
      assert.equal(dumped.length, 7 + 15 + 135);
      assert.equal((all.details["shacl"] as { conforms: boolean }).conforms, true);
    });
  } finally {
    await store.close();
  }
});

void test("rdf: large files are analysed in worker threads, with the same records and flags", async () => {
  await withSandbox(async ({ dir, repo }) => {
    const src = dir("big");
    await mkdir(src, { recursive: true });
    const big = sosaTurtle({ sensors: 4, observationsPerSensor: 400 });
    assert.ok(big.length > POOL_MIN_BYTES);
    await writeFile(join(src, "a.ttl"), big);
    await writeFile(join(src, "b.ttl"), sosaTurtle({ sensors: 4, observationsPerSensor: 400, seed: 2 }));
    await writeFile(join(src, "c.ttl"), big + "\nex:broken ex:p .\n");
    const { snapshot, warnings } = await runBackup(repo, `rdf:${src}`, { runId: "r1" });
    assert.deepEqual(
      warnings.map((w) => w.path),
      ["c.ttl"],
    );
    assert.match(warnings[0]!.message, new RegExp(`line ${big.split("\n").length + 1}`));
    const catalog = (await loadCatalog(repo, snapshot))!;
    const [inline] = await describeGraphs(await parseRdf(big, { format: "turtle", baseIri: "file:///a.ttl" }));
    assert.deepEqual(catalog.entries[0]!.graphs, [inline]);
    assert.equal(catalog.entries[1]!.graphs![0]!.triples, inline!.triples);
    assert.notEqual(catalog.entries[1]!.graphs![0]!.canonicalHash, inline!.canonicalHash);
    assert.equal(catalog.entries[2]!.error?.line, big.split("\n").length + 1);
  });
});

void test("rdf: a snapshot whose catalog is lost still restores its files", async () => {
  await withSandbox(async ({ dir, repo }) => {
    const src = dir("model");
    await makeModel(src);
    const { snapshot } = await runBackup(repo, `rdf:${src}`, { runId: "r1" });
    assert.equal(await repo.deleteSealedObject(catalogSummaryOf(snapshot)!.catalog), true);
    const dst = dir("restored");
    const r = await runRestore(repo, snapshot, dst);
    assert.deepEqual(await describeTree(dst), await describeTree(src));
    assert.match(String(r.details["catalogProblem"]), /semantic catalog/);
    await assert.rejects(
      runRestore(repo, snapshot, dir("x"), { options: { shacl: "shapes/observation.shacl" } }),
      (e: unknown) => isCode(e, "INVALID_ARGUMENT"),
    );
  });
});

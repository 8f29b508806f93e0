/**
 * The real-world suite over the shared semantic fixtures (SOSA/SSN, WoT TD ontology, contexts
 * and shapes, Thing Descriptions, N3 rules): backup, byte-identical restore, bad files flagged
 * by line, canonical hashes of serialisation twins, and a diff after an edit. Runs where the
 * fixtures directory exists (IOTVAULT_FIXTURES_DIR, or the shared fixtures beside the
 * repository, as on CI); reports a skip elsewhere.
 */
import assert from "node:assert/strict";
import { existsSync } from "node:fs";
import { cp, readFile, writeFile } from "node:fs/promises";
import { join, resolve } from "node:path";
import { fileURLToPath } from "node:url";
import { test } from "node:test";
import { describeTree, withSandbox } from "../test-util.js";
import { catalogSummaryOf, loadCatalog } from "./catalog.js";
import { diffSnapshots } from "./diff.js";
import { runBackup, runRestore } from "./test-support.js";

const REPO_ROOT = resolve(fileURLToPath(import.meta.url), "../../../../..");
const FIXTURES = process.env["IOTVAULT_FIXTURES_DIR"] ?? resolve(REPO_ROOT, "../shared/fixtures/semantic");
const skip = existsSync(join(FIXTURES, "SOURCES.md"))
  ? false
  : `no fixtures directory at ${FIXTURES} (set IOTVAULT_FIXTURES_DIR)`;

void test(
  "fixtures: backup, byte-identical restore, flagged files, twins, and a diff after an edit",
  { skip },
  async () => {
    await withSandbox(async ({ dir, repo }) => {
      const src = dir("fixtures");
      await cp(FIXTURES, src, { recursive: true, preserveTimestamps: true });
      const first = await runBackup(repo, `rdf:${src}`, { runId: "r1" });
      const flagged = new Map(first.warnings.map((w) => [w.path, w.message]));
      assert.match(flagged.get("w3c-sdw-sosa-ssn/ssn/rdf/examples/dht22.ttl") ?? "", /line 114/);
      assert.match(
        flagged.get("w3c-sdw-sosa-ssn/ssn/rdf/examples/complex-sensors/entailments.shacl.ttl") ?? "",
        /line 1/,
      );
      assert.match(
        flagged.get("w3c-wot-thing-description/test-bed/data/coverage/semantic/lamp.jsonld") ?? "",
        /not available locally/,
      );
      const catalog = (await loadCatalog(repo, first.snapshot))!;
      const entry = (p: string) => catalog.entries.find((e) => e.path === p)!;
      const triples = (p: string) => entry(p).graphs!.reduce((n, g) => n + g.triples, 0);
      assert.equal(triples("w3c-sdw-sosa-ssn/ssn/integrated/ssn.ttl"), 520);
      assert.equal(triples("w3c-wot-thing-description/validation/td-validation.ttl"), 959);
      assert.equal(triples("eclipse-thingweb-playground/examples/td/1-simple-default/basic-td.td.jsonld"), 26);
      assert.equal(entry("eyereasoner-eye/reasoning/control-system/rules-001.n3").rules?.ok, true);
      const ssn = entry("w3c-sdw-sosa-ssn/ssn/integrated/ssn.ttl").graphs![0]!;
      assert.equal(ssn.ontologies[0]!.iri, "http://www.w3.org/ns/ssn/");
      // Twins: the N-Triples and JSON-LD forms of SSN-EXT are one graph.
      const twin = (ext: string) =>
        entry(`w3c-sdw-sosa-ssn/ssn-extensions/rdf/ssn-ext.${ext}`).graphs![0]!.canonicalHash;
      assert.equal(twin("nt"), twin("jsonld"));
      assert.ok(catalogSummaryOf(first.snapshot)!.graphs > 35);

      const dst = dir("restored");
      const r = await runRestore(repo, first.snapshot, dst);
      assert.equal(r.verified, true);
      assert.deepEqual(await describeTree(dst), await describeTree(src));

      // Edit: one more observation in an example, a new version of the integrated SOSA.
      const house = join(src, "w3c-sdw-sosa-ssn/ssn/rdf/examples/house134.ttl");
      await writeFile(
        house,
        (await readFile(house, "utf8")) + "\n<http://example.org/extra> a <http://www.w3.org/ns/sosa/Observation> .\n",
      );
      const sosa = join(src, "w3c-sdw-sosa-ssn/ssn/integrated/sosa.ttl");
      const text = await readFile(sosa, "utf8");
      assert.ok(text.includes("owl:Ontology"));
      await writeFile(
        sosa,
        text.replace(
          "sosa: a owl:Ontology , voaf:Vocabulary ;",
          "sosa: a owl:Ontology , voaf:Vocabulary ;\n  owl:versionIRI <http://www.w3.org/ns/sosa/2099> ;",
        ),
      );
      const second = await runBackup(repo, `rdf:${src}`, { runId: "r2", parent: first.snapshot });
      const d = await diffSnapshots(repo, first.snapshot, second.snapshot);
      const changed = Object.fromEntries(d.graphs.map((g) => [g.graph, [g.change, g.triplesAdded, g.triplesRemoved]]));
      assert.deepEqual(changed["w3c-sdw-sosa-ssn/ssn/rdf/examples/house134.ttl"], ["changed", 1, 0]);
      assert.deepEqual(changed["w3c-sdw-sosa-ssn/ssn/integrated/sosa.ttl"], ["changed", 1, 0]);
      assert.equal(d.graphs.length, 2);
      assert.deepEqual(
        d.ontologyChanges.map((o) => [o.graph, o.change, o.after?.versionIri]),
        [["w3c-sdw-sosa-ssn/ssn/integrated/sosa.ttl", "changed", "http://www.w3.org/ns/sosa/2099"]],
      );
      assert.equal(d.filesChanged, 2);
    });
  },
);

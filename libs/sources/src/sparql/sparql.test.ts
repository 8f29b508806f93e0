import assert from "node:assert/strict";
import { test } from "node:test";
import { isCode } from "@iotvault/errors";
import { canonicalize, GraphStoreClient, parseRdf } from "@iotvault/semantic";
import {
  sosaShapesTurtle,
  sosaTurtle,
  startGraphStore,
  startVirtuoso,
  virtuosoUnavailableReason,
} from "@iotvault/semantic/testing";
import { withSandbox } from "../test-util.js";
import { loadCatalog } from "../rdf/catalog.js";
import { diffSnapshots } from "../rdf/diff.js";
import { runBackup, runRestore } from "../rdf/test-support.js";
import { graphPath, parseSparqlUrl } from "./adapter.js";

const G = {
  obs: "http://example.org/graphs/observations",
  vocab: "http://example.org/graphs/vocab",
  shapes: "http://example.org/graphs/shapes",
};
const VOCAB = `@prefix owl: <http://www.w3.org/2002/07/owl#> .
<http://example.org/vocab> a owl:Ontology ; owl:versionIRI <http://example.org/vocab/1> .
<http://example.org/vocab#Room> a owl:Class .
`;

async function hashOf(text: string): Promise<string> {
  return (await canonicalize(await parseRdf(text, { format: "ntriples" }), { asGraph: true })).hash;
}

void test("sparql URLs: endpoint, query endpoint and graph parameter; no credentials", () => {
  assert.deepEqual(
    parseSparqlUrl("sparql+http://127.0.0.1:8890/sparql-graph-crud-auth?graph-param=graph-uri&query-endpoint=/sparql"),
    {
      endpoint: "http://127.0.0.1:8890/sparql-graph-crud-auth",
      queryEndpoint: "http://127.0.0.1:8890/sparql",
      graphParam: "graph-uri",
      systemGraphs: false,
    },
  );
  assert.throws(() => parseSparqlUrl("sparql+http://u:p@host/gsp"), /credentials are not allowed/);
  assert.throws(
    () => parseSparqlUrl("sparql:/x"),
    (e: unknown) => isCode(e, "INVALID_ARGUMENT"),
  );
});

void test("sparql (oxigraph): graph-level backup, incremental by canonical hash, diff, whole and one-graph restore", async () => {
  const source = await startGraphStore({ basicAuth: { user: "backup", password: "s3cret" } });
  const target = await startGraphStore();
  const services = { sparqlCredentials: () => ({ user: "backup", password: "s3cret" }) };
  try {
    await withSandbox(async ({ repo }) => {
      source.load(G.obs, sosaTurtle({ sensors: 2, observationsPerSensor: 4 }), "text/turtle");
      source.load(G.vocab, VOCAB, "text/turtle");
      source.load(G.shapes, sosaShapesTurtle(), "text/turtle");
      const url = `sparql+${source.gspUrl}`;
      const first = await runBackup(repo, url, { runId: "r1", services });
      const catalog = (await loadCatalog(repo, first.snapshot))!;
      assert.deepEqual(catalog.entries.map((e) => e.graph).sort(), [G.obs, G.shapes, G.vocab]);
      const obs = catalog.entries.find((e) => e.graph === G.obs)!;
      assert.equal(obs.path, graphPath(G.obs));
      assert.equal(obs.graphs![0]!.triples, 7 + 10 + 72);
      assert.equal(obs.graphs![0]!.canonicalHash, await hashOf(source.dump(G.obs)));
      assert.equal(
        catalog.entries.find((e) => e.graph === G.vocab)!.graphs![0]!.ontologies[0]!.versionIri,
        "http://example.org/vocab/1",
      );

      // Without credentials the store says no.
      await assert.rejects(runBackup(repo, url, { runId: "r-denied" }), (e: unknown) => isCode(e, "PERMISSION_DENIED"));

      // Change one value of one graph: the others are taken from the parent.
      source.store.update(`DELETE { GRAPH <${G.vocab}> { ?o <http://www.w3.org/2002/07/owl#versionIRI> ?v } }
        INSERT { GRAPH <${G.vocab}> { ?o <http://www.w3.org/2002/07/owl#versionIRI> <http://example.org/vocab/2> } }
        WHERE { GRAPH <${G.vocab}> { ?o <http://www.w3.org/2002/07/owl#versionIRI> ?v } }`);
      const second = await runBackup(repo, url, { runId: "r2", services, parent: first.snapshot });
      const status = Object.fromEntries(
        (await loadCatalog(repo, second.snapshot))!.entries.map((e) => [e.graph, e.status]),
      );
      assert.deepEqual(status, { [G.obs]: "unchanged", [G.vocab]: "changed", [G.shapes]: "unchanged" });
      assert.equal(second.stats.filesUnchanged, 2);
      assert.equal(second.stats.filesChanged, 1);

      const d = await diffSnapshots(repo, first.snapshot, second.snapshot);
      assert.deepEqual(
        d.graphs.map((g) => [g.graph, g.change, g.triplesAdded, g.triplesRemoved]),
        [[G.vocab, "changed", 1, 1]],
      );
      assert.deepEqual(
        d.ontologyChanges.map((o) => [o.ontology, o.before?.versionIri, o.after?.versionIri]),
        [["http://example.org/vocab", "http://example.org/vocab/1", "http://example.org/vocab/2"]],
      );
      assert.equal(d.graphsUnchanged, 2);

      // One named graph alone.
      const t = `sparql+${target.gspUrl}`;
      const one = await runRestore(repo, first.snapshot, t, { include: [G.vocab] });
      assert.equal(one.verified, true);
      assert.equal(one.files, 1);
      assert.equal(target.dump(G.obs), "");
      const hashIn = (graph: string) => catalog.entries.find((e) => e.graph === graph)!.graphs![0]!.canonicalHash;
      assert.equal(await hashOf(target.dump(G.vocab)), hashIn(G.vocab));
      // The whole store; the graph restored before is refused without --overwrite.
      await assert.rejects(runRestore(repo, first.snapshot, t), (e: unknown) => {
        assert.ok(isCode(e, "ALREADY_EXISTS"));
        assert.match(
          (e as Error).message,
          /1 graph\(s\) already hold triples in the target: http:\/\/example.org\/graphs\/vocab/,
        );
        return true;
      });
      const whole = await runRestore(repo, first.snapshot, t, { overwrite: true, options: { shacl: G.shapes } });
      assert.equal(whole.files, 3);
      for (const g of Object.values(G)) assert.equal(await hashOf(target.dump(g)), hashIn(g));
      assert.equal((whole.details["shacl"] as { conforms: boolean }).conforms, true);
      await assert.rejects(
        runRestore(repo, first.snapshot, t, { include: ["http://example.org/nothing"] }),
        (e: unknown) => isCode(e, "NOT_FOUND"),
      );
    });
  } finally {
    await source.close();
    await target.close();
  }
});

const noVirtuoso = virtuosoUnavailableReason() ?? false;

void test(
  "sparql (Virtuoso, Digest auth): backup graph by graph and restore one named graph",
  { skip: noVirtuoso },
  async () => {
    const v = await startVirtuoso();
    try {
      const store = new GraphStoreClient({ endpoint: v.gspUrl, credentials: v.credentials });
      await store.putGraph(G.obs, sosaTurtle({ sensors: 2, observationsPerSensor: 3 }), "turtle");
      await store.putGraph(G.vocab, VOCAB, "turtle");
      const services = { sparqlCredentials: () => v.credentials };
      await withSandbox(async ({ repo }) => {
        const url = `sparql+${v.gspUrl}`;
        const { snapshot } = await runBackup(repo, url, { runId: "r1", services });
        const catalog = (await loadCatalog(repo, snapshot))!;
        assert.deepEqual(catalog.entries.map((e) => e.graph).sort(), [G.obs, G.vocab]);
        const before = catalog.entries.find((e) => e.graph === G.obs)!.graphs![0]!;
        assert.equal(before.triples, 7 + 10 + 54);
        // Lose the observations graph, restore it alone, read it back.
        await store.deleteGraph(G.obs);
        assert.equal(await store.graphExists(G.obs), false);
        const r = await runRestore(repo, snapshot, url, { include: [G.obs], services });
        assert.equal(r.verified, true);
        const back = await store.getGraph(G.obs);
        const quads = await parseRdf(back.text, { format: back.format });
        assert.equal((await canonicalize(quads, { asGraph: true })).hash, before.canonicalHash);
      });
    } finally {
      await v.stop();
    }
  },
);

/**
 * End to end for semantic models, rules and configuration through the five services and the
 * real CLI: an rdf: model backed up twice, `iotvault diff` (graphs, triples, ontology versions),
 * a restore with SHACL validation whose verdict lands in the result, the restore and verify
 * events and the catalog; a SPARQL store (in-process oxigraph behind the Graph Store Protocol,
 * Basic auth from the services' environment) restored one named graph alone into another
 * store; a NATS KV bucket restored with the revision check.
 */
import assert from "node:assert/strict";
import { mkdir, readFile, writeFile } from "node:fs/promises";
import { join } from "node:path";
import { after, before, describe, it } from "node:test";
import { connect } from "@nats-io/transport-node";
import { Kvm } from "@nats-io/kv";
import pg from "pg";
import { canonicalize, parseRdf } from "@iotvault/semantic";
import { sosaShapesTurtle, sosaTurtle, startGraphStore, type GraphStoreServer } from "@iotvault/semantic/testing";
import { tempDir, waitFor, type TempDir } from "@iotvault/testing";
import { TestStack } from "./harness.js";
import { comparable, walk } from "./tree.js";

const VOCAB = (v: string) => `@prefix owl: <http://www.w3.org/2002/07/owl#> .
@prefix ex: <http://example.org/> .
ex:vocab a owl:Ontology ; owl:versionIRI <http://example.org/vocab/${v}> ; owl:versionInfo "${v}" .
ex:Room a owl:Class .
`;

describe("semantic sources end to end (rdf:, sparql+http:, kv:, diff, SHACL)", { timeout: 600_000 }, () => {
  let stack: TestStack;
  let data: TempDir;
  let store: GraphStoreServer;
  let copy: GraphStoreServer;
  let model: string;

  before(async () => {
    [store, copy] = await Promise.all([
      startGraphStore({ basicAuth: { user: "iot", password: "graph-secret" } }),
      startGraphStore({ basicAuth: { user: "iot", password: "graph-secret" } }),
    ]);
    stack = await TestStack.start({
      extraEnv: { IOTVAULT_SPARQL_USER: "iot", IOTVAULT_SPARQL_PASSWORD: "graph-secret" },
    });
    data = await tempDir("iotvault-e2e-semantic-");
    model = join(data.path, "model");
    await mkdir(join(model, "shapes"), { recursive: true });
    await writeFile(join(model, "deployment.ttl"), sosaTurtle({ sensors: 2, observationsPerSensor: 5 }));
    await writeFile(join(model, "vocab.ttl"), VOCAB("1.0"));
    await writeFile(join(model, "shapes/observation.shacl"), sosaShapesTurtle());
    await writeFile(join(model, "broken.n3"), "@prefix : <http://example.org/> .\n{ ?x :p ?y } => { ?y :q ?x \n");
    await stack.cliJson(["repo", "init", "main", "--url", `file://${join(data.path, "repository")}`]);
  });

  after(async () => {
    await stack?.stop();
    await data?.cleanup();
    await store?.close();
    await copy?.close();
  });

  it("rdf: two backups, diff with graphs, triples and ontology versions, and a SHACL-checked restore", async () => {
    await stack.cliJson(["job", "create", "model", "--source", `rdf:${model}`, "--repo", "main"]);
    const first = await stack.cliJson(["backup", "model", "--wait"]);
    assert.equal(first.status, "RUN_STATUS_SUCCEEDED", JSON.stringify(first));
    assert.equal(Number(first.stats.warnings), 1); // broken.n3, flagged and stored

    await writeFile(join(model, "vocab.ttl"), VOCAB("1.1"));
    const text = await readFile(join(model, "deployment.ttl"), "utf8");
    await writeFile(
      join(model, "deployment.ttl"),
      text.replace("ex:obs-1-3 a sosa:Observation ; sosa:madeBySensor ex:sensor1 ;", "ex:obs-1-3 a sosa:Observation ;"),
    );
    const second = await stack.cliJson(["backup", "model", "--wait"]);
    assert.equal(second.status, "RUN_STATUS_SUCCEEDED");

    const d = await stack.cliJson(["diff", first.snapshotId, second.snapshotId]);
    const graphs = Object.fromEntries(
      d.graphs.map((g: any) => [g.graph, [g.change, Number(g.triplesAdded), Number(g.triplesRemoved)]]),
    );
    assert.deepEqual(graphs, { "deployment.ttl": ["changed", 0, 1], "vocab.ttl": ["changed", 2, 2] });
    assert.deepEqual(
      d.ontologyChanges.map((o: any) => [o.ontology, o.versionIriBefore, o.versionIriAfter]),
      [["http://example.org/vocab", "http://example.org/vocab/1.0", "http://example.org/vocab/1.1"]],
    );
    assert.equal(Number(d.filesChanged), 2);
    const human = await stack.cli(["diff", first.snapshotId.slice(0, 10), second.snapshotId.slice(0, 10)]);
    assert.equal(human.code, 0, human.stderr);
    assert.match(human.stdout, /graphs: 2 changed, 0 added, 0 removed, 1 unchanged; triples \+2 -3/);
    assert.match(
      human.stdout,
      /changed +http:\/\/example.org\/vocab +http:\/\/example.org\/vocab\/1.0 -> http:\/\/example.org\/vocab\/1.1/,
    );

    const target = join(data.path, "restored");
    // The data does not conform: the restore completes (the files are back) and the CLI exits 1
    // so that a script notices the verdict.
    const run = await stack.cli([
      "restore",
      second.snapshotId,
      "--to",
      target,
      "--option",
      "shacl=shapes/observation.shacl",
      "--json",
    ]);
    assert.equal(run.code, 1, `${run.stdout}\n${run.stderr}`);
    const r = JSON.parse(run.stdout);
    assert.equal(r.verified, true);
    assert.deepEqual(comparable(await walk(target)), comparable(await walk(model)));
    const details = JSON.parse(r.details);
    assert.equal(details.shacl.conforms, false);
    assert.equal(details.shacl.violations, 1);
    assert.equal(details.shacl.details[0].focusNode, "http://example.org/iot/obs-1-3");
    assert.deepEqual(
      details.flagged.map((f: any) => [f.path, f.line]),
      [["broken.n3", 3]],
    );

    // The verdict is in the catalog: the restore's result and a verification of check "shacl".
    const client = new pg.Client({ connectionString: stack.db.url });
    await client.connect();
    try {
      const row = await waitFor(
        async () =>
          (await client.query("SELECT ok, problems FROM verifications WHERE verify_id LIKE 'vf-shacl-%'")).rows[0],
        { timeoutMs: 15_000, what: "the SHACL verdict in the catalog" },
      );
      assert.equal(row.ok, false);
      assert.equal(row.problems.check, "shacl");
      assert.equal(row.problems.problems[0].kind, "SHACL_VIOLATION");
      const restore = await waitFor(
        async () =>
          (
            await client.query(
              "SELECT result FROM restores WHERE status = 'SUCCEEDED' AND result->>'details' LIKE '%shacl%'",
            )
          ).rows[0],
        { timeoutMs: 15_000, what: "the restore in the catalog" },
      );
      assert.equal(JSON.parse(restore.result.details).shacl.violations, 1);
    } finally {
      await client.end();
    }
  });

  it("sparql: a store backed up graph by graph, one named graph restored alone into another store", async () => {
    store.load(
      "http://example.org/g/observations",
      sosaTurtle({ sensors: 1, observationsPerSensor: 3 }),
      "text/turtle",
    );
    store.load("http://example.org/g/vocab", VOCAB("2.0"), "text/turtle");
    await stack.cliJson(["job", "create", "store", "--source", `sparql+${store.gspUrl}`, "--repo", "main"]);
    const b = await stack.cliJson(["backup", "store", "--wait"]);
    assert.equal(b.status, "RUN_STATUS_SUCCEEDED", JSON.stringify(b));
    const r = await stack.cliJson([
      "restore",
      b.snapshotId,
      "--to",
      `sparql+${copy.gspUrl}`,
      "--include",
      "http://example.org/g/vocab",
    ]);
    assert.equal(r.verified, true);
    assert.equal(JSON.parse(r.details).graphs, 1);
    assert.equal(copy.dump("http://example.org/g/observations"), "");
    const hash = async (t: string) =>
      (await canonicalize(await parseRdf(t, { format: "ntriples" }), { asGraph: true })).hash;
    assert.equal(
      await hash(copy.dump("http://example.org/g/vocab")),
      await hash(store.dump("http://example.org/g/vocab")),
    );
    // The graph exists now: a second restore is refused unless --overwrite.
    const again = await stack.cli([
      "restore",
      b.snapshotId,
      "--to",
      `sparql+${copy.gspUrl}`,
      "--include",
      "http://example.org/g/vocab",
    ]);
    assert.notEqual(again.code, 0);
    assert.match(again.stderr, /already hold triples in the target: http:\/\/example.org\/g\/vocab/);
  });

  it("kv: keys with revisions; a restore over changed keys is refused naming them, and forced", async () => {
    const nc = await connect({ servers: stack.nats.url });
    try {
      const kv = await new Kvm(nc).create("gateway");
      await kv.put("mqtt.port", "1883");
      await kv.put("mqtt.host", "broker");
      await stack.cliJson(["job", "create", "kvjob", "--source", "kv:gateway", "--repo", "main"]);
      const b = await stack.cliJson(["backup", "kvjob", "--wait"]);
      assert.equal(b.status, "RUN_STATUS_SUCCEEDED", JSON.stringify(b));
      await kv.put("mqtt.port", "8883");
      const refused = await stack.cli(["restore", b.snapshotId, "--to", "kv:gateway"]);
      assert.equal(refused.code, 1);
      assert.match(
        refused.stderr,
        /1 key\(s\) of gateway changed since the backup and were not overwritten: mqtt\.port/,
      );
      const forced = await stack.cliJson(["restore", b.snapshotId, "--to", "kv:gateway", "--option", "force=true"]);
      assert.equal(forced.verified, true);
      assert.equal(new TextDecoder().decode((await kv.get("mqtt.port"))?.value), "1883");
    } finally {
      await nc.close();
    }
  });
});

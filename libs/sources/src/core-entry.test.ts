import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import { test } from "node:test";
import { isCode } from "@iotvault/errors";
import { configAdapter } from "./config/adapter.js";
import { kvAdapter } from "./kv/adapter.js";
import { rdfAdapter } from "./rdf/adapter.js";
import { sourceAdapterFor } from "./registry.js";
import { rulesAdapter } from "./rules/adapter.js";
import { sparqlAdapter } from "./sparql/adapter.js";

/** The RDF stack's CommonJS packages a process has loaded (they show in require.cache). */
function rdfPackagesLoadedBy(script: string): string[] {
  const r = spawnSync(
    process.execPath,
    [
      "--input-type=module",
      "-e",
      `import { createRequire } from "node:module";
${script}
const cache = Object.keys(createRequire(import.meta.url).cache);
const names = cache.map((k) => /node_modules\\/(n3|jsonld|rdf-canonize|oxigraph)\\//.exec(k)?.[1]).filter(Boolean);
console.log(JSON.stringify([...new Set(names)].sort()));`,
    ],
    { encoding: "utf8", timeout: 60_000 },
  );
  assert.equal(r.status, 0, r.stderr);
  return JSON.parse(r.stdout) as string[];
}

void test("the core entry checks every kind of source URL without loading the RDF stack", () => {
  const core = JSON.stringify(new URL("./core.js", import.meta.url).href);
  const loaded = rdfPackagesLoadedBy(`const s = await import(${core});
for (const url of ["fs:/srv", "rdf:/m", "rules:/r", "config:/c", "kv:bucket", "sparql+http://h:7878/store", "postgres://u@h/db?mode=physical"]) {
  s.validateSourceUrl(url);
  s.sourceAdapterFor(url);
}`);
  assert.deepEqual(loaded, []);
  // The check can fail: the package's main entry loads them.
  const main = JSON.stringify(new URL("./index.js", import.meta.url).href);
  assert.deepEqual(rdfPackagesLoadedBy(`await import(${main});`), ["jsonld", "n3", "rdf-canonize"]);
});

void test("an adapter loaded on first use checks URLs as the adapter itself does", () => {
  const cases: [typeof rdfAdapter, string[]][] = [
    [rdfAdapter, ["rdf:/models", "rdf:relative", "rdf:", "rdf:/a/../b"]],
    [rulesAdapter, ["rules:/rules", "rules:", "rules:x"]],
    [configAdapter, ["config:/etc/iot", "config:", "config:etc"]],
    [kvAdapter, ["kv:bucket", "kv://bucket", "kv:", "kv:bad bucket"]],
    [
      sparqlAdapter,
      ["sparql+http://h:7878/store", "sparql+https://h/s?graph-param=g", "sparql+http://u:p@h/s", "sparql+http://"],
    ],
  ];
  const outcome = (validate: (url: string) => void, url: string) => {
    try {
      validate(url);
      return "ok";
    } catch (err) {
      assert.ok(isCode(err, "INVALID_ARGUMENT"), String(err));
      return (err as Error).message;
    }
  };
  for (const [adapter, urls] of cases) {
    for (const url of urls) {
      const registered = sourceAdapterFor(url);
      assert.notEqual(registered, adapter, "the registry holds a stand-in until first use");
      assert.equal(
        outcome((u) => registered.validate(u), url),
        outcome((u) => adapter.validate(u), url),
        url,
      );
    }
  }
});

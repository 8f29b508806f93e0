/**
 * The real-world suite: every RDF file of the shared semantic fixtures (SOSA/SSN, WoT TD
 * ontology, contexts and shapes, Thing Descriptions, N3 rules) parses to the triple count the
 * fixtures' SOURCES.md records, unparseable ones fail with a line, and serialisation twins have
 * one canonical hash. Runs where the fixtures directory exists (IOTVAULT_FIXTURES_DIR, or the
 * shared fixtures beside the repository, as on CI); reports a skip elsewhere.
 */
import assert from "node:assert/strict";
import { existsSync, readFileSync } from "node:fs";
import { join, resolve } from "node:path";
import { fileURLToPath } from "node:url";
import { test } from "node:test";
import { canonicalize, checkRules, errorLine, formatOfPath, parseRdf, ruleKindOf } from "./index.js";

const REPO_ROOT = resolve(fileURLToPath(import.meta.url), "../../../..");
const FIXTURES = process.env["IOTVAULT_FIXTURES_DIR"] ?? resolve(REPO_ROOT, "../shared/fixtures/semantic");
const skip = existsSync(join(FIXTURES, "SOURCES.md"))
  ? false
  : `no fixtures directory at ${FIXTURES} (set IOTVAULT_FIXTURES_DIR)`;

interface Row {
  file: string;
  format: string;
  triples: number | undefined;
}

function rows(): Row[] {
  const out: Row[] = [];
  for (const line of readFileSync(join(FIXTURES, "SOURCES.md"), "utf8").split("\n")) {
    const cells = line.split("|").map((c) => c.trim());
    const file = /^`([^`]+)`$/.exec(cells[1] ?? "")?.[1];
    if (!file || !file.includes("/") || cells.length < 10) continue;
    const n = Number((cells[7] ?? "").replace(/,/g, ""));
    out.push({ file, format: cells[5] ?? "", triples: Number.isFinite(n) && cells[7] !== "" ? n : undefined });
  }
  return out;
}

void test("every fixture parses to the triple count SOURCES.md records", { skip }, async () => {
  const table = rows();
  assert.ok(table.length >= 40, `SOURCES.md lists ${table.length} files`);
  let checked = 0;
  for (const row of table) {
    const format = formatOfPath(row.file);
    if (!format) continue;
    const text = readFileSync(join(FIXTURES, row.file), "utf8");
    const parsed = await parseRdf(text, { format, baseIri: `file:///${row.file}` }).then(
      (q) => q,
      (e: unknown) => e as Error,
    );
    if (row.triples === undefined) {
      assert.ok(parsed instanceof Error, `${row.file} is marked n/a but parsed`);
      continue;
    }
    assert.ok(!(parsed instanceof Error), `${row.file}: ${parsed instanceof Error ? parsed.message : ""}`);
    assert.equal(parsed.length, row.triples, row.file);
    checked++;
  }
  assert.ok(checked >= 35, `${checked} files checked`);
});

void test("known-bad fixtures fail with the line of the first error", { skip }, async () => {
  const dht = "w3c-sdw-sosa-ssn/ssn/rdf/examples/dht22.ttl";
  await assert.rejects(
    parseRdf(readFileSync(join(FIXTURES, dht)), { format: "turtle" }),
    (e: unknown) => errorLine(e) === 114,
  );
  const frag = "w3c-sdw-sosa-ssn/ssn/rdf/examples/complex-sensors/entailments.shacl.ttl";
  const check = await checkRules(frag, readFileSync(join(FIXTURES, frag), "utf8"));
  assert.equal(check.kind, "shacl");
  assert.equal(check.ok, false);
  assert.equal(check.error?.line, 1);
});

void test("serialisation twins of SSN-EXT have one canonical hash; N3 rules are counted", { skip }, async () => {
  const base = "w3c-sdw-sosa-ssn/ssn-extensions/rdf/ssn-ext";
  const canon: Record<string, { hash: string; nquads: string }> = {};
  for (const ext of ["ttl", "nt", "jsonld"]) {
    const file = `${base}.${ext}`;
    const quads = await parseRdf(readFileSync(join(FIXTURES, file)), {
      format: formatOfPath(file)!,
      baseIri: "file:///ssn-ext",
    });
    const c = await canonicalize(quads, { asGraph: true });
    assert.equal(c.count, 145, file);
    canon[ext] = c;
  }
  assert.equal(canon["nt"]!.hash, canon["jsonld"]!.hash);
  // Upstream, four multi-line literals of the Turtle twin have LF line ends where the others
  // have CRLF: a real difference the canonical hash must see, and the only one.
  assert.notEqual(canon["ttl"]!.hash, canon["nt"]!.hash);
  const sorted = (t: string) => t.split("\n").sort().join("\n");
  assert.equal(sorted(canon["nt"]!.nquads.replaceAll("\\r\\n", "\\n")), sorted(canon["ttl"]!.nquads));
  const rules = "eyereasoner-eye/reasoning/control-system/rules-001.n3";
  const text = readFileSync(join(FIXTURES, rules), "utf8");
  assert.equal(ruleKindOf(rules), "n3");
  const check = await checkRules(rules, text);
  assert.equal(check.ok, true);
  assert.ok(check.rules >= 4, `${check.rules} rules`);
});

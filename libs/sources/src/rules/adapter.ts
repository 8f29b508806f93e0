/**
 * The inference-rules source `rules:/path` (a directory or one file): SHACL shapes and SHACL-AF
 * rules, N3 rules, SWRL in RDF and Apache Jena rule files. Each is parse-checked at backup (an
 * unparseable file is still stored byte for byte and flagged by name and line), hashed (SHA-256
 * of the bytes, plus the RDFC-1.0 hash of RDF-based rules), and restorable alone (`--include`)
 * or with the rest of the snapshot.
 */
import { checkRules, formatOfPath, ruleKindOf } from "@iotvault/semantic";
import type { SourceAdapter } from "../adapter.js";
import { analyseRdf, problemOf } from "../rdf/adapter.js";
import { backupFileTree, type Analysis } from "../rdf/file-tree.js";
import { restoreFileTree } from "../rdf/restore-files.js";
import { parsePathUrl } from "../rdf/url.js";

/** Analyses one file of a rules: source. */
export async function analyseRule(path: string, bytes: Buffer, signal: AbortSignal): Promise<Analysis> {
  const text = bytes.toString("utf8");
  if (ruleKindOf(path, text) !== undefined) return analyseRdf(path, bytes, signal);
  // A plain RDF file in a rules directory is treated as SHACL (shapes are RDF); any other file as Jena rules.
  const kind = formatOfPath(path) !== undefined ? "shacl" : "jena";
  if (kind === "jena") return { format: "jena-rules", rules: await checkRules(path, text, { kind, signal }) };
  const a = await analyseRdf(path, bytes, signal);
  return { ...a, rules: await checkRules(path, text, { kind, baseIri: `file:///${path}`, signal }) };
}

const RULE_NAME = /\.(n3|rules|rule|jena|shacl|swrl|ttl|trig|nt|nq|rdf|owl|jsonld)$/i;

export const rulesAdapter: SourceAdapter = {
  schemes: ["rules"],
  validate(url) {
    parsePathUrl(url, "rules");
  },
  backup(ctx) {
    return backupFileTree(ctx, {
      kind: "rules",
      root: parsePathUrl(ctx.job.source, "rules"),
      isCandidate: (p) => RULE_NAME.test(p),
      analyse: analyseRule,
      problem: problemOf,
      pool: "rules",
    });
  },
  restore: restoreFileTree,
};

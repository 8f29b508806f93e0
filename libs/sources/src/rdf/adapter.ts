/**
 * The semantic-model source `rdf:/path` (a directory or one file): RDF in Turtle, N-Triples,
 * N-Quads, TriG, RDF/XML, JSON-LD (W3C WoT Thing Descriptions included, contexts from local
 * copies) and N3. Files are stored byte for byte; per graph the catalog records the RDFC-1.0
 * canonical hash, the triple count and the ontology IRIs and versions. Rule files inside the
 * model (N3, Jena, SHACL, SWRL) are parse-checked too, so a model and its rules restore together.
 */
import { toIotvaultError } from "@iotvault/errors";
import {
  checkRules,
  describeGraphs,
  errorLine,
  formatOfPath,
  parseRdf,
  ruleKindOf,
  sniffRdfXml,
} from "@iotvault/semantic";
import type { SourceAdapter } from "../adapter.js";
import { backupFileTree, type Analysis } from "./file-tree.js";
import { restoreFileTree } from "./restore-files.js";
import { parsePathUrl } from "./url.js";

/** Analyses one RDF file: its graphs, and its rule check when it is a rule file. */
export async function analyseRdf(path: string, bytes: Buffer, signal: AbortSignal): Promise<Analysis> {
  const text = bytes.toString("utf8");
  const rdfFormat = formatOfPath(path);
  const kind = ruleKindOf(path, text);
  if (kind === "jena" || (rdfFormat === undefined && kind === undefined)) {
    return kind ? { format: "jena-rules", rules: await checkRules(path, text, { kind, signal }) } : {};
  }
  if (rdfFormat === "rdfxml" && path.toLowerCase().endsWith(".xml") && !sniffRdfXml(text)) return { format: "xml" };
  const format = rdfFormat ?? "turtle";
  const baseIri = `file:///${path}`;
  let analysis: Analysis = { format };
  try {
    const quads = await parseRdf(text, { format, baseIri, signal });
    analysis = { format, graphs: await describeGraphs(quads, { signal }) };
  } catch (err) {
    signal.throwIfAborted();
    const line = errorLine(err);
    analysis = { format, error: { ...(line ? { line } : {}), message: toIotvaultError(err).message } };
  }
  if (kind) analysis.rules = await checkRules(path, text, { kind, baseIri, signal });
  return analysis;
}

/** The warning text for a file that did not parse or check. */
export function problemOf(a: Analysis): string | undefined {
  const e =
    a.error ??
    (a.rules?.ok === false ? a.rules.error : undefined) ??
    (a.config?.ok === false ? a.config.error : undefined);
  if (!e) return undefined;
  const where = e.line && !e.message.includes(`line ${e.line}`) ? ` (line ${e.line})` : "";
  return `stored byte for byte but it does not parse${where}: ${e.message}`;
}

export const rdfAdapter: SourceAdapter = {
  schemes: ["rdf"],
  validate(url) {
    parsePathUrl(url, "rdf");
  },
  backup(ctx) {
    return backupFileTree(ctx, {
      kind: "rdf",
      root: parsePathUrl(ctx.job.source, "rdf"),
      isCandidate: (p) => formatOfPath(p) !== undefined || ruleKindOf(p) !== undefined,
      analyse: analyseRdf,
      problem: problemOf,
      pool: "rdf",
    });
  },
  restore: restoreFileTree,
};

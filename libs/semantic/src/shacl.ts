/**
 * SHACL validation with `rdf-validate-shacl` (Zazuko's maintained SHACL Core engine): the
 * verdict and a bounded list of results, as JSON-ready values for a restore result, an event
 * and the catalog.
 */
import type { Quad, Term } from "@rdfjs/types";
import datasetFactory from "@rdfjs/dataset";
import SHACLValidator from "rdf-validate-shacl";
import { IotvaultError } from "@iotvault/errors";

export interface ShaclResult {
  severity: string;
  focusNode: string;
  path: string;
  value: string;
  message: string;
  sourceShape: string;
  constraint: string;
}

export interface ShaclVerdict {
  conforms: boolean;
  /** Results of severity sh:Violation. */
  violations: number;
  /** All results (violations, warnings, infos). */
  results: number;
  /** The first `maxResults` results. */
  details: ShaclResult[];
  /** Triples validated and shape triples used. */
  dataTriples: number;
  shapeTriples: number;
}

export interface ShaclOptions {
  /** Results listed in `details` (default 100). */
  maxResults?: number | undefined;
}

const SH = "http://www.w3.org/ns/shacl#";

function show(term: Term | undefined): string {
  if (!term) return "";
  if (term.termType === "BlankNode") return `_:${term.value}`;
  return term.value;
}

/**
 * Validates `data` against the shapes in `shapes`.
 *
 * ```ts
 * const verdict = await validateShacl(dataQuads, shapeQuads);
 * if (!verdict.conforms) console.log(verdict.violations, verdict.details[0]?.message);
 * ```
 */
export async function validateShacl(
  data: readonly Quad[],
  shapes: readonly Quad[],
  options: ShaclOptions = {},
): Promise<ShaclVerdict> {
  if (shapes.length === 0) {
    throw new IotvaultError("INVALID_ARGUMENT", "the SHACL shapes graph is empty", {
      hint: "name a shapes file or graph that exists in the snapshot",
    });
  }
  const validator = new SHACLValidator(datasetFactory.dataset([...shapes]));
  const report = await validator.validate(datasetFactory.dataset([...data]));
  const max = options.maxResults ?? 100;
  const details: ShaclResult[] = [];
  let violations = 0;
  for (const r of report.results) {
    const severity = show(r.severity);
    if (severity === `${SH}Violation`) violations++;
    if (details.length >= max) continue;
    details.push({
      severity: severity.replace(SH, "sh:"),
      focusNode: show(r.focusNode),
      path: show(r.path),
      value: show(r.value),
      message: r.message.map((m) => m.value).join("; "),
      sourceShape: show(r.sourceShape),
      constraint: show(r.sourceConstraintComponent).replace(SH, "sh:"),
    });
  }
  return {
    conforms: report.conforms,
    violations,
    results: report.results.length,
    details,
    dataTriples: data.length,
    shapeTriples: shapes.length,
  };
}

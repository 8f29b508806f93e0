/**
 * Parse checks of inference-rule files: SHACL shapes and SHACL-AF rules, N3 rules, SWRL in RDF
 * and Apache Jena rule files. A check never throws for a bad file: it says what is wrong and on
 * which line, so that the file is still backed up byte for byte and flagged.
 */
import type { Quad } from "@rdfjs/types";
import { toIotvaultError } from "@iotvault/errors";
import { formatOfPath, sniffRdfXml, type RdfFormat } from "./formats.js";
import { describeGraphs } from "./graphs.js";
import { checkJenaRules } from "./jena.js";
import { errorLine, parseRdf } from "./parse.js";

export type RuleKind = "shacl" | "n3" | "swrl" | "jena";

export interface RuleCheck {
  kind: RuleKind;
  ok: boolean;
  /** Rules found: N3 implications, SWRL `swrl:Imp`, Jena rules, SHACL `sh:rule` values. */
  rules: number;
  /** SHACL only: node and property shapes declared. */
  shapes?: number;
  /** RDF-based kinds: RDFC-1.0 canonical hash of the file's triples, and their count. */
  canonicalHash?: string;
  triples?: number;
  error?: { line?: number; message: string };
}

const SH = "http://www.w3.org/ns/shacl#";
const SWRL = "http://www.w3.org/2003/11/swrl#";
const LOG = "http://www.w3.org/2000/10/swap/log#";
const RDF_TYPE = "http://www.w3.org/1999/02/22-rdf-syntax-ns#type";

/**
 * The rule kind of a file, by name and (for generic RDF names) content: `.n3` is N3, `.rules` /
 * `.jena` / `.rule` Jena, `.shacl` / `*.shapes.ttl` / `*.shacl.ttl` SHACL, `.swrl` SWRL; a Turtle
 * or RDF/XML file that uses the SHACL or SWRL namespace is SHACL or SWRL; otherwise undefined.
 */
export function ruleKindOf(path: string, text?: string): RuleKind | undefined {
  const name = path.slice(path.lastIndexOf("/") + 1).toLowerCase();
  if (name.endsWith(".n3")) return "n3";
  if (/\.(rules|rule|jena)$/.test(name)) return "jena";
  if (/\.shacl$|\.(shapes|shacl)\.(ttl|trig|nt|jsonld|rdf)$/.test(name)) return "shacl";
  if (name.endsWith(".swrl")) return "swrl";
  if (text === undefined || formatOfPath(name) === undefined) return undefined;
  const head = text.slice(0, 1 << 16);
  if (head.includes(SWRL)) return "swrl";
  if (
    head.includes(SH) &&
    /\bsh:(NodeShape|PropertyShape|rule|property|targetClass|path)\b|shacl#(NodeShape|PropertyShape|rule)/.test(head)
  ) {
    return "shacl";
  }
  return undefined;
}

function rdfFormatFor(kind: RuleKind, path: string, text: string): RdfFormat {
  if (kind === "n3") return "n3";
  const f = formatOfPath(path);
  if (f === "rdfxml" || (f === undefined && sniffRdfXml(text))) return "rdfxml";
  if (kind === "swrl" && f === undefined) return sniffRdfXml(text) ? "rdfxml" : "turtle";
  return f ?? "turtle";
}

/**
 * Checks one rule file.
 *
 * ```ts
 * const check = await checkRules("rules/alerts.n3", await readFile(path, "utf8"));
 * if (!check.ok) console.warn(`${path}: line ${check.error?.line}: ${check.error?.message}`);
 * ```
 */
export async function checkRules(
  path: string,
  text: string,
  options: { kind?: RuleKind | undefined; baseIri?: string | undefined; signal?: AbortSignal | undefined } = {},
): Promise<RuleCheck> {
  const kind = options.kind ?? ruleKindOf(path, text) ?? "jena";
  if (kind === "jena") {
    const r = checkJenaRules(text);
    return { kind, ok: r.ok, rules: r.rules, ...(r.error ? { error: r.error } : {}) };
  }
  let quads: Quad[];
  try {
    quads = await parseRdf(text, {
      format: rdfFormatFor(kind, path, text),
      baseIri: options.baseIri,
      signal: options.signal,
    });
  } catch (err) {
    options.signal?.throwIfAborted();
    const line = errorLine(err);
    return { kind, ok: false, rules: 0, error: { ...(line ? { line } : {}), message: toIotvaultError(err).message } };
  }
  const graphs = await describeGraphs(quads, { signal: options.signal });
  const triples = graphs.reduce((n, g) => n + g.triples, 0);
  const hash =
    graphs.length === 1 ? graphs[0]!.canonicalHash : graphs.map((g) => `${g.name}=${g.canonicalHash}`).join(",");
  const base = { kind, canonicalHash: hash, triples };
  switch (kind) {
    case "n3":
      return {
        ...base,
        ok: true,
        rules: quads.filter((q) => q.predicate.value === `${LOG}implies` || q.predicate.value === `${LOG}impliedBy`)
          .length,
      };
    case "shacl": {
      const shapes = new Set(
        quads
          .filter(
            (q) =>
              q.predicate.value === RDF_TYPE &&
              (q.object.value === `${SH}NodeShape` || q.object.value === `${SH}PropertyShape`),
          )
          .map((q) => q.subject.value),
      );
      const rules = quads.filter((q) => q.predicate.value === `${SH}rule`).length;
      return { ...base, ok: true, rules, shapes: shapes.size };
    }
    case "swrl":
      return checkSwrl(quads, base);
  }
}

function checkSwrl(
  quads: readonly Quad[],
  base: { kind: RuleKind; canonicalHash: string; triples: number },
): RuleCheck {
  const imps = new Set(
    quads.filter((q) => q.predicate.value === RDF_TYPE && q.object.value === `${SWRL}Imp`).map((q) => q.subject.value),
  );
  for (const imp of imps) {
    const has = (p: string) => quads.some((q) => q.subject.value === imp && q.predicate.value === `${SWRL}${p}`);
    if (!has("head"))
      return { ...base, ok: false, rules: imps.size, error: { message: `SWRL rule ${imp} has no swrl:head` } };
    if (!has("body"))
      return { ...base, ok: false, rules: imps.size, error: { message: `SWRL rule ${imp} has no swrl:body` } };
  }
  return { ...base, ok: true, rules: imps.size };
}

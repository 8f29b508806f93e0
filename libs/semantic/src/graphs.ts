/**
 * What iotvault records per graph: its RDFC-1.0 canonical hash, triple count, and the ontology
 * IRIs (`?o a owl:Ontology`) with their `owl:versionIRI` and `owl:versionInfo`.
 */
import type { Quad } from "@rdfjs/types";
import { canonicalize, type CanonicalOptions } from "./canonical.js";
import { graphName } from "./terms.js";

const RDF_TYPE = "http://www.w3.org/1999/02/22-rdf-syntax-ns#type";
const OWL = "http://www.w3.org/2002/07/owl#";

export interface OntologyInfo {
  iri: string;
  versionIri?: string;
  versionInfo?: string;
}

export interface GraphRecord {
  /** "" for the default graph, the graph IRI, or `_:id` for an N3 formula / blank graph name. */
  name: string;
  /** Hex SHA-256 of the RDFC-1.0 canonical N-Quads of the graph's triples (in the default graph). */
  canonicalHash: string;
  /** Distinct triples. */
  triples: number;
  ontologies: OntologyInfo[];
}

/** Quads grouped by graph name, in first-seen order. */
export function splitByGraph(quads: readonly Quad[]): Map<string, Quad[]> {
  const out = new Map<string, Quad[]>();
  for (const q of quads) {
    const name = graphName(q);
    let list = out.get(name);
    if (!list) out.set(name, (list = []));
    list.push(q);
  }
  return out;
}

/** The ontologies a graph declares, sorted by IRI. */
export function ontologiesOf(quads: readonly Quad[]): OntologyInfo[] {
  const found = new Map<string, OntologyInfo>();
  for (const q of quads) {
    if (q.predicate.value === RDF_TYPE && q.object.value === `${OWL}Ontology` && q.subject.termType === "NamedNode") {
      if (!found.has(q.subject.value)) found.set(q.subject.value, { iri: q.subject.value });
    }
  }
  for (const q of quads) {
    const o = found.get(q.subject.value);
    if (!o || q.subject.termType !== "NamedNode") continue;
    if (q.predicate.value === `${OWL}versionIRI` && o.versionIri === undefined) o.versionIri = q.object.value;
    if (q.predicate.value === `${OWL}versionInfo` && o.versionInfo === undefined) o.versionInfo = q.object.value;
  }
  return [...found.values()].sort((a, b) => (a.iri < b.iri ? -1 : a.iri > b.iri ? 1 : 0));
}

/**
 * One record per graph of a dataset (the default graph first when present, then by name).
 * N3 formulas (blank graph names) are folded into the default graph's record, so that a rule
 * file is one graph whose hash covers its rules.
 *
 * ```ts
 * for (const g of await describeGraphs(await parseRdf(text, { format: "trig" }))) console.log(g.name, g.triples);
 * ```
 */
export async function describeGraphs(quads: readonly Quad[], options: CanonicalOptions = {}): Promise<GraphRecord[]> {
  const groups = new Map<string, Quad[]>();
  for (const [name, list] of splitByGraph(quads)) {
    const key = name.startsWith("_:") ? "" : name;
    const into = groups.get(key);
    if (into) into.push(...list);
    else groups.set(key, [...list]);
  }
  const names = [...groups.keys()].sort((a, b) => (a === "" ? -1 : b === "" ? 1 : a < b ? -1 : a > b ? 1 : 0));
  const out: GraphRecord[] = [];
  for (const name of names) {
    const list = groups.get(name)!;
    const formulas = list.some((q) => q.graph.termType === "BlankNode");
    // With formulas the graph structure matters (which triple is in which rule): hash as a dataset.
    const c = await canonicalize(list, { ...options, asGraph: !formulas });
    out.push({ name, canonicalHash: c.hash, triples: c.count, ontologies: ontologiesOf(list) });
  }
  return out;
}

/**
 * RDF/JS terms and quads as N-Triples / N-Quads text (the escaping of RDF 1.1 N-Triples), and
 * plain-object copies of terms for the canonicaliser.
 */
import type { Quad, Term } from "@rdfjs/types";
import { DataFactory } from "n3";

const XSD_STRING = "http://www.w3.org/2001/XMLSchema#string";
const RDF_LANG_STRING = "http://www.w3.org/1999/02/22-rdf-syntax-ns#langString";

function escapeLiteral(value: string): string {
  return value.replace(/[\\"\n\r]/g, (c) => (c === "\\" ? "\\\\" : c === '"' ? '\\"' : c === "\n" ? "\\n" : "\\r"));
}

function escapeIri(value: string): string {
  // Characters not allowed in an IRIREF are written as \u escapes (control characters included).
  return value.replace(
    // eslint-disable-next-line no-control-regex
    /[\u0000-\u0020<>"{}|^`\\]/g,
    (c) => `\\u${c.charCodeAt(0).toString(16).toUpperCase().padStart(4, "0")}`,
  );
}

/** One term in N-Triples syntax. N3 variables are written `?name` (not valid N-Triples). */
export function termToString(term: Term): string {
  switch (term.termType) {
    case "NamedNode":
      return `<${escapeIri(term.value)}>`;
    case "BlankNode":
      return `_:${term.value}`;
    case "Literal": {
      const body = `"${escapeLiteral(term.value)}"`;
      if (term.language) return `${body}@${term.language}`;
      const dt = term.datatype?.value;
      return dt && dt !== XSD_STRING && dt !== RDF_LANG_STRING ? `${body}^^<${escapeIri(dt)}>` : body;
    }
    case "Variable":
      return `?${term.value}`;
    case "DefaultGraph":
      return "";
    default:
      return `<${escapeIri((term as { value: string }).value)}>`;
  }
}

/** `s p o .` — the quad's triple as one N-Triples line (without the newline). */
export function tripleToString(q: Quad): string {
  return `${termToString(q.subject)} ${termToString(q.predicate)} ${termToString(q.object)} .`;
}

/** `s p o g .` — one N-Quads line (the graph left out for the default graph). */
export function quadToString(q: Quad): string {
  const g = q.graph.termType === "DefaultGraph" ? "" : ` ${termToString(q.graph)}`;
  return `${termToString(q.subject)} ${termToString(q.predicate)} ${termToString(q.object)}${g} .`;
}

/** The name of a quad's graph as iotvault records it: "" for the default graph, else its IRI or `_:id`. */
export function graphName(q: Quad): string {
  const g = q.graph;
  if (g.termType === "DefaultGraph") return "";
  return g.termType === "BlankNode" ? `_:${g.value}` : g.value;
}

/** Serialises quads as N-Triples (graphs dropped) text, one line each, in the given order. */
export function toNTriples(quads: Iterable<Quad>): string {
  let out = "";
  for (const q of quads) out += tripleToString(q) + "\n";
  return out;
}

/** Serialises quads as N-Quads text, one line each, in the given order. */
export function toNQuads(quads: Iterable<Quad>): string {
  let out = "";
  for (const q of quads) out += quadToString(q) + "\n";
  return out;
}

/** The quads' triples in the default graph (names dropped), as new quads. */
export function inDefaultGraph(quads: readonly Quad[]): Quad[] {
  return quads.map(
    (q) => DataFactory.quad(q.subject as never, q.predicate as never, q.object as never) as unknown as Quad,
  );
}

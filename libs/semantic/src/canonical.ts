/**
 * RDFC-1.0 canonical form and hash of a graph or dataset, with `rdf-canonize` fed RDF/JS quads
 * (never an N-Quads string: its own parser is quadratic on large inputs). Duplicate triples
 * are dropped first (an RDF graph is a set); N3 variables become IRIs `urn:iotvault:n3-var:<name>`
 * so that a rule file can be hashed too.
 */
import { createHash } from "node:crypto";
import type { Quad, Term } from "@rdfjs/types";
import canonize from "rdf-canonize";
import { IotvaultError } from "@iotvault/errors";

export interface CanonicalOptions {
  /** Put every quad in the default graph first (the hash of a graph independent of its name). */
  asGraph?: boolean | undefined;
  /**
   * RDFC-1.0 work limit (rdf-canonize `maxWorkFactor`, default 1): graphs whose blank nodes
   * need more deep iterations fail with RESOURCE_EXHAUSTED instead of running for hours.
   */
  maxWorkFactor?: number | undefined;
  signal?: AbortSignal | undefined;
}

export interface CanonicalResult {
  /** The canonical N-Quads (sorted lines, blank nodes labelled `_:c14nN`). */
  nquads: string;
  /** Hex SHA-256 of `nquads` (UTF-8). */
  hash: string;
  /** Distinct quads. */
  count: number;
}

const DEFAULT_GRAPH = { termType: "DefaultGraph", value: "" } as const;

function plain(term: Term): unknown {
  if (term.termType === "Variable") return { termType: "NamedNode", value: `urn:iotvault:n3-var:${term.value}` };
  return term;
}

/** A cheap identity key of a term (not N-Triples: no escaping, just unambiguous). */
function termKey(t: Term): string {
  switch (t.termType) {
    case "Literal":
      return `L${t.value}\u0000${t.language || t.datatype?.value || ""}`;
    case "NamedNode":
      return `N${t.value}`;
    case "BlankNode":
      return `B${t.value}`;
    case "Variable":
      return `V${t.value}`;
    default:
      return "D";
  }
}

/** Distinct quads (equal terms, in the same graph unless `asGraph`), optionally moved to the default graph. */
export function distinctQuads(quads: readonly Quad[], asGraph = false): Quad[] {
  const seen = new Set<string>();
  const out: Quad[] = [];
  for (const q of quads) {
    const triple = `${termKey(q.subject)}\u0001${termKey(q.predicate)}\u0001${termKey(q.object)}`;
    const key = asGraph ? triple : `${triple}\u0001${termKey(q.graph)}`;
    if (seen.has(key)) continue;
    seen.add(key);
    out.push(q);
  }
  return out;
}

function prepare(quads: readonly Quad[], asGraph: boolean): unknown[] {
  const hasVariables = quads.some(
    (q) => q.subject.termType === "Variable" || q.predicate.termType === "Variable" || q.object.termType === "Variable",
  );
  if (!hasVariables && !asGraph) return quads as unknown as unknown[];
  return quads.map((q) => ({
    subject: plain(q.subject),
    predicate: plain(q.predicate),
    object: plain(q.object),
    graph: asGraph ? DEFAULT_GRAPH : plain(q.graph),
  }));
}

/**
 * The canonical N-Quads of `quads` and their SHA-256.
 *
 * ```ts
 * const { hash, count } = await canonicalize(quads, { asGraph: true });
 * ```
 */
export async function canonicalize(quads: readonly Quad[], options: CanonicalOptions = {}): Promise<CanonicalResult> {
  const distinct = distinctQuads(quads, options.asGraph ?? false);
  let nquads: string;
  try {
    nquads = await canonize.canonize(prepare(distinct, options.asGraph ?? false), {
      algorithm: "RDFC-1.0",
      format: "application/n-quads",
      maxWorkFactor: options.maxWorkFactor ?? 1,
      ...(options.signal ? { signal: options.signal } : {}),
    });
  } catch (err) {
    options.signal?.throwIfAborted();
    throw new IotvaultError("RESOURCE_EXHAUSTED", `RDFC-1.0 canonicalisation failed: ${(err as Error).message}`, {
      hint: "the graph's blank nodes are too symmetric for the work limit; it is stored byte for byte without a canonical hash",
      retryable: false,
      cause: err,
    });
  }
  return { nquads, hash: sha256Hex(nquads), count: distinct.length };
}

/** Canonical N-Quads of a small set of quads, synchronously (used per blank-node component). */
export function canonicalizeSync(quads: readonly Quad[]): string {
  return canonize._canonizeSync(prepare(distinctQuads(quads, true), true), {
    algorithm: "RDFC-1.0",
    format: "application/n-quads",
    maxWorkFactor: 2,
    timeout: 0,
  });
}

export function sha256Hex(data: string | Uint8Array): string {
  return createHash("sha256").update(data).digest("hex");
}

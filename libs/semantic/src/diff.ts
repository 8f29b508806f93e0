/**
 * Blank-node-safe difference of two RDF graphs.
 *
 * Triples without blank nodes are compared as sets of N-Triples lines. Triples with blank nodes
 * are grouped into components (blank nodes linked by a triple belong together); each component
 * gets a signature that does not depend on blank node labels — a Merkle hash for tree-shaped
 * components (every blank node reached from at most one other), the RDFC-1.0 canonical form of
 * the component otherwise — and components are compared as multisets of signatures. A change
 * inside a component (e.g. one observation's blank-node result) counts the component's old
 * triples as removed and its new ones as added: blank nodes have no identity across graphs.
 */
import { createHash } from "node:crypto";
import type { Quad, Term } from "@rdfjs/types";
import { canonicalizeSync, distinctQuads } from "./canonical.js";
import { termToString, tripleToString } from "./terms.js";

export interface GraphDiff {
  added: number;
  removed: number;
  /** Up to `sampleSize` added / removed triples as N-Triples lines, sorted. */
  sampleAdded: string[];
  sampleRemoved: string[];
}

export interface DiffOptions {
  /** Triples listed in each sample (default 10). */
  sampleSize?: number | undefined;
}

interface Component {
  signature: string;
  triples: Quad[];
}

const isBlank = (t: Term) => t.termType === "BlankNode";

/** Splits distinct triples into ground lines and blank-node components. */
function partition(quads: readonly Quad[]): { ground: Set<string>; components: Component[] } {
  const ground = new Set<string>();
  const parent = new Map<string, string>();
  const find = (x: string): string => {
    let root = x;
    while (parent.get(root) !== root) root = parent.get(root)!;
    let cur = x;
    while (cur !== root) {
      const next = parent.get(cur)!;
      parent.set(cur, root);
      cur = next;
    }
    return root;
  };
  const add = (x: string) => {
    if (!parent.has(x)) parent.set(x, x);
  };
  const withBlanks: Quad[] = [];
  for (const q of distinctQuads(quads, true)) {
    const s = isBlank(q.subject);
    const o = isBlank(q.object);
    if (!s && !o) {
      ground.add(tripleToString(q));
      continue;
    }
    withBlanks.push(q);
    if (s) add(q.subject.value);
    if (o) add(q.object.value);
    if (s && o) parent.set(find(q.subject.value), find(q.object.value));
  }
  const groups = new Map<string, Quad[]>();
  for (const q of withBlanks) {
    const root = find(isBlank(q.subject) ? q.subject.value : q.object.value);
    let list = groups.get(root);
    if (!list) groups.set(root, (list = []));
    list.push(q);
  }
  return { ground, components: [...groups.values()].map((triples) => ({ triples, signature: signatureOf(triples) })) };
}

/** A label-free signature of one blank-node component. */
function signatureOf(triples: readonly Quad[]): string {
  return treeSignature(triples) ?? "c:" + sha(canonicalizeSync(triples));
}

function sha(text: string): string {
  return createHash("sha256").update(text).digest("hex");
}

/**
 * Merkle signature of a component whose blank nodes form a forest (each blank node is the
 * object of at most one triple whose subject is a blank node, and there is no cycle), or
 * undefined for any other shape.
 */
function treeSignature(triples: readonly Quad[]): string | undefined {
  const out = new Map<string, Quad[]>();
  const inFromBlank = new Map<string, number>();
  const inFromGround = new Map<string, string[]>();
  for (const q of triples) {
    if (isBlank(q.subject)) {
      let list = out.get(q.subject.value);
      if (!list) out.set(q.subject.value, (list = []));
      list.push(q);
      if (isBlank(q.object)) inFromBlank.set(q.object.value, (inFromBlank.get(q.object.value) ?? 0) + 1);
    } else {
      let list = inFromGround.get(q.object.value);
      if (!list) inFromGround.set(q.object.value, (list = []));
      list.push(`${termToString(q.subject)} ${termToString(q.predicate)}`);
    }
  }
  if ([...inFromBlank.values()].some((n) => n > 1)) return undefined;
  const blanks = new Set<string>([...out.keys(), ...inFromGround.keys(), ...inFromBlank.keys()]);
  const roots = [...blanks].filter((b) => !inFromBlank.has(b));
  if (roots.length === 0) return undefined; // a cycle
  const memo = new Map<string, string>();
  const visiting = new Set<string>();
  const hashOf = (b: string): string | undefined => {
    const known = memo.get(b);
    if (known) return known;
    if (visiting.has(b)) return undefined;
    visiting.add(b);
    const parts: string[] = [];
    for (const q of out.get(b) ?? []) {
      const o = isBlank(q.object) ? hashOf(q.object.value) : termToString(q.object);
      if (o === undefined) return undefined;
      parts.push(`${termToString(q.predicate)} ${isBlank(q.object) ? `[${o}]` : o}`);
    }
    for (const incoming of inFromGround.get(b) ?? []) parts.push(`^ ${incoming}`);
    visiting.delete(b);
    const h = sha(parts.sort().join("\n"));
    memo.set(b, h);
    return h;
  };
  const rootHashes: string[] = [];
  for (const r of roots) {
    const h = hashOf(r);
    if (h === undefined) return undefined;
    rootHashes.push(h);
  }
  if (memo.size !== blanks.size) return undefined; // part of it unreachable from a root: a cycle
  return "t:" + sha(rootHashes.sort().join("\n"));
}

function sample(lines: Iterable<string>, size: number): string[] {
  const all = [...lines].sort();
  return all.slice(0, size);
}

/**
 * The triples added and removed from `before` to `after`, blank-node safe.
 *
 * ```ts
 * const d = diffGraphs(oldQuads, newQuads, { sampleSize: 5 });
 * console.log(`+${d.added} -${d.removed}`, d.sampleAdded);
 * ```
 */
export function diffGraphs(before: readonly Quad[], after: readonly Quad[], options: DiffOptions = {}): GraphDiff {
  const size = options.sampleSize ?? 10;
  const a = partition(before);
  const b = partition(after);
  const removedLines: string[] = [];
  const addedLines: string[] = [];
  for (const line of a.ground) if (!b.ground.has(line)) removedLines.push(line);
  for (const line of b.ground) if (!a.ground.has(line)) addedLines.push(line);
  let removed = removedLines.length;
  let added = addedLines.length;
  const pool = new Map<string, number>();
  for (const c of b.components) pool.set(c.signature, (pool.get(c.signature) ?? 0) + 1);
  const removedComponents: Component[] = [];
  for (const c of a.components) {
    const n = pool.get(c.signature) ?? 0;
    if (n > 0) pool.set(c.signature, n - 1);
    else removedComponents.push(c);
  }
  const kept = new Map<string, number>();
  for (const c of a.components) kept.set(c.signature, (kept.get(c.signature) ?? 0) + 1);
  const addedComponents: Component[] = [];
  for (const c of b.components) {
    const n = kept.get(c.signature) ?? 0;
    if (n > 0) kept.set(c.signature, n - 1);
    else addedComponents.push(c);
  }
  for (const c of removedComponents) {
    removed += c.triples.length;
    if (removedLines.length < size * 4) removedLines.push(...c.triples.map(tripleToString));
  }
  for (const c of addedComponents) {
    added += c.triples.length;
    if (addedLines.length < size * 4) addedLines.push(...c.triples.map(tripleToString));
  }
  return { added, removed, sampleAdded: sample(addedLines, size), sampleRemoved: sample(removedLines, size) };
}

/**
 * `iotvault diff A B`: what changed between two snapshots. Files (every kind of source) are
 * compared by path and SHA-256 in one streaming merge of the two trees. For snapshots with a
 * semantic catalog (rdf:, rules:, sparql:), graphs are compared by name and canonical hash:
 * added, removed and changed graphs, the triples added and removed in each changed graph
 * (blank-node safe, with a bounded sample), and the ontology version changes. A file merely
 * re-serialised keeps its graphs' hashes: it is a changed file but no changed graph.
 */
import { comparePaths, type Repository, type SnapshotManifest, type TreeNode } from "@iotvault/repo";
import { diffGraphs, formatOfPath, parseRdf, type GraphRecord, type OntologyInfo, type Quad } from "@iotvault/semantic";
import { loadCatalog, type CatalogEntry, type SemanticCatalog } from "./catalog.js";

export interface GraphChange {
  /** The graph: the file path (plus ` <IRI>` for a named graph in a file), or the IRI (SPARQL). */
  graph: string;
  path: string;
  change: "added" | "removed" | "changed";
  triplesBefore: number;
  triplesAfter: number;
  triplesAdded: number;
  triplesRemoved: number;
  hashBefore: string;
  hashAfter: string;
  sampleAdded: string[];
  sampleRemoved: string[];
}

export interface OntologyChange {
  graph: string;
  ontology: string;
  change: "added" | "removed" | "changed";
  before?: { versionIri?: string; versionInfo?: string };
  after?: { versionIri?: string; versionInfo?: string };
}

export interface FileChange {
  path: string;
  change: "added" | "removed" | "changed";
  sizeBefore: number;
  sizeAfter: number;
}

export interface SnapshotDiff {
  snapshotA: string;
  snapshotB: string;
  sourceA: string;
  sourceB: string;
  graphs: GraphChange[];
  graphsUnchanged: number;
  triplesAdded: number;
  triplesRemoved: number;
  ontologyChanges: OntologyChange[];
  files: FileChange[];
  filesAdded: number;
  filesRemoved: number;
  filesChanged: number;
  filesUnchanged: number;
  /** True when `files` or `graphs` lists were cut at `maxItems`. */
  truncated: boolean;
}

export interface DiffSnapshotsOptions {
  /** Triples listed per changed graph in each sample (default 5, at most 100). */
  sampleSize?: number | undefined;
  /** Files and graphs listed at most (default 1000); counts stay complete. */
  maxItems?: number | undefined;
  signal?: AbortSignal | undefined;
}

interface Side {
  snapshot: SnapshotManifest;
  catalog: SemanticCatalog | undefined;
  nodes: Map<string, TreeNode>;
  parsed: Map<string, Promise<Quad[]>>;
}

interface GraphRef {
  key: string;
  entry: CatalogEntry;
  record: GraphRecord;
}

function graphsOf(catalog: SemanticCatalog | undefined): Map<string, GraphRef> {
  const out = new Map<string, GraphRef>();
  for (const entry of catalog?.entries ?? []) {
    for (const record of entry.graphs ?? []) {
      const key = entry.graph ?? (record.name === "" ? entry.path : `${entry.path} <${record.name}>`);
      out.set(key, { key, entry, record });
    }
  }
  return out;
}

async function quadsOf(repo: Repository, side: Side, ref: GraphRef, signal: AbortSignal | undefined): Promise<Quad[]> {
  let all = side.parsed.get(ref.entry.path);
  if (!all) {
    all = (async () => {
      const node = side.nodes.get(ref.entry.path);
      if (!node) return [];
      const parts: Buffer[] = [];
      for await (const b of repo.readFile(node, signal)) parts.push(b);
      const format = ref.entry.graph !== undefined ? "ntriples" : (formatOfPath(ref.entry.path) ?? "turtle");
      return parseRdf(Buffer.concat(parts), { format, baseIri: `file:///${ref.entry.path}`, signal });
    })();
    side.parsed.set(ref.entry.path, all);
  }
  const quads = await all;
  if (ref.entry.graph !== undefined || ref.record.name === "") {
    return ref.entry.graph !== undefined ? quads : quads.filter((q) => q.graph.termType !== "NamedNode");
  }
  return quads.filter((q) => q.graph.termType === "NamedNode" && q.graph.value === ref.record.name);
}

function ontologyChanges(graph: string, before: OntologyInfo[], after: OntologyInfo[]): OntologyChange[] {
  const out: OntologyChange[] = [];
  const a = new Map(before.map((o) => [o.iri, o]));
  const b = new Map(after.map((o) => [o.iri, o]));
  const version = (o: OntologyInfo) => ({
    ...(o.versionIri !== undefined ? { versionIri: o.versionIri } : {}),
    ...(o.versionInfo !== undefined ? { versionInfo: o.versionInfo } : {}),
  });
  for (const [iri, o] of a) {
    const n = b.get(iri);
    if (!n) out.push({ graph, ontology: iri, change: "removed", before: version(o) });
    else if (n.versionIri !== o.versionIri || n.versionInfo !== o.versionInfo) {
      out.push({ graph, ontology: iri, change: "changed", before: version(o), after: version(n) });
    }
  }
  for (const [iri, n] of b) if (!a.has(iri)) out.push({ graph, ontology: iri, change: "added", after: version(n) });
  return out;
}

async function loadSide(repo: Repository, snapshot: SnapshotManifest, signal: AbortSignal | undefined): Promise<Side> {
  const catalog = await loadCatalog(repo, snapshot);
  const wanted = new Set((catalog?.entries ?? []).filter((e) => e.graphs?.length).map((e) => e.path));
  const nodes = new Map<string, TreeNode>();
  for await (const n of repo.readTree(snapshot, signal))
    if (n.type === "file" && wanted.has(n.path)) nodes.set(n.path, n);
  return { snapshot, catalog, nodes, parsed: new Map() };
}

/** Compares the files of two trees in one merge (both are in comparePaths order). */
async function diffFiles(
  repo: Repository,
  a: SnapshotManifest,
  b: SnapshotManifest,
  result: SnapshotDiff,
  max: number,
  signal: AbortSignal | undefined,
): Promise<void> {
  const ia = repo.readTree(a, signal)[Symbol.asyncIterator]();
  const ib = repo.readTree(b, signal)[Symbol.asyncIterator]();
  const nextFile = async (it: AsyncIterator<TreeNode>): Promise<TreeNode | undefined> => {
    for (;;) {
      const r = await it.next();
      if (r.done) return undefined;
      if (r.value.type === "file") return r.value;
    }
  };
  const push = (c: FileChange) => {
    if (result.files.length < max) result.files.push(c);
    else result.truncated = true;
  };
  let x = await nextFile(ia);
  let y = await nextFile(ib);
  while (x || y) {
    const order = !x ? 1 : !y ? -1 : comparePaths(x.path, y.path);
    if (order < 0) {
      result.filesRemoved++;
      push({ path: x!.path, change: "removed", sizeBefore: x!.size ?? 0, sizeAfter: 0 });
      x = await nextFile(ia);
    } else if (order > 0) {
      result.filesAdded++;
      push({ path: y!.path, change: "added", sizeBefore: 0, sizeAfter: y!.size ?? 0 });
      y = await nextFile(ib);
    } else {
      if (x!.sha256 === y!.sha256) result.filesUnchanged++;
      else {
        result.filesChanged++;
        push({ path: x!.path, change: "changed", sizeBefore: x!.size ?? 0, sizeAfter: y!.size ?? 0 });
      }
      x = await nextFile(ia);
      y = await nextFile(ib);
    }
  }
}

/**
 * Compares snapshot `a` (before) with snapshot `b` (after).
 *
 * ```ts
 * const d = await diffSnapshots(repo, await repo.loadSnapshot("3f9a2c"), await repo.loadSnapshot("7be01d"));
 * console.log(d.graphs.filter((g) => g.change === "changed"), d.triplesAdded, d.ontologyChanges);
 * ```
 */
export async function diffSnapshots(
  repo: Repository,
  a: SnapshotManifest,
  b: SnapshotManifest,
  options: DiffSnapshotsOptions = {},
): Promise<SnapshotDiff> {
  const sampleSize = Math.min(100, Math.max(0, options.sampleSize ?? 5));
  const max = options.maxItems ?? 1000;
  const result: SnapshotDiff = {
    snapshotA: a.id,
    snapshotB: b.id,
    sourceA: a.source,
    sourceB: b.source,
    graphs: [],
    graphsUnchanged: 0,
    triplesAdded: 0,
    triplesRemoved: 0,
    ontologyChanges: [],
    files: [],
    filesAdded: 0,
    filesRemoved: 0,
    filesChanged: 0,
    filesUnchanged: 0,
    truncated: false,
  };
  await diffFiles(repo, a, b, result, max, options.signal);
  const [sa, sb] = await Promise.all([loadSide(repo, a, options.signal), loadSide(repo, b, options.signal)]);
  const ga = graphsOf(sa.catalog);
  const gb = graphsOf(sb.catalog);
  const push = (c: GraphChange) => {
    if (result.graphs.length < max) result.graphs.push(c);
    else result.truncated = true;
  };
  const keys = [...new Set([...ga.keys(), ...gb.keys()])].sort();
  for (const key of keys) {
    options.signal?.throwIfAborted();
    const before = ga.get(key);
    const after = gb.get(key);
    result.ontologyChanges.push(
      ...ontologyChanges(key, before?.record.ontologies ?? [], after?.record.ontologies ?? []),
    );
    if (before && after && before.record.canonicalHash === after.record.canonicalHash) {
      result.graphsUnchanged++;
      continue;
    }
    const base = {
      graph: key,
      path: (after ?? before)!.entry.path,
      triplesBefore: before?.record.triples ?? 0,
      triplesAfter: after?.record.triples ?? 0,
      hashBefore: before?.record.canonicalHash ?? "",
      hashAfter: after?.record.canonicalHash ?? "",
    };
    if (!before || !after) {
      const added = after?.record.triples ?? 0;
      const removed = before?.record.triples ?? 0;
      result.triplesAdded += added;
      result.triplesRemoved += removed;
      push({
        ...base,
        change: after ? "added" : "removed",
        triplesAdded: added,
        triplesRemoved: removed,
        sampleAdded: [],
        sampleRemoved: [],
      });
      continue;
    }
    const d = diffGraphs(
      await quadsOf(repo, sa, before, options.signal),
      await quadsOf(repo, sb, after, options.signal),
      { sampleSize },
    );
    result.triplesAdded += d.added;
    result.triplesRemoved += d.removed;
    push({
      ...base,
      change: "changed",
      triplesAdded: d.added,
      triplesRemoved: d.removed,
      sampleAdded: d.sampleAdded,
      sampleRemoved: d.sampleRemoved,
    });
    // A parsed file is kept only while its graphs are compared.
    if (![...gb.values()].some((g) => g.entry.path === after.entry.path && g.key > key)) {
      sa.parsed.delete(before.entry.path);
      sb.parsed.delete(after.entry.path);
    }
  }
  return result;
}

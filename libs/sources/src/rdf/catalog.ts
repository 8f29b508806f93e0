/**
 * The semantic catalog of a snapshot: one entry per file, graph or key with what iotvault
 * learned about it at backup (canonical hashes, triple counts, ontology versions, rule and
 * configuration checks, KV revisions). It is stored as a sealed sidecar object named by its
 * SHA-256 (`sidecar/semantic/<sha256>.json`: retries and identical catalogs write it once),
 * and the snapshot manifest keeps only its key and totals, so manifests stay small.
 */
import { IotvaultError, toIotvaultError } from "@iotvault/errors";
import type { Repository, SnapshotManifest } from "@iotvault/repo";
import type { ConfigCheck, GraphRecord, RuleCheck } from "@iotvault/semantic";
import { sha256Hex } from "@iotvault/semantic";

export type SemanticSourceKind = "rdf" | "rules" | "config" | "kv" | "sparql";

/** How an entry compares with the parent snapshot's. */
export type EntryStatus = "new" | "changed" | "unchanged" | "reserialised";

export interface CatalogEntry {
  /** The entry's tree path in the snapshot. */
  path: string;
  /** SHA-256 of the stored bytes, and their size. */
  sha256: string;
  size: number;
  status: EntryStatus;
  /** RDF serialisation or configuration format. */
  format?: string;
  /** RDF graphs in the file (files) or the one graph (SPARQL). */
  graphs?: GraphRecord[];
  /** Rule files: the parse check. */
  rules?: RuleCheck;
  /** Configuration files: the syntax check. */
  config?: ConfigCheck;
  /** Why the content could not be parsed (the bytes are stored all the same). */
  error?: { line?: number; message: string };
  /** SPARQL: the graph IRI. */
  graph?: string;
  /** KV: the key, its revision and creation time. */
  key?: string;
  revision?: number;
  created?: string;
}

export interface SemanticCatalog {
  version: 1;
  kind: SemanticSourceKind;
  /** Sorted by path (the tree order of the snapshot). */
  entries: CatalogEntry[];
}

/** What the snapshot manifest's `metadata.semantic` holds. */
export interface CatalogSummary {
  kind: SemanticSourceKind;
  catalog: string;
  catalogSha256: string;
  entries: number;
  graphs: number;
  triples: number;
  /** Graphs whose canonical hash equals the parent's (re-serialised files included). */
  graphsUnchanged: number;
  graphsChanged: number;
  /** Entries that did not parse (flagged by name and line in the warnings). */
  errors: number;
  /** Rule files and rules found in them. */
  ruleFiles: number;
  rules: number;
}

export const CATALOG_PREFIX = "sidecar/semantic/";

/** Stores the catalog and returns the summary for the manifest. */
export async function storeCatalog(
  repo: Repository,
  catalog: SemanticCatalog,
  signal?: AbortSignal,
): Promise<CatalogSummary> {
  const bytes = Buffer.from(JSON.stringify(catalog), "utf8");
  const sha = sha256Hex(bytes);
  const key = `${CATALOG_PREFIX}${sha}.json`;
  await repo.putSealedObject(key, bytes, signal ? { signal } : {});
  let graphs = 0;
  let triples = 0;
  let graphsUnchanged = 0;
  let errors = 0;
  let ruleFiles = 0;
  let rules = 0;
  for (const e of catalog.entries) {
    graphs += e.graphs?.length ?? 0;
    triples += (e.graphs ?? []).reduce((n, g) => n + g.triples, 0);
    if (e.status === "unchanged" || e.status === "reserialised") graphsUnchanged += e.graphs?.length ?? 0;
    if (e.error || e.rules?.ok === false || e.config?.ok === false) errors++;
    if (e.rules) {
      ruleFiles++;
      rules += e.rules.rules;
    }
  }
  return {
    kind: catalog.kind,
    catalog: key,
    catalogSha256: sha,
    entries: catalog.entries.length,
    graphs,
    triples,
    graphsUnchanged,
    graphsChanged: graphs - graphsUnchanged,
    errors,
    ruleFiles,
    rules,
  };
}

/** The summary a snapshot's manifest carries, or undefined for snapshots without a catalog. */
export function catalogSummaryOf(snapshot: SnapshotManifest): CatalogSummary | undefined {
  const s = snapshot.metadata["semantic"] as Partial<CatalogSummary> | undefined;
  if (!s || typeof s.catalog !== "string" || !s.catalog.startsWith(CATALOG_PREFIX)) return undefined;
  return s as CatalogSummary;
}

/** Loads a snapshot's catalog; undefined when it has none. DATA_CORRUPT when it does not check out. */
export async function loadCatalog(repo: Repository, snapshot: SnapshotManifest): Promise<SemanticCatalog | undefined> {
  const summary = catalogSummaryOf(snapshot);
  if (!summary) return undefined;
  let bytes: Buffer;
  try {
    bytes = await repo.getSealedObject(summary.catalog);
  } catch (err) {
    const e = toIotvaultError(err);
    throw new IotvaultError(e.code, `the semantic catalog of snapshot ${snapshot.id} cannot be read: ${e.message}`, {
      hint: "its files still restore into a directory; run `iotvault verify` on the repository",
      cause: err,
    });
  }
  const parsed = JSON.parse(bytes.toString("utf8")) as SemanticCatalog;
  if (parsed.version !== 1 || !Array.isArray(parsed.entries)) {
    throw new IotvaultError(
      "DATA_CORRUPT",
      `the semantic catalog of snapshot ${snapshot.id} is not a version this iotvault reads`,
    );
  }
  return parsed;
}

/** Entries by path. */
export function byPath(catalog: SemanticCatalog | undefined): Map<string, CatalogEntry> {
  return new Map((catalog?.entries ?? []).map((e) => [e.path, e]));
}

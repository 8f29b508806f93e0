/**
 * The SPARQL store source `sparql+http://host:port/<GSP endpoint>` (or `sparql+https://`): a
 * SPARQL 1.1 Graph Store Protocol endpoint read graph by graph. The named graphs are listed
 * with a SELECT on the query endpoint (the sibling `sparql` path, or `?query-endpoint=/path`),
 * each is read with GET `?graph=` (`?graph-param=graph-uri` for another parameter name),
 * counted again with a SPARQL COUNT (a store that truncates large answers is caught), and
 * stored as its RDFC-1.0 canonical N-Triples at `graphs/<sha256 of the IRI, 32 hex>.nt`.
 * A graph whose canonical hash equals the parent snapshot's is taken from the parent.
 *
 * Credentials never go in the URL: `services.sparqlCredentials(url)` when the caller provides
 * it, else IOTVAULT_SPARQL_USER and IOTVAULT_SPARQL_PASSWORD (or IOTVAULT_SPARQL_PASSWORD_FILE)
 * from the service's environment (Basic or Digest, as the endpoint asks).
 *
 * Restore: into a store (`--to sparql+http://...`, the same or another), whole or some graphs
 * (`--include <graph IRI or glob>`), each with PUT; graphs that already hold triples in the
 * target are refused (named) unless `--overwrite`; with verify every graph is read back and its
 * canonical hash compared. Or into a directory (the .nt files).
 */
import { readFileSync } from "node:fs";
import { IotvaultError } from "@iotvault/errors";
import type { TreeNode } from "@iotvault/repo";
import {
  GraphStoreClient,
  canonicalize,
  ontologiesOf,
  parseRdf,
  sha256Hex,
  valueForms,
  type Credentials,
  type Quad,
} from "@iotvault/semantic";
import type {
  BackupContext,
  BackupSourceResult,
  RestoreContext,
  RestoreTargetResult,
  SourceAdapter,
} from "../adapter.js";
import { restoreToDirectory } from "../fs/restore.js";
import { loadCatalog, storeCatalog, type CatalogEntry, type SemanticCatalog } from "../rdf/catalog.js";
import { validateRestored, shapesEntry } from "../rdf/restore-files.js";
import { parseSparqlUrl, type SparqlSource } from "./url.js";

export { parseSparqlUrl, type SparqlSource } from "./url.js";

/** Graph IRI prefixes of a store's own bookkeeping, left out unless `?system-graphs=include`. */
export const SYSTEM_GRAPH_PREFIXES = [
  "http://www.openlinksw.com/",
  "http://www.w3.org/ns/ldp#",
  "http://localuriqaserver/",
  "http://www.w3.org/2002/07/owl",
];

function credentials(services: Readonly<Record<string, unknown>>, url: string): Credentials | undefined {
  const provided = services["sparqlCredentials"];
  if (typeof provided === "function") return (provided as (u: string) => Credentials | undefined)(url);
  // Decision: read by the adapter, because the executor and the restore service pass no
  // SPARQL credentials through `services` today (see docs/semantic.md).
  const env = process.env;
  const user = env["IOTVAULT_SPARQL_USER"];
  if (!user) return undefined;
  const file = env["IOTVAULT_SPARQL_PASSWORD_FILE"];
  const password = file ? readFileSync(file, "utf8").replace(/\r?\n$/, "") : (env["IOTVAULT_SPARQL_PASSWORD"] ?? "");
  return { user, password };
}

/** A Graph Store client for a parsed source or target URL, with the credentials the services provide. */
export function storeClient(source: SparqlSource, services: Readonly<Record<string, unknown>>): GraphStoreClient {
  return new GraphStoreClient({
    endpoint: source.endpoint,
    queryEndpoint: source.queryEndpoint,
    graphParam: source.graphParam,
    credentials: credentials(services, source.endpoint),
  });
}

/** An IRI glob: `*` any run of characters, `?` one; otherwise the IRI itself. */
export function iriMatcher(patterns: readonly string[]): ((iri: string) => boolean) | undefined {
  if (patterns.length === 0) return undefined;
  const res = patterns.map(
    (p) =>
      new RegExp(
        `^${p
          .replace(/[.+^${}()|[\]\\]/g, "\\$&")
          .replace(/\*/g, ".*")
          .replace(/\?/g, ".")}$`,
      ),
  );
  return (iri) => res.some((r) => r.test(iri));
}

/**
 * Reads a restored graph back and compares it with what was written: equal canonical hashes,
 * or — for stores that keep literal values rather than lexical forms ("15.20" -> "15.2") —
 * equal canonical hashes of the value forms. "exact" / "value-forms"; DATA_CORRUPT otherwise.
 */
export async function checkReadBack(
  store: GraphStoreClient,
  iri: string,
  written: readonly Quad[],
  recordedHash: string,
  signal: AbortSignal,
): Promise<"exact" | "value-forms"> {
  const back = await store.getGraph(iri, signal);
  const quads = await parseRdf(back.text, { format: back.format, signal });
  if ((await canonicalize(quads, { asGraph: true, signal })).hash === recordedHash) return "exact";
  const a = await canonicalize(valueForms(quads), { asGraph: true, signal });
  const b = await canonicalize(valueForms(written), { asGraph: true, signal });
  if (a.hash === b.hash) return "value-forms";
  throw new IotvaultError(
    "DATA_CORRUPT",
    `graph <${iri}> does not read back from the target as restored (canonical hash differs)`,
    {
      hint: "another writer may have changed it during the restore; restore it again",
    },
  );
}

/** The tree path of a graph's canonical N-Triples. */
export function graphPath(iri: string): string {
  return `graphs/${sha256Hex(iri).slice(0, 32)}.nt`;
}

async function* once(bytes: Uint8Array): AsyncGenerator<Uint8Array> {
  yield bytes;
}

const nowNs = () => (BigInt(Date.now()) * 1_000_000n).toString();

async function backupSparql(ctx: BackupContext): Promise<BackupSourceResult> {
  const source = parseSparqlUrl(ctx.job.source);
  const store = storeClient(source, ctx.services);
  const include = iriMatcher(ctx.job.include);
  const exclude = iriMatcher(ctx.job.exclude);
  const graphs = (await store.listGraphs(ctx.signal)).filter(
    (g) =>
      (source.systemGraphs || !SYSTEM_GRAPH_PREFIXES.some((p) => g.startsWith(p))) &&
      (!include || include(g)) &&
      !exclude?.(g),
  );
  const parentCatalog = ctx.parent ? await loadCatalog(ctx.repo, ctx.parent).catch(() => undefined) : undefined;
  const previousByGraph = new Map((parentCatalog?.entries ?? []).filter((e) => e.graph).map((e) => [e.graph!, e]));
  const parentNodes = new Map<string, TreeNode>();
  if (ctx.parent)
    for await (const n of ctx.repo.readTree(ctx.parent, ctx.signal)) if (n.type === "file") parentNodes.set(n.path, n);
  const mtime = nowNs();
  await ctx.writer.addNode({ path: "graphs", type: "dir", mode: 0o755, mtimeNs: mtime, uid: 0, gid: 0 });
  const ordered = graphs.map((g) => ({ iri: g, path: graphPath(g) })).sort((a, b) => (a.path < b.path ? -1 : 1));
  const result: BackupSourceResult = { files: 0, dirs: 1, symlinks: 0, bytes: 0, warnings: 0, metadata: {} };
  const entries: CatalogEntry[] = [];
  for (const { iri, path } of ordered) {
    ctx.signal.throwIfAborted();
    const fetched = await store.getGraph(iri, ctx.signal);
    const quads = await parseRdf(fetched.text, { format: fetched.format, signal: ctx.signal });
    const canonical = await canonicalize(quads, { asGraph: true, signal: ctx.signal });
    const counted = await store.countTriples(iri, ctx.signal);
    if (counted >= 0 && counted > canonical.count) {
      throw new IotvaultError(
        "DATA_CORRUPT",
        `the store returned ${canonical.count} of the ${counted} triples of <${iri}>`,
        {
          hint: "the endpoint truncates large answers; raise its result limit (Virtuoso: [SPARQL] ResultSetMaxRows)",
          retryable: false,
        },
      );
    }
    const graph = {
      name: iri,
      canonicalHash: canonical.hash,
      triples: canonical.count,
      ontologies: ontologiesOf(quads),
    };
    const previous = previousByGraph.get(iri);
    const prevNode = parentNodes.get(path);
    const node: TreeNode = { path, type: "file", mode: 0o644, mtimeNs: mtime, uid: 0, gid: 0 };
    const bytes = Buffer.from(canonical.nquads, "utf8");
    if (
      previous?.graphs?.[0]?.canonicalHash === canonical.hash &&
      prevNode?.sha256 !== undefined &&
      (prevNode.chunks ?? []).every((c) => ctx.repo.hasChunk(c))
    ) {
      await ctx.writer.addUnchangedFile({
        ...node,
        size: prevNode.size ?? bytes.length,
        chunks: prevNode.chunks ?? [],
        sha256: prevNode.sha256,
      });
      entries.push({
        path,
        graph: iri,
        sha256: prevNode.sha256,
        size: prevNode.size ?? bytes.length,
        status: "unchanged",
        format: "ntriples",
        graphs: [graph],
      });
    } else {
      const stored = await ctx.writer.addFile({ ...node, size: bytes.length }, once(bytes), {
        existedInParent: previous !== undefined,
      });
      entries.push({
        path,
        graph: iri,
        sha256: stored.sha256 ?? sha256Hex(bytes),
        size: bytes.length,
        status: previous ? "changed" : "new",
        format: "ntriples",
        graphs: [graph],
      });
    }
    result.files++;
    result.bytes += bytes.length;
    ctx.onProgress({ filesDone: result.files, bytesDone: result.bytes, currentPath: iri });
  }
  const summary = await storeCatalog(ctx.repo, { version: 1, kind: "sparql", entries }, ctx.signal);
  result.metadata = { semantic: summary, endpoint: source.endpoint };
  return result;
}

async function readNode(ctx: RestoreContext, node: TreeNode): Promise<Buffer> {
  const parts: Buffer[] = [];
  for await (const b of ctx.repo.readFile(node, ctx.signal)) parts.push(b);
  return Buffer.concat(parts);
}

/** The catalog entries a restore takes: every graph, or those named by --include (IRIs or globs). */
function selected(catalog: SemanticCatalog, include: readonly string[]): CatalogEntry[] {
  const match = iriMatcher(include);
  const out = catalog.entries.filter((e) => e.graph !== undefined && (!match || match(e.graph)));
  if (include.length > 0 && out.length === 0) {
    throw new IotvaultError("NOT_FOUND", `no graph of the snapshot matches ${include.join(", ")}`, {
      hint: "`iotvault diff` or the snapshot's catalog lists its graph IRIs",
    });
  }
  return out;
}

async function restoreSparql(ctx: RestoreContext): Promise<RestoreTargetResult> {
  const catalog = await loadCatalog(ctx.repo, ctx.snapshot);
  if (!catalog) throw new IotvaultError("DATA_CORRUPT", `snapshot ${ctx.snapshot.id} has no graph catalog`);
  const entries = selected(catalog, ctx.include);
  const shapes = ctx.options["shacl"];
  if (shapes) shapesEntry(catalog, shapes);
  if (!ctx.target.startsWith("sparql+")) {
    const r = await restoreToDirectory(ctx.repo, ctx.snapshot, {
      target: ctx.target,
      include: ctx.include.length ? entries.map((e) => e.path) : [],
      overwrite: ctx.overwrite,
      verify: ctx.verify,
      signal: ctx.signal,
      onProgress: (p) => ctx.onProgress(p),
    });
    return {
      ...r,
      details: { kind: "sparql", target: "directory", graphs: entries.map((e) => ({ graph: e.graph, path: e.path })) },
    };
  }
  const store = storeClient(parseSparqlUrl(ctx.target), ctx.services);
  if (!ctx.overwrite) {
    const existing: string[] = [];
    for (const e of entries) if (await store.graphExists(e.graph!, ctx.signal)) existing.push(e.graph!);
    if (existing.length > 0) {
      throw new IotvaultError(
        "ALREADY_EXISTS",
        `${existing.length} graph(s) already hold triples in the target: ${existing.slice(0, 10).join(", ")}${existing.length > 10 ? ", ..." : ""}`,
        {
          hint: "nothing was written; pass --overwrite to replace them",
        },
      );
    }
  }
  const nodes = new Map<string, TreeNode>();
  for await (const n of ctx.repo.readTree(ctx.snapshot, ctx.signal)) if (n.type === "file") nodes.set(n.path, n);
  const contents = new Map<string, Buffer>();
  let bytes = 0;
  let files = 0;
  let valueForm = 0;
  for (const e of entries) {
    const node = nodes.get(e.path);
    if (!node)
      throw new IotvaultError("DATA_CORRUPT", `snapshot ${ctx.snapshot.id} has no data for graph <${e.graph}>`);
    const body = await readNode(ctx, node);
    await store.putGraph(e.graph!, body, "ntriples", ctx.signal);
    if (shapes) contents.set(e.path, body);
    // Each graph is read back right after its PUT (while its bytes are at hand).
    if (ctx.verify) {
      const written = await parseRdf(body, { format: "ntriples", signal: ctx.signal });
      const how = await checkReadBack(store, e.graph!, written, e.graphs?.[0]?.canonicalHash ?? "", ctx.signal);
      if (how === "value-forms") valueForm++;
    }
    files++;
    bytes += body.length;
    ctx.onProgress({ filesDone: files, bytesDone: bytes, currentPath: e.graph! });
  }
  const verified = ctx.verify;
  const details: Record<string, unknown> = {
    kind: "sparql",
    graphs: entries.length,
    triples: entries.reduce((n, e) => n + (e.graphs?.[0]?.triples ?? 0), 0),
    restored: entries.map((e) => e.graph),
    literalValueForms: valueForm,
  };
  if (shapes) {
    const { entry } = shapesEntry(catalog, shapes);
    const read = async (e: CatalogEntry) => contents.get(e.path) ?? readNode(ctx, nodes.get(e.path)!);
    details["shacl"] = await validateRestored(
      catalog,
      entries.includes(entry) ? entries : [...entries, entry],
      shapes,
      read,
    );
  }
  return { files, dirs: 0, symlinks: 0, bytes, verified, details };
}

export const sparqlAdapter: SourceAdapter = {
  schemes: ["sparql+http", "sparql+https"],
  validate(url) {
    parseSparqlUrl(url);
  },
  backup: backupSparql,
  restore: restoreSparql,
};

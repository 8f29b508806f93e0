/**
 * Restore of an `rdf:` snapshot into a SPARQL store (`--to sparql+http://...`): graph by graph,
 * each with one PUT. A named graph of a TriG / N-Quads / JSON-LD file keeps its IRI; a file's
 * default graph goes to `<graph-base><path in the snapshot>` (`--option graph-base=...`,
 * default `file:///`). `--include` selects graphs by IRI (or IRI glob) or files by path glob.
 * N3 files (rules, not data) and files that did not parse are left out. Graphs already holding
 * triples in the target are refused, named, unless `--overwrite`; with verify each graph is read
 * back and its canonical hash compared with the one recorded at backup (or, for a store that
 * keeps literal values, "15.20" read back as "15.2", the hashes of the value forms).
 */
import { IotvaultError } from "@iotvault/errors";
import type { TreeNode } from "@iotvault/repo";
import { formatOfPath, parseRdf, toNTriples, type Quad } from "@iotvault/semantic";
import type { RestoreContext, RestoreTargetResult } from "../adapter.js";
import { compileGlobs } from "../fs/globs.js";
import { checkReadBack, iriMatcher, parseSparqlUrl, storeClient } from "../sparql/adapter.js";
import type { CatalogEntry, SemanticCatalog } from "./catalog.js";
import { validateRestored } from "./restore-files.js";

interface Planned {
  entry: CatalogEntry;
  /** The graph's name in the file ("" = the default graph). */
  name: string;
  iri: string;
  hash: string;
  triples: number;
}

function plan(catalog: SemanticCatalog, ctx: RestoreContext): Planned[] {
  const base = ctx.options["graph-base"] ?? "file:///";
  const byIri = iriMatcher(ctx.include);
  const byPath = ctx.include.length ? compileGlobs(ctx.include, "include") : undefined;
  const out: Planned[] = [];
  for (const entry of catalog.entries) {
    if (!entry.graphs?.length || entry.error || formatOfPath(entry.path) === "n3") continue;
    for (const g of entry.graphs) {
      const iri = g.name === "" ? `${base}${entry.path}` : g.name;
      if (g.name.startsWith("_:")) continue;
      if (byIri && !byIri(iri) && !byPath?.(entry.path)) continue;
      out.push({ entry, name: g.name, iri, hash: g.canonicalHash, triples: g.triples });
    }
  }
  if (ctx.include.length > 0 && out.length === 0) {
    throw new IotvaultError("NOT_FOUND", `no graph or file of the snapshot matches ${ctx.include.join(", ")}`, {
      hint: "name a graph IRI, a file path or a glob of them",
    });
  }
  return out;
}

async function read(ctx: RestoreContext, node: TreeNode): Promise<Buffer> {
  const parts: Buffer[] = [];
  for await (const b of ctx.repo.readFile(node, ctx.signal)) parts.push(b);
  return Buffer.concat(parts);
}

export async function restoreFilesToStore(ctx: RestoreContext, catalog: SemanticCatalog): Promise<RestoreTargetResult> {
  const planned = plan(catalog, ctx);
  const store = storeClient(parseSparqlUrl(ctx.target), ctx.services);
  if (!ctx.overwrite) {
    const existing: string[] = [];
    for (const p of planned) if (await store.graphExists(p.iri, ctx.signal)) existing.push(p.iri);
    if (existing.length > 0) {
      throw new IotvaultError(
        "ALREADY_EXISTS",
        `${existing.length} graph(s) already hold triples in the target: ${existing.slice(0, 10).join(", ")}${existing.length > 10 ? ", ..." : ""}`,
        { hint: "nothing was written; pass --overwrite to replace them" },
      );
    }
  }
  const nodes = new Map<string, TreeNode>();
  for await (const n of ctx.repo.readTree(ctx.snapshot, ctx.signal)) if (n.type === "file") nodes.set(n.path, n);
  const contents = new Map<string, Buffer>();
  let bytes = 0;
  let files = 0;
  let valueForm = 0;
  let parsedPath = "";
  let parsed: Quad[] = [];
  for (const p of planned) {
    ctx.signal.throwIfAborted();
    if (parsedPath !== p.entry.path) {
      const node = nodes.get(p.entry.path);
      if (!node) throw new IotvaultError("DATA_CORRUPT", `snapshot ${ctx.snapshot.id} has no file ${p.entry.path}`);
      const raw = await read(ctx, node);
      if (ctx.options["shacl"]) contents.set(p.entry.path, raw);
      parsed = await parseRdf(raw, {
        format: formatOfPath(p.entry.path) ?? "turtle",
        baseIri: `file:///${p.entry.path}`,
        signal: ctx.signal,
      });
      parsedPath = p.entry.path;
    }
    // As in the catalog's records, blank-node-named graphs belong to the file's default graph.
    const quads = parsed.filter((q) =>
      p.name === "" ? q.graph.termType !== "NamedNode" : q.graph.termType === "NamedNode" && q.graph.value === p.name,
    );
    const body = Buffer.from(toNTriples(quads), "utf8");
    await store.putGraph(p.iri, body, "ntriples", ctx.signal);
    // Each graph is read back right after its PUT (while its triples are at hand).
    if (ctx.verify && (await checkReadBack(store, p.iri, quads, p.hash, ctx.signal)) === "value-forms") valueForm++;
    files++;
    bytes += body.length;
    ctx.onProgress({ filesDone: files, bytesDone: bytes, currentPath: p.iri });
  }
  const verified = ctx.verify;
  const details: Record<string, unknown> = {
    kind: "rdf",
    target: "store",
    graphs: planned.length,
    triples: planned.reduce((n, p) => n + p.triples, 0),
    restored: planned.map((p) => p.iri),
    literalValueForms: valueForm,
  };
  const shapes = ctx.options["shacl"];
  if (shapes) {
    const entries = [...new Set(planned.map((p) => p.entry))];
    const readEntry = async (e: CatalogEntry) => contents.get(e.path) ?? read(ctx, nodes.get(e.path)!);
    details["shacl"] = await validateRestored(catalog, entries, shapes, readEntry);
  }
  return { files, dirs: 0, symlinks: 0, bytes, verified, details };
}

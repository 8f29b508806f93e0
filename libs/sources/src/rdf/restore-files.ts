/**
 * Restore of a file-tree semantic snapshot (rdf:, rules:, config:) into a directory: byte for
 * byte through the file-system restore, then the facts the result and the event carry — graphs
 * and triples restored, rule and configuration problems recorded at backup — and, when asked
 * (`--option shacl=<shapes file or graph IRI>`), a SHACL validation of what was restored.
 */
import { access, readFile } from "node:fs/promises";
import { join } from "node:path";
import { IotvaultError } from "@iotvault/errors";
import { formatOfPath, parseRdf, type Quad } from "@iotvault/semantic";
import type { RestoreContext, RestoreTargetResult } from "../adapter.js";
import { restoreToDirectory } from "../fs/restore.js";
import { loadCatalog, type CatalogEntry, type SemanticCatalog } from "./catalog.js";
import { shaclVerdict, type ShaclDetails } from "./shacl.js";
import { restoreFilesToStore } from "./restore-store.js";

export async function restoreFileTree(ctx: RestoreContext): Promise<RestoreTargetResult> {
  if (ctx.target.startsWith("sparql+")) {
    const catalog = await loadCatalog(ctx.repo, ctx.snapshot);
    if (catalog?.kind !== "rdf") {
      throw new IotvaultError(
        "INVALID_ARGUMENT",
        `only rdf: snapshots restore into a SPARQL store, not ${ctx.snapshot.source}`,
        {
          hint: "restore it into a directory (--to /dir)",
        },
      );
    }
    if (ctx.options["shacl"]) shapesEntry(catalog, ctx.options["shacl"]);
    return restoreFilesToStore(ctx, catalog);
  }
  if (!ctx.target.startsWith("/")) {
    throw new IotvaultError(
      "INVALID_ARGUMENT",
      `a ${ctx.snapshot.source.split(":")[0]}: snapshot restores into a directory, not ${ctx.target}`,
      {
        hint: "pass an absolute directory with --to",
      },
    );
  }
  // Without its catalog (lost, damaged) a snapshot still restores its files; only the facts go.
  let catalogProblem: string | undefined;
  const catalog = await loadCatalog(ctx.repo, ctx.snapshot).catch((err: unknown) => {
    catalogProblem = (err as Error).message;
    return undefined;
  });
  const shapes = ctx.options["shacl"];
  if (shapes) shapesEntry(catalog, shapes); // fail before writing anything
  const r = await restoreToDirectory(ctx.repo, ctx.snapshot, {
    target: ctx.target,
    include: [...ctx.include],
    overwrite: ctx.overwrite,
    verify: ctx.verify,
    allowExternalSymlinks: ctx.allowExternalSymlinks,
    signal: ctx.signal,
    onProgress: (p) => ctx.onProgress(p),
  });
  const restored = await restoredEntries(catalog, ctx.target);
  const details: Record<string, unknown> = {
    kind: catalog?.kind ?? "files",
    graphs: restored.reduce((n, e) => n + (e.graphs?.length ?? 0), 0),
    triples: restored.reduce((n, e) => n + (e.graphs ?? []).reduce((m, g) => m + g.triples, 0), 0),
    ruleFiles: restored.filter((e) => e.rules).length,
    flagged: restored.filter((e) => e.error || e.rules?.ok === false || e.config?.ok === false).map(flagOf),
  };
  if (catalogProblem) details["catalogProblem"] = catalogProblem;
  if (shapes) {
    details["shacl"] = await validateRestored(catalog!, restored, shapes, (e) =>
      readFile(join(ctx.target, ...e.path.split("/"))),
    );
  }
  return { ...r, details };
}

function flagOf(e: CatalogEntry): { path: string; line?: number; message: string } {
  const err = e.error ?? e.rules?.error ?? e.config?.error ?? { message: "invalid" };
  return { path: e.path, ...(err.line ? { line: err.line } : {}), message: err.message };
}

/** The catalog entries whose files are in the target after the restore (include globs honoured). */
async function restoredEntries(catalog: SemanticCatalog | undefined, target: string): Promise<CatalogEntry[]> {
  const out: CatalogEntry[] = [];
  for (const e of catalog?.entries ?? []) {
    const present = await access(join(target, ...e.path.split("/"))).then(
      () => true,
      () => false,
    );
    if (present) out.push(e);
  }
  return out;
}

/** The entry holding the shapes: a file path in the snapshot, or a graph IRI one of its files declares. */
export function shapesEntry(
  catalog: SemanticCatalog | undefined,
  shapes: string,
): { entry: CatalogEntry; graph?: string } {
  for (const e of catalog?.entries ?? []) {
    if (e.path === shapes) return { entry: e };
    if (e.graph === shapes) return { entry: e };
    if (e.graphs?.some((g) => g.name === shapes)) return { entry: e, graph: shapes };
  }
  throw new IotvaultError("INVALID_ARGUMENT", `the SHACL shapes "${shapes}" are not a file or graph of this snapshot`, {
    hint: "pass --option shacl=<path of a shapes file in the snapshot> or the IRI of a named graph in it",
  });
}

async function quadsOf(entry: CatalogEntry, bytes: Buffer): Promise<Quad[]> {
  const format = entry.graph !== undefined ? "ntriples" : (formatOfPath(entry.path) ?? "turtle");
  return parseRdf(bytes, { format, baseIri: `file:///${entry.path}` });
}

/** Validates the restored data graphs (every restored graph but the shapes) against the shapes. */
export async function validateRestored(
  catalog: SemanticCatalog,
  restored: readonly CatalogEntry[],
  shapes: string,
  read: (e: CatalogEntry) => Promise<Buffer>,
): Promise<ShaclDetails> {
  const { entry, graph } = shapesEntry(catalog, shapes);
  const shapeQuads = (await quadsOf(entry, await read(entry))).filter(
    (q) => graph === undefined || q.graph.value === graph,
  );
  const data: Quad[] = [];
  for (const e of restored) {
    if (!e.graphs?.length || e.error) continue;
    const quads = await quadsOf(e, await read(e));
    for (const q of quads) {
      if (e === entry && (graph === undefined || q.graph.value === graph)) continue;
      data.push(q);
    }
  }
  return shaclVerdict(shapes, data, shapeQuads);
}

/**
 * Source adapters by URL scheme. A new kind of source registers here and nowhere else: the
 * executor, the restore service and the scheduler's validation find it by the job's URL.
 */
import { IotvaultError } from "@iotvault/errors";
import type { SourceAdapter } from "./adapter.js";
import { fsAdapter } from "./adapters/fs.js";
import { parseKvUrl } from "./kv/url.js";
import { pgAdapter } from "./pg/adapter.js";
import { parsePathUrl } from "./rdf/url.js";
import { parseSparqlUrl } from "./sparql/url.js";

/**
 * An adapter whose module loads on its first backup or restore. The semantic sources (rdf:,
 * rules:, config:, sparql:, and kv:, which keeps a semantic catalog) bring the RDF stack (n3,
 * jsonld, rdf-canonize, oxigraph: ~11-14 MiB more in a service); a service that only
 * backs up files or PostgreSQL never loads it. Checking a URL loads nothing.
 */
function onFirstUse(
  schemes: readonly string[],
  validate: (url: string) => void,
  load: () => Promise<SourceAdapter>,
): SourceAdapter {
  return {
    schemes,
    validate,
    backup: async (ctx) => (await load()).backup(ctx),
    restore: async (ctx) => (await load()).restore(ctx),
  };
}

/** A stand-in for a `<scheme>:/path` source (rdf:, rules:, config:). */
function pathSource(scheme: string, load: () => Promise<SourceAdapter>): SourceAdapter {
  return onFirstUse([scheme], (url) => void parsePathUrl(url, scheme), load);
}

// The import paths stay literal: the CLI's bundler follows them into chunks of their own.
const ADAPTERS: SourceAdapter[] = [
  fsAdapter,
  pathSource("rdf", async () => (await import("./rdf/adapter.js")).rdfAdapter),
  pathSource("rules", async () => (await import("./rules/adapter.js")).rulesAdapter),
  pathSource("config", async () => (await import("./config/adapter.js")).configAdapter),
  onFirstUse(["kv"], parseKvUrl, async () => (await import("./kv/adapter.js")).kvAdapter),
  onFirstUse(
    ["sparql+http", "sparql+https"],
    parseSparqlUrl,
    async () => (await import("./sparql/adapter.js")).sparqlAdapter,
  ),
  pgAdapter,
];

export function registerSourceAdapter(adapter: SourceAdapter): void {
  for (const s of adapter.schemes) {
    if (ADAPTERS.some((a) => a.schemes.includes(s)))
      throw new Error(`a source adapter for ${s}: is already registered`);
  }
  ADAPTERS.push(adapter);
}

/** Every scheme a source URL may use. */
export function sourceSchemes(): string[] {
  return ADAPTERS.flatMap((a) => [...a.schemes]);
}

/** The adapter of a source URL; INVALID_ARGUMENT naming the supported schemes otherwise. */
export function sourceAdapterFor(url: string): SourceAdapter {
  const scheme = /^([a-z][a-z0-9+.-]*):/.exec(url)?.[1];
  const adapter = scheme ? ADAPTERS.find((a) => a.schemes.includes(scheme)) : undefined;
  if (!adapter) {
    throw new IotvaultError("INVALID_ARGUMENT", `"${url}" is not a supported source`, {
      hint: `supported source URLs: ${sourceSchemes()
        .map((s) => `${s}:...`)
        .join(", ")}`,
    });
  }
  return adapter;
}

/** Validates a source URL without touching the source. */
export function validateSourceUrl(url: string): void {
  sourceAdapterFor(url).validate(url);
}

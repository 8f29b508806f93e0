/**
 * Source adapters by URL scheme. A new kind of source registers here and nowhere else: the
 * executor, the restore service and the scheduler's validation find it by the job's URL.
 */
import { IotvaultError } from "@iotvault/errors";
import type { SourceAdapter } from "./adapter.js";
import { fsAdapter } from "./adapters/fs.js";
import { configAdapter } from "./config/adapter.js";
import { kvAdapter } from "./kv/adapter.js";
import { rdfAdapter } from "./rdf/adapter.js";
import { rulesAdapter } from "./rules/adapter.js";
import { sparqlAdapter } from "./sparql/adapter.js";
import { pgAdapter } from "./pg/adapter.js";

const ADAPTERS: SourceAdapter[] = [
  fsAdapter,
  rdfAdapter,
  rulesAdapter,
  configAdapter,
  kvAdapter,
  sparqlAdapter,
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

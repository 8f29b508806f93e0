/**
 * JSON-LD contexts from local copies. A backup never fetches anything: a document whose
 * context is neither shipped here nor given by the caller fails to parse with a message that
 * names the context (the file is still stored byte for byte).
 *
 * Shipped: the W3C WoT Thing Description 1.1 context (also used by Thing Models), from the W3C
 * wot-thing-description repository (W3C Software and Document License).
 */
import { readFileSync } from "node:fs";
import { IotvaultError } from "@iotvault/errors";

/** Context URLs served from files in this package's `contexts/` directory. */
const SHIPPED: Readonly<Record<string, string>> = {
  "https://www.w3.org/2022/wot/td/v1.1": "wot-td-1.1.jsonld",
  "http://www.w3.org/2022/wot/td/v1.1": "wot-td-1.1.jsonld",
  "https://www.w3.org/2022/wot/td/v1.1/": "wot-td-1.1.jsonld",
};

const CONTEXTS_DIR = new URL("../contexts/", import.meta.url);
const cache = new Map<string, unknown>();

/** The context URLs this package resolves without any extra configuration. */
export function shippedContextUrls(): string[] {
  return Object.keys(SHIPPED);
}

/** A JSON-LD document as the jsonld library's document loader returns it. */
export interface LoadedDocument {
  contextUrl: null;
  documentUrl: string;
  document: unknown;
}

export type DocumentLoader = (url: string) => Promise<LoadedDocument>;

function shipped(url: string): unknown {
  const file = SHIPPED[url];
  if (file === undefined) return undefined;
  let doc = cache.get(file);
  if (doc === undefined) {
    doc = JSON.parse(readFileSync(new URL(file, CONTEXTS_DIR), "utf8")) as unknown;
    cache.set(file, doc);
  }
  return doc;
}

/**
 * A document loader that answers from the shipped contexts and `extra` (URL -> parsed JSON
 * context document) and refuses everything else, without touching the network.
 *
 * ```ts
 * const loader = localDocumentLoader({ "https://example.org/ctx.jsonld": { "@context": { ... } } });
 * const quads = await parseRdf(text, { format: "jsonld", documentLoader: loader });
 * ```
 */
export function localDocumentLoader(extra: Readonly<Record<string, unknown>> = {}): DocumentLoader {
  return async (url) => {
    const document = extra[url] ?? shipped(url);
    if (document === undefined) {
      throw new IotvaultError("FAILED_PRECONDITION", `the JSON-LD context ${url} is not available locally`, {
        hint: "contexts are never fetched during a backup; ship a local copy of it (see docs/semantic.md)",
        details: { context: url },
      });
    }
    return { contextUrl: null, documentUrl: url, document };
  };
}

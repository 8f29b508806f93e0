// Minimal typings for the untyped dependencies this package uses (only what it calls).
declare module "rdf-canonize" {
  interface CanonizeOptions {
    algorithm: "RDFC-1.0";
    format?: "application/n-quads";
    maxWorkFactor?: number;
    signal?: AbortSignal;
    timeout?: number;
  }
  const canonize: {
    canonize(dataset: readonly unknown[], options: CanonizeOptions): Promise<string>;
    _canonizeSync(dataset: readonly unknown[], options: CanonizeOptions): string;
  };
  export default canonize;
}

declare module "jsonld" {
  interface RemoteDocument {
    contextUrl: string | null;
    documentUrl: string;
    document: unknown;
  }
  interface ToRdfOptions {
    base?: string;
    documentLoader?: (url: string) => Promise<RemoteDocument>;
    safe?: boolean;
  }
  interface PlainTerm {
    termType: "NamedNode" | "BlankNode" | "Literal" | "DefaultGraph";
    value: string;
    datatype?: { termType: "NamedNode"; value: string };
    language?: string;
  }
  interface PlainQuad {
    subject: PlainTerm;
    predicate: PlainTerm;
    object: PlainTerm;
    graph: PlainTerm;
  }
  const jsonld: {
    toRDF(input: unknown, options: ToRdfOptions): Promise<PlainQuad[]>;
  };
  export default jsonld;
}

declare module "@rdfjs/dataset" {
  import type { DatasetCore, Quad } from "@rdfjs/types";
  const factory: { dataset(quads?: Quad[]): DatasetCore };
  export default factory;
}

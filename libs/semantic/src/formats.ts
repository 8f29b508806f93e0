/**
 * RDF serialisations iotvault reads, and how a file name or a media type maps to one.
 */

/** The RDF serialisations iotvault parses. N3 is Turtle plus formulas and rules. */
export type RdfFormat = "turtle" | "ntriples" | "nquads" | "trig" | "rdfxml" | "jsonld" | "n3";

export const RDF_FORMATS: readonly RdfFormat[] = ["turtle", "ntriples", "nquads", "trig", "rdfxml", "jsonld", "n3"];

const BY_EXTENSION: Readonly<Record<string, RdfFormat>> = {
  ttl: "turtle",
  turtle: "turtle",
  shacl: "turtle",
  shc: "turtle",
  nt: "ntriples",
  ntriples: "ntriples",
  nq: "nquads",
  nquads: "nquads",
  trig: "trig",
  rdf: "rdfxml",
  owl: "rdfxml",
  xml: "rdfxml",
  rdfs: "rdfxml",
  swrl: "rdfxml",
  jsonld: "jsonld",
  n3: "n3",
};

const MEDIA_TYPES: Readonly<Record<RdfFormat, string>> = {
  turtle: "text/turtle",
  ntriples: "application/n-triples",
  nquads: "application/n-quads",
  trig: "application/trig",
  rdfxml: "application/rdf+xml",
  jsonld: "application/ld+json",
  n3: "text/n3",
};

/**
 * The RDF format of a file by its name (`.ttl`, `.nt`, `.nq`, `.trig`, `.rdf`/`.owl`/`.xml`,
 * `.jsonld` — WoT Thing Descriptions `*.td.jsonld` and Thing Models `*.tm.jsonld` included —,
 * `.n3`, `.shacl`), or undefined when the name says nothing. `.xml` counts only when the file
 * starts like RDF/XML (see `sniffRdfXml`).
 */
export function formatOfPath(path: string): RdfFormat | undefined {
  const name = path.slice(path.lastIndexOf("/") + 1).toLowerCase();
  const dot = name.lastIndexOf(".");
  if (dot <= 0) return undefined;
  return BY_EXTENSION[name.slice(dot + 1)];
}

/** True when an `.xml` / `.owl` text looks like RDF/XML (an rdf:RDF root or the RDF namespace). */
export function sniffRdfXml(text: string): boolean {
  const head = text.slice(0, 4096);
  return /<rdf:RDF[\s>]/.test(head) || head.includes("http://www.w3.org/1999/02/22-rdf-syntax-ns#");
}

export function mediaTypeOf(format: RdfFormat): string {
  return MEDIA_TYPES[format];
}

/** The format of an HTTP Content-Type (parameters ignored), or undefined. */
export function formatOfMediaType(contentType: string): RdfFormat | undefined {
  const type = contentType.split(";")[0]!.trim().toLowerCase();
  if (type === "text/plain") return "ntriples";
  if (type === "application/json") return "jsonld";
  if (type === "application/x-turtle") return "turtle";
  if (type === "text/x-nquads") return "nquads";
  return (Object.keys(MEDIA_TYPES) as RdfFormat[]).find((f) => MEDIA_TYPES[f] === type);
}

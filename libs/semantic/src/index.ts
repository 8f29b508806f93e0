/**
 * @iotvault/semantic — what iotvault knows about semantic models, inference rules and
 * configuration files: parsing RDF (Turtle, N-Triples, N-Quads, TriG, RDF/XML, JSON-LD with
 * local contexts — W3C WoT Thing Descriptions included —, N3), RDFC-1.0 canonical hashes,
 * triple counts, ontology IRIs and versions, blank-node-safe graph diffs, SHACL validation,
 * parse checks of SHACL / N3 / SWRL / Jena rule files and of YAML / JSON / TOML / INI
 * configuration, and a SPARQL Graph Store Protocol client. Test helpers live in
 * `@iotvault/semantic/testing`.
 *
 * ```ts
 * import { describeGraphs, diffGraphs, parseRdf, validateShacl } from "@iotvault/semantic";
 * const quads = await parseRdf(text, { format: "turtle", baseIri: "file:///models/sosa.ttl" });
 * const [graph] = await describeGraphs(quads);    // { name: "", canonicalHash, triples, ontologies }
 * const d = diffGraphs(oldQuads, quads);          // { added, removed, sampleAdded, sampleRemoved }
 * const verdict = await validateShacl(quads, shapeQuads);
 * ```
 */
export { RDF_FORMATS, formatOfMediaType, formatOfPath, mediaTypeOf, sniffRdfXml, type RdfFormat } from "./formats.js";
export { errorLine, parseRdf, type ParseOptions } from "./parse.js";
export { localDocumentLoader, shippedContextUrls, type DocumentLoader, type LoadedDocument } from "./contexts.js";
export {
  graphName,
  inDefaultGraph,
  quadToString,
  termToString,
  toNQuads,
  toNTriples,
  tripleToString,
} from "./terms.js";
export {
  canonicalize,
  canonicalizeSync,
  distinctQuads,
  sha256Hex,
  type CanonicalOptions,
  type CanonicalResult,
} from "./canonical.js";
export { describeGraphs, ontologiesOf, splitByGraph, type GraphRecord, type OntologyInfo } from "./graphs.js";
export { diffGraphs, type DiffOptions, type GraphDiff } from "./diff.js";
export { valueForms } from "./literals.js";
export { validateShacl, type ShaclOptions, type ShaclResult, type ShaclVerdict } from "./shacl.js";
export { checkRules, ruleKindOf, type RuleCheck, type RuleKind } from "./rules.js";
export { checkJenaRules, type JenaCheck } from "./jena.js";
export { checkConfig, configFormatOf, type ConfigCheck, type ConfigFormat } from "./config-syntax.js";
export {
  GraphStoreClient,
  siblingQueryEndpoint,
  type FetchedGraph,
  type GraphStoreOptions,
  type SparqlJsonResult,
} from "./gsp.js";
export { HttpAuthenticator, parseChallenge, type Credentials } from "./http-auth.js";
export type { Quad, Term } from "@rdfjs/types";

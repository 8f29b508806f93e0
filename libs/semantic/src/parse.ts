/**
 * Parsing RDF into RDF/JS quads: Turtle, N-Triples, N-Quads, TriG and N3 with `n3`, RDF/XML with
 * `rdfxml-streaming-parser`, JSON-LD (WoT Thing Descriptions included) with `jsonld` and a
 * local-only document loader. A syntax error is INVALID_ARGUMENT with the line of the first
 * error in `details.line` (when the parser knows it).
 */
import type { Quad, Term } from "@rdfjs/types";
import jsonld from "jsonld";
import { DataFactory, StreamParser } from "n3";
import { RdfXmlParser } from "rdfxml-streaming-parser";
import { IotvaultError, toIotvaultError } from "@iotvault/errors";
import { localDocumentLoader, type DocumentLoader } from "./contexts.js";
import type { RdfFormat } from "./formats.js";
import { jsonErrorOffset, lineAt } from "./json-position.js";

export interface ParseOptions {
  format: RdfFormat;
  /** Relative IRIs resolve against it (iotvault uses `file:///<path inside the source>`). */
  baseIri?: string | undefined;
  /** JSON-LD only: where contexts come from (default: the shipped local copies only). */
  documentLoader?: DocumentLoader | undefined;
  signal?: AbortSignal | undefined;
}

const N3_FORMATS: Partial<Record<RdfFormat, string>> = {
  turtle: "text/turtle",
  ntriples: "application/n-triples",
  nquads: "application/n-quads",
  trig: "application/trig",
  n3: "text/n3",
};

/** Text is fed to the streaming parsers in pieces of this size, yielding to the event loop between them. */
const PIECE = 1 << 20;

/** The line of a parse error, when the parser reported one. */
export function errorLine(err: unknown): number | undefined {
  const line = (err as { details?: Record<string, string> } | null)?.details?.["line"];
  const n = line === undefined ? NaN : Number(line);
  return Number.isInteger(n) && n > 0 ? n : undefined;
}

function syntaxError(format: RdfFormat, message: string, line: number | undefined, cause?: unknown): IotvaultError {
  const where = line === undefined ? "" : ` (line ${line})`;
  return new IotvaultError("INVALID_ARGUMENT", `${format} syntax error${where}: ${message}`, {
    hint: "fix the file; it is still backed up byte for byte",
    details: line === undefined ? {} : { line: String(line) },
    cause,
  });
}

/**
 * Parses `input` (UTF-8 text or bytes) into quads, in document order.
 *
 * ```ts
 * const quads = await parseRdf(await readFile("sosa.ttl"), { format: "turtle", baseIri: "file:///sosa.ttl" });
 * ```
 */
export async function parseRdf(input: string | Uint8Array, options: ParseOptions): Promise<Quad[]> {
  const text =
    typeof input === "string" ? input : Buffer.from(input.buffer, input.byteOffset, input.byteLength).toString("utf8");
  options.signal?.throwIfAborted();
  switch (options.format) {
    case "rdfxml":
      return parseRdfXml(text, options);
    case "jsonld":
      return parseJsonLd(text, options);
    default:
      return parseN3Family(text, options);
  }
}

function pieces(text: string): string[] {
  const out: string[] = [];
  for (let i = 0; i < text.length; i += PIECE) out.push(text.slice(i, i + PIECE));
  return out;
}

const nextTick = () => new Promise<void>((resolve) => setImmediate(resolve));

async function parseN3Family(text: string, options: ParseOptions): Promise<Quad[]> {
  const parser = new StreamParser({
    format: N3_FORMATS[options.format],
    ...(options.baseIri ? { baseIRI: options.baseIri } : {}),
  });
  const quads: Quad[] = [];
  let failure: Error | undefined;
  parser.on("data", (q: Quad) => quads.push(q));
  parser.on("error", (err: Error) => (failure ??= err));
  for (const piece of pieces(text)) {
    parser.write(piece);
    if (failure) break;
    await nextTick();
    options.signal?.throwIfAborted();
  }
  if (!failure) {
    const ended = new Promise<void>((resolve) => parser.once("end", resolve));
    parser.end();
    await Promise.race([ended, new Promise<void>((resolve) => parser.once("error", () => resolve()))]);
  }
  if (failure) {
    const m = /on line (\d+)/.exec(failure.message);
    throw syntaxError(
      options.format,
      failure.message.replace(/\s*on line \d+\.?$/, ""),
      m ? Number(m[1]) : undefined,
      failure,
    );
  }
  return quads;
}

async function parseRdfXml(text: string, options: ParseOptions): Promise<Quad[]> {
  const parser = new RdfXmlParser({ trackPosition: true, ...(options.baseIri ? { baseIRI: options.baseIri } : {}) });
  const quads: Quad[] = [];
  let failure: Error | undefined;
  parser.on("data", (q: Quad) => quads.push(q));
  parser.on("error", (err: Error) => (failure ??= err));
  const ended = new Promise<void>((resolve) => {
    parser.on("end", resolve);
    parser.on("error", () => resolve());
  });
  for (const piece of pieces(text)) {
    parser.write(piece);
    if (failure) break;
    await nextTick();
    options.signal?.throwIfAborted();
  }
  if (!failure) parser.end();
  await ended;
  if (failure) {
    const m = /^(\d+):(\d+):\s*/.exec(failure.message) ?? /line:? (\d+)/i.exec(failure.message);
    throw syntaxError("rdfxml", failure.message.replace(/^\d+:\d+:\s*/, ""), m ? Number(m[1]) : undefined, failure);
  }
  return quads;
}

async function parseJsonLd(text: string, options: ParseOptions): Promise<Quad[]> {
  let doc: unknown;
  try {
    doc = JSON.parse(text);
  } catch (err) {
    const message = (err as Error).message;
    const pos = /position (\d+)/.exec(message);
    throw syntaxError("jsonld", message, lineAt(text, pos ? Number(pos[1]) : jsonErrorOffset(text)), err);
  }
  let plain;
  try {
    plain = await jsonld.toRDF(doc, {
      documentLoader: options.documentLoader ?? localDocumentLoader(),
      ...(options.baseIri ? { base: options.baseIri } : {}),
    });
  } catch (err) {
    const cause = (err as { details?: { cause?: unknown } }).details?.cause ?? err;
    const e = toIotvaultError(cause);
    throw syntaxError("jsonld", e.message, undefined, err);
  }
  options.signal?.throwIfAborted();
  return plain.map((q) =>
    DataFactory.quad(
      toTerm(q.subject) as never,
      toTerm(q.predicate) as never,
      toTerm(q.object) as never,
      toTerm(q.graph) as never,
    ),
  );
}

type PlainTerm = { termType: string; value: string; datatype?: { value: string }; language?: string };

function toTerm(t: PlainTerm): Term {
  switch (t.termType) {
    case "NamedNode":
      return DataFactory.namedNode(t.value);
    case "BlankNode":
      return DataFactory.blankNode(t.value.replace(/^_:/, ""));
    case "Literal": {
      const tag = t.language ? t.language : t.datatype ? DataFactory.namedNode(t.datatype.value) : undefined;
      return DataFactory.literal(t.value, tag);
    }
    default:
      return DataFactory.defaultGraph();
  }
}

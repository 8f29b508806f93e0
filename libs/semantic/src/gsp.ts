/**
 * A client of a SPARQL 1.1 Graph Store Protocol endpoint (read and replace one named graph at
 * a time) plus its SPARQL query endpoint (list the named graphs, ask whether a graph exists),
 * with Basic or Digest authentication. Tested against Virtuoso and an in-process oxigraph
 * store.
 *
 * ```ts
 * const store = new GraphStoreClient({ endpoint: "http://127.0.0.1:8890/sparql-graph-crud-auth", credentials });
 * for (const g of await store.listGraphs()) console.log(g, (await store.getGraph(g)).text.length);
 * await store.putGraph("http://example.org/g1", ntriplesText);
 * ```
 */
import { IotvaultError } from "@iotvault/errors";
import { HttpAuthenticator, type Credentials } from "./http-auth.js";
import { formatOfMediaType, type RdfFormat } from "./formats.js";

export interface GraphStoreOptions {
  /** The Graph Store Protocol endpoint (http or https URL, no credentials in it). */
  endpoint: string;
  /** The SPARQL query endpoint; default: the sibling `sparql` of the GSP endpoint's path. */
  queryEndpoint?: string | undefined;
  /** The query parameter naming the graph (default `graph`; Virtuoso also takes `graph-uri`). */
  graphParam?: string | undefined;
  credentials?: Credentials | undefined;
  /** Per-request timeout (default 10 minutes: a large graph takes a while). */
  timeoutMs?: number | undefined;
}

export interface FetchedGraph {
  text: string;
  format: RdfFormat;
}

const ACCEPT_GRAPH = "application/n-triples, text/turtle;q=0.9, application/rdf+xml;q=0.5";

/** The default query endpoint: the GSP endpoint's last path segment replaced by `sparql`. */
export function siblingQueryEndpoint(endpoint: string): string {
  const u = new URL(endpoint);
  u.pathname = u.pathname.replace(/[^/]*$/, "sparql");
  u.search = "";
  return u.toString();
}

export class GraphStoreClient {
  readonly endpoint: string;
  readonly queryEndpoint: string;
  private readonly graphParam: string;
  private readonly auth: HttpAuthenticator;
  private readonly timeoutMs: number;

  constructor(options: GraphStoreOptions) {
    const u = new URL(options.endpoint);
    if (u.username || u.password) {
      throw new IotvaultError("INVALID_ARGUMENT", "credentials are not allowed in a SPARQL endpoint URL", {
        hint: "pass them through the environment (IOTVAULT_SPARQL_USER / IOTVAULT_SPARQL_PASSWORD)",
      });
    }
    this.endpoint = u.toString();
    this.queryEndpoint = options.queryEndpoint ?? siblingQueryEndpoint(this.endpoint);
    this.graphParam = options.graphParam ?? "graph";
    this.auth = new HttpAuthenticator(options.credentials);
    this.timeoutMs = options.timeoutMs ?? 600_000;
  }

  private graphUrl(iri: string): URL {
    const u = new URL(this.endpoint);
    u.searchParams.set(this.graphParam, iri);
    return u;
  }

  /** One request, authenticated (a 401 is answered once with the server's challenge). */
  private async request(
    method: string,
    url: URL,
    init: { headers?: Record<string, string>; body?: string | Uint8Array; signal?: AbortSignal | undefined },
  ): Promise<Response> {
    const uri = url.pathname + url.search;
    for (let attempt = 0; attempt < 3; attempt++) {
      const headers: Record<string, string> = { ...init.headers };
      const authorization = this.auth.header(method, uri);
      if (authorization) headers["authorization"] = authorization;
      const signals = [AbortSignal.timeout(this.timeoutMs), ...(init.signal ? [init.signal] : [])];
      let res: Response;
      try {
        res = await fetch(url, {
          method,
          headers,
          ...(init.body !== undefined ? { body: init.body } : {}),
          signal: AbortSignal.any(signals),
        });
      } catch (err) {
        init.signal?.throwIfAborted();
        throw new IotvaultError(
          "UNAVAILABLE",
          `the SPARQL endpoint ${url.origin} cannot be reached: ${(err as Error).message}`,
          {
            hint: "check that the triple store is running and its URL in the job",
            cause: err,
          },
        );
      }
      if (res.status !== 401) return res;
      await res.body?.cancel();
      const challenge = res.headers.get("www-authenticate");
      if (!challenge || !this.auth.challenge([challenge]) || (attempt > 0 && !/stale\s*=\s*"?true/i.test(challenge))) {
        throw new IotvaultError("PERMISSION_DENIED", `the SPARQL endpoint ${url.origin} refused the request (401)`, {
          hint: this.auth.hasCredentials
            ? "check IOTVAULT_SPARQL_USER and IOTVAULT_SPARQL_PASSWORD (or _FILE) in the service's environment"
            : "set IOTVAULT_SPARQL_USER and IOTVAULT_SPARQL_PASSWORD (or IOTVAULT_SPARQL_PASSWORD_FILE) in the service's environment",
        });
      }
    }
    throw new IotvaultError("PERMISSION_DENIED", `the SPARQL endpoint ${url.origin} keeps asking for authentication`);
  }

  private async failure(res: Response, what: string): Promise<IotvaultError> {
    const body = (await res.text().catch(() => "")).slice(0, 300).replace(/\s+/g, " ").trim();
    const code =
      res.status === 404
        ? "NOT_FOUND"
        : res.status === 403
          ? "PERMISSION_DENIED"
          : res.status >= 500
            ? "UNAVAILABLE"
            : "FAILED_PRECONDITION";
    return new IotvaultError(code, `${what}: HTTP ${res.status} ${res.statusText}${body ? ` (${body})` : ""}`, {
      hint:
        res.status === 403 ? "grant the user the right to read and update graphs (Virtuoso: SPARQL_UPDATE)" : undefined,
      retryable: res.status >= 500,
    });
  }

  /** A SELECT or ASK query's JSON result (application/sparql-results+json). */
  async query(sparql: string, signal?: AbortSignal): Promise<SparqlJsonResult> {
    const res = await this.request("POST", new URL(this.queryEndpoint), {
      headers: { "content-type": "application/x-www-form-urlencoded", accept: "application/sparql-results+json" },
      body: new URLSearchParams({ query: sparql }).toString(),
      signal,
    });
    if (!res.ok) throw await this.failure(res, "SPARQL query failed");
    return (await res.json()) as SparqlJsonResult;
  }

  /** The named graphs holding at least one triple, sorted. */
  async listGraphs(signal?: AbortSignal): Promise<string[]> {
    const r = await this.query("SELECT DISTINCT ?g WHERE { GRAPH ?g { ?s ?p ?o } }", signal);
    const out = new Set<string>();
    for (const b of r.results?.bindings ?? []) {
      const g = b["g"];
      if (g?.type === "uri") out.add(g.value);
    }
    return [...out].sort();
  }

  /** True when the graph holds at least one triple. */
  async graphExists(iri: string, signal?: AbortSignal): Promise<boolean> {
    const r = await this.query(`ASK WHERE { GRAPH <${iri.replace(/[<>"{}|^`\\\s]/g, "")}> { ?s ?p ?o } }`, signal);
    return r.boolean === true;
  }

  /** Triples in a graph by a SPARQL COUNT (to catch a store that truncates large GET answers). */
  async countTriples(iri: string, signal?: AbortSignal): Promise<number> {
    const r = await this.query(
      `SELECT (COUNT(*) AS ?n) WHERE { GRAPH <${iri.replace(/[<>"{}|^`\\\s]/g, "")}> { ?s ?p ?o } }`,
      signal,
    );
    const n = Number(r.results?.bindings[0]?.["n"]?.value ?? NaN);
    return Number.isFinite(n) ? n : -1;
  }

  /** GET one named graph (N-Triples preferred); NOT_FOUND when the store has no such graph. */
  async getGraph(iri: string, signal?: AbortSignal): Promise<FetchedGraph> {
    const res = await this.request("GET", this.graphUrl(iri), { headers: { accept: ACCEPT_GRAPH }, signal });
    if (!res.ok) throw await this.failure(res, `reading graph <${iri}>`);
    const format = formatOfMediaType(res.headers.get("content-type") ?? "application/n-triples") ?? "ntriples";
    return { text: await res.text(), format };
  }

  /** PUT (replace) one named graph. */
  async putGraph(
    iri: string,
    body: string | Uint8Array,
    format: RdfFormat = "ntriples",
    signal?: AbortSignal,
  ): Promise<void> {
    const type = format === "turtle" ? "text/turtle" : "application/n-triples";
    const res = await this.request("PUT", this.graphUrl(iri), { headers: { "content-type": type }, body, signal });
    if (!res.ok) throw await this.failure(res, `writing graph <${iri}>`);
    await res.body?.cancel();
  }

  /** DELETE one named graph (a missing graph is not an error). */
  async deleteGraph(iri: string, signal?: AbortSignal): Promise<void> {
    const res = await this.request("DELETE", this.graphUrl(iri), { signal });
    if (!res.ok && res.status !== 404) throw await this.failure(res, `deleting graph <${iri}>`);
    await res.body?.cancel();
  }
}

/** The JSON form of SPARQL SELECT / ASK results. */
export interface SparqlJsonResult {
  head?: { vars?: string[] };
  boolean?: boolean;
  results?: { bindings: Record<string, { type: string; value: string } | undefined>[] };
}

/**
 * An in-process SPARQL 1.1 Graph Store Protocol server over an oxigraph store, for fast tests
 * and the benchmark: `GET|PUT|POST|DELETE <gsp>?graph=<iri>` and `GET|POST /sparql` (SELECT and
 * ASK, JSON results). Optional Basic authentication. Loopback only.
 */
import { createServer, type IncomingMessage, type Server, type ServerResponse } from "node:http";
import type { AddressInfo } from "node:net";
import * as oxigraph from "oxigraph";

export interface GraphStoreServer {
  /** The GSP endpoint URL (http://127.0.0.1:<port>/gsp). */
  gspUrl: string;
  /** The query endpoint URL (http://127.0.0.1:<port>/sparql). */
  queryUrl: string;
  store: oxigraph.Store;
  /** Requests served, by method (GET counts graph reads only). */
  requests: { get: number; put: number; post: number; delete: number; query: number };
  /** Loads N-Triples / Turtle text into a named graph. */
  load(graph: string, text: string, format?: "application/n-triples" | "text/turtle"): void;
  /** A named graph as N-Triples. */
  dump(graph: string): string;
  close(): Promise<void>;
}

export interface GraphStoreServerOptions {
  /** Require HTTP Basic authentication with these credentials. */
  basicAuth?: { user: string; password: string } | undefined;
}

async function body(req: IncomingMessage): Promise<Buffer> {
  const parts: Buffer[] = [];
  for await (const chunk of req) parts.push(chunk as Buffer);
  return Buffer.concat(parts);
}

function contentFormat(type: string | undefined): string {
  const t = (type ?? "").split(";")[0]!.trim();
  return t === "text/turtle" || t === "application/n-triples" || t === "application/rdf+xml"
    ? t
    : "application/n-triples";
}

/**
 * Starts the server on a free loopback port.
 *
 * ```ts
 * const gs = await startGraphStore();
 * gs.load("http://example.org/g1", "<http://a> <http://b> <http://c> .\n");
 * // job source: `sparql+${gs.gspUrl}`
 * await gs.close();
 * ```
 */
export async function startGraphStore(options: GraphStoreServerOptions = {}): Promise<GraphStoreServer> {
  const store = new oxigraph.Store();
  const requests = { get: 0, put: 0, post: 0, delete: 0, query: 0 };
  const graphTerm = (iri: string) => oxigraph.namedNode(iri);
  const authorized = (req: IncomingMessage): boolean => {
    const auth = options.basicAuth;
    if (!auth) return true;
    const expected = `Basic ${Buffer.from(`${auth.user}:${auth.password}`).toString("base64")}`;
    return req.headers.authorization === expected;
  };
  const handle = async (req: IncomingMessage, res: ServerResponse): Promise<void> => {
    const url = new URL(req.url ?? "/", "http://localhost");
    if (!authorized(req)) {
      res.writeHead(401, { "www-authenticate": 'Basic realm="iotvault-test"' }).end();
      return;
    }
    if (url.pathname === "/sparql") {
      requests.query++;
      const raw = req.method === "POST" ? (await body(req)).toString("utf8") : url.search.slice(1);
      const query = new URLSearchParams(raw).get("query") ?? "";
      const result = store.query(query, { results_format: "application/sparql-results+json" });
      res
        .writeHead(200, { "content-type": "application/sparql-results+json" })
        .end(typeof result === "string" ? result : JSON.stringify(result));
      return;
    }
    if (url.pathname !== "/gsp") {
      res.writeHead(404).end();
      return;
    }
    const iri = url.searchParams.get("graph") ?? url.searchParams.get("graph-uri");
    if (!iri) {
      res.writeHead(400).end("graph parameter required");
      return;
    }
    switch (req.method) {
      case "GET": {
        requests.get++;
        const text = store.dump({ format: "application/n-triples", from_graph_name: graphTerm(iri) });
        if (text.length === 0) res.writeHead(404).end();
        else res.writeHead(200, { "content-type": "application/n-triples" }).end(text);
        return;
      }
      case "PUT":
      case "POST": {
        if (req.method === "PUT") requests.put++;
        else requests.post++;
        const data = await body(req);
        const existed = store.match(null, null, null, graphTerm(iri)).length > 0;
        if (req.method === "PUT") store.update(`DROP SILENT GRAPH <${iri}>`);
        store.load(data.toString("utf8"), {
          format: contentFormat(req.headers["content-type"]),
          to_graph_name: graphTerm(iri),
        });
        res.writeHead(existed ? 204 : 201).end();
        return;
      }
      case "DELETE":
        requests.delete++;
        store.update(`DROP SILENT GRAPH <${iri}>`);
        res.writeHead(204).end();
        return;
      default:
        res.writeHead(405).end();
    }
  };
  const server: Server = createServer((req, res) => {
    handle(req, res).catch((err: unknown) => {
      if (!res.headersSent) res.writeHead(400, { "content-type": "text/plain" });
      res.end(String((err as Error).message ?? err));
    });
  });
  await new Promise<void>((resolve, reject) => {
    server.once("error", reject);
    server.listen(0, "127.0.0.1", resolve);
  });
  const { port } = server.address() as AddressInfo;
  return {
    gspUrl: `http://127.0.0.1:${port}/gsp`,
    queryUrl: `http://127.0.0.1:${port}/sparql`,
    store,
    requests,
    load(graph, text, format = "application/n-triples") {
      store.load(text, { format, to_graph_name: graphTerm(graph) });
    },
    dump(graph) {
      return store.dump({ format: "application/n-triples", from_graph_name: graphTerm(graph) });
    },
    close: () =>
      new Promise<void>((resolve) => {
        server.closeAllConnections();
        server.close(() => resolve());
      }),
  };
}

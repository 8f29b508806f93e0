/** The `sparql+http(s)://` source URL (kept apart from the adapter: checking a URL loads nothing else). */
import { IotvaultError } from "@iotvault/errors";

export interface SparqlSource {
  /** The GSP endpoint as an http(s) URL. */
  endpoint: string;
  queryEndpoint: string | undefined;
  graphParam: string | undefined;
  /** Keep the store's own system graphs (Virtuoso's virtrdf#, ldp#, ...). */
  systemGraphs: boolean;
}

const OWN_PARAMS = ["query-endpoint", "graph-param", "system-graphs"];

/** Parses a `sparql+http(s)://` source or target URL. */
export function parseSparqlUrl(url: string): SparqlSource {
  const invalid = (why: string) =>
    new IotvaultError("INVALID_ARGUMENT", `invalid SPARQL source ${JSON.stringify(url)}: ${why}`, {
      hint: "write it as sparql+http://host:port/<graph store endpoint>[?query-endpoint=/sparql&graph-param=graph]",
    });
  if (!/^sparql\+https?:\/\//.test(url)) throw invalid("expected sparql+http:// or sparql+https://");
  let u: URL;
  try {
    u = new URL(url.slice("sparql+".length));
  } catch {
    throw invalid("it is not a URL");
  }
  if (u.username || u.password)
    throw invalid("credentials are not allowed in the URL; use IOTVAULT_SPARQL_USER / IOTVAULT_SPARQL_PASSWORD");
  const query = u.searchParams.get("query-endpoint") ?? undefined;
  const graphParam = u.searchParams.get("graph-param") ?? undefined;
  const systemGraphs = u.searchParams.get("system-graphs") === "include";
  for (const p of OWN_PARAMS) u.searchParams.delete(p);
  return {
    endpoint: u.toString(),
    queryEndpoint: query ? new URL(query, u).toString() : undefined,
    graphParam,
    systemGraphs,
  };
}

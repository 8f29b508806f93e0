/**
 * HTTP Basic and Digest (RFC 7616: MD5 / MD5-sess / SHA-256, qop=auth) client authentication for
 * SPARQL endpoints. The password stays in memory; it is never put in a URL, a message or a log.
 */
import { createHash, randomBytes } from "node:crypto";

export interface Credentials {
  user: string;
  password: string;
}

interface DigestChallenge {
  realm: string;
  nonce: string;
  qop: string | undefined;
  opaque: string | undefined;
  algorithm: string;
}

/** Parses `Digest realm="x", nonce="y", ...` (quoted or token values). */
export function parseChallenge(header: string): { scheme: string; params: Record<string, string> } {
  const m = /^\s*(\w+)\s*(.*)$/s.exec(header);
  const scheme = (m?.[1] ?? "").toLowerCase();
  const params: Record<string, string> = {};
  const re = /(\w[\w-]*)\s*=\s*(?:"((?:[^"\\]|\\.)*)"|([^,\s]+))/g;
  let p: RegExpExecArray | null;
  while ((p = re.exec(m?.[2] ?? "")) !== null)
    params[p[1]!.toLowerCase()] = p[2] !== undefined ? p[2].replace(/\\(.)/g, "$1") : p[3]!;
  return { scheme, params };
}

/** Chooses among several challenges in one header (Digest preferred over Basic). */
function pickChallenge(headers: string[]): { scheme: string; params: Record<string, string> } | undefined {
  const parsed = headers.flatMap((h) => h.split(/,(?=\s*(?:Digest|Basic|Bearer)\s)/i)).map(parseChallenge);
  return parsed.find((c) => c.scheme === "digest") ?? parsed.find((c) => c.scheme === "basic");
}

/** Keeps the server's last Digest challenge so that later requests authenticate at once. */
export class HttpAuthenticator {
  private digest: DigestChallenge | undefined;
  private basic = false;
  private nc = 0;

  constructor(
    private readonly credentials: Credentials | undefined,
    /** The client nonce of each Digest response (random; fixed only in tests). */
    private readonly cnonce: () => string = () => randomBytes(8).toString("hex"),
  ) {}

  get hasCredentials(): boolean {
    return this.credentials !== undefined;
  }

  /** The Authorization header for a request, when a challenge is known. */
  header(method: string, uri: string): string | undefined {
    const c = this.credentials;
    if (!c) return undefined;
    if (this.digest) return this.digestHeader(this.digest, c, method, uri);
    if (this.basic) return `Basic ${Buffer.from(`${c.user}:${c.password}`, "utf8").toString("base64")}`;
    return undefined;
  }

  /** Learns from a 401's WWW-Authenticate header; false when nothing can be tried. */
  challenge(wwwAuthenticate: string[]): boolean {
    if (!this.credentials) return false;
    const chosen = pickChallenge(wwwAuthenticate);
    if (!chosen) return false;
    if (chosen.scheme === "basic") {
      this.basic = true;
      return true;
    }
    const p = chosen.params;
    if (!p["nonce"]) return false;
    this.digest = {
      realm: p["realm"] ?? "",
      nonce: p["nonce"],
      qop: p["qop"]
        ?.split(",")
        .map((s) => s.trim())
        .find((q) => q === "auth"),
      opaque: p["opaque"],
      algorithm: p["algorithm"] ?? "MD5",
    };
    this.nc = 0;
    return true;
  }

  private digestHeader(d: DigestChallenge, c: Credentials, method: string, uri: string): string {
    const algo = d.algorithm.toUpperCase();
    const hashName = algo.startsWith("SHA-256") ? "sha256" : "md5";
    const h = (s: string) => createHash(hashName).update(s, "utf8").digest("hex");
    const cnonce = this.cnonce();
    const nc = (++this.nc).toString(16).padStart(8, "0");
    let ha1 = h(`${c.user}:${d.realm}:${c.password}`);
    if (algo.endsWith("-SESS")) ha1 = h(`${ha1}:${d.nonce}:${cnonce}`);
    const ha2 = h(`${method}:${uri}`);
    const response = d.qop ? h(`${ha1}:${d.nonce}:${nc}:${cnonce}:${d.qop}:${ha2}`) : h(`${ha1}:${d.nonce}:${ha2}`);
    const q = (s: string) => `"${s.replace(/["\\]/g, "\\$&")}"`;
    const parts = [
      `username=${q(c.user)}`,
      `realm=${q(d.realm)}`,
      `nonce=${q(d.nonce)}`,
      `uri=${q(uri)}`,
      `algorithm=${d.algorithm}`,
      `response=${q(response)}`,
    ];
    if (d.qop) parts.push(`qop=${d.qop}`, `nc=${nc}`, `cnonce=${q(cnonce)}`);
    if (d.opaque !== undefined) parts.push(`opaque=${q(d.opaque)}`);
    return `Digest ${parts.join(", ")}`;
  }
}

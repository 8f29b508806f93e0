/**
 * SSH host key checking for the SFTP store, as OpenSSH does it: a pinned SHA256 fingerprint,
 * or an OpenSSH known_hosts file (plain and hashed host names, `[host]:port` for ports other
 * than 22, `*` / `?` patterns and `!` negations, `@revoked` keys).
 *
 * ```ts
 * const verdict = checkHostKey({ knownHosts: await readFile(file, "utf8") }, "sftp.example", 22, keyBlob);
 * if (!verdict.ok) throw new Error(verdict.message);
 * sshFingerprint(keyBlob); // "SHA256:U3hGhMGOquHUS++TSIqElvc2V4WWY8GTblDDKshyZmc", as ssh-keygen -l prints it
 * ```
 */
import { createHash, createHmac } from "node:crypto";

/** How the server's host key is verified; at least one of the two must be given. */
export interface HostKeyPolicy {
  /** Accepted key fingerprints, "SHA256:<base64 without padding>" (what `ssh-keygen -lf` prints). */
  fingerprints?: readonly string[] | undefined;
  /** The text of an OpenSSH known_hosts file. */
  knownHosts?: string | undefined;
  /** Where knownHosts came from, for messages. */
  knownHostsSource?: string | undefined;
}

export interface KnownHostEntry {
  marker: "" | "@revoked" | "@cert-authority";
  /** The host field: comma-separated patterns, or one hashed `|1|salt|hash` entry. */
  hosts: string;
  keyType: string;
  /** The key blob (base64-decoded). */
  key: Buffer;
}

export type HostKeyVerdict =
  | { ok: true; fingerprint: string }
  | { ok: false; reason: "unknown" | "changed" | "revoked" | "not-pinned"; fingerprint: string; message: string };

export const FINGERPRINT_PATTERN = /^SHA256:[A-Za-z0-9+/]{43}$/;

/** OpenSSH's SHA256 fingerprint of a key blob: "SHA256:" + unpadded base64 of its SHA-256. */
export function sshFingerprint(keyBlob: Buffer): string {
  return `SHA256:${createHash("sha256").update(keyBlob).digest("base64").replace(/=+$/, "")}`;
}

/** The key type named at the start of a key blob ("ssh-ed25519", "ssh-rsa", ...). */
export function sshKeyType(keyBlob: Buffer): string {
  if (keyBlob.length < 4) return "unknown";
  const length = keyBlob.readUInt32BE(0);
  return length > 0 && length < 64 && keyBlob.length >= 4 + length
    ? keyBlob.subarray(4, 4 + length).toString("ascii")
    : "unknown";
}

/** The entries of a known_hosts file; comments, blank and malformed lines are skipped. */
export function parseKnownHosts(text: string): KnownHostEntry[] {
  const entries: KnownHostEntry[] = [];
  for (const raw of text.split(/\r?\n/)) {
    const line = raw.trim();
    if (line === "" || line.startsWith("#")) continue;
    const fields = line.split(/\s+/);
    const marker = fields[0] === "@revoked" || fields[0] === "@cert-authority" ? fields.shift() : "";
    const [hosts, keyType, base64] = fields;
    if (!hosts || !keyType || !base64 || !/^[A-Za-z0-9+/]+=*$/.test(base64)) continue;
    entries.push({
      marker: (marker ?? "") as KnownHostEntry["marker"],
      hosts,
      keyType,
      key: Buffer.from(base64, "base64"),
    });
  }
  return entries;
}

/** The name OpenSSH looks up: `host`, or `[host]:port` when the port is not 22. */
export function knownHostsName(host: string, port: number): string {
  return port === 22 ? host : `[${host}]:${port}`;
}

/** Whether a known_hosts host field names this host (and port). */
export function hostMatches(hostsField: string, host: string, port: number): boolean {
  const name = knownHostsName(host, port);
  if (hostsField.startsWith("|1|")) {
    const [, , salt, hash] = hostsField.split("|");
    if (!salt || !hash) return false;
    return createHmac("sha1", Buffer.from(salt, "base64")).update(name).digest("base64") === hash;
  }
  let matched = false;
  for (const pattern of hostsField.split(",")) {
    const negated = pattern.startsWith("!");
    const body = negated ? pattern.slice(1) : pattern;
    if (!globMatch(body.toLowerCase(), name.toLowerCase())) continue;
    if (negated) return false;
    matched = true;
  }
  return matched;
}

function globMatch(pattern: string, text: string): boolean {
  const regex = pattern
    .replace(/[.+^${}()|[\]\\]/g, "\\$&")
    .replace(/\*/g, ".*")
    .replace(/\?/g, ".");
  return new RegExp(`^${regex}$`).test(text);
}

/**
 * Checks the key a server presented. With fingerprints, the key must be one of them. Else the
 * known_hosts entries for this host decide: the same key is accepted, a revoked key or another
 * key of a host that has entries ("changed") is refused, and so is a host without entries
 * ("unknown"). Certificate authorities are not supported (their entries are ignored).
 */
export function checkHostKey(policy: HostKeyPolicy, host: string, port: number, keyBlob: Buffer): HostKeyVerdict {
  const fingerprint = sshFingerprint(keyBlob);
  const presented = `${sshKeyType(keyBlob)} key ${fingerprint}`;
  const name = knownHostsName(host, port);
  if (policy.fingerprints && policy.fingerprints.length > 0) {
    if (policy.fingerprints.includes(fingerprint)) return { ok: true, fingerprint };
    const pinned = policy.fingerprints.join(", ");
    return {
      ok: false,
      reason: "not-pinned",
      fingerprint,
      message: `SFTP host ${name} presented the ${presented}, which is not the pinned ${pinned}`,
    };
  }
  const source = policy.knownHostsSource ?? "the known_hosts file";
  const entries = parseKnownHosts(policy.knownHosts ?? "").filter(
    (e) => e.marker !== "@cert-authority" && hostMatches(e.hosts, host, port),
  );
  if (entries.some((e) => e.marker === "@revoked" && e.key.equals(keyBlob))) {
    return {
      ok: false,
      reason: "revoked",
      fingerprint,
      message: `SFTP host ${name} presented the revoked ${presented}`,
    };
  }
  const known = entries.filter((e) => e.marker === "");
  if (known.some((e) => e.key.equals(keyBlob))) return { ok: true, fingerprint };
  if (known.length === 0) {
    return {
      ok: false,
      reason: "unknown",
      fingerprint,
      message: `SFTP host ${name} is not in ${source}; it presented the ${presented}`,
    };
  }
  const expected = known.map((e) => `${e.keyType} ${sshFingerprint(e.key)}`).join(", ");
  return {
    ok: false,
    reason: "changed",
    fingerprint,
    message: `the host key of SFTP host ${name} changed: it presented the ${presented}, but ${source} has ${expected} (possible man-in-the-middle attack)`,
  };
}

/**
 * The ssh2 `serverHostKey` algorithms that can produce the key types known for this host, so
 * that a server with several host keys presents one we can check (as OpenSSH orders them).
 * Undefined when the policy does not restrict them.
 */
export function hostKeyAlgorithms(policy: HostKeyPolicy, host: string, port: number): string[] | undefined {
  if (policy.fingerprints && policy.fingerprints.length > 0) return undefined;
  const types = new Set(
    parseKnownHosts(policy.knownHosts ?? "")
      .filter((e) => e.marker === "" && hostMatches(e.hosts, host, port))
      .map((e) => e.keyType),
  );
  if (types.size === 0) return undefined;
  const algorithms: string[] = [];
  for (const type of types) {
    if (type === "ssh-rsa") algorithms.push("rsa-sha2-512", "rsa-sha2-256", "ssh-rsa");
    else algorithms.push(type);
  }
  return algorithms;
}

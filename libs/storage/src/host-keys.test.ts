import assert from "node:assert/strict";
import { execFile } from "node:child_process";
import { mkdtemp, readFile, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { test, type TestContext } from "node:test";
import { promisify } from "node:util";
import {
  checkHostKey,
  hostKeyAlgorithms,
  hostMatches,
  parseKnownHosts,
  sshFingerprint,
  sshKeyType,
} from "./host-keys.js";

const exec = promisify(execFile);

/** A real ed25519 key made by ssh-keygen: its public blob and the fingerprint ssh-keygen prints. */
async function keygen(t: TestContext): Promise<{ blob: Buffer; line: string; fingerprint: string; dir: string }> {
  const dir = await mkdtemp(join(tmpdir(), "iotvault-hostkeys-"));
  t.after(() => rm(dir, { recursive: true, force: true }));
  await exec("ssh-keygen", ["-q", "-t", "ed25519", "-N", "", "-f", join(dir, "key")]);
  const line = (await readFile(join(dir, "key.pub"), "utf8")).trim();
  const { stdout } = await exec("ssh-keygen", ["-l", "-E", "sha256", "-f", join(dir, "key.pub")]);
  return { blob: Buffer.from(line.split(" ")[1]!, "base64"), line, fingerprint: stdout.split(" ")[1]!, dir };
}

void test("sshFingerprint and sshKeyType agree with ssh-keygen", async (t) => {
  const key = await keygen(t);
  assert.equal(sshFingerprint(key.blob), key.fingerprint);
  assert.equal(sshKeyType(key.blob), "ssh-ed25519");
});

void test("known_hosts: plain, [host]:port, patterns, negation and hashed names (as ssh-keygen -H writes them)", async (t) => {
  const key = await keygen(t);
  const [type, base64] = key.line.split(" ");
  const file = join(key.dir, "known_hosts");
  await writeFile(file, `# comment\n\n[127.0.0.1]:2222 ${type} ${base64}\nbackup.example ${type} ${base64}\n`);
  await exec("ssh-keygen", ["-H", "-f", file]);
  const hashed = parseKnownHosts(await readFile(file, "utf8"));
  assert.equal(hashed.length, 2);
  assert.ok(hashed.every((e) => e.hosts.startsWith("|1|") && e.key.equals(key.blob)));
  assert.ok(hashed.some((e) => hostMatches(e.hosts, "127.0.0.1", 2222)));
  assert.ok(hashed.some((e) => hostMatches(e.hosts, "backup.example", 22)));
  assert.ok(!hashed.some((e) => hostMatches(e.hosts, "127.0.0.1", 22)));

  assert.ok(hostMatches("*.example,!evil.example", "nas.example", 22));
  assert.ok(!hostMatches("*.example,!evil.example", "evil.example", 22));
  assert.ok(hostMatches("nas?.example", "NAS1.example", 22));
  assert.ok(!hostMatches("nas.example", "nas.example", 2222), "another port needs [host]:port");
});

void test("checkHostKey: known, unknown, changed, revoked, pinned", async (t) => {
  const key = await keygen(t);
  const other = await keygen(t);
  const [type, base64] = key.line.split(" ");
  const entry = `[nas]:2222 ${type} ${base64}\n`;

  assert.deepEqual(checkHostKey({ knownHosts: entry }, "nas", 2222, key.blob), {
    ok: true,
    fingerprint: key.fingerprint,
  });

  const unknown = checkHostKey({ knownHosts: entry, knownHostsSource: "/etc/kh" }, "other", 22, key.blob);
  assert.equal(unknown.ok, false);
  assert.ok(!unknown.ok && unknown.reason === "unknown" && unknown.message.includes(key.fingerprint));
  assert.match(!unknown.ok ? unknown.message : "", /SFTP host other is not in \/etc\/kh/);

  const changed = checkHostKey({ knownHosts: entry }, "nas", 2222, other.blob);
  assert.ok(!changed.ok && changed.reason === "changed");
  assert.ok(!changed.ok && changed.message.includes(other.fingerprint) && changed.message.includes(key.fingerprint));

  const revoked = checkHostKey({ knownHosts: `${entry}@revoked * ${type} ${base64}\n` }, "nas", 2222, key.blob);
  assert.ok(!revoked.ok && revoked.reason === "revoked");

  assert.ok(checkHostKey({ fingerprints: [key.fingerprint] }, "any", 22, key.blob).ok);
  const pinned = checkHostKey({ fingerprints: [key.fingerprint], knownHosts: entry }, "nas", 2222, other.blob);
  assert.ok(!pinned.ok && pinned.reason === "not-pinned", "a pin wins over known_hosts");
});

void test("hostKeyAlgorithms asks for the key types known_hosts has for the host", () => {
  const kh = "nas ssh-rsa AAAAB3NzaC1yc2E=\nnas ecdsa-sha2-nistp256 AAAAE2VjZHNh\nother ssh-ed25519 AAAAC3Nz\n";
  assert.deepEqual(hostKeyAlgorithms({ knownHosts: kh }, "nas", 22), [
    "rsa-sha2-512",
    "rsa-sha2-256",
    "ssh-rsa",
    "ecdsa-sha2-nistp256",
  ]);
  assert.equal(hostKeyAlgorithms({ knownHosts: kh }, "unknown", 22), undefined);
  assert.equal(hostKeyAlgorithms({ fingerprints: ["SHA256:x"], knownHosts: kh }, "nas", 22), undefined);
});

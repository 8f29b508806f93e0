import assert from "node:assert/strict";
import { chmod, mkdir, mkdtemp, readFile, rm, stat, symlink, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { test, type TestContext } from "node:test";
import { pathToFileURL } from "node:url";
import { isCode, type ErrorCode } from "@iotvault/errors";
import { S3Store, SftpStore } from "@iotvault/storage";
import { canonicalUrl, parseS3Url, parseSftpUrl, redactUrl, RepositoryRegistry } from "./repositories.js";

const code = (expected: ErrorCode, message?: RegExp) => (err: unknown) => {
  assert.ok(isCode(err, expected), `expected ${expected}, got ${String(err)}`);
  if (message) assert.match(err.message, message);
  return true;
};

async function tempDir(t: TestContext): Promise<string> {
  const dir = await mkdtemp(join(tmpdir(), "iotvault-registry-"));
  t.after(() => rm(dir, { recursive: true, force: true }));
  return dir;
}

void test("canonicalUrl accepts file:///absolute paths only, in one canonical form", () => {
  assert.equal(canonicalUrl("file:///srv/repo/"), "file:///srv/repo");
  assert.equal(canonicalUrl("file://localhost/srv/repo"), "file:///srv/repo");
  assert.equal(canonicalUrl("file:///srv/a/../repo"), "file:///srv/repo");
  assert.throws(() => canonicalUrl("file:///"), code("INVALID_ARGUMENT"));
  assert.throws(() => canonicalUrl("file://host/srv"), code("INVALID_ARGUMENT"));
  assert.throws(() => canonicalUrl("file:///srv?x=1"), code("INVALID_ARGUMENT"));
  assert.throws(() => canonicalUrl("/srv/repo"), code("INVALID_ARGUMENT", /invalid repository URL/));
  assert.throws(() => canonicalUrl("ftp://host/p"), code("UNIMPLEMENTED", /ftp:\/\//));
});

void test("redactUrl removes user, password and secret-looking parameters", () => {
  const redacted = redactUrl("s3://AKIAEXAMPLE:topsecret@bucket/prefix?endpoint=h:9000&secretKey=abc&token=t");
  assert.equal(redacted, "s3://bucket/prefix?endpoint=h%3A9000");
  assert.ok(!/AKIA|topsecret|abc/.test(redacted));
  assert.equal(redactUrl("sftp://backup:pw@host:22/srv"), "sftp://host:22/srv");
  assert.equal(redactUrl("file:///srv/repo"), "file:///srv/repo");
  assert.equal(redactUrl("weird://user:pw@x y"), "weird://x y");
});

void test("configured repositories are validated at open; a bad one names its field", async (t) => {
  const dir = await tempDir(t);
  const stateDir = join(dir, "state");
  await assert.rejects(
    RepositoryRegistry.open({ stateDir, configured: { main: { url: "ftp://host/x" } } }),
    code("UNIMPLEMENTED", /^storage\.repositories\.main: repository URLs with scheme ftp:\/\//),
  );
  await assert.rejects(
    RepositoryRegistry.open({ stateDir, configured: { Main: { url: "file:///srv/x" } } }),
    code("INVALID_ARGUMENT", /storage\.repositories\.Main/),
  );
  const registry = await RepositoryRegistry.open({ stateDir, configured: { main: { url: "file:///srv/x/" } } });
  assert.equal((await stat(stateDir)).mode & 0o777, 0o700);
  assert.deepEqual(
    registry.list().map((r) => [r.name, r.url, r.origin]),
    [["main", "file:///srv/x", "config"]],
  );
  assert.equal(registry.store("main").location, "file:///srv/x");
  assert.throws(() => registry.store("other"), code("NOT_FOUND", /unknown repository other/));
});

void test("created repositories persist atomically; the configuration wins over a stored name", async (t) => {
  const dir = await tempDir(t);
  const stateDir = join(dir, "state");
  const url = (name: string) => pathToFileURL(join(dir, name)).href;
  const first = await RepositoryRegistry.open({ stateDir });
  const [a, b] = await Promise.all([first.create("a", url("a")), first.create("b", url("b"))]);
  assert.equal(a.created && b.created, true);
  assert.deepEqual((await first.create("a", url("a"))).created, false);
  const stored = JSON.parse(await readFile(join(stateDir, "repositories.json"), "utf8")) as {
    version: number;
    repositories: Record<string, { url: string }>;
  };
  assert.equal(stored.version, 1);
  assert.deepEqual(Object.keys(stored.repositories).sort(), ["a", "b"], "concurrent creates both persisted");

  const warnings: string[] = [];
  const logger = {
    debug: () => undefined,
    info: () => undefined,
    warn: (message: string) => warnings.push(message),
    error: () => undefined,
    child: () => logger,
  };
  const second = await RepositoryRegistry.open({ stateDir, configured: { a: { url: url("elsewhere") } }, logger });
  assert.equal(second.get("a").url, url("elsewhere"));
  assert.equal(second.get("a").origin, "config");
  assert.equal(second.get("b").origin, "runtime");
  assert.equal(warnings.length, 1, "the shadowed stored repository is reported");
});

void test("a damaged repositories.json stops start-up with a clear error", async (t) => {
  const dir = await tempDir(t);
  const stateDir = join(dir, "state");
  await RepositoryRegistry.open({ stateDir });
  await writeFile(join(stateDir, "repositories.json"), "{ not json");
  await assert.rejects(
    RepositoryRegistry.open({ stateDir }),
    code("FAILED_PRECONDITION", /repositories\.json is invalid/),
  );
  await writeFile(join(stateDir, "repositories.json"), JSON.stringify({ version: 2, repositories: {} }));
  await assert.rejects(RepositoryRegistry.open({ stateDir }), code("FAILED_PRECONDITION", /version 1/));
});

const PIN = `SHA256:${"Ab+/".repeat(10)}xyz`;

void test("s3:// URLs: canonical form with sorted, explicit parameters; credentials are refused", () => {
  assert.equal(
    canonicalUrl("s3://backups/site-a/main/?endpoint=MinIO.example:9000&tls=false"),
    "s3://backups/site-a/main?endpoint=minio.example:9000&region=us-east-1&tls=false",
  );
  assert.equal(
    canonicalUrl("s3://backups?endpoint=s3.example"),
    "s3://backups?endpoint=s3.example:443&region=us-east-1&tls=true",
  );
  assert.deepEqual(parseS3Url("s3://b-1/p?region=eu-west-1&endpoint=h:1&tls=true"), {
    bucket: "b-1",
    prefix: "p",
    endpoint: "h:1",
    tls: true,
    region: "eu-west-1",
  });
  const invalid = (url: string, message: RegExp) =>
    assert.throws(() => canonicalUrl(url), code("INVALID_ARGUMENT", message), url);
  invalid("s3://backups/p", /endpoint parameter is missing/);
  invalid("s3://AK:SECRET@backups/p?endpoint=h:1", /carries credentials/);
  invalid("s3://AK@backups/p?endpoint=h:1", /carries credentials/);
  invalid("s3://backups/p?endpoint=h:1&secretKey=abc", /looks like a credential/);
  invalid("s3://backups/p?endpoint=h:1&accessKey=abc", /looks like a credential/);
  invalid("s3://backups/p?endpoint=h:1&style=virtual", /unknown parameter "style"/);
  invalid("s3://backups/p?endpoint=h:1&tls=yes", /tls must be true or false/);
  invalid("s3://Backups/p?endpoint=h:1", /bad bucket name/);
  invalid("s3://b/p?endpoint=h:1", /bad bucket name/);
  assert.equal(
    canonicalUrl("s3://backups/a/../b?endpoint=h:1"),
    "s3://backups/b?endpoint=h:1&region=us-east-1&tls=true",
  );
  invalid("s3://backups/a%20b?endpoint=h:1", /bad key prefix/);
  invalid("s3://backups/a//b?endpoint=h:1", /bad key prefix/);
  for (const url of ["s3://AK:SECRET@backups/p?endpoint=h:1", "s3://backups/p?endpoint=h:1&secretKey=abc"]) {
    assert.throws(
      () => canonicalUrl(url),
      (err) => !/SECRET|abc/.test((err as Error).message),
    );
  }
});

void test("sftp:// URLs: user, host, port (default 22), absolute path, optional pinned fingerprint", () => {
  assert.equal(canonicalUrl("sftp://backup@NAS.example/srv/iotvault/"), "sftp://backup@nas.example:22/srv/iotvault");
  const pinned = `sftp://backup@nas:2222/srv/repo?fingerprint=${PIN}`;
  assert.equal(canonicalUrl(pinned), pinned, "'+' and '/' of the fingerprint survive");
  assert.deepEqual(parseSftpUrl(`sftp://backup@nas:2222/srv/repo?fingerprint=${encodeURIComponent(PIN)}`), {
    user: "backup",
    host: "nas",
    port: 2222,
    path: "/srv/repo",
    fingerprint: PIN,
  });
  const invalid = (url: string, message: RegExp) =>
    assert.throws(() => canonicalUrl(url), code("INVALID_ARGUMENT", message), url);
  invalid("sftp://nas/srv/repo", /the user is missing/);
  invalid("sftp://backup:pw@nas/srv/repo", /carries credentials/);
  invalid("sftp://backup@nas/", /bad path/);
  assert.equal(canonicalUrl("sftp://backup@nas/srv/../etc"), "sftp://backup@nas:22/etc", "dot segments are resolved");
  invalid("sftp://backup@nas/srv/a%0Ab", /bad path/);
  invalid("sftp://backup@nas/srv?fingerprint=MD5:aa", /bad fingerprint/);
  invalid("sftp://backup@nas/srv?key=/root/.ssh/id", /looks like a credential/);
  assert.equal(redactUrl("sftp://backup@nas:22/srv/repo"), "sftp://nas:22/srv/repo");
});

async function secretFile(dir: string, name: string, text: string): Promise<string> {
  const path = join(dir, name);
  await writeFile(path, text, { mode: 0o600 });
  return path;
}

void test("s3 repositories take their credentials from the gateway's environment, NAME or NAME_FILE", async (t) => {
  const dir = await tempDir(t);
  const url = "s3://backups/site-a?endpoint=127.0.0.1:9&tls=false";
  await assert.rejects(
    RepositoryRegistry.open({ stateDir: join(dir, "s1"), configured: { main: { url } }, env: {} }),
    (err) => {
      code(
        "FAILED_PRECONDITION",
        /^storage\.repositories\.main: repository main \(s3:\/\/backups\/site-a\?endpoint=127\.0\.0\.1:9&region=us-east-1&tls=false\) has no S3 credentials/,
      )(err);
      assert.match((err as { hint: string }).hint, /IOTVAULT_S3_ACCESS_KEY and IOTVAULT_S3_SECRET_KEY/);
      return true;
    },
  );
  const env = {
    IOTVAULT_S3_ACCESS_KEY: "AKEXAMPLE",
    IOTVAULT_S3_SECRET_KEY_FILE: await secretFile(dir, "s3.secret", "very-secret\n"),
  };
  const registry = await RepositoryRegistry.open({ stateDir: join(dir, "s2"), configured: { main: { url } }, env });
  const repository = registry.get("main");
  assert.ok(repository.store instanceof S3Store);
  assert.equal(repository.url, "s3://backups/site-a?endpoint=127.0.0.1:9&region=us-east-1&tls=false");
  assert.equal(repository.store.location, repository.url);
  const { inspect } = await import("node:util");
  await repository.store.stat("x").catch(() => undefined); // loads the S3 client
  assert.ok(!inspect(registry.list(), { depth: 10 }).includes("very-secret"), "no secret in util.inspect");
  await assert.rejects(
    RepositoryRegistry.open({
      stateDir: join(dir, "s3"),
      configured: { main: { url } },
      env: { ...env, IOTVAULT_S3_SECRET_KEY_FILE: join(dir, "missing") },
    }),
    code("FAILED_PRECONDITION", /cannot use the file named by IOTVAULT_S3_SECRET_KEY_FILE/),
  );
  await registry.close();
});

void test("a repository's credentials file overrides the environment; a bad line is refused", async (t) => {
  const dir = await tempDir(t);
  const url = "s3://backups?endpoint=127.0.0.1:9&tls=false";
  const file = await secretFile(
    dir,
    "main.env",
    "# S3 user of main\nIOTVAULT_S3_ACCESS_KEY=AKMAIN\nIOTVAULT_S3_SECRET_KEY_FILE=main.secret\n",
  );
  await secretFile(dir, "main.secret", "main-secret\n");
  const registry = await RepositoryRegistry.open({
    stateDir: join(dir, "s1"),
    configured: { main: { url, credentialsFile: file } },
    env: { IOTVAULT_S3_SECRET_KEY: "from-env" },
  });
  assert.ok(registry.store("main") instanceof S3Store, "the relative _FILE path is read next to the credentials file");
  await registry.close();
  const bad = await secretFile(dir, "bad.env", "IOTVAULT_S3_ACCESS_KEY=AK\nAWS_SECRET_ACCESS_KEY=x\n");
  await assert.rejects(
    RepositoryRegistry.open({
      stateDir: join(dir, "s2"),
      configured: { main: { url, credentialsFile: bad } },
      env: {},
    }),
    code("FAILED_PRECONDITION", /credentials file .*bad\.env: line 2: expected NAME=value/),
  );
});

void test("sftp repositories need a key file and a way to check the host key (pin or known_hosts)", async (t) => {
  const dir = await tempDir(t);
  const home = join(dir, "home");
  await mkdir(join(home, ".ssh"), { recursive: true });
  const keyFile = await secretFile(
    dir,
    "id_ed25519",
    "-----BEGIN OPENSSH PRIVATE KEY-----\n(not parsed before the first connection)\n",
  );
  const url = "sftp://backup@nas:2222/srv/repo";
  const open = (configuredUrl: string, env: Record<string, string>, state: string) =>
    RepositoryRegistry.open({ stateDir: join(dir, state), configured: { main: { url: configuredUrl } }, env });
  await assert.rejects(open(url, { HOME: home }, "a"), code("FAILED_PRECONDITION", /has no SSH key/));
  await assert.rejects(
    open(url, { HOME: home, IOTVAULT_SFTP_KEY_FILE: keyFile }, "b"),
    code("FAILED_PRECONDITION", /no way to check the host key of nas:2222/),
  );
  const pinned = await open(`${url}?fingerprint=${PIN}`, { HOME: home, IOTVAULT_SFTP_KEY_FILE: keyFile }, "c");
  assert.ok(pinned.store("main") instanceof SftpStore);
  await writeFile(join(home, ".ssh", "known_hosts"), "");
  const known = await open(url, { HOME: home, IOTVAULT_SFTP_KEY_FILE: keyFile }, "d");
  assert.equal(known.get("main").url, "sftp://backup@nas:2222/srv/repo");
  assert.equal(redactUrl(known.get("main").url), "sftp://nas:2222/srv/repo");
  await Promise.all([pinned.close(), known.close()]);
  await chmod(keyFile, 0o600);
});

void test("CreateRepository places file:// repositories only under the allowed roots, never through a symlink or into a used directory", async (t) => {
  const dir = await mkdtemp(join(tmpdir(), "iotvault-roots-"));
  t.after(() => rm(dir, { recursive: true, force: true }));
  const root = join(dir, "repos");
  await mkdir(root);
  const registry = await RepositoryRegistry.open({ stateDir: join(dir, "state"), allowedRoots: [root] });
  t.after(() => registry.close());
  const { created } = await registry.create("ok", pathToFileURL(join(root, "site-a")).href);
  assert.equal(created, true);
  await assert.rejects(
    registry.create("etc", "file:///etc/iotvault-evil"),
    code("PERMISSION_DENIED", /not under an allowed root/),
  );
  await assert.rejects(
    registry.create("rootitself", pathToFileURL(root).href),
    code("PERMISSION_DENIED", /allowed root/),
  );
  // A symlink inside the root that points out of it is resolved before the check.
  const outside = join(dir, "outside");
  await mkdir(outside);
  await symlink(outside, join(root, "sneaky"));
  await assert.rejects(
    registry.create("sneaky", pathToFileURL(join(root, "sneaky", "repo")).href),
    code("PERMISSION_DENIED"),
  );
  // An existing directory with other content is never taken over.
  await mkdir(join(root, "used"));
  await writeFile(join(root, "used", "notes.txt"), "mine");
  await assert.rejects(
    registry.create("used", pathToFileURL(join(root, "used")).href),
    code("FAILED_PRECONDITION", /not empty/),
  );
  await assert.rejects(stat(join(outside, "repo")));
});

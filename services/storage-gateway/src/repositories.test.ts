import assert from "node:assert/strict";
import { mkdtemp, readFile, rm, stat, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { test, type TestContext } from "node:test";
import { pathToFileURL } from "node:url";
import { isCode, type ErrorCode } from "@iotvault/errors";
import { canonicalUrl, redactUrl, RepositoryRegistry } from "./repositories.js";

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
  assert.throws(() => canonicalUrl("s3://bucket/p"), code("UNIMPLEMENTED", /s3:\/\//));
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
    RepositoryRegistry.open({ stateDir, configured: { main: { url: "s3://bucket/x" } } }),
    code("UNIMPLEMENTED", /^storage\.repositories\.main: repository URLs with scheme s3:\/\//),
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

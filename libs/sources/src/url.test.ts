import assert from "node:assert/strict";
import { test } from "node:test";
import { isCode } from "@iotvault/errors";
import { compileGlobs } from "./fs/globs.js";
import { parseSourceUrl } from "./fs/url.js";

void test("parseSourceUrl accepts fs:/path and fs:///path", () => {
  assert.deepEqual(parseSourceUrl("fs:/srv/iot"), { kind: "fs", root: "/srv/iot" });
  assert.deepEqual(parseSourceUrl("fs:///srv/iot/"), { kind: "fs", root: "/srv/iot" });
  assert.deepEqual(parseSourceUrl("fs:///srv/my%20data"), { kind: "fs", root: "/srv/my data" });
  assert.deepEqual(parseSourceUrl("fs:/srv/100%"), { kind: "fs", root: "/srv/100%" });
  assert.deepEqual(parseSourceUrl("fs:/"), { kind: "fs", root: "/" });
});

void test("parseSourceUrl refuses other forms with INVALID_ARGUMENT and a hint", () => {
  for (const url of ["fs:relative/path", "fs://host/srv", "file:///srv", "/srv", "fs:", "fs:///a%ZZ", "fs:///a?x=1"]) {
    assert.throws(
      () => parseSourceUrl(url),
      (err: unknown) => isCode(err, "INVALID_ARGUMENT") && /fs:\/absolute\/path/.test(err.hint ?? ""),
      url,
    );
  }
});

void test("globs without a slash match a name at any depth; with a slash the whole path", () => {
  const m = compileGlobs(["*.log", "etc/**/*.yaml", "/top.txt", ".git"], "test");
  assert.equal(m("a/b/c.log"), true);
  assert.equal(m("c.log"), true);
  assert.equal(m("etc/app/x.yaml"), true);
  assert.equal(m("x/etc/app/x.yaml"), false);
  assert.equal(m("top.txt"), true);
  assert.equal(m("sub/top.txt"), false);
  assert.equal(m("repo/.git"), true);
  assert.equal(m("readme.md"), false);
  assert.throws(
    () => compileGlobs([""], "include"),
    (err: unknown) => isCode(err, "INVALID_ARGUMENT"),
  );
});

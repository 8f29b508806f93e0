import assert from "node:assert/strict";
import { describe, it, test } from "node:test";
import { IotvaultError, fromErrorInfo, isCode, isRetryable, redactUrl, toErrorInfo, toIotvaultError } from "./index.js";

describe("errors", () => {
  it("classifies retryable codes by default and lets a caller override", () => {
    assert.equal(new IotvaultError("UNAVAILABLE", "x").retryable, true);
    assert.equal(new IotvaultError("NOT_FOUND", "x").retryable, false);
    assert.equal(new IotvaultError("DATA_CORRUPT", "x", { retryable: true }).retryable, true);
    assert.equal(isRetryable(Object.assign(new Error("refused"), { code: "ECONNREFUSED" })), true);
    assert.equal(isRetryable(new Error("plain")), false);
  });

  it("maps Node.js system errors to codes with hints, keeping the cause", () => {
    const enospc = Object.assign(new Error("no space left on device"), { code: "ENOSPC" });
    const e = toIotvaultError(enospc, "writing pack");
    assert.equal(e.code, "RESOURCE_EXHAUSTED");
    assert.equal(e.message, "writing pack: no space left on device");
    assert.match(e.hint ?? "", /free space/);
    assert.equal(e.cause, enospc);
    assert.equal(toIotvaultError(Object.assign(new Error("x"), { code: "EROFS" })).code, "PERMISSION_DENIED");
    assert.equal(toIotvaultError("weird").code, "INTERNAL");
    const same = new IotvaultError("WRONG_KEY", "no");
    assert.equal(toIotvaultError(same), same);
  });

  it("round-trips through the wire form", () => {
    const info = toErrorInfo(new IotvaultError("WRONG_KEY", "wrong passphrase", { hint: "check IOTVAULT_PASSWORD" }));
    assert.deepEqual(info, {
      code: "WRONG_KEY",
      message: "wrong passphrase",
      retryable: false,
      hint: "check IOTVAULT_PASSWORD",
    });
    const back = fromErrorInfo(info);
    assert.ok(isCode(back, "WRONG_KEY"));
    assert.equal(back.hint, "check IOTVAULT_PASSWORD");
    assert.equal(fromErrorInfo({ code: "NONSENSE", message: "m" }).code, "INTERNAL");
  });
});

void test("redactUrl hides passwords (and secret-named parameters when asked), never other text", () => {
  const opts = { unparsable: "<bad>" };
  assert.equal(redactUrl("postgres://app:s3cret@db:5432/iot", opts), "postgres://app:***@db:5432/iot");
  assert.equal(redactUrl("postgres://app@db/iot", opts), "postgres://app@db/iot");
  assert.equal(redactUrl("not a url", opts), "<bad>");
  const only = { ...opts, onlySchemeUrls: true };
  assert.equal(redactUrl("/srv/restore", only), "/srv/restore");
  assert.equal(redactUrl("kv:bucket", only), "kv:bucket");
  assert.equal(
    redactUrl("sparql+http://u:p@h:8890/gsp?password=x&graph=g", { ...only, secretParams: /pass/i }),
    "sparql+http://u:***@h:8890/gsp?password=***&graph=g",
  );
});

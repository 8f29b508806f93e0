import assert from "node:assert/strict";
import { test } from "node:test";
import { isCode } from "@iotvault/errors";
import { GraphStoreClient, HttpAuthenticator, parseChallenge, siblingQueryEndpoint } from "./index.js";
import { startGraphStore } from "./testing/index.js";

void test("Digest authentication computes the RFC 2617 example response", () => {
  const auth = new HttpAuthenticator({ user: "Mufasa", password: "Circle Of Life" }, () => "0a4f113b");
  assert.equal(auth.header("GET", "/dir/index.html"), undefined);
  const challenge =
    'Digest realm="testrealm@host.com", qop="auth,auth-int", nonce="dcd98b7102dd2f0e8b11d0f600bfb0c093", opaque="5ccc069c403ebaf9f0171e9517f40e41"';
  assert.equal(auth.challenge([challenge]), true);
  const header = auth.header("GET", "/dir/index.html")!;
  assert.match(header, /response="6629fae49393a05397450978507c4ef1"/);
  assert.match(header, /nc=00000001, cnonce="0a4f113b"/);
  assert.match(auth.header("GET", "/dir/index.html")!, /nc=00000002/);
  assert.deepEqual(parseChallenge('Basic realm="x"'), { scheme: "basic", params: { realm: "x" } });
  assert.equal(new HttpAuthenticator(undefined).challenge([challenge]), false);
});

void test("the Graph Store client lists, reads, counts, writes and deletes graphs, with Basic auth", async () => {
  const gs = await startGraphStore({ basicAuth: { user: "u", password: "p" } });
  try {
    assert.equal(siblingQueryEndpoint(gs.gspUrl), gs.queryUrl);
    const client = new GraphStoreClient({ endpoint: gs.gspUrl, credentials: { user: "u", password: "p" } });
    await client.putGraph("http://example.org/a", '<http://x> <http://y> "1" .\n<http://x> <http://y> "2" .\n');
    await client.putGraph("http://example.org/b", "<http://x> <http://y> <http://z> .\n", "turtle");
    assert.deepEqual(await client.listGraphs(), ["http://example.org/a", "http://example.org/b"]);
    assert.equal(await client.countTriples("http://example.org/a"), 2);
    assert.equal(await client.graphExists("http://example.org/b"), true);
    const a = await client.getGraph("http://example.org/a");
    assert.equal(a.format, "ntriples");
    assert.equal(a.text.trim().split("\n").length, 2);
    await client.deleteGraph("http://example.org/b");
    assert.equal(await client.graphExists("http://example.org/b"), false);
    await assert.rejects(client.getGraph("http://example.org/b"), (e: unknown) => isCode(e, "NOT_FOUND"));
    const anonymous = new GraphStoreClient({ endpoint: gs.gspUrl });
    await assert.rejects(anonymous.listGraphs(), (e: unknown) => {
      assert.ok(isCode(e, "PERMISSION_DENIED"));
      assert.match((e as { hint?: string }).hint ?? "", /IOTVAULT_SPARQL_USER/);
      return true;
    });
    const wrong = new GraphStoreClient({ endpoint: gs.gspUrl, credentials: { user: "u", password: "nope" } });
    await assert.rejects(
      wrong.listGraphs(),
      (e: unknown) => isCode(e, "PERMISSION_DENIED") && !(e as Error).message.includes("nope"),
    );
    assert.throws(() => new GraphStoreClient({ endpoint: "http://u:p@127.0.0.1/gsp" }), /credentials are not allowed/);
    const down = new GraphStoreClient({ endpoint: "http://127.0.0.1:9/gsp", timeoutMs: 2000 });
    await assert.rejects(down.listGraphs(), (e: unknown) => isCode(e, "UNAVAILABLE"));
  } finally {
    await gs.close();
  }
});

import assert from "node:assert/strict";
import { test } from "node:test";
import { IotvaultError, isCode } from "@iotvault/errors";
import { backoffDelay, DEFAULT_RETRY_POLICY, withRetry } from "./retry.js";

const transient = () => new IotvaultError("UNAVAILABLE", "server answered 503");

void test("withRetry: retries retryable failures, then returns the first success", async () => {
  const delays: number[] = [];
  let calls = 0;
  const result = await withRetry(
    async (attempt) => {
      calls++;
      assert.equal(attempt, calls);
      if (calls < 3) throw transient();
      return "ok";
    },
    { baseDelayMs: 1, onRetry: ({ delayMs }) => delays.push(delayMs) },
  );
  assert.equal(result, "ok");
  assert.equal(calls, 3);
  assert.equal(delays.length, 2);
});

void test("withRetry: a permanent error is thrown at once, unchanged", async () => {
  let calls = 0;
  const permanent = new IotvaultError("PERMISSION_DENIED", "bad credentials");
  await assert.rejects(
    withRetry(async () => {
      calls++;
      throw permanent;
    }),
    (err) => err === permanent,
  );
  assert.equal(calls, 1);
});

void test("withRetry: after the last attempt the last error is thrown", async () => {
  let calls = 0;
  await assert.rejects(
    withRetry(
      async () => {
        calls++;
        throw new IotvaultError("UNAVAILABLE", `failure ${calls}`);
      },
      { attempts: 3, baseDelayMs: 1 },
    ),
    /failure 3/,
  );
  assert.equal(calls, 3);
});

void test("withRetry: the signal ends the wait between attempts with CANCELLED", async () => {
  const controller = new AbortController();
  let calls = 0;
  const started = Date.now();
  const pending = withRetry(
    async () => {
      calls++;
      throw transient();
    },
    { baseDelayMs: 10_000, maxDelayMs: 10_000, signal: controller.signal, what: "put of x" },
  );
  setTimeout(() => controller.abort(), 20);
  await assert.rejects(pending, (err) => isCode(err, "CANCELLED") && /put of x was cancelled/.test(err.message));
  assert.equal(calls, 1);
  assert.ok(Date.now() - started < 5000, "did not wait for the backoff");
});

void test("backoffDelay: exponential with equal jitter, capped", () => {
  const policy = { ...DEFAULT_RETRY_POLICY, baseDelayMs: 100, maxDelayMs: 1000 };
  assert.equal(
    backoffDelay(2, policy, () => 0),
    50,
  );
  assert.equal(
    backoffDelay(2, policy, () => 1),
    100,
  );
  assert.equal(
    backoffDelay(3, policy, () => 1),
    200,
  );
  assert.equal(
    backoffDelay(4, policy, () => 0.5),
    300,
  );
  assert.equal(
    backoffDelay(20, policy, () => 1),
    1000,
  );
});

import assert from "node:assert/strict";
import { test } from "node:test";
import { isCode } from "@iotvault/errors";
import { fixedSizeParts } from "./parts.js";
import { Semaphore } from "./semaphore.js";

void test("Semaphore: never more than `limit` operations at once, all of them run", async () => {
  const slots = new Semaphore(3);
  let running = 0;
  let peak = 0;
  const results = await Promise.all(
    Array.from({ length: 20 }, (_, i) =>
      slots.run(async () => {
        running++;
        peak = Math.max(peak, running);
        await new Promise((resolve) => setTimeout(resolve, 2));
        running--;
        return i;
      }),
    ),
  );
  assert.equal(peak, 3);
  assert.deepEqual(
    results,
    Array.from({ length: 20 }, (_, i) => i),
  );
  assert.equal(slots.active, 0);
});

void test("Semaphore: a waiter whose signal fires gives up its place with CANCELLED", async () => {
  const slots = new Semaphore(1);
  const release = await slots.acquire();
  const controller = new AbortController();
  const waiting = slots.acquire(controller.signal);
  controller.abort();
  await assert.rejects(waiting, (err) => isCode(err, "CANCELLED"));
  release();
  const again = await slots.acquire();
  assert.equal(slots.active, 1, "the cancelled waiter did not take the slot");
  again();
  assert.equal(slots.active, 0);
});

void test("fixedSizeParts: parts of exactly the size, a shorter last one, none empty", async () => {
  async function* chunks(sizes: number[]): AsyncGenerator<Uint8Array> {
    let value = 0;
    for (const size of sizes) yield Buffer.alloc(size, value++ % 256);
  }
  const collect = async (sizes: number[], part: number) => {
    const out: Buffer[] = [];
    for await (const p of fixedSizeParts(chunks(sizes), part)) out.push(Buffer.from(p));
    return out;
  };
  assert.deepEqual(
    (await collect([3, 10, 1, 6], 5)).map((p) => p.length),
    [5, 5, 5, 5],
  );
  assert.deepEqual(
    (await collect([7], 5)).map((p) => p.length),
    [5, 2],
  );
  assert.deepEqual(await collect([], 5), []);
  const parts = await collect([3, 4], 5);
  assert.deepEqual(Buffer.concat(parts), Buffer.concat([Buffer.alloc(3, 0), Buffer.alloc(4, 1)]));
});

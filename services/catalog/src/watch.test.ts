import assert from "node:assert/strict";
import { Writable } from "node:stream";
import { after, before, describe, it } from "node:test";
import { isCode } from "@iotvault/errors";
import { CatalogServiceClient, CatalogServiceService, RunStatus, type Run } from "@iotvault/proto";
import { callServerStream, createClient, startGrpcServer, type GrpcServerHandle } from "@iotvault/rpc";
import { createLogger } from "@iotvault/telemetry";
import { createTestDatabase, waitFor, type TestDatabase } from "@iotvault/testing";
import { catalogService } from "./service.js";
import { CatalogStore } from "./store.js";
import { completed, started } from "./test-events.js";
import { RunWatches, runIdOf } from "./watch.js";

/** The catalog's RPCs over a store, with these watches, on a free loopback port. */
function serve(store: CatalogStore, watches: RunWatches): Promise<GrpcServerHandle> {
  return startGrpcServer({
    listen: "127.0.0.1:0",
    serviceName: "catalog",
    logger: createLogger({ service: "catalog", stream: new Writable({ write: (_c, _e, done) => done() }) }),
    services: [
      {
        name: "iotvault.v1.CatalogService",
        definition: CatalogServiceService,
        implementation: catalogService(store, watches),
      },
    ],
  });
}

/** WatchRun over real gRPC and a real catalog database. */
describe("WatchRun (real PostgreSQL, real gRPC)", () => {
  let db: TestDatabase;
  let store: CatalogStore;
  let server: GrpcServerHandle;
  let client: CatalogServiceClient;
  // Only a wake-up makes these watches look again (no recheck within a test's time)...
  let woken: RunWatches;
  // ...these look again every 100 ms as well (an event applied by another catalog instance).
  let rechecking: RunWatches;
  let rechecker: GrpcServerHandle;
  let recheckClient: CatalogServiceClient;
  let seq = 0;
  const meta = (eventId: string) => ({ eventId, subject: "iotvault.events.test", streamSequence: ++seq });

  before(async () => {
    db = await createTestDatabase({ prefix: "catalog_watch" });
    store = await CatalogStore.open(db.url);
    woken = new RunWatches((runId) => store.getRun(runId), { recheckMs: 600_000 });
    rechecking = new RunWatches((runId) => store.getRun(runId), { recheckMs: 100 });
    server = await serve(store, woken);
    client = createClient(CatalogServiceClient, server.address);
    rechecker = await serve(store, rechecking);
    recheckClient = createClient(CatalogServiceClient, rechecker.address);
  });
  after(async () => {
    client?.close();
    recheckClient?.close();
    await server?.shutdown(1000);
    await rechecker?.shutdown(1000);
    await store?.close();
    await db?.drop();
  });

  it("sends nothing while the run is queued, then the run at each applied event, and ends at its end", async () => {
    const runId = "watch-1";
    const stream = callServerStream(client, "watchRun", { runId }, { deadlineMs: 30_000 })[Symbol.asyncIterator]();
    const next = stream.next();
    await waitFor(() => woken.count(runId) === 1 || undefined, { what: "the watch to be registered" });

    await store.applyEvent("iotvault.v1.BackupStarted", started(runId), meta(`${runId}:started`));
    woken.changed(runId);
    const first = await next;
    assert.equal(first.done, false);
    assert.equal((first.value as { run: Run }).run.status, RunStatus.RUN_STATUS_RUNNING);

    await store.applyEvent(
      "iotvault.v1.BackupProgress",
      { runId, jobId: "job-1", filesDone: 7n, bytesDone: 4096n, at: new Date() },
      meta(`${runId}:progress`),
    );
    woken.changed(runId);
    const second = await stream.next();
    assert.equal((second.value as { run: Run }).run.status, RunStatus.RUN_STATUS_RUNNING);
    assert.equal((second.value as { run: Run }).run.filesDone, 7n);

    // A wake-up without a change sends nothing new: the next message is the completion.
    woken.changed(runId);
    await store.applyEvent("iotvault.v1.BackupCompleted", completed(runId, "snap-w1"), meta(`${runId}:completed`));
    woken.changed(runId);
    const third = await stream.next();
    const run = (third.value as { run: Run }).run;
    assert.equal(run.status, RunStatus.RUN_STATUS_SUCCEEDED);
    assert.equal(run.snapshotId, "snap-w1");
    assert.equal((await stream.next()).done, true, "the stream ends after a terminal status");
    assert.equal(woken.count(runId), 0, "the watch is gone");
  });

  it("a run already over: one message, then the end", async () => {
    const runId = "watch-2";
    await store.applyEvent("iotvault.v1.BackupStarted", started(runId), meta(`${runId}:started`));
    await store.applyEvent("iotvault.v1.BackupCompleted", completed(runId, "snap-w2"), meta(`${runId}:completed`));
    const got: Run[] = [];
    for await (const m of callServerStream(client, "watchRun", { runId }, { deadlineMs: 30_000 })) got.push(m.run!);
    assert.deepEqual(
      got.map((r) => r.status),
      [RunStatus.RUN_STATUS_SUCCEEDED],
    );
  });

  it("without a wake-up (the event applied by another instance) the run is read again after recheckMs", async () => {
    const runId = "watch-3";
    await store.applyEvent("iotvault.v1.BackupStarted", started(runId), meta(`${runId}:started`));
    const got: RunStatus[] = [];
    const done = (async () => {
      for await (const m of callServerStream(recheckClient, "watchRun", { runId }, { deadlineMs: 30_000 }))
        got.push(m.run!.status);
    })();
    await waitFor(() => got.length === 1 || undefined, { what: "the running run" });
    await store.applyEvent("iotvault.v1.BackupCompleted", completed(runId, "snap-w3"), meta(`${runId}:completed`));
    await done;
    assert.deepEqual(got, [RunStatus.RUN_STATUS_RUNNING, RunStatus.RUN_STATUS_SUCCEEDED]);
  });

  it("a client that goes away ends its watch", async () => {
    const runId = "watch-4";
    const controller = new AbortController();
    const stream = callServerStream(client, "watchRun", { runId }, { signal: controller.signal });
    const reading = (async () => {
      for await (const _ of stream) {
        // nothing arrives: the run is not in the catalog
      }
    })();
    await waitFor(() => woken.count(runId) === 1 || undefined, { what: "the watch to be registered" });
    controller.abort();
    await assert.rejects(reading, (err: unknown) => isCode(err, "CANCELLED"));
    await waitFor(() => woken.count(runId) === 0 || undefined, { what: "the watch to end" });
  });

  it("close() ends every watch at once (a catalog shutting down), and no new one waits", async () => {
    const closing = new RunWatches((runId) => store.getRun(runId), { recheckMs: 600_000 });
    const own = await serve(store, closing);
    const ownClient = createClient(CatalogServiceClient, own.address);
    try {
      const read = (runId: string) =>
        (async () => {
          let n = 0;
          for await (const _ of callServerStream(ownClient, "watchRun", { runId }, { deadlineMs: 30_000 })) n++;
          return n;
        })();
      const a = read("watch-close-a");
      const b = read("watch-close-b");
      await waitFor(() => closing.count() === 2 || undefined, { what: "two watches" });
      closing.close();
      assert.deepEqual(await Promise.all([a, b]), [0, 0], "both streams ended, nothing sent");
      assert.equal(closing.count(), 0);
      assert.equal(await read("watch-close-c"), 0, "a watch after close() ends at once");
    } finally {
      ownClient.close();
      await own.shutdown(1000);
    }
  });

  it("refuses a call without a run id", async () => {
    await assert.rejects(
      (async () => {
        for await (const _ of callServerStream(client, "watchRun", { runId: "" })) {
          // not reached
        }
      })(),
      (err: unknown) => isCode(err, "INVALID_ARGUMENT"),
    );
  });

  it("runIdOf takes the run id of an event, and nothing else", () => {
    assert.equal(runIdOf(started("r-1")), "r-1");
    assert.equal(runIdOf({ runId: "" }), undefined);
    assert.equal(runIdOf({ runId: 5 }), undefined);
    assert.equal(runIdOf(null), undefined);
  });
});

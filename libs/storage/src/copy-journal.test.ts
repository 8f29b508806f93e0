import assert from "node:assert/strict";
import { appendFile, mkdtemp, readFile, readdir, rm, stat, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { test, type TestContext } from "node:test";
import { isCode } from "@iotvault/errors";
import { CopyJournal } from "./copy-journal.js";

const A = "file:///srv/a";
const B = "s3://backups?endpoint=127.0.0.1:9000&region=us-east-1&tls=false";

/** A journal path in a new temp dir; `opened` journals are closed before the dir is removed. */
async function journalPath(t: TestContext): Promise<string> {
  const dir = await mkdtemp(join(tmpdir(), "iotvault-journal-"));
  const path = join(dir, "journals", "main.journal");
  t.after(async () => {
    for (const journal of opened.splice(0)) await journal.close().catch(() => undefined);
    await rm(dir, { recursive: true, force: true });
  });
  return path;
}

const opened: CopyJournal[] = [];
async function openJournal(path: string, targets: string[], compactAfterLines?: number): Promise<CopyJournal> {
  const journal = await CopyJournal.open(path, { targets, compactAfterLines });
  opened.push(journal);
  return journal;
}

const lines = async (path: string) => (await readFile(path, "utf8")).trim().split("\n");

void test("entries survive a reopen; the latest entry of a key wins; resolutions remove them", async (t) => {
  const path = await journalPath(t);
  const journal = await openJournal(path, [A, B]);
  assert.equal(journal.report.created, true);
  assert.equal(journal.reconcileNeeded, true, "a new journal asks for one reconciliation");
  assert.equal((await stat(join(path, ".."))).mode & 0o777, 0o700);
  await journal.record([
    { target: B, key: "data/ab/1", op: "copy" },
    { target: B, key: "data/ab/2", op: "copy" },
    { target: A, key: "locks/x", op: "delete" },
  ]);
  await journal.record([{ target: B, key: "data/ab/1", op: "delete" }]);
  const second = journal.entry(B, "data/ab/2")!;
  assert.equal(await journal.resolve(second), true);
  assert.equal(await journal.resolve(second), false, "resolving twice is a no-op");
  await journal.markReconciled();
  assert.deepEqual([journal.count(A), journal.count(B), journal.size], [1, 1, 2]);
  // No close(): a crash right after the appends.
  const reopened = await openJournal(path, [A, B]);
  assert.deepEqual(reopened.report, { created: false, droppedEntries: 0, skippedLines: 0, reconcileNeeded: false });
  assert.deepEqual(
    reopened.entries(B).map((e) => [e.key, e.op]),
    [["data/ab/1", "delete"]],
  );
  assert.equal(reopened.entry(A, "locks/x")?.op, "delete");
  const seq = reopened.entry(B, "data/ab/1")!.seq;
  await reopened.record([{ target: B, key: "index/new", op: "copy" }]);
  assert.ok(reopened.entry(B, "index/new")!.seq > seq, "sequence numbers keep growing across a reopen");
  // open() rewrote the file compacted: a header and the live entries only.
  assert.equal((await lines(path)).length, 4);
  assert.equal((await stat(path)).mode & 0o777, 0o600);
});

void test("a resolution of an older entry leaves the newer one", async (t) => {
  const journal = await openJournal(await journalPath(t), [A, B]);
  await journal.record([{ target: B, key: "k", op: "copy" }]);
  const old = journal.entry(B, "k")!;
  await journal.record([{ target: B, key: "k", op: "copy" }]);
  assert.equal(await journal.resolve(old), false);
  assert.equal(journal.count(B), 1);
});

void test("a torn last line is skipped and asks for a reconciliation; other targets' entries are dropped", async (t) => {
  const path = await journalPath(t);
  const first = await openJournal(path, [A, B]);
  await first.record([
    { target: A, key: "a1", op: "copy" },
    { target: B, key: "b1", op: "copy" },
  ]);
  await first.markReconciled();
  await first.close();
  await appendFile(path, '{"op":"copy","target":"file:///srv/a","key":"a2","se');
  await writeFile(`${path}.tmp~0123456789ab`, "a rewrite cut short by a crash");
  const C = "sftp://backup@nas:22/srv/iotvault";
  const journal = await openJournal(path, [A, C]);
  assert.deepEqual(journal.report, { created: false, droppedEntries: 1, skippedLines: 1, reconcileNeeded: true });
  assert.deepEqual(
    journal.entries(A).map((e) => e.key),
    ["a1"],
  );
  assert.equal(journal.count(C), 0);
  assert.throws(() => journal.record([{ target: B, key: "x", op: "copy" }]), /not a target/);
  assert.ok(!(await readFile(path, "utf8")).includes('"a2"'), "the rewrite dropped the torn line");
  assert.deepEqual(await readdir(join(path, "..")), ["main.journal"], "the stale temp file is gone");
});

void test("a new target asks for a reconciliation even after an earlier one", async (t) => {
  const path = await journalPath(t);
  const journal = await openJournal(path, [A]);
  await journal.markReconciled();
  await journal.close();
  const same = await openJournal(path, [A]);
  assert.equal(same.reconcileNeeded, false);
  await same.close();
  const grown = await openJournal(path, [A, B]);
  assert.equal(grown.reconcileNeeded, true);
});

void test("concurrent records share fsyncs and all land; the file is compacted when obsolete lines pile up", async (t) => {
  const path = await journalPath(t);
  const journal = await openJournal(path, [A, B], 50);
  await Promise.all(
    Array.from({ length: 200 }, (_, i) => journal.record([{ target: B, key: `data/00/p${i}`, op: "copy" }])),
  );
  assert.equal(journal.count(B), 200);
  for (const entry of journal.entries(B, 190)) await journal.resolve(entry);
  assert.equal(journal.count(B), 10);
  const onDisk = await lines(path);
  assert.ok(onDisk.length <= 10 + 1 + 50 + 1, `the file holds ${onDisk.length} lines`);
  const reopened = await openJournal(path, [A, B]);
  assert.deepEqual(
    reopened.entries(B).map((e) => e.key),
    Array.from({ length: 10 }, (_, i) => `data/00/p${190 + i}`),
  );
  await reopened.close();
  assert.deepEqual(
    (await readdir(join(path, ".."))).filter((f) => f.includes("tmp~")),
    [],
    "no temp file is left",
  );
});

void test("a closed journal refuses new entries; damaged lines in the middle are skipped", async (t) => {
  const path = await journalPath(t);
  const journal = await openJournal(path, [A]);
  await journal.close();
  await assert.rejects((async () => journal.record([{ target: A, key: "k", op: "copy" }]))(), (err: unknown) =>
    isCode(err, "FAILED_PRECONDITION"),
  );
  const header = (await lines(path))[0]!;
  await writeFile(
    path,
    [
      header,
      JSON.stringify({ op: "copy", target: A, key: "one", seq: 1 }),
      "not json at all",
      JSON.stringify({ op: "move", target: A, key: "bad-op", seq: 2 }),
      JSON.stringify({ op: "copy", target: A, key: "two", seq: 3 }),
      "",
    ].join("\n"),
  );
  const reopened = await openJournal(path, [A]);
  assert.equal(reopened.report.skippedLines, 2);
  assert.deepEqual(
    reopened.entries(A).map((e) => e.key),
    ["one", "two"],
  );
});

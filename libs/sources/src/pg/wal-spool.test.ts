/**
 * wal-fetch's prefetch spool: the filler fetches the segments after the one asked for, once;
 * held segments are moved into place and earlier ones dropped; one filler at a time (a lock
 * naming a dead or reused pid is taken over); removeSpool stops a running filler. On a real
 * repository (in memory) and real files and processes.
 */
import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { randomBytes } from "node:crypto";
import { once } from "node:events";
import { existsSync, statSync } from "node:fs";
import { mkdir, mkdtemp, readFile, readdir, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { describe, it } from "node:test";
import { Repository } from "@iotvault/repo";
import { MemoryStore } from "@iotvault/storage";
import { walPush } from "./wal.js";
import {
  FILL_FLAG,
  SPOOL_LOCK,
  defaultSpool,
  fillSpool,
  fillerPid,
  removeSpool,
  spoolAhead,
  takeFromSpool,
} from "./wal-spool.js";

const SYSID = "7441234567890123456";
const hex8 = (n: number) => n.toString(16).toUpperCase().padStart(8, "0");
/** Segment `n` of WAL log 0 (or of `log`), on a timeline. */
const seg = (n: number, timeline = 1, log = 0) => `${hex8(timeline)}${hex8(log)}${hex8(n)}`;

/** A WAL segment's first bytes (long page header with the system id), then content of its own. */
function segmentBytes(n: number): Buffer {
  const b = Buffer.concat([Buffer.alloc(64), randomBytes(32 * 1024)]);
  b.writeUInt16LE(0xd110, 0);
  b.writeUInt16LE(0x0002, 2);
  b.writeUInt32LE(1, 4);
  b.writeBigUInt64LE(BigInt(SYSID), 24);
  b.writeUInt32LE(n, 40);
  return b;
}

async function withArchive(
  segments: number[],
  fn: (ctx: { repo: Repository; dir: string; spool: string; bytes: Map<string, Buffer> }) => Promise<void>,
): Promise<void> {
  const dir = await mkdtemp(join(tmpdir(), "iotvault-spool-"));
  const repo = await Repository.init(new MemoryStore(), { keyFile: randomBytes(64) }, { scryptLogN: 10, workers: 1 });
  const bytes = new Map<string, Buffer>();
  try {
    await mkdir(join(dir, "pg_wal"));
    for (const n of segments) {
      const name = seg(n);
      const content = segmentBytes(n);
      await writeFile(join(dir, name), content);
      await walPush(repo, join(dir, name), { systemId: SYSID });
      bytes.set(name, content);
    }
    const spool = defaultSpool(join(dir, "pg_wal", "RECOVERYXLOG"));
    await mkdir(spool);
    await fn({ repo, dir, spool, bytes });
  } finally {
    await repo.close();
    await rm(dir, { recursive: true, force: true });
  }
}

/** A process whose command line looks like a filler's, until it is killed. */
function fakeFiller() {
  const child = spawn(process.execPath, ["-e", "setTimeout(() => {}, 60000)", "wal-fetch", FILL_FLAG], {
    stdio: "ignore",
  });
  return child;
}

describe("wal-fetch's prefetch spool", () => {
  it("fetches the segments after the one asked for, on its timeline, and hands them out once", async () => {
    await withArchive([1, 2, 3, 4, 5, 6], async ({ repo, dir, spool, bytes }) => {
      // A segment of another timeline, and a temporary file a killed filler left behind.
      await writeFile(join(dir, seg(4, 2)), segmentBytes(40));
      await walPush(repo, join(dir, seg(4, 2)), { systemId: SYSID });
      await writeFile(join(spool, `.${seg(2)}.iotvault-0badf00d`), "half a segment");

      const r = await fillSpool(repo, { spool, after: seg(1), systemId: SYSID, count: 3 });
      assert.deepEqual(r, { ran: true, fetched: [seg(2), seg(3), seg(4)] });
      assert.deepEqual((await readdir(spool)).sort(), [seg(2), seg(3), seg(4)], "no lock, no temporary file left");
      assert.equal(spoolAhead(spool, seg(1)), 3);
      for (const n of [2, 3, 4]) assert.ok((await readFile(join(spool, seg(n)))).equals(bytes.get(seg(n))!));

      // Held ones are not fetched again; the count tops the spool up to 3 after the new position.
      const again = await fillSpool(repo, { spool, after: seg(2), systemId: SYSID, count: 3 });
      assert.deepEqual(again.fetched, [seg(5)]);

      const dest = join(dir, "pg_wal", "RECOVERYXLOG");
      assert.equal(await takeFromSpool(spool, seg(3), dest), true);
      assert.ok((await readFile(dest)).equals(bytes.get(seg(3))!), "the held segment, byte for byte");
      assert.deepEqual((await readdir(spool)).sort(), [seg(4), seg(5)], "taken, and the one before dropped");
      assert.equal(await takeFromSpool(spool, seg(3), dest), false, "handed out once");
      assert.equal(await takeFromSpool(spool, seg(6), dest), false, "not held");
      assert.deepEqual(await readdir(spool), [], "everything before the position asked for is dropped");
      assert.equal(await takeFromSpool(spool, "00000002.history", dest), false, "only segments are held");
    });
  });

  it("goes on into the next WAL log, and lists only the logs it needs", async () => {
    await withArchive([0xfe, 0xff], async ({ repo, dir, spool }) => {
      for (const [n, log] of [
        [0, 1],
        [1, 1],
        [5, 3], // after a log without segments: not reached
      ] as const) {
        await writeFile(join(dir, seg(n, 1, log)), segmentBytes(n));
        await walPush(repo, join(dir, seg(n, 1, log)), { systemId: SYSID });
      }
      const listed: string[] = [];
      const counting = {
        ...repo,
        getSealedObject: repo.getSealedObject.bind(repo),
        listSealedObjects: (prefix: string) => {
          listed.push(prefix);
          return repo.listSealedObjects(prefix);
        },
      } as unknown as Repository;
      const r = await fillSpool(counting, { spool, after: seg(0xfe), systemId: SYSID, count: 8 });
      assert.deepEqual(r.fetched, [seg(0xff), seg(0, 1, 1), seg(1, 1, 1)]);
      assert.deepEqual(listed, [
        `wal/${SYSID}/00000001/0000000100000000`,
        `wal/${SYSID}/00000001/0000000100000001`,
        `wal/${SYSID}/00000001/0000000100000002`,
      ]);
      // From the last segment of a log: nothing after it in its own log, the next log's follow.
      await rm(spool, { recursive: true });
      await mkdir(spool);
      const last = await fillSpool(repo, { spool, after: seg(0xff), systemId: SYSID, count: 8 });
      assert.deepEqual(last.fetched, [seg(0, 1, 1), seg(1, 1, 1)]);
    });
  });

  it("runs one filler at a time; a lock whose process is gone or is not a filler is taken over", async () => {
    await withArchive([1, 2, 3], async ({ repo, spool }) => {
      const filler = fakeFiller();
      try {
        await writeFile(join(spool, SPOOL_LOCK), `${filler.pid}\n`);
        await waitUntil(() => fillerPid(spool) === filler.pid);
        const r = await fillSpool(repo, { spool, after: seg(1), systemId: SYSID, count: 2 });
        assert.deepEqual(r, { ran: false, fetched: [] });
      } finally {
        filler.kill("SIGKILL");
        await once(filler, "exit");
      }
      // The same lock, its process gone:
      assert.equal(fillerPid(spool), undefined);
      assert.deepEqual((await fillSpool(repo, { spool, after: seg(1), systemId: SYSID, count: 2 })).fetched, [
        seg(2),
        seg(3),
      ]);
      // A lock naming a live process that is no filler (this test's own):
      await rm(join(spool, seg(3)));
      await writeFile(join(spool, SPOOL_LOCK), `${process.pid}\n`);
      assert.deepEqual((await fillSpool(repo, { spool, after: seg(1), systemId: SYSID, count: 2 })).fetched, [seg(3)]);
      assert.equal(existsSync(join(spool, SPOOL_LOCK)), false);
    });
  });

  it("removeSpool stops a running filler and removes the spool; a filler stops when the spool is gone", async () => {
    await withArchive([1, 2, 3], async ({ repo, spool }) => {
      const filler = fakeFiller();
      const exited = once(filler, "exit");
      await writeFile(join(spool, SPOOL_LOCK), `${filler.pid}\n`);
      await waitUntil(() => fillerPid(spool) === filler.pid);
      await removeSpool(spool);
      const [code, signal] = await exited;
      assert.deepEqual([code, signal], [null, "SIGTERM"]);
      assert.equal(existsSync(spool), false);
      // A filler started after the restore ended: no spool, nothing written.
      assert.deepEqual(await fillSpool(repo, { spool, after: seg(1), systemId: SYSID, count: 2 }), {
        ran: false,
        fetched: [],
      });
      assert.equal(existsSync(spool), false);
    });
  });

  it("copies a held segment into place when the spool is on another file system", async (t) => {
    const other = "/dev/shm";
    if (!existsSync(other) || statSync(other).dev === statSync(tmpdir()).dev) {
      t.skip(`needs ${other} on a file system other than ${tmpdir()}'s`);
      return;
    }
    await withArchive([1, 2], async ({ repo, dir, bytes }) => {
      const spool = await mkdtemp(join(other, "iotvault-spool-"));
      try {
        await fillSpool(repo, { spool, after: seg(1), systemId: SYSID, count: 1 });
        const dest = join(dir, "pg_wal", "RECOVERYXLOG");
        assert.equal(await takeFromSpool(spool, seg(2), dest), true);
        assert.ok((await readFile(dest)).equals(bytes.get(seg(2))!));
        assert.deepEqual(await readdir(spool), []);
        assert.deepEqual(
          (await readdir(join(dir, "pg_wal"))).filter((n) => n.startsWith(".RECOVERYXLOG")),
          [],
          "no temporary file left",
        );
      } finally {
        await rm(spool, { recursive: true, force: true });
      }
    });
  });
});

async function waitUntil(check: () => boolean, timeoutMs = 5000): Promise<void> {
  const until = Date.now() + timeoutMs;
  while (!check()) {
    if (Date.now() > until) throw new Error("timed out");
    await new Promise((r) => setTimeout(r, 20));
  }
}

/**
 * The WAL archive (push, fetch, prune, names and LSN arithmetic), PostgreSQL URLs and the
 * pg_restore table of contents: fast tests on an in-memory repository and real files.
 */
import assert from "node:assert/strict";
import { randomBytes } from "node:crypto";
import { mkdtemp, readFile, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { describe, it } from "node:test";
import { isCode } from "@iotvault/errors";
import { Repository } from "@iotvault/repo";
import { MemoryStore } from "@iotvault/storage";
import { parseToc, selectEntries } from "./toc.js";
import { parsePostgresUrl, redactPostgresUrl } from "./url.js";
import {
  formatLsn,
  listWal,
  parseLsn,
  segmentName,
  segmentNumber,
  segmentNumberOf,
  systemIdFromSegment,
  walFetch,
  walKey,
  walPrune,
  walPush,
} from "./wal.js";
import { walSegmentsOf } from "./physical-backup.js";
import { gatewayRestoreCommand, recoveryTarget } from "./recovery.js";

const SYSID = "7441234567890123456";

/** The first bytes of a WAL segment: a long page header carrying the system identifier. */
function segmentBytes(sysid: string, fill: number, size = 64 * 1024): Buffer {
  const b = Buffer.alloc(size, fill);
  b.writeUInt16LE(0xd110, 0); // magic of PostgreSQL 15
  b.writeUInt16LE(0x0002, 2); // XLP_LONG_HEADER
  b.writeUInt32LE(1, 4);
  b.writeBigUInt64LE(BigInt(sysid), 24);
  return b;
}

async function withRepo(fn: (repo: Repository, dir: string) => Promise<void>): Promise<void> {
  const dir = await mkdtemp(join(tmpdir(), "iotvault-wal-"));
  const repo = await Repository.init(new MemoryStore(), { keyFile: randomBytes(64) }, { scryptLogN: 10, workers: 1 });
  try {
    await fn(repo, dir);
  } finally {
    await repo.close();
    await rm(dir, { recursive: true, force: true });
  }
}

describe("WAL names and LSNs", () => {
  it("computes segment names and numbers like PostgreSQL", () => {
    assert.equal(parseLsn("16/B374D848"), 0x16b374d848n);
    assert.equal(formatLsn(0x16b374d848n), "16/B374D848");
    assert.equal(segmentName(1, segmentNumber(parseLsn("0/3000060"))), "000000010000000000000003");
    assert.equal(segmentName(2, segmentNumber(parseLsn("16/B374D848"))), "0000000200000016000000B3");
    assert.equal(segmentNumberOf("0000000200000016000000B3"), segmentNumber(parseLsn("16/B3000000")));
    assert.deepEqual(walSegmentsOf(1, parseLsn("0/2000028"), parseLsn("0/4000000"), 16 << 20), [
      "000000010000000000000002",
      "000000010000000000000003",
    ]);
    assert.throws(
      () => parseLsn("nope"),
      (err: unknown) => isCode(err, "INVALID_ARGUMENT"),
    );
  });

  it("keys WAL files by system id and timeline, and refuses names PostgreSQL never archives", () => {
    assert.equal(walKey(SYSID, "000000020000000000000003"), `wal/${SYSID}/00000002/000000020000000000000003`);
    assert.equal(walKey(SYSID, "00000002.history"), `wal/${SYSID}/00000002/00000002.history`);
    assert.equal(
      walKey(SYSID, "000000010000000000000003.00000028.backup"),
      `wal/${SYSID}/00000001/000000010000000000000003.00000028.backup`,
    );
    assert.throws(
      () => walKey(SYSID, "../etc/passwd"),
      (err: unknown) => isCode(err, "INVALID_ARGUMENT"),
    );
    assert.throws(
      () => walKey("12; rm", "000000010000000000000003"),
      (err: unknown) => isCode(err, "INVALID_ARGUMENT"),
    );
  });

  it("reads the system identifier from a segment's long page header", () => {
    assert.equal(systemIdFromSegment(segmentBytes(SYSID, 0)), SYSID);
    assert.equal(systemIdFromSegment(Buffer.alloc(64)), undefined);
  });
});

describe("wal-push, wal-fetch, wal-prune", () => {
  it("pushes a segment compressed and encrypted, idempotently, and fetches it back byte for byte", async () => {
    await withRepo(async (repo, dir) => {
      const path = join(dir, "000000010000000000000003");
      const data = segmentBytes(SYSID, 7);
      await writeFile(path, data);
      const first = await walPush(repo, path);
      assert.equal(first.systemId, SYSID);
      assert.equal(first.timeline, 1);
      assert.equal(first.existed, false);
      assert.ok(first.storedBytes < data.length / 4, `stored ${first.storedBytes} of ${data.length}`);
      const again = await walPush(repo, path);
      assert.equal(again.existed, true);
      const dest = join(dir, "RECOVERYXLOG");
      assert.equal(await walFetch(repo, "000000010000000000000003", dest, { systemId: SYSID }), true);
      assert.deepEqual(await readFile(dest), data);
      assert.equal(await walFetch(repo, "000000010000000000000004", join(dir, "x"), { systemId: SYSID }), false);
    });
  });

  it("refuses different content under a name that is archived already", async () => {
    await withRepo(async (repo, dir) => {
      const path = join(dir, "000000010000000000000005");
      await writeFile(path, segmentBytes(SYSID, 1));
      await walPush(repo, path);
      await writeFile(path, segmentBytes(SYSID, 2));
      await assert.rejects(
        walPush(repo, path),
        (err: unknown) => isCode(err, "ALREADY_EXISTS") && /different content/.test((err as Error).message),
      );
    });
  });

  it("refuses a segment of another cluster and a file without a cluster to tell", async () => {
    await withRepo(async (repo, dir) => {
      const path = join(dir, "000000010000000000000006");
      await writeFile(path, segmentBytes(SYSID, 1));
      await assert.rejects(walPush(repo, path, { systemId: "7000000000000000001" }), (err: unknown) =>
        isCode(err, "INVALID_ARGUMENT"),
      );
      const history = join(dir, "00000002.history");
      await writeFile(history, "1\t0/3000000\tno recovery target specified\n");
      await assert.rejects(walPush(repo, history, { pgdata: dir }), (err: unknown) => isCode(err, "INVALID_ARGUMENT"));
      assert.equal((await walPush(repo, history, { systemId: SYSID })).timeline, 2);
    });
  });

  it("prunes the WAL no kept physical backup needs, keeping history files", async () => {
    await withRepo(async (repo, dir) => {
      for (const n of [2, 3, 4, 5, 6]) {
        const path = join(dir, segmentName(1, BigInt(n)));
        await writeFile(path, segmentBytes(SYSID, n));
        await walPush(repo, path);
      }
      await writeFile(join(dir, "00000002.history"), "1\t0/6000000\tx\n");
      await walPush(repo, join(dir, "00000002.history"), { systemId: SYSID });
      await assert.rejects(walPrune(repo, { systemId: SYSID }), (err: unknown) => isCode(err, "FAILED_PRECONDITION"));
      const writer = await repo.startBackup({ runId: "phys" });
      await writer.commit({
        jobId: "j",
        jobName: "j",
        source: "postgres://x@h/postgres?mode=physical",
        backupType: "full",
        metadata: {
          postgres: { format: 1, mode: "physical", systemIdentifier: SYSID, startLsn: "0/4000028", timeline: 1 },
        },
      });
      const dry = await walPrune(repo, { systemId: SYSID, dryRun: true });
      assert.deepEqual(dry.removed, ["000000010000000000000002", "000000010000000000000003"]);
      assert.equal((await listWal(repo, SYSID)).length, 6);
      const done = await walPrune(repo, { systemId: SYSID });
      assert.equal(done.keepFromSegment, "000000010000000000000004");
      assert.deepEqual(
        (await listWal(repo, SYSID)).map((o) => o.name),
        ["000000010000000000000004", "000000010000000000000005", "000000010000000000000006", "00000002.history"],
      );
    });
  });
});

describe("PostgreSQL URLs, recovery targets, restore_command", () => {
  it("parses sources with defaults and refuses passwords, unknown parameters and bad values", () => {
    const logical = parsePostgresUrl("postgres://app@db1:5433/iot");
    assert.deepEqual(
      [logical.mode, logical.host, logical.port, logical.user, logical.database, logical.jobs, logical.rowcheck],
      ["logical", "db1", 5433, "app", "iot", 2, "checksum"],
    );
    const physical = parsePostgresUrl(
      "postgresql://backup@127.0.0.1/?mode=physical&pgdata=/var/lib/postgresql/15/main",
    );
    assert.deepEqual(
      [physical.database, physical.pgdata, physical.rowcheck],
      ["postgres", "/var/lib/postgresql/15/main", "none"],
    );
    const err = (url: string, re: RegExp) =>
      assert.throws(
        () => parsePostgresUrl(url),
        (e: unknown) => isCode(e, "INVALID_ARGUMENT") && re.test((e as Error).message),
      );
    err("postgres://app:s3cret@db1/iot", /contains a password/);
    err("postgres://app@db1/iot?mod=physical", /unknown parameter "mod"/);
    err("postgres://app@db1/iot?mode=both", /mode must be/);
    err("postgres://app@db1/iot?jobs=0", /jobs must be/);
    err("postgres://app@db1/iot?pgdata=/x", /only used with mode=physical/);
    err("postgres://app@db1/", /names no database/);
    assert.ok(!redactPostgresUrl("postgres://app:s3cret@db1/iot").includes("s3cret"));
  });

  it("validates recovery targets", () => {
    assert.equal(recoveryTarget({}).latest, true);
    assert.equal(
      recoveryTarget({ recovery_target_time: "2026-11-24 10:00:00+00" }).settings["recovery_target_action"],
      "promote",
    );
    assert.throws(
      () => recoveryTarget({ recovery_target_time: "soon" }),
      (e: unknown) => isCode(e, "INVALID_ARGUMENT"),
    );
    assert.throws(
      () => recoveryTarget({ recovery_target_lsn: "0/1", recovery_target_name: "x" }),
      (e: unknown) => isCode(e, "INVALID_ARGUMENT") && /at most one/.test((e as Error).message),
    );
  });

  it("builds restore_command for a repository behind the storage-gateway, quoting for the shell", () => {
    const cmd = gatewayRestoreCommand(
      {
        command: "iotvault",
        env: { IOTVAULT_KEY_FILE: "/etc/iotvault/wal key", IOTVAULT_STORAGE_GATEWAY_ADDRESS: "10.0.0.5:7603" },
      },
      "gateway://10.0.0.5:7603/main",
      SYSID,
    );
    assert.equal(
      cmd,
      `IOTVAULT_KEY_FILE='/etc/iotvault/wal key' IOTVAULT_STORAGE_GATEWAY_ADDRESS=10.0.0.5:7603 iotvault wal-fetch --repo main --system-id ${SYSID} %f %p`,
    );
    assert.equal(gatewayRestoreCommand({ command: "iotvault", env: {} }, "file:///srv/repo", SYSID), undefined);
  });
});

describe("pg_restore table of contents", () => {
  const toc = `;
; Archive created at 2026-11-24 10:00:00 UTC
;
215; 1259 16386 TABLE public sensors postgres
216; 1259 16390 SEQUENCE public sensors_id_seq postgres
3350; 0 0 SEQUENCE OWNED BY public sensors_id_seq postgres
3190; 2604 16391 DEFAULT public sensors id postgres
217; 1259 16400 TABLE public readings postgres
3200; 2606 16410 CONSTRAINT public readings readings_pkey postgres
3201; 1259 16420 INDEX public readings_at_idx postgres
3202; 2606 16430 FK CONSTRAINT public readings readings_sensor_id_fkey postgres
3360; 0 0 COMMENT public TABLE readings postgres
820; 1247 16380 TYPE public kind postgres
3400; 0 16386 TABLE DATA public sensors postgres
3401; 0 0 SEQUENCE SET public sensors_id_seq postgres
`;
  const tables = [
    {
      schema: "public",
      name: "sensors",
      indexes: ["sensors_pkey"],
      sequences: ["sensors_id_seq"],
      foreignKeys: [],
      types: [{ schema: "public", name: "kind" }],
    },
    {
      schema: "public",
      name: "readings",
      indexes: ["readings_at_idx", "readings_pkey"],
      sequences: [],
      foreignKeys: [{ name: "readings_sensor_id_fkey", refSchema: "public", refTable: "sensors" }],
    },
  ];

  it("parses entries, including kinds with spaces", () => {
    const entries = parseToc(toc);
    assert.equal(entries.length, 12);
    const fk = entries.find((e) => e.id === 3202)!;
    assert.deepEqual([fk.desc, fk.namespace, fk.tag], ["FK CONSTRAINT", "public", "readings readings_sensor_id_fkey"]);
    const owned = entries.find((e) => e.id === 3350)!;
    assert.deepEqual([owned.desc, owned.tag], ["SEQUENCE OWNED BY", "sensors_id_seq"]);
  });

  it("selects a table's objects, its types, and drops a foreign key to a table left out", () => {
    const entries = parseToc(toc);
    const sel = selectEntries(entries, { schemas: new Set(), tables: [tables[1]!] }, tables);
    assert.deepEqual(
      sel.keep.map((e) => e.id),
      [217, 3200, 3201, 3360],
    );
    assert.equal(sel.skippedForeignKeys.length, 1);
    const both = selectEntries(entries, { schemas: new Set(), tables }, tables);
    assert.deepEqual(
      both.keep.map((e) => e.id),
      [215, 216, 3350, 3190, 217, 3200, 3201, 3202, 3360, 820, 3400, 3401],
    );
    const typeThere = selectEntries(
      entries,
      { schemas: new Set(), tables: [tables[0]!], existingTypes: new Set(["public.kind"]) },
      tables,
    );
    assert.ok(!typeThere.keep.some((e) => e.id === 820));
  });
});

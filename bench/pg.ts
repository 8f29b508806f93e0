/**
 * The PostgreSQL benchmark: iotvault's physical backup and restore through its real path (CLI
 * -> scheduler -> executor -> storage-gateway; CLI -> restore service) side by side with
 * pgBackRest (compress-type=zst, level 1, process-max=2) on the same pgbench cluster in the same
 * run, the tools alternating, each step repeated; a file-level incremental after some pgbench
 * traffic; the logical path beside `pg_dump -Fc` / `pg_restore`; and the smallest archive lag
 * (RPO) iotvault holds: the time from a WAL segment switch to its iotvault.events.wal.archived.
 * Prints every figure and writes them as JSON to bench/out/.
 *
 * ```sh
 * bash bench/pg.sh --scale 50 --reps 2        # or: node bench/dist/pg.js --help
 * ```
 */
import { execFileSync, spawnSync } from "node:child_process";
import { chmodSync, existsSync, mkdirSync, rmSync, writeFileSync } from "node:fs";
import { cpus, loadavg, totalmem } from "node:os";
import { join, resolve } from "node:path";
import { parseArgs } from "node:util";
import { connect } from "@nats-io/transport-node";
import pg from "pg";
import { LocalCluster, freeLoopbackPort } from "@iotvault/sources";
import { fmtMiB, fmtS, run, summarize, syncDisks, type Summary, type Timed } from "./measure.js";
import { BenchStack, REPO_ROOT } from "./stack.js";

const USAGE = `usage: node bench/dist/pg.js [options]
  --scale N        pgbench scale (default 50: about 750 MiB of relations)
  --reps N         repetitions of every backup and restore (default 2)
  --rpo N          WAL switches timed for the archive lag (default 10)
  --workdir DIR    where the cluster, repositories and restores go (default bench/out/pg-work)
  --keep           keep the work directory
  --no-pgbackrest  iotvault only
  --no-logical     skip pg_dump and the logical backup
  --no-replay      skip the recoveries through the WAL archive (with and without wal-fetch --prefetch)
  --profile DIR    run the services with --cpu-prof, profiles written to DIR when they stop`;

interface Options {
  scale: number;
  reps: number;
  rpo: number;
  workdir: string;
  keep: boolean;
  pgbackrest: boolean;
  logical: boolean;
  replay: boolean;
  profileDir: string | undefined;
}

function options(): Options {
  const { values } = parseArgs({
    options: {
      scale: { type: "string", default: "50" },
      reps: { type: "string", default: "2" },
      rpo: { type: "string", default: "10" },
      workdir: { type: "string" },
      keep: { type: "boolean", default: false },
      "no-pgbackrest": { type: "boolean", default: false },
      "no-logical": { type: "boolean", default: false },
      "no-replay": { type: "boolean", default: false },
      profile: { type: "string" },
      help: { type: "boolean", default: false },
    },
  });
  if (values.help) {
    process.stdout.write(USAGE + "\n");
    process.exit(0);
  }
  return {
    scale: Number(values.scale),
    reps: Number(values.reps),
    rpo: Number(values.rpo),
    workdir: resolve(values.workdir ?? join(REPO_ROOT, "bench", "out", "pg-work")),
    keep: values.keep,
    pgbackrest: !values["no-pgbackrest"],
    logical: !values["no-logical"],
    replay: !values["no-replay"],
    profileDir: values.profile === undefined ? undefined : resolve(values.profile),
  };
}

const CLI = join(REPO_ROOT, "cli", "bin", "iotvault.js");
const IS_ROOT = process.getuid?.() === 0;
const asPostgres = (cmd: string, args: string[]): [string, string[]] =>
  IS_ROOT ? ["runuser", ["-u", "postgres", "--", cmd, ...args]] : [cmd, args];

function pgBin(name: string): string {
  for (const v of ["17", "16", "15"])
    if (existsSync(`/usr/lib/postgresql/${v}/bin/${name}`)) return `/usr/lib/postgresql/${v}/bin/${name}`;
  return name;
}

function must(t: Timed, what: string): Timed {
  if (t.code !== 0)
    throw new Error(`${what} failed (exit ${t.code}):\n${t.stderr.slice(-2000)}${t.stdout.slice(-1000)}`);
  return t;
}

function chownPostgres(path: string): void {
  if (IS_ROOT) execFileSync("chown", ["-R", "postgres:postgres", path]);
}

/** A fresh empty directory the postgres OS user owns. */
function emptyDir(path: string): string {
  rmSync(path, { recursive: true, force: true });
  mkdirSync(path, { recursive: true, mode: 0o700 });
  chownPostgres(path);
  return path;
}

class Bench {
  readonly results: Record<string, Summary | number | string> = {};
  private readonly samples = new Map<string, number[]>();

  note(step: string, ms: number): void {
    const list = this.samples.get(step) ?? [];
    list.push(ms);
    this.samples.set(step, list);
    process.stderr.write(`  ${step}: ${fmtS(ms)} s\n`);
  }

  summaries(): Record<string, Summary> {
    return Object.fromEntries([...this.samples].map(([k, v]) => [k, summarize(v)]));
  }
}

async function sql(cluster: LocalCluster, text: string, database = "postgres"): Promise<pg.QueryResultRow[]> {
  const c = new pg.Client({ host: "127.0.0.1", port: cluster.port, user: "postgres", database });
  await c.connect();
  try {
    return (await c.query(text)).rows;
  } finally {
    await c.end();
  }
}

async function setArchiveCommand(cluster: LocalCluster, command: string): Promise<void> {
  await sql(cluster, `ALTER SYSTEM SET archive_command = '${command.replace(/'/g, "''")}'`);
  await sql(cluster, "SELECT pg_reload_conf()");
  await new Promise((r) => setTimeout(r, 300));
}

async function main(): Promise<void> {
  const o = options();
  const w = o.workdir;
  rmSync(w, { recursive: true, force: true });
  mkdirSync(w, { recursive: true });
  chmodSync(w, 0o755);
  const bench = new Bench();
  process.stderr.write(`work directory ${w}\n`);

  // ---------------------------------------------------------------- the stack and the cluster
  const keyFile = join(w, "wal.key");
  const config = join(w, "iotvault.yaml");
  writeFileSync(config, "repository:\n  compressionLevel: 1\n");
  const stack = await BenchStack.start(
    join(w, "stack"),
    {
      IOTVAULT_CONFIG: config,
      IOTVAULT_SCRYPT_LOGN: "14",
      IOTVAULT_STORAGE_ROOTS: w,
      IOTVAULT_COMMAND: `${process.execPath} ${CLI}`,
      IOTVAULT_WAL_KEY_FILE: keyFile,
    },
    o.profileDir ? ["--cpu-prof", `--cpu-prof-dir=${o.profileDir}`] : [],
  );
  const pgDir = emptyDir(join(w, "pg"));
  chmodSync(pgDir, 0o755);
  const cluster = await LocalCluster.init(join(pgDir, "data"), { runDir: join(pgDir, "run") });
  try {
    await stack.cli(["repo", "init", "main", "--url", `file://${join(w, "repo")}`]);
    await stack.cli(["key", "add", "--repo", "main", "--new-key-file", keyFile]);
    chownPostgres(keyFile);
    await cluster.start({
      port: await freeLoopbackPort(),
      settings: {
        wal_level: "replica",
        archive_mode: "on",
        max_wal_size: "8GB",
        checkpoint_timeout: "60min",
        fsync: "off",
      },
    });
    const pgbench = (args: string[]) =>
      must(
        spawnTimed(pgBin("pgbench"), ["-h", "127.0.0.1", "-p", String(cluster.port), "-U", "postgres", ...args]),
        "pgbench",
      );
    process.stderr.write(`pgbench -i -s ${o.scale} ...\n`);
    const init = pgbench(["-i", "-q", "-s", String(o.scale), "postgres"]);
    const size = Number(
      (await sql(cluster, "SELECT sum(pg_database_size(datname))::int8 AS s FROM pg_database"))[0]!["s"],
    );
    bench.results["pgbenchInitS"] = Number(fmtS(init.wallMs));
    bench.results["databaseMiB"] = Number(fmtMiB(size));
    process.stderr.write(`databases: ${fmtMiB(size)} MiB\n`);

    const iotvaultArchive = `IOTVAULT_STORAGE_GATEWAY_ADDRESS=${stack.address("storage-gateway")} IOTVAULT_NATS_URL=${stack.nats.url} IOTVAULT_KEY_FILE=${keyFile} ${process.execPath} ${CLI} wal-push --repo main %p`;
    const physical = `postgres://postgres@127.0.0.1:${cluster.port}/postgres?mode=physical&pgdata=${encodeURIComponent(cluster.dataDir)}`;
    await stack.cli(["job", "create", "pgphys", "--source", physical, "--repo", "main", "--type", "full"]);

    // ---------------------------------------------------------------- pgBackRest
    const pbr = o.pgbackrest ? pgBackRest(w, cluster) : undefined;
    if (pbr) await pbr.create();

    // ---------------------------------------------------------------- full backups and restores, alternating
    let lastSnapshot = "";
    for (let rep = 0; rep < o.reps; rep++) {
      process.stderr.write(`repetition ${rep + 1} of ${o.reps}\n`);
      if (pbr) {
        await setArchiveCommand(cluster, pbr.archiveCommand);
        syncDisks();
        bench.note("pgbackrest full backup", pbr.backup("full").wallMs);
        syncDisks();
        bench.note("pgbackrest restore", pbr.restore(join(w, "restore-pgbackrest")).wallMs);
        rmSync(join(w, "restore-pgbackrest"), { recursive: true, force: true });
      }
      await setArchiveCommand(cluster, iotvaultArchive);
      syncDisks();
      const b = await stack.cli(["backup", "pgphys", "--type", "full", "--wait"]);
      const runInfo = b.json as { snapshotId: string; stats: { durationMs: string; bytesStored: string } };
      lastSnapshot = runInfo.snapshotId;
      // The first full goes into an empty repository; later ones deduplicate against it.
      const which =
        rep === 0 ? "iotvault full backup, empty repository" : "iotvault full backup, repository holds a full";
      bench.note(which, b.wallMs);
      bench.note(`${which} (executor run)`, Number(runInfo.stats.durationMs));
      bench.results["iotvault stored MiB (first full)"] ??= Number(fmtMiB(Number(runInfo.stats.bytesStored)));
      for (const verify of [false, true]) {
        const target = join(w, "restore-iotvault");
        rmSync(target, { recursive: true, force: true });
        syncDisks();
        const r = await stack.cli(["restore", lastSnapshot, "--to", target, ...(verify ? [] : ["--no-verify"])]);
        const label = verify ? "iotvault restore (read back and verified)" : "iotvault restore";
        bench.note(label, r.wallMs);
        bench.note(`${label} (restore service)`, Number((r.json as { durationMs: string }).durationMs));
        rmSync(target, { recursive: true, force: true });
      }
    }

    // ---------------------------------------------------------------- incremental after traffic
    // The traffic's WAL is archived by pgBackRest's archive-push (fast, asynchronous-capable);
    // each tool's backup then only waits for (pgBackRest) or copies (iotvault) its own segments.
    if (pbr) await setArchiveCommand(cluster, pbr.archiveCommand);
    pgbench(["-c", "2", "-j", "2", "-T", "10", "-n", "postgres"]);
    await archiverIdle(cluster);
    if (pbr) {
      syncDisks();
      bench.note("pgbackrest incremental backup", pbr.backup("incr").wallMs);
    }
    await setArchiveCommand(cluster, iotvaultArchive);
    await archiverIdle(cluster);
    syncDisks();
    const incr = await stack.cli(["backup", "pgphys", "--type", "incremental", "--wait"]);
    bench.note("iotvault incremental backup", incr.wallMs);
    const incrStats = (incr.json as { stats: { bytesRead: string; totalBytes: string } }).stats;
    bench.results["iotvault incremental read MiB"] = Number(fmtMiB(Number(incrStats.bytesRead)));
    bench.results["iotvault incremental total MiB"] = Number(fmtMiB(Number(incrStats.totalBytes)));

    // ---------------------------------------------------------------- archive lag (RPO)
    bench.results["rpo"] = await archiveLag(stack, cluster, o.rpo);
    const pushes = await timedWalPushes(stack, cluster, w);
    bench.note("wal-push of one 16 MiB segment (CLI process, first call)", pushes[0]!);
    for (const ms of pushes.slice(1)) bench.note("wal-push of one 16 MiB segment (CLI process)", ms);

    // ---------------------------------------------------------------- point-in-time recovery: WAL replay
    if (o.replay) {
      const incrSnapshot = (incr.json as { snapshotId: string }).snapshotId;
      await replay(bench, stack, cluster, pgbench, incrSnapshot, w, o.reps);
    }

    // ---------------------------------------------------------------- logical
    if (o.logical) await logical(bench, stack, cluster, w, o.reps);

    const summaries = bench.summaries();
    const report = {
      at: new Date().toISOString(),
      machine: {
        cpus: cpus().length,
        model: cpus()[0]?.model,
        memGiB: Math.round(totalmem() / 2 ** 30),
        loadavg: loadavg(),
      },
      scale: o.scale,
      iotvaultCompressionLevel: 1,
      pgbackrest: pbr ? "compress-type=zst compress-level=1 process-max=2" : "not run",
      ...bench.results,
      steps: summaries,
    };
    printReport(summaries, bench.results);
    mkdirSync(join(REPO_ROOT, "bench", "out"), { recursive: true });
    const text = JSON.stringify(report, null, 2);
    writeFileSync(join(REPO_ROOT, "bench", "out", `pg-${report.at.replace(/[:.]/g, "-")}.json`), text);
    writeFileSync(join(REPO_ROOT, "bench", "out", "pg-latest.json"), text);
  } finally {
    await cluster.stop({ mode: "fast" }).catch(() => undefined);
    await stack.stop();
    if (!o.keep) rmSync(w, { recursive: true, force: true });
  }
}

/** A program run to its end, timed (synchronous: the bench does one thing at a time). */
function spawnTimed(cmd: string, args: string[], env?: NodeJS.ProcessEnv): Timed {
  const start = performance.now();
  const r = spawnSync(cmd, args, { encoding: "utf8", env: env ?? process.env, maxBuffer: 64 * 1024 * 1024 });
  return { code: r.status ?? -1, stdout: r.stdout ?? "", stderr: r.stderr ?? "", wallMs: performance.now() - start };
}

function pgBackRest(w: string, cluster: LocalCluster) {
  const dir = emptyDir(join(w, "pgbackrest"));
  const conf = join(dir, "pgbackrest.conf");
  writeFileSync(
    conf,
    [
      "[global]",
      `repo1-path=${join(dir, "repo")}`,
      "repo1-retention-full=99",
      "compress-type=zst",
      "compress-level=1",
      "process-max=2",
      "start-fast=y",
      "log-level-console=warn",
      "log-level-file=off",
      `lock-path=${join(dir, "lock")}`,
      `spool-path=${join(dir, "spool")}`,
      "",
      "[bench]",
      `pg1-path=${cluster.dataDir}`,
      `pg1-port=${cluster.port}`,
      `pg1-socket-path=${cluster.runDir}`,
      "",
    ].join("\n"),
  );
  chownPostgres(dir);
  const cmd = (args: string[]) => {
    const [c, a] = asPostgres("pgbackrest", [`--config=${conf}`, "--stanza=bench", ...args]);
    return must(spawnTimed(c, a), `pgbackrest ${args.join(" ")}`);
  };
  return {
    archiveCommand: `pgbackrest --config=${conf} --stanza=bench archive-push %p`,
    async create(): Promise<void> {
      await setArchiveCommand(cluster, `pgbackrest --config=${conf} --stanza=bench archive-push %p`);
      cmd(["stanza-create"]);
    },
    backup: (type: "full" | "incr") => cmd([`--type=${type}`, "backup"]),
    restore: (target: string) => cmd([`--pg1-path=${emptyDir(target)}`, "restore"]),
  };
}

/** Waits until no WAL segment waits for archive_command (at most 10 minutes). */
/**
 * Recovery through the archive: traffic archived by iotvault's wal-push after the incremental
 * backup, then restores of that backup with recover=true to the end of the WAL, each step
 * alternating restore_command without and with `--prefetch 8` (option wal_prefetch). The
 * figure is the server's recovery (restore_command calls and replay), from the restore's details.
 */
async function replay(
  bench: Bench,
  stack: BenchStack,
  cluster: LocalCluster,
  pgbench: (args: string[]) => unknown,
  snapshot: string,
  w: string,
  reps: number,
): Promise<void> {
  const before = Number((await sql(cluster, "SELECT archived_count::int8 AS n FROM pg_stat_archiver"))[0]!["n"]);
  pgbench(["-c", "2", "-j", "2", "-T", "6", "-n", "postgres"]);
  await sql(cluster, "SELECT pg_switch_wal()");
  await archiverIdle(cluster);
  const after = Number((await sql(cluster, "SELECT archived_count::int8 AS n FROM pg_stat_archiver"))[0]!["n"]);
  bench.results["replay segments archived after the incremental"] = after - before;
  process.stderr.write(`recovery over ${after - before} archived segments ...\n`);
  for (let rep = 0; rep < reps; rep++) {
    for (const prefetch of rep % 2 ? [8, 0] : [0, 8]) {
      const target = join(w, "restore-replay");
      rmSync(target, { recursive: true, force: true });
      syncDisks();
      const options = ["--option", "recover=true", ...(prefetch ? ["--option", `wal_prefetch=${prefetch}`] : [])];
      const r = await stack.cli(["restore", snapshot, "--to", target, ...options]);
      const details = JSON.parse((r.json as { details: string }).details) as { recovery: { durationMs: number } };
      const label = prefetch ? `iotvault recovery, wal-fetch --prefetch ${prefetch}` : "iotvault recovery, wal-fetch";
      bench.note(`${label} (server start to promoted)`, details.recovery.durationMs);
      bench.note(`${label}: restore and recovery (CLI)`, r.wallMs);
      rmSync(target, { recursive: true, force: true });
    }
  }
}

async function archiverIdle(cluster: LocalCluster): Promise<void> {
  const deadline = Date.now() + 600_000;
  while (Date.now() < deadline) {
    const ready = await sql(
      cluster,
      "SELECT count(*)::int AS n FROM pg_ls_archive_statusdir() WHERE name LIKE '%.ready'",
    );
    if (ready[0]!["n"] === 0) return;
    await new Promise((r) => setTimeout(r, 100));
  }
  throw new Error("the archiver did not catch up in 10 minutes");
}

/** The time from pg_switch_wal() to the segment's wal.archived event, n times. */
async function archiveLag(stack: BenchStack, cluster: LocalCluster, n: number): Promise<Summary & { unit: string }> {
  const nc = await connect({ servers: stack.nats.url });
  const seen = new Map<string, number>();
  const sub = nc.subscribe("iotvault.events.wal.archived");
  void (async () => {
    for await (const m of sub) seen.set(m.json<{ segment: string }>().segment, performance.now());
  })();
  const lags: number[] = [];
  try {
    for (let i = 0; i < n; i++) {
      await archiverIdle(cluster);
      await sql(cluster, "CREATE TABLE IF NOT EXISTS rpo (at timestamptz); INSERT INTO rpo VALUES (now())");
      const t0 = performance.now();
      const name = String((await sql(cluster, "SELECT pg_walfile_name(pg_switch_wal()) AS n"))[0]!["n"]);
      const deadline = Date.now() + 60_000;
      while (!seen.has(name) && Date.now() < deadline) await new Promise((r) => setTimeout(r, 5));
      if (!seen.has(name)) throw new Error(`no wal.archived for ${name} within 60 s`);
      lags.push(seen.get(name)! - t0);
      process.stderr.write(`  archive lag ${i + 1}: ${lags.at(-1)!.toFixed(0)} ms\n`);
    }
  } finally {
    sub.unsubscribe();
    await nc.close();
  }
  return { ...summarize(lags), unit: "ms" };
}

/**
 * `wal-push` as a process, six calls: the first one of a user compiles the CLI and leaves its code
 * cache (cli/README.md), the later ones start from it. Each pushes a copy of the current segment
 * under another segment's name into a repository of its own ("walbench"), so that the cluster's
 * archive never holds a segment that is not its own (the recoveries after this replay it).
 */
async function timedWalPushes(stack: BenchStack, cluster: LocalCluster, w: string): Promise<number[]> {
  const keyFile = join(w, "walbench.key");
  await stack.cli(["repo", "init", "walbench", "--url", `file://${join(w, "walbench")}`]);
  await stack.cli(["key", "add", "--repo", "walbench", "--new-key-file", keyFile]);
  const name = String((await sql(cluster, "SELECT pg_walfile_name(pg_current_wal_lsn()) AS n"))[0]!["n"]);
  // A cache directory no earlier call has used: the first call below is a first call.
  const env = {
    ...stack.env,
    IOTVAULT_KEY_FILE: keyFile,
    IOTVAULT_PASSWORD_FILE: "",
    XDG_CACHE_HOME: join(w, "walbench-cache"),
  };
  const times: number[] = [];
  for (let i = 0; i < 6; i++) {
    const copy = join(w, `0000000100000FFF000000${i.toString(16).toUpperCase().padStart(2, "0")}`);
    execFileSync("cp", [join(cluster.dataDir, "pg_wal", name), copy]);
    const r = await run(process.execPath, [CLI, "wal-push", "--repo", "walbench", "--pgdata", cluster.dataDir, copy], {
      env,
    });
    must(r, "wal-push");
    rmSync(copy);
    times.push(r.wallMs);
  }
  return times;
}

async function logical(bench: Bench, stack: BenchStack, cluster: LocalCluster, w: string, reps: number): Promise<void> {
  const url = (db: string) => `postgres://postgres@127.0.0.1:${cluster.port}/${db}`;
  await stack.cli(["job", "create", "pglog", "--source", url("postgres"), "--repo", "main", "--type", "full"]);
  const dump = join(w, "pgbench.dump");
  for (let rep = 0; rep < reps; rep++) {
    syncDisks();
    bench.note(
      "pg_dump -Fc (to a file)",
      must(spawnTimed(pgBin("pg_dump"), ["-Fc", "-f", dump, "-d", url("postgres")]), "pg_dump").wallMs,
    );
    syncDisks();
    const b = await stack.cli(["backup", "pglog", "--wait"]);
    bench.note("iotvault logical backup (checksums)", b.wallMs);
    const snapshot = (b.json as { snapshotId: string }).snapshotId;
    const db1 = `restore_a${rep}`;
    await sql(cluster, `CREATE DATABASE ${db1}`);
    syncDisks();
    bench.note(
      "pg_restore -j 2 (from the file)",
      must(spawnTimed(pgBin("pg_restore"), ["-j", "2", "-d", url(db1), dump]), "pg_restore").wallMs,
    );
    for (const verify of [false, true]) {
      const db = `restore_b${rep}${verify ? "v" : ""}`;
      syncDisks();
      const r = await stack.cli([
        "restore",
        snapshot,
        "--to",
        url(db),
        "--option",
        "create_database=true",
        ...(verify ? [] : ["--no-verify"]),
      ]);
      bench.note(
        verify ? "iotvault logical restore (rows and checksums verified)" : "iotvault logical restore",
        r.wallMs,
      );
    }
  }
}

function printReport(steps: Record<string, Summary>, results: Record<string, unknown>): void {
  const rows = Object.entries(steps).map(
    ([k, s]) =>
      `${k.padEnd(58)} ${fmtS(s.best).padStart(8)} s  (median ${fmtS(s.median)}, spread ${(s.spread * 100).toFixed(0)} %)`,
  );
  process.stdout.write(
    ["", "PostgreSQL benchmark (best of the repetitions)", ...rows, "", JSON.stringify(results, null, 2), ""].join(
      "\n",
    ),
  );
}

main().catch((err: unknown) => {
  process.stderr.write(`${(err as Error).stack ?? String(err)}\n`);
  process.exit(1);
});

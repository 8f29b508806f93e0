/**
 * Helpers for the PostgreSQL tests of this package (not exported from the package): a
 * repository in a temporary directory opened with a key file, and clusters made with initdb
 * on free ports, archiving their WAL into that repository with the test WAL command. When the
 * process is root the servers run as the postgres OS user, so the temporary tree is given to
 * it. Everything is removed by cleanup(), or at process exit when a test failed before.
 */
import { randomBytes } from "node:crypto";
import { execFileSync } from "node:child_process";
import { appendFileSync, mkdirSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { mkdtemp } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import pg from "pg";
import { Repository, type BackupTypeName, type SnapshotManifest } from "@iotvault/repo";
import { LocalDirectoryStore } from "@iotvault/storage";
import { freePort } from "@iotvault/testing";
import { LocalCluster } from "./cluster.js";
import { quoteLiteral } from "./connection.js";
import { IS_ROOT } from "./tools.js";
import { listWal } from "./wal.js";

const WAL_COMMAND = fileURLToPath(new URL("./test-wal-command.js", import.meta.url));
const live = new Set<{ clusters: LocalCluster[]; dir: string }>();
process.on("exit", () => {
  for (const s of live) {
    for (const c of s.clusters) {
      const pid = c.pid();
      if (pid) process.kill(pid, "SIGQUIT");
    }
    rmSync(s.dir, { recursive: true, force: true });
  }
});

export interface PgSandbox {
  dir: string;
  repoDir: string;
  keyFile: string;
  repo: Repository;
  /** The source cluster (archiving into the repository when asked). */
  source: LocalCluster;
  systemId: string;
  /** A source URL of the source cluster. */
  url(database: string, query?: string): string;
  sql<T extends pg.QueryResultRow = Record<string, unknown>>(
    database: string,
    text: string,
    params?: unknown[],
  ): Promise<T[]>;
  /** Switches to a new WAL segment and waits until the finished one is in the archive. */
  switchWal(): Promise<string>;
  /** restore_command for this repository (the test WAL command). */
  restoreCommand(systemId: string): string;
  /** Gives the repository's files to the postgres OS user again (after the test process wrote). */
  chownRepo(): void;
  /** A path for a new data directory under the sandbox. */
  newDir(name: string): string;
  /** Adopts a cluster started by a test, so that cleanup stops it. */
  adopt(cluster: LocalCluster): LocalCluster;
  cleanup(): Promise<void>;
}

function chownPostgres(path: string): void {
  if (IS_ROOT) execFileSync("chown", ["-R", "postgres:postgres", path]);
}

/** A sandbox with a repository and a running source cluster. */
export async function startPgSandbox(
  options: { archive?: boolean; settings?: Record<string, string> } = {},
): Promise<PgSandbox> {
  const dir = await mkdtemp(join(tmpdir(), "iotvault-pg-test-"));
  const entry = { clusters: [] as LocalCluster[], dir };
  live.add(entry);
  const repoDir = join(dir, "repo");
  const keyFile = join(dir, "repo.key");
  writeFileSync(keyFile, randomBytes(64), { mode: 0o600 });
  mkdirSync(repoDir, { mode: 0o700 });
  const repo = await Repository.init(
    new LocalDirectoryStore(repoDir),
    { keyFile: readFileSync(keyFile) },
    { scryptLogN: 10, workers: 2 },
  );
  chownPostgres(dir);
  const source = await LocalCluster.init(join(dir, "source"), { runDir: join(dir, "run") });
  entry.clusters.push(source);
  const conf: Record<string, string> = {
    wal_level: "replica",
    fsync: "off",
    synchronous_commit: "off",
    checkpoint_timeout: "30min",
    max_wal_size: "1GB",
    autovacuum: "off",
    ...options.settings,
  };
  if (options.archive) {
    conf["archive_mode"] = "on";
    conf["archive_command"] = `${process.execPath} ${WAL_COMMAND} push ${repoDir} ${keyFile} %p`;
  }
  appendFileSync(
    join(source.dataDir, "postgresql.conf"),
    Object.entries(conf)
      .map(([k, v]) => `${k} = ${quoteLiteral(v)}\n`)
      .join(""),
  );
  await source.start({ port: await freePort() });
  const sql = async <T extends pg.QueryResultRow>(database: string, text: string, params: unknown[] = []) => {
    const client = new pg.Client({ host: "127.0.0.1", port: source.port, user: "postgres", database });
    await client.connect();
    try {
      return (await client.query<T>(text, params)).rows;
    } finally {
      await client.end();
    }
  };
  const systemId = (
    await sql<{ s: string }>("postgres", "SELECT system_identifier::text AS s FROM pg_control_system()")
  )[0]!.s;
  return {
    dir,
    repoDir,
    keyFile,
    repo,
    source,
    systemId,
    url: (database, query) => `postgres://postgres@127.0.0.1:${source.port}/${database}${query ? `?${query}` : ""}`,
    sql,
    async switchWal() {
      const rows = await sql<{ name: string }>("postgres", "SELECT pg_walfile_name(pg_switch_wal()) AS name");
      const name = rows[0]!.name;
      const deadline = Date.now() + 30_000;
      while (!(await listWal(repo, systemId)).some((o) => o.name === name)) {
        if (Date.now() > deadline) throw new Error(`segment ${name} was not archived in time:\n${source.logTail()}`);
        await new Promise((r) => setTimeout(r, 50));
      }
      return name;
    },
    restoreCommand: (id) => `${process.execPath} ${WAL_COMMAND} fetch ${repoDir} ${keyFile} ${id} %f %p`,
    chownRepo: () => chownPostgres(repoDir),
    newDir: (name) => join(dir, name),
    adopt(cluster) {
      entry.clusters.push(cluster);
      return cluster;
    },
    async cleanup() {
      for (const c of entry.clusters) await c.stop({ mode: "immediate" }).catch(() => undefined);
      await repo.close();
      rmSync(dir, { recursive: true, force: true });
      live.delete(entry);
    },
  };
}

/** Runs one backup through a writer and commits it. */
export async function commitBackup<R extends { metadata?: unknown }>(
  repo: Repository,
  runId: string,
  source: string,
  backupType: BackupTypeName,
  parent: SnapshotManifest | undefined,
  body: (writer: Awaited<ReturnType<Repository["startBackup"]>>) => Promise<R>,
): Promise<{ snapshot: SnapshotManifest; result: R; bytesRead: number }> {
  const writer = await repo.startBackup({ runId, parent });
  let result: R;
  try {
    result = await body(writer);
  } catch (err) {
    await writer.abort();
    throw err;
  }
  const { snapshot, stats } = await writer.commit({
    jobId: "pg-job",
    jobName: "pg",
    source,
    backupType,
    metadata: { postgres: result.metadata },
  });
  return { snapshot, result, bytesRead: stats.bytesRead };
}

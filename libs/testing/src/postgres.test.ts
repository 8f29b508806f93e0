import assert from "node:assert/strict";
import { execFile } from "node:child_process";
import { existsSync } from "node:fs";
import { test } from "node:test";
import { promisify } from "node:util";
import pg from "pg";
import { createTestDatabase, freePort } from "./index.js";

const INDEX_URL = new URL("./index.js", import.meta.url).href;
const ADMIN_URL = process.env["IOTVAULT_TEST_PG_URL"] ?? "postgres://postgres@127.0.0.1:5432/postgres";

async function query<T extends pg.QueryResultRow>(url: string, sql: string, params: unknown[] = []): Promise<T[]> {
  const client = new pg.Client({ connectionString: url });
  await client.connect();
  try {
    return (await client.query<T>(sql, params)).rows;
  } finally {
    await client.end();
  }
}

async function script(url: string, statements: string[]): Promise<void> {
  for (const sql of statements) await query(url, sql);
}

async function exists(name: string): Promise<boolean> {
  const rows = await query(ADMIN_URL, "SELECT 1 FROM pg_database WHERE datname = $1", [name]);
  return rows.length === 1;
}

void test("createTestDatabase creates a usable database and drop() removes it", async () => {
  const db = await createTestDatabase({ prefix: "Kit-Test" });
  try {
    assert.match(db.name, /^kit_test_[a-z0-9_]+$/);
    assert.ok(db.name.length <= 63);
    assert.ok(db.url.endsWith(`/${db.name}`));
    await script(db.url, ["CREATE TABLE t (x int)", "INSERT INTO t VALUES (1)"]);
    const rows = await query<{ db: string; n: number }>(
      db.url,
      "SELECT current_database() AS db, count(*)::int AS n FROM t",
    );
    assert.deepEqual(rows[0], { db: db.name, n: 1 });
    assert.ok(await exists(db.name));
  } finally {
    await db.drop();
  }
  assert.equal(await exists(db.name), false);
  await db.drop(); // idempotent
});

void test("two databases get different names; drop ends sessions still connected", async () => {
  const [a, b] = await Promise.all([createTestDatabase(), createTestDatabase()]);
  assert.notEqual(a.name, b.name);
  const client = new pg.Client({ connectionString: a.url });
  client.on("error", () => undefined);
  await client.connect();
  try {
    await Promise.all([a.drop(), b.drop()]);
    assert.equal(await exists(a.name), false);
    assert.equal(await exists(b.name), false);
  } finally {
    await client.end().catch(() => undefined);
  }
});

void test("an unreachable admin URL falls back to a private cluster that is stopped at process exit", async () => {
  // In a child process, so that its exit (and the clean-up hook) can be observed.
  const unreachable = `postgres://postgres@127.0.0.1:${await freePort()}/postgres`;
  const script = `
    import pg from "pg";
    import { createTestDatabase } from ${JSON.stringify(INDEX_URL)};
    const db = await createTestDatabase({ adminUrl: ${JSON.stringify(unreachable)}, prefix: "private" });
    const client = new pg.Client({ connectionString: db.url });
    await client.connect();
    const { rows } = await client.query("SELECT current_database() AS db, current_setting('data_directory') AS dir");
    await client.end();
    await db.drop();
    console.log(JSON.stringify({ url: db.url, ...rows[0] }));`;
  const { stdout } = await promisify(execFile)(process.execPath, ["--input-type=module", "-e", script], {
    cwd: new URL(".", import.meta.url),
    timeout: 60_000,
  });
  const result = JSON.parse(stdout) as { url: string; db: string; dir: string };
  const url = new URL(result.url);
  assert.notEqual(url.port, new URL(unreachable).port);
  assert.equal(url.hostname, "127.0.0.1");
  assert.match(result.db, /^private_/);
  assert.equal(existsSync(result.dir), false, "the private cluster's directory is removed at exit");
  await assert.rejects(query(`postgres://postgres@127.0.0.1:${url.port}/postgres`, "SELECT 1"), /ECONNREFUSED|connect/);
});

/**
 * Virtuoso open source (Debian `virtuoso-opensource`) on free loopback ports in a temp
 * directory, for tests that need a real SPARQL Graph Store Protocol endpoint with Digest
 * authentication (`/sparql-graph-crud-auth`, user dba / password dba of the fresh database).
 */
import { spawn, execFile, type ChildProcess } from "node:child_process";
import { existsSync } from "node:fs";
import { writeFile } from "node:fs/promises";
import { join } from "node:path";
import { setTimeout as sleep } from "node:timers/promises";
import { promisify } from "node:util";
import { IotvaultError } from "@iotvault/errors";
import { freePort, tempDir, type TempDir } from "@iotvault/testing";

export interface VirtuosoHandle {
  /** http://127.0.0.1:<port> */
  httpUrl: string;
  /** The Digest-authenticated GSP endpoint. */
  gspUrl: string;
  /** The anonymous GSP endpoint (PUT needs the SPARQL_UPDATE grant given at start). */
  anonymousGspUrl: string;
  queryUrl: string;
  credentials: { user: string; password: string };
  /** Runs SQL through isql-vt (e.g. `SPARQL CLEAR GRAPH <...>`). */
  sql(statement: string): Promise<string>;
  stop(): Promise<void>;
}

const BINARY_CANDIDATES = ["/usr/bin/virtuoso-t", "/usr/local/bin/virtuoso-t"];

/** Why Virtuoso cannot start here (to skip a test), or undefined when it can. */
export function virtuosoUnavailableReason(): string | undefined {
  if (!BINARY_CANDIDATES.some((p) => existsSync(p)))
    return "virtuoso-t is not installed (apt-get install virtuoso-opensource)";
  if (!existsSync("/usr/bin/isql-vt")) return "isql-vt is not installed (apt-get install virtuoso-opensource)";
  return undefined;
}

function ini(dir: string, sqlPort: number, httpPort: number): string {
  const db = (name: string) => join(dir, name);
  return `[Database]
DatabaseFile = ${db("virtuoso.db")}
ErrorLogFile = ${db("virtuoso.log")}
LockFile = ${db("virtuoso.lck")}
TransactionFile = ${db("virtuoso.trx")}
xa_persistent_file = ${db("virtuoso.pxa")}
ErrorLogLevel = 7
FileExtend = 200
MaxCheckpointRemap = 2000
Striping = 0
TempStorage = TempDatabase

[TempDatabase]
DatabaseFile = ${db("virtuoso-temp.db")}
TransactionFile = ${db("virtuoso-temp.trx")}
MaxCheckpointRemap = 2000
Striping = 0

[Parameters]
ServerPort = 127.0.0.1:${sqlPort}
LiteMode = 0
DisableUnixSocket = 1
DisableTcpSocket = 0
MaxClientConnections = 10
CheckpointInterval = 60
O_DIRECT = 0
CaseMode = 2
MaxStaticCursorRows = 5000
AllowOSCalls = 0
DirsAllowed = ., ${dir}
NumberOfBuffers = 10000
MaxDirtyBuffers = 6000
ThreadsPerQuery = 2

[HTTPServer]
ServerPort = 127.0.0.1:${httpPort}
ServerRoot = /var/lib/virtuoso-opensource-7/vsp
MaxClientConnections = 10
DavRoot = DAV
EnabledDavVSP = 0
HTTPProxyEnabled = 0
ServerThreads = 10
MaxKeepAlives = 10
KeepAliveTimeout = 10
Charset = UTF-8

[SPARQL]
ResultSetMaxRows = 1000000
MaxQueryCostEstimationTime = 400
MaxQueryExecutionTime = 120
DefaultGraph = http://localhost:${httpPort}/dataspace
`;
}

const run = promisify(execFile);

/**
 * Starts a fresh Virtuoso (about 2-5 s) and grants SPARQL_UPDATE to the anonymous SPARQL user.
 *
 * ```ts
 * const v = await startVirtuoso();
 * try { ... new GraphStoreClient({ endpoint: v.gspUrl, credentials: v.credentials }) ... } finally { await v.stop(); }
 * ```
 */
export async function startVirtuoso(options: { readyTimeoutMs?: number } = {}): Promise<VirtuosoHandle> {
  const reason = virtuosoUnavailableReason();
  if (reason) throw new IotvaultError("FAILED_PRECONDITION", reason);
  const binary = BINARY_CANDIDATES.find((p) => existsSync(p))!;
  const dir: TempDir = await tempDir("iotvault-virtuoso-");
  const sqlPort = await freePort();
  const httpPort = await freePort();
  await writeFile(join(dir.path, "virtuoso.ini"), ini(dir.path, sqlPort, httpPort));
  const child: ChildProcess = spawn(binary, ["+foreground", "+configfile", join(dir.path, "virtuoso.ini")], {
    cwd: dir.path,
    stdio: ["ignore", "pipe", "pipe"],
  });
  let output = "";
  child.stdout?.on("data", (b: Buffer) => (output = (output + b.toString()).slice(-4000)));
  child.stderr?.on("data", (b: Buffer) => (output = (output + b.toString()).slice(-4000)));
  const killAtExit = () => child.kill("SIGKILL");
  process.once("exit", killAtExit);
  const httpUrl = `http://127.0.0.1:${httpPort}`;
  const stop = async () => {
    process.removeListener("exit", killAtExit);
    if (child.exitCode === null && child.signalCode === null) {
      const exited = new Promise((resolve) => child.once("exit", resolve));
      child.kill("SIGTERM");
      const t = setTimeout(() => child.kill("SIGKILL"), 10_000);
      await exited;
      clearTimeout(t);
    }
    await dir.cleanup();
  };
  const sql = async (statement: string): Promise<string> => {
    const { stdout } = await run("/usr/bin/isql-vt", [`127.0.0.1:${sqlPort}`, "dba", "dba", `exec=${statement}`], {
      timeout: 60_000,
    });
    return stdout;
  };
  try {
    const deadline = Date.now() + (options.readyTimeoutMs ?? 60_000);
    for (;;) {
      if (child.exitCode !== null) throw new Error(`virtuoso-t exited (${child.exitCode}): ${output}`);
      const ok = await fetch(`${httpUrl}/sparql?query=${encodeURIComponent("ASK {}")}`)
        .then((r) => r.ok)
        .catch(() => false);
      if (ok) break;
      if (Date.now() > deadline) throw new Error(`virtuoso-t did not answer on ${httpUrl} in time: ${output}`);
      await sleep(200);
    }
    await sql('GRANT SPARQL_UPDATE TO "SPARQL";');
  } catch (err) {
    await stop();
    throw new IotvaultError("UNAVAILABLE", `Virtuoso did not start: ${(err as Error).message}`, { cause: err });
  }
  return {
    httpUrl,
    gspUrl: `${httpUrl}/sparql-graph-crud-auth`,
    anonymousGspUrl: `${httpUrl}/sparql-graph-crud`,
    queryUrl: `${httpUrl}/sparql`,
    credentials: { user: "dba", password: "dba" },
    sql,
    stop,
  };
}

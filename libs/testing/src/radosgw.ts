/**
 * A real S3 server for tests: a single-node Ceph (one monitor, one memstore OSD, cephx) with
 * radosgw's beast frontend on a free loopback port, everything under a temp dir. It takes
 * about 15 s to come up, so one cluster is shared per test process (the promise is cached);
 * tests create a unique bucket each.
 *
 * ```ts
 * const s3 = await startRadosgw();      // shared: the first call starts it, later calls reuse it
 * const store = new S3Store({ endpoint: s3.endpoint, tls: false, bucket, accessKey: s3.accessKey, secretKey: s3.secretKey });
 * after(() => s3.stop());               // once per test file; also stopped at process exit
 * ```
 */
import { spawn, type ChildProcess } from "node:child_process";
import { randomBytes, randomUUID } from "node:crypto";
import { once } from "node:events";
import { rmSync } from "node:fs";
import { mkdir, readFile, writeFile } from "node:fs/promises";
import { request } from "node:http";
import { join } from "node:path";
import { setTimeout as sleep } from "node:timers/promises";
import { IotvaultError } from "@iotvault/errors";
import { findProgram, run } from "./commands.js";
import { onProcessExit } from "./exit-hooks.js";
import { freePort } from "./ports.js";
import { tempDir, type TempDir } from "./temp.js";

/** The Debian packages that hold what startRadosgw runs. */
const PROGRAMS = {
  "ceph-mon": "ceph-mon",
  "ceph-osd": "ceph-osd",
  radosgw: "radosgw",
  ceph: "ceph-common",
  "ceph-authtool": "ceph-common",
  monmaptool: "ceph-base",
  "radosgw-admin": "radosgw",
} as const;
type Program = keyof typeof PROGRAMS;

export interface RadosgwHandle {
  /** "127.0.0.1:<port>" (plain HTTP, path-style). */
  readonly endpoint: string;
  readonly host: string;
  readonly port: number;
  /** Region to sign requests for. */
  readonly region: string;
  /** Keys of the test user (random per cluster). */
  readonly accessKey: string;
  readonly secretKey: string;
  /** The cluster's directory (configuration, keyring, logs). */
  readonly dir: string;
  /** Milliseconds the cluster took to start. */
  readonly startupMs: number;
  /**
   * Stops the cluster (every process of it) and removes its directory. The cluster is shared
   * by the whole test process: call this once, in a file-level `after()`; a later
   * startRadosgw() starts a new one.
   */
  stop(): Promise<void>;
}

export interface StartRadosgwOptions {
  /** How long to wait for the cluster (default 90 s), each attempt. */
  readyTimeoutMs?: number;
  /** radosgw's port in the first attempt (default: a free one); a second attempt takes a free one. */
  port?: number;
}

/** The missing programs startRadosgw needs, with their Debian packages; empty when all are there. */
export function missingRadosgwPrograms(): string[] {
  return (Object.keys(PROGRAMS) as Program[])
    .filter((name) => findProgram(name) === undefined)
    .map((name) => `${name} (Debian package ${PROGRAMS[name]})`);
}

let shared: Promise<RadosgwHandle> | undefined;
/** The cluster `shared` resolved to (set once its start succeeded). */
let sharedCluster: CephCluster | undefined;

/**
 * The test process's radosgw, started on first use (FAILED_PRECONDITION naming the missing
 * packages when Ceph is not installed: tests should check `missingRadosgwPrograms()` first and
 * skip with its message). Concurrent callers share one start.
 */
export function startRadosgw(options: StartRadosgwOptions = {}): Promise<RadosgwHandle> {
  shared ??= startOnce(options).then(
    (cluster) => (sharedCluster = cluster),
    (err: unknown) => {
      shared = undefined;
      throw err;
    },
  );
  return shared;
}

class CephCluster implements RadosgwHandle {
  readonly host = "127.0.0.1";
  readonly region = "us-east-1";
  readonly accessKey = `T${randomBytes(9).toString("hex").toUpperCase()}`;
  readonly secretKey = randomBytes(24).toString("base64url");
  readonly children: ChildProcess[] = [];
  startupMs = 0;
  private unregister: (() => void) | undefined;
  private stopped = false;

  constructor(
    private readonly temp: TempDir,
    readonly monPort: number,
    readonly port: number,
  ) {}

  get dir(): string {
    return this.temp.path;
  }

  get endpoint(): string {
    return `${this.host}:${this.port}`;
  }

  get conf(): string {
    return join(this.dir, "ceph.conf");
  }

  /** Starts a daemon in the foreground (-f), owned by this cluster. */
  daemon(program: string, args: string[]): ChildProcess {
    const child = spawn(program, ["-f", "-c", this.conf, ...args], { stdio: "ignore" });
    child.unref();
    child.on("error", () => undefined); // reported through the readiness checks
    this.children.push(child);
    this.unregister ??= onProcessExit(() => this.killAtExit());
    return child;
  }

  /** Runs a ceph command-line tool against this cluster. */
  ceph(program: string, args: string[], timeoutMs = 60_000): Promise<string> {
    return run(program, ["-c", this.conf, ...args], { timeoutMs });
  }

  async stop(): Promise<void> {
    if (this.stopped) return;
    this.stopped = true;
    // Not by awaiting `shared`: a start that fails stops its cluster from inside that promise.
    if (sharedCluster === this) {
      shared = undefined;
      sharedCluster = undefined;
    }
    await Promise.all(this.children.map((child) => terminate(child)));
    this.unregister?.();
    await this.temp.cleanup();
  }

  /** Log tails of the daemons, for error messages. */
  async logs(): Promise<string> {
    const names = ["mon.a.log", "osd.0.log", "client.rgw.a.log"];
    const tails = await Promise.all(
      names.map(async (name) => {
        const text = await readFile(join(this.dir, "log", name), "utf8").catch(() => "");
        return text ? `--- ${name} (last lines)\n${text.split("\n").slice(-15).join("\n")}` : "";
      }),
    );
    return tails.filter(Boolean).join("\n");
  }

  private killAtExit(): void {
    for (const child of this.children) if (child.exitCode === null && child.signalCode === null) child.kill("SIGKILL");
    rmSync(this.dir, { recursive: true, force: true });
  }
}

/**
 * Starts a cluster, and once more on new ports when a daemon exited or a command failed
 * (UNAVAILABLE): test processes run side by side, and a port found free can be taken by another
 * one before the daemon binds it. A deadline passed or a missing program is not tried again.
 */
async function startOnce(options: StartRadosgwOptions): Promise<CephCluster> {
  try {
    return await startCluster(options);
  } catch (err) {
    if (!(err instanceof IotvaultError) || err.code !== "UNAVAILABLE") throw err;
    const { port: _taken, ...fresh } = options;
    return startCluster(fresh);
  }
}

async function startCluster(options: StartRadosgwOptions): Promise<CephCluster> {
  const missing = missingRadosgwPrograms();
  if (missing.length > 0) {
    throw new IotvaultError("FAILED_PRECONDITION", `radosgw cannot start: missing ${missing.join(", ")}`, {
      hint: "install Ceph's S3 gateway: apt-get install --no-install-recommends ceph-mon ceph-osd radosgw",
    });
  }
  const began = Date.now();
  const cluster = new CephCluster(
    await tempDir("iotvault-ceph-"),
    await freePort(),
    options.port ?? (await freePort()),
  );
  const deadline = began + (options.readyTimeoutMs ?? 90_000);
  try {
    await bootstrap(cluster);
    await waitForHttp(cluster, deadline);
    await cluster.ceph(
      "radosgw-admin",
      [
        "user",
        "create",
        "--uid=test",
        "--display-name=test",
        `--access-key=${cluster.accessKey}`,
        `--secret-key=${cluster.secretKey}`,
      ],
      Math.max(1000, deadline - Date.now()),
    );
  } catch (err) {
    const logs = await cluster.logs();
    await cluster.stop();
    const e =
      err instanceof IotvaultError ? err : new IotvaultError("UNAVAILABLE", String((err as Error).message ?? err));
    throw new IotvaultError(e.code, `radosgw did not start: ${e.message}${logs ? `\n${logs}` : ""}`, {
      hint: e.hint ?? "read the daemon logs above",
      cause: err,
      details: { dir: cluster.dir },
    });
  }
  cluster.startupMs = Date.now() - began;
  return cluster;
}

/** The tested single-node recipe: monitor, memstore OSD in the CRUSH map, then radosgw. */
async function bootstrap(cluster: CephCluster): Promise<void> {
  const { dir } = cluster;
  await Promise.all(["run", "log", "mon", "osd"].map((d) => mkdir(join(dir, d))));
  const fsid = randomUUID();
  await writeFile(cluster.conf, cephConf(cluster, fsid));
  const keyring = join(dir, "keyring");
  const authtool = (args: string[]) => run("ceph-authtool", args);
  await authtool(["--create-keyring", keyring, "--gen-key", "-n", "mon.", "--cap", "mon", "allow *"]);
  await authtool([keyring, "--gen-key", "-n", "client.admin", ...caps("allow *", "allow *", "allow *", "allow *")]);
  await authtool([keyring, "--gen-key", "-n", "client.rgw.a", ...caps("allow rw", "allow rwx", "allow rw")]);
  const monmap = join(dir, "monmap");
  await run("monmaptool", ["--create", "--addv", "a", `[v2:127.0.0.1:${cluster.monPort}]`, "--fsid", fsid, monmap]);
  await cluster.ceph("ceph-mon", ["--mkfs", "-i", "a", "--monmap", monmap, "--keyring", keyring]);
  cluster.daemon("ceph-mon", ["-i", "a"]);

  const id = (await cluster.ceph("ceph", ["--connect-timeout", "30", "osd", "create"])).trim();
  if (!/^\d+$/.test(id)) throw new IotvaultError("UNAVAILABLE", `ceph osd create answered ${JSON.stringify(id)}`);
  await authtool([
    keyring,
    "--gen-key",
    "-n",
    `osd.${id}`,
    ...caps("allow profile osd", "allow *", "allow profile osd"),
  ]);
  await cluster.ceph("ceph", ["auth", "import", "-i", keyring]);
  await mkdir(join(dir, "osd", `ceph-${id}`), { recursive: true });
  await cluster.ceph("ceph-osd", ["-i", id, "--mkfs"]);
  await cluster.ceph("ceph", ["osd", "crush", "add-bucket", "localhost", "host"]);
  await cluster.ceph("ceph", ["osd", "crush", "move", "localhost", "root=default"]);
  await cluster.ceph("ceph", ["osd", "crush", "add", `osd.${id}`, "1.0", "host=localhost"]);
  cluster.daemon("ceph-osd", ["-i", id]);
  cluster.daemon("radosgw", ["-n", "client.rgw.a"]);
}

function caps(mon: string, osd: string, mgr: string, mds?: string): string[] {
  const list = ["--cap", "mon", mon, "--cap", "osd", osd, "--cap", "mgr", mgr];
  return mds ? [...list, "--cap", "mds", mds] : list;
}

function cephConf(cluster: CephCluster, fsid: string): string {
  const d = cluster.dir;
  return `[global]
fsid = ${fsid}
mon host = v2:127.0.0.1:${cluster.monPort}
mon initial members = a
public addr = 127.0.0.1
keyring = ${d}/keyring
osd pool default size = 1
osd pool default min size = 1
osd pool default pg num = 8
osd pool default pgp num = 8
mon allow pool size one = true
mon warn on pool no redundancy = false
mon max pg per osd = 1000
osd crush chooseleaf type = 0
run dir = ${d}/run
admin socket = ${d}/run/$name.asok
log file = ${d}/log/$name.log
pid file = ${d}/run/$name.pid
mon data = ${d}/mon/$cluster-$id
osd data = ${d}/osd/$cluster-$id
osd objectstore = memstore
memstore device bytes = 2147483648
ms bind ipv6 = false
[client.rgw.a]
rgw frontends = beast endpoint=127.0.0.1:${cluster.port}
`;
}

/** Waits until radosgw answers HTTP (any status) or a daemon died. */
async function waitForHttp(cluster: CephCluster, deadline: number): Promise<void> {
  while (Date.now() < deadline) {
    const dead = cluster.children.find((child) => child.exitCode !== null || child.signalCode !== null);
    if (dead) throw new IotvaultError("UNAVAILABLE", `${dead.spawnfile} exited (${dead.exitCode ?? dead.signalCode})`);
    if (await answers(cluster.host, cluster.port)) return;
    await sleep(250);
  }
  throw new IotvaultError("DEADLINE_EXCEEDED", `radosgw on ${cluster.endpoint} did not answer in time`, {
    hint: "the cluster may be slow on this machine: raise readyTimeoutMs, or read the logs below",
  });
}

function answers(host: string, port: number): Promise<boolean> {
  return new Promise((resolve) => {
    const req = request({ host, port, path: "/", method: "GET", timeout: 2000 }, (res) => {
      res.resume();
      resolve(true);
    });
    req.on("timeout", () => req.destroy());
    req.on("error", () => resolve(false));
    req.end();
  });
}

/** SIGKILL (the data is a throw-away memstore) and wait for the exit. */
async function terminate(child: ChildProcess): Promise<void> {
  if (child.exitCode !== null || child.signalCode !== null) return;
  child.ref(); // keep the event loop alive until the exit is seen
  const exited = once(child, "exit");
  child.kill("SIGKILL");
  await exited;
}

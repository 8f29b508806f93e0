/**
 * The backup/restore benchmark: iotvault through its real path (CLI `backup --wait` ->
 * scheduler -> executor -> storage-gateway -> local directory; CLI `restore` -> restore service)
 * side by side with restic on the same data in the same run, tools alternating, every step
 * repeated; best and spread reported. Also: peak RSS of every service (and the executor's again
 * on a corpus twice the size), and the gateway path against the same backup written straight
 * to a local directory in-process. Prints every figure and writes them as JSON to bench/out/.
 *
 * ```sh
 * npm run bench -- --size-mib 1024 --reps 3      # or: node bench/dist/backup.js --help
 * ```
 */
import { spawnSync } from "node:child_process";
import { cpus, loadavg, totalmem, release } from "node:os";
import { existsSync, mkdirSync, readFileSync, rmSync, statfsSync, writeFileSync } from "node:fs";
import { join, resolve } from "node:path";
import { pathToFileURL } from "node:url";
import { parseArgs } from "node:util";
import { connect, type NatsConnection } from "@nats-io/transport-node";
import { SUBJECTS, StorageGatewayServiceClient } from "@iotvault/proto";
import { Repository, type RepositoryOptions } from "@iotvault/repo";
import { GatewayObjectStore, callUnary, createClient } from "@iotvault/rpc";
import { makeGatewayTree, mutateGatewayTree, type GatewayTreeSummary } from "@iotvault/sample";
import { backupDirectory, restoreToDirectory } from "@iotvault/sources";
import { LocalDirectoryStore, type ObjectStore } from "@iotvault/storage";
import { fmtMiB, fmtPct, fmtS, summarize, syncDisks, type Summary } from "./measure.js";
import { Restic } from "./restic.js";
import { BenchStack, REPO_ROOT, SERVICES, processCpuMs } from "./stack.js";
import { assertSameTree, manifest, treeBytes, type Manifest } from "./tree.js";

const USAGE = `usage: node bench/dist/backup.js [options]
  --size-mib N     corpus size (default 1024)
  --reps N         repetitions of every step (default 3)
  --workdir DIR    where corpora, repositories and restores go (default bench/out/work;
                   keep it off a directory that other programs fill and empty all the time)
  --keep           keep the work directory (corpora are reused by the next run)
  --no-restic      iotvault only
  --no-double      skip the executor's peak RSS on a corpus twice the size
  --no-direct      skip the gateway-versus-direct comparison
  --seed N         corpus seed (default 1)
  --profile DIR    run the services with --cpu-prof, profiles written to DIR when they stop
  --malloc-tuning  start the services with MALLOC_MMAP_THRESHOLD_=1048576 (buffers of 1 MiB
                   and more outside malloc's arenas: lower RSS, ~7 % slower full backups;
                   docs/operations.md, docs/performance.md)
  --h2-window N    experiment: HTTP/2 flow-control windows of N bytes in every gRPC session
                   (services and this process; see bench/h2-window.ts)`;

interface Options {
  sizeMiB: number;
  reps: number;
  workdir: string;
  keep: boolean;
  restic: boolean;
  double: boolean;
  direct: boolean;
  seed: number;
  profileDir: string | undefined;
  mallocTuning: boolean;
  h2Window: number | undefined;
}

function options(): Options {
  const { values } = parseArgs({
    options: {
      "size-mib": { type: "string", default: "1024" },
      reps: { type: "string", default: "3" },
      workdir: { type: "string" },
      keep: { type: "boolean", default: false },
      "no-restic": { type: "boolean", default: false },
      "no-double": { type: "boolean", default: false },
      "no-direct": { type: "boolean", default: false },
      seed: { type: "string", default: "1" },
      profile: { type: "string" },
      "malloc-tuning": { type: "boolean", default: false },
      "h2-window": { type: "string" },
      help: { type: "boolean", short: "h", default: false },
    },
  });
  if (values.help) {
    console.log(USAGE);
    process.exit(0);
  }
  const num = (v: string, what: string) => {
    const n = Number(v);
    if (!Number.isInteger(n) || n < 1) throw new Error(`${what} must be a positive integer, got ${v}\n${USAGE}`);
    return n;
  };
  return {
    sizeMiB: num(values["size-mib"], "--size-mib"),
    reps: num(values.reps, "--reps"),
    workdir: resolve(values.workdir ?? join(REPO_ROOT, "bench", "out", "work")),
    keep: values.keep,
    restic: !values["no-restic"],
    double: !values["no-double"],
    direct: !values["no-direct"],
    seed: num(values.seed, "--seed"),
    profileDir: values.profile === undefined ? undefined : resolve(values.profile),
    mallocTuning: values["malloc-tuning"] === true,
    h2Window: values["h2-window"] === undefined ? undefined : num(values["h2-window"], "--h2-window"),
  };
}

/** The environment the services get by default (docs/performance.md, "Memory"). */
export const MALLOC_TUNING = { MALLOC_MMAP_THRESHOLD_: "1048576" } as const;

type ToolName = "iotvault" | "restic";
type StepName = "full" | "incremental" | "restore" | "restore-again";

interface StepResult {
  tool: ToolName;
  step: StepName;
  rep: number;
  /** Wall time of the command (the CLI for iotvault). */
  wallMs: number;
  /** iotvault backups: from the CLI's start to the backup.completed event (no CLI polling delay). */
  eventMs?: number | undefined;
  /** CPU of every process involved (the CLI or restic, plus the five services' deltas). */
  cpuMs?: number | undefined;
  cpuByProcess?: Record<string, number> | undefined;
  /** Peak RSS per process during the step. */
  peakRss?: Record<string, number> | undefined;
  repoBytes?: number | undefined;
}

/** Watches backup.completed events, to time a run without the CLI's polling interval. */
class CompletionWatch {
  private readonly arrivals = new Map<string, number>();

  private constructor(private readonly nc: NatsConnection) {}

  static async start(url: string): Promise<CompletionWatch> {
    const watch = new CompletionWatch(await connect({ servers: url }));
    watch.nc.subscribe(SUBJECTS.backupCompleted, {
      callback: (_err, msg) => {
        const at = performance.now();
        try {
          const runId = (JSON.parse(msg.string()) as { runId?: string }).runId;
          if (runId) watch.arrivals.set(runId, at);
        } catch {
          // not an event of ours
        }
      },
    });
    await watch.nc.flush();
    return watch;
  }

  arrival(runId: string): number | undefined {
    return this.arrivals.get(runId);
  }

  close(): Promise<void> {
    return this.nc.close();
  }
}

/** The corpus of a size and seed, made once and reused while the work directory is kept. */
async function ensureCorpus(
  workdir: string,
  sizeMiB: number,
  seed: number,
): Promise<{ dir: string; summary: GatewayTreeSummary }> {
  const dir = join(workdir, `corpus-${sizeMiB}mib-seed${seed}`);
  const marker = `${dir}.json`;
  if (existsSync(marker) && existsSync(dir)) {
    return { dir, summary: JSON.parse(readFileSync(marker, "utf8")) as GatewayTreeSummary };
  }
  rmSync(dir, { recursive: true, force: true });
  console.log(`making the ${sizeMiB} MiB corpus (seed ${seed}) in ${dir} ...`);
  const t = performance.now();
  const summary = await makeGatewayTree(dir, { sizeBytes: sizeMiB * 1024 * 1024, seed });
  writeFileSync(marker, JSON.stringify(summary));
  console.log(`  ${summary.files} files, ${fmtMiB(summary.bytes)} MiB in ${fmtS(performance.now() - t)} s`);
  return { dir, summary };
}

function copyTree(from: string, to: string): void {
  const r = spawnSync("cp", ["-a", from, to], { encoding: "utf8" });
  if (r.status !== 0) throw new Error(`cp -a ${from} ${to} failed: ${r.stderr}`);
}

/** iotvault through the CLI and the five services. */
class IotvaultTool {
  readonly name = "iotvault";
  private snapshotId = "";

  constructor(
    private readonly stack: BenchStack,
    private readonly watch: CompletionWatch,
    readonly job: string,
    readonly repoDir: string,
  ) {}

  async prepare(src: string): Promise<void> {
    await this.stack.cli(["repo", "init", this.job, "--url", pathToFileURL(this.repoDir).href]);
    await this.stack.cli(["job", "create", this.job, "--source", `fs:${src}`, "--repo", this.job]);
  }

  backup(type: "full" | "incremental"): Promise<Omit<StepResult, "tool" | "step" | "rep">> {
    return this.measured(async () => {
      const start = performance.now();
      const r = await this.stack.cli(["backup", this.job, "--type", type, "--wait"]);
      if (r.json.status !== "RUN_STATUS_SUCCEEDED") throw new Error(`iotvault ${type} backup failed: ${r.stdout}`);
      this.snapshotId = r.json.snapshotId as string;
      const arrival = this.watch.arrival(r.json.runId as string);
      return { ...r, eventMs: arrival === undefined ? undefined : arrival - start };
    });
  }

  restore(target: string): Promise<Omit<StepResult, "tool" | "step" | "rep">> {
    return this.measured(() => this.stack.cli(["restore", this.snapshotId, "--to", target, "--no-verify"]));
  }

  /** Runs a CLI step, adding the services' CPU and peak RSS during it. */
  private async measured(
    step: () => Promise<{
      wallMs: number;
      cpuMs?: number | undefined;
      maxRssBytes?: number | undefined;
      eventMs?: number | undefined;
    }>,
  ): Promise<Omit<StepResult, "tool" | "step" | "rep">> {
    this.stack.resetPeaks();
    const before = this.stack.cpu();
    const r = await step();
    const after = this.stack.cpu();
    const cpuByProcess: Record<string, number> = { cli: r.cpuMs ?? 0 };
    for (const s of SERVICES) cpuByProcess[s] = after[s] - before[s];
    const peakRss: Record<string, number> = { cli: r.maxRssBytes ?? 0, ...this.stack.peaks() };
    return {
      wallMs: r.wallMs,
      eventMs: r.eventMs,
      cpuMs: Object.values(cpuByProcess).reduce((a, b) => a + b, 0),
      cpuByProcess,
      peakRss,
    };
  }
}

class ResticTool {
  readonly name = "restic";

  constructor(
    private readonly restic: Restic,
    readonly repoDir: string,
  ) {}

  async prepare(): Promise<void> {
    await this.restic.init(this.repoDir);
  }

  async backup(src: string): Promise<Omit<StepResult, "tool" | "step" | "rep">> {
    const r = await this.restic.backup(this.repoDir, src);
    return { wallMs: r.wallMs, cpuMs: r.cpuMs, peakRss: { restic: r.maxRssBytes ?? 0 } };
  }

  async restore(target: string): Promise<Omit<StepResult, "tool" | "step" | "rep">> {
    const r = await this.restic.restore(this.repoDir, target);
    return { wallMs: r.wallMs, cpuMs: r.cpuMs, peakRss: { restic: r.maxRssBytes ?? 0 } };
  }
}

/** One repetition: full, mutate, incremental, restore; each step for both tools, in `order`. */
async function repetition(
  ctx: {
    stack: BenchStack;
    watch: CompletionWatch;
    restic: Restic | undefined;
    corpus: string;
    runDir: string;
    keep: boolean;
  },
  rep: number,
  order: ToolName[],
): Promise<StepResult[]> {
  const dir = join(ctx.runDir, `rep${rep}`);
  mkdirSync(dir, { recursive: true });
  const src = join(dir, "src");
  copyTree(ctx.corpus, src);
  const iot = new IotvaultTool(ctx.stack, ctx.watch, `bench-r${rep}`, join(dir, "iotvault-repo"));
  const restic = ctx.restic ? new ResticTool(ctx.restic, join(dir, "restic-repo")) : undefined;
  await iot.prepare(src);
  await restic?.prepare();
  const tools = order.filter((t) => t === "iotvault" || restic !== undefined);
  const results: StepResult[] = [];
  const step = async (tool: ToolName, name: StepName, fn: () => Promise<Omit<StepResult, "tool" | "step" | "rep">>) => {
    syncDisks();
    const r = { tool, step: name, rep, ...(await fn()) };
    results.push(r);
    console.log(
      `  rep ${rep} ${tool.padEnd(8)} ${name.padEnd(11)} ${fmtS(r.wallMs)} s${r.eventMs ? ` (event ${fmtS(r.eventMs)} s)` : ""}, cpu ${r.cpuMs === undefined ? "?" : fmtS(r.cpuMs)} s`,
    );
    return r;
  };
  const repoOf = (tool: ToolName) => (tool === "iotvault" ? iot.repoDir : restic!.repoDir);

  for (const tool of tools) {
    const r = await step(tool, "full", () => (tool === "iotvault" ? iot.backup("full") : restic!.backup(src)));
    r.repoBytes = treeBytes(repoOf(tool));
  }
  await mutateGatewayTree(src, { percent: 5, seed: 2 });
  const expected: Manifest = manifest(src);
  for (const tool of tools) {
    const r = await step(tool, "incremental", () =>
      tool === "iotvault" ? iot.backup("incremental") : restic!.backup(src),
    );
    r.repoBytes = treeBytes(repoOf(tool));
  }
  for (const tool of tools) {
    const target = join(dir, `restore-${tool}`);
    await step(tool, "restore", () => (tool === "iotvault" ? iot.restore(target) : restic!.restore(target)));
    const root = tool === "iotvault" ? target : Restic.restoredPath(target, src);
    assertSameTree(expected, root, `the ${tool} restore of rep ${rep}`);
  }
  // The same restore again, each tool's first target removed just before: what an operator who
  // restores (or drills) more than once sees, with memory the first restore made ready. The first
  // restore of a repository pays for memory new to the processes and to the target's file system.
  for (const tool of tools) {
    rmSync(join(dir, `restore-${tool}`), { recursive: true, force: true });
    const target = join(dir, `restore-${tool}-again`);
    await step(tool, "restore-again", () => (tool === "iotvault" ? iot.restore(target) : restic!.restore(target)));
    const root = tool === "iotvault" ? target : Restic.restoredPath(target, src);
    assertSameTree(expected, root, `the ${tool} second restore of rep ${rep}`);
    rmSync(target, { recursive: true, force: true });
  }
  // The copy, the repositories and the restores (~4.5x the corpus) go before the next repetition.
  if (!ctx.keep) rmSync(dir, { recursive: true, force: true });
  return results;
}

interface DirectResult {
  path: "direct" | "gateway";
  rep: number;
  /** The full backup (startBackup to commit). */
  wallMs: number;
  cpuMs: number;
  storedBytes: number;
  /** A restore of that snapshot into an empty directory (restoreToDirectory). */
  restoreWallMs: number;
  restoreCpuMs: number;
}

/** Times `fn` after a `sync`; CPU = this process, plus the gateway's when the path goes through it. */
async function inProcess<T>(stack: BenchStack, path: DirectResult["path"], fn: () => Promise<T>) {
  syncDisks();
  const gw0 = processCpuMs(stack.pid("storage-gateway")) ?? 0;
  const cpu0 = process.cpuUsage();
  const start = performance.now();
  const result = await fn();
  const wallMs = performance.now() - start;
  const cpu = process.cpuUsage(cpu0);
  const gwMs = path === "gateway" ? (processCpuMs(stack.pid("storage-gateway")) ?? 0) - gw0 : 0;
  return { result, wallMs, cpuMs: (cpu.user + cpu.system) / 1000 + gwMs };
}

async function backupInProcess(repo: Repository, corpus: string, runId: string) {
  const writer = await repo.startBackup({ runId });
  await backupDirectory(repo, writer, { root: corpus });
  return writer.commit({ jobId: "bench", jobName: "bench", source: `fs:${corpus}`, backupType: "full" });
}

/** The same in-process backup, once on a LocalDirectoryStore and once through the gateway. */
async function gatewayVersusDirect(
  stack: BenchStack,
  corpus: string,
  runDir: string,
  reps: number,
  keep: boolean,
): Promise<DirectResult[]> {
  const address = stack.address("storage-gateway");
  const client = createClient(StorageGatewayServiceClient, address);
  const password = readFileSync(stack.passwordFile);
  const options: RepositoryOptions = { scryptLogN: 12 }; // the executor's defaults otherwise
  const results: DirectResult[] = [];
  try {
    for (let rep = 1; rep <= reps; rep++) {
      const order: DirectResult["path"][] = rep % 2 ? ["direct", "gateway"] : ["gateway", "direct"];
      for (const path of order) {
        const dir = join(runDir, `${path}-r${rep}`);
        mkdirSync(dir, { recursive: true });
        let store: ObjectStore;
        if (path === "direct") store = new LocalDirectoryStore(dir);
        else {
          const name = `inproc-r${rep}`;
          await callUnary(client, "createRepository", { name, url: pathToFileURL(dir).href, replicas: [] });
          store = new GatewayObjectStore(client, name, { address });
        }
        const repo = await Repository.init(store, password, options);
        try {
          const backup = await inProcess(stack, path, () => backupInProcess(repo, corpus, `inproc-${path}-${rep}`));
          const restore = await inProcess(stack, path, () =>
            restoreToDirectory(repo, backup.result.snapshot, { target: join(runDir, `${path}-restore-r${rep}`) }),
          );
          results.push({
            path,
            rep,
            wallMs: backup.wallMs,
            cpuMs: backup.cpuMs,
            storedBytes: backup.result.stats.bytesStored,
            restoreWallMs: restore.wallMs,
            restoreCpuMs: restore.cpuMs,
          });
          console.log(
            `  rep ${rep} ${path.padEnd(8)} in-process full ${fmtS(backup.wallMs)} s (cpu ${fmtS(backup.cpuMs)} s), ` +
              `restore ${fmtS(restore.wallMs)} s (cpu ${fmtS(restore.cpuMs)} s)`,
          );
        } finally {
          await repo.close();
          if (!keep) {
            rmSync(dir, { recursive: true, force: true });
            rmSync(join(runDir, `${path}-restore-r${rep}`), { recursive: true, force: true });
          }
        }
      }
    }
  } finally {
    client.close();
  }
  return results;
}

/** The executor's peak RSS during a full backup of a corpus twice the size. */
async function doubledPeak(stack: BenchStack, watch: CompletionWatch, workdir: string, runDir: string, o: Options) {
  const { dir, summary } = await ensureCorpus(workdir, o.sizeMiB * 2, o.seed);
  const iot = new IotvaultTool(stack, watch, "bench-double", join(runDir, "double-repo"));
  await iot.prepare(dir);
  syncDisks();
  const r = await iot.backup("full");
  console.log(`  doubled corpus: full ${fmtS(r.wallMs)} s, executor peak ${fmtMiB(r.peakRss?.["executor"] ?? 0)} MiB`);
  return {
    corpusBytes: summary.bytes,
    wallMs: r.wallMs,
    executorPeakRss: r.peakRss?.["executor"] ?? 0,
    peakRss: r.peakRss,
  };
}

function machine(workdir: string) {
  const mounts = readFileSync("/proc/mounts", "utf8")
    .split("\n")
    .map((l) => l.split(" "));
  const fs = mounts.filter((m) => m[1] && workdir.startsWith(m[1])).sort((a, b) => b[1]!.length - a[1]!.length)[0];
  return {
    cpu: cpus()[0]?.model ?? "?",
    cores: cpus().length,
    memoryGiB: Math.round(totalmem() / 2 ** 30),
    kernel: release(),
    node: process.version,
    filesystem: fs ? `${fs[2]} on ${fs[1]} (${fs[3]})` : "?",
    loadavg: loadavg(),
  };
}

function best(
  results: StepResult[],
  tool: ToolName,
  step: StepName,
  field: "wallMs" | "eventMs" | "cpuMs" = "wallMs",
): Summary {
  return summarize(results.filter((r) => r.tool === tool && r.step === step).map((r) => r[field] ?? NaN));
}

function maxOf(results: StepResult[], tool: ToolName, key: string): number {
  return Math.max(0, ...results.filter((r) => r.tool === tool).map((r) => r.peakRss?.[key] ?? 0));
}

/** Fails early when the work directory's file system cannot hold the run (copies, restores, repositories). */
function checkDiskSpace(o: Options): void {
  const MiB = 1024 * 1024;
  // In corpus sizes: the corpus and its changed copy's headroom (2), each repetition's copy,
  // repositories and restores (4.5), each in-process pair (1.3 each), the doubled corpus and its
  // repository (3). Without --keep a repetition's directories go before the next one.
  const steps = o.keep
    ? 4.5 * o.reps + (o.direct ? 2.6 * o.reps : 0) + (o.double ? 3 : 0)
    : Math.max(4.5, o.direct ? 1.3 : 0) + (o.double ? 3 : 0);
  const needed = o.sizeMiB * MiB * (2 + steps);
  mkdirSync(o.workdir, { recursive: true });
  const fs = statfsSync(o.workdir);
  const free = fs.bavail * fs.bsize;
  if (free < needed) {
    throw new Error(
      `the bench needs about ${fmtMiB(needed)} MiB free under ${o.workdir}, there are ${fmtMiB(free)} MiB: ` +
        "free space, pass a smaller --size-mib / --reps, or another --workdir",
    );
  }
}

async function main(): Promise<void> {
  const o = options();
  checkDiskSpace(o);
  const runDir = join(o.workdir, `run-${new Date().toISOString().replace(/[:.]/g, "-")}`);
  mkdirSync(runDir, { recursive: true });
  const outDir = join(REPO_ROOT, "bench", "out");
  const startedAt = new Date();
  const machineBefore = machine(o.workdir);
  console.log(`iotvault backup bench: ${o.sizeMiB} MiB, ${o.reps} repetitions, work dir ${runDir}`);
  const corpus = await ensureCorpus(o.workdir, o.sizeMiB, o.seed);
  const nodeArgs = o.profileDir ? ["--cpu-prof", `--cpu-prof-dir=${o.profileDir}`] : [];
  const h2Env: NodeJS.ProcessEnv = {};
  if (o.h2Window) {
    h2Env["IOTVAULT_BENCH_H2_WINDOW"] = String(o.h2Window);
    process.env["IOTVAULT_BENCH_H2_WINDOW"] = String(o.h2Window);
    const preload = new URL("./h2-window.js", import.meta.url);
    nodeArgs.push("--import", preload.href);
    await import(preload.href);
  }
  // The gateway places repositories only under allowed roots: the run directory. A fixed glibc
  // mmap threshold returns large freed buffers to the system at once (docs/performance.md).
  const env: NodeJS.ProcessEnv = { IOTVAULT_STORAGE_ROOTS: runDir, ...(o.mallocTuning ? MALLOC_TUNING : {}), ...h2Env };
  const stack = await BenchStack.start(join(runDir, "stack"), env, nodeArgs);
  const restic = o.restic ? Restic.ensure(stack.passwordFile, join(runDir, "restic-cache")) : undefined;
  const watch = await CompletionWatch.start(stack.nats.url);
  const steps: StepResult[] = [];
  let direct: DirectResult[] = [];
  let doubled: Awaited<ReturnType<typeof doubledPeak>> | undefined;
  try {
    console.log(`services up; ${restic ? restic.version : "restic skipped"}; page cache warm (nothing dropped)`);
    for (let rep = 1; rep <= o.reps; rep++) {
      const order: ToolName[] = rep % 2 ? ["iotvault", "restic"] : ["restic", "iotvault"];
      steps.push(...(await repetition({ stack, watch, restic, corpus: corpus.dir, runDir, keep: o.keep }, rep, order)));
    }
    if (o.direct) direct = await gatewayVersusDirect(stack, corpus.dir, runDir, o.reps, o.keep);
    if (o.double) doubled = await doubledPeak(stack, watch, o.workdir, runDir, o);
  } finally {
    await watch.close();
    await stack.stop();
    if (!o.keep) rmSync(o.workdir, { recursive: true, force: true });
  }
  const report = summarizeRun({ o, corpus: corpus.summary, steps, direct, doubled, restic, startedAt, machineBefore });
  mkdirSync(outDir, { recursive: true });
  const file = join(outDir, `backup-${startedAt.toISOString().replace(/[:.]/g, "-")}.json`);
  writeFileSync(file, JSON.stringify(report, null, 2) + "\n");
  writeFileSync(join(outDir, "backup-latest.json"), JSON.stringify(report, null, 2) + "\n");
  printReport(report);
  console.log(`\nfigures written to ${file}`);
}

type Report = ReturnType<typeof summarizeRun>;

function summarizeRun(input: {
  o: Options;
  corpus: GatewayTreeSummary;
  steps: StepResult[];
  direct: DirectResult[];
  doubled: Awaited<ReturnType<typeof doubledPeak>> | undefined;
  restic: Restic | undefined;
  startedAt: Date;
  machineBefore: ReturnType<typeof machine>;
}) {
  const { o, corpus, steps, direct, doubled, restic } = input;
  const mbps = (ms: number) => corpus.bytes / 1e6 / (ms / 1000);
  const tools: ToolName[] = restic ? ["iotvault", "restic"] : ["iotvault"];
  const table = Object.fromEntries(
    tools.map((tool) => [
      tool,
      Object.fromEntries(
        (["full", "incremental", "restore", "restore-again"] as const).map((step) => {
          const wall = best(steps, tool, step);
          const event =
            tool === "iotvault" && (step === "full" || step === "incremental")
              ? best(steps, tool, step, "eventMs")
              : undefined;
          const cpu = best(steps, tool, step, "cpuMs");
          return [step, { wallMs: wall, eventMs: event, cpuMs: cpu, throughputMBps: mbps(wall.best) }];
        }),
      ),
    ]),
  );
  const repoBytes = (tool: ToolName, step: StepName) =>
    steps.find((r) => r.tool === tool && r.step === step && r.rep === 1)?.repoBytes ?? NaN;
  const ratio = (step: StepName, field: "wallMs" | "eventMs" = "wallMs") =>
    restic ? best(steps, "restic", step).best / best(steps, "iotvault", step, field).best : undefined;
  const directBest = summarize(direct.filter((d) => d.path === "direct").map((d) => d.wallMs));
  const gatewayBest = summarize(direct.filter((d) => d.path === "gateway").map((d) => d.wallMs));
  const inProcessSummary = (path: DirectResult["path"]) => ({
    backupMs: summarize(direct.filter((d) => d.path === path).map((d) => d.wallMs)),
    backupCpuMs: summarize(direct.filter((d) => d.path === path).map((d) => d.cpuMs)),
    restoreMs: summarize(direct.filter((d) => d.path === path).map((d) => d.restoreWallMs)),
    restoreCpuMs: summarize(direct.filter((d) => d.path === path).map((d) => d.restoreCpuMs)),
  });
  const peak = Object.fromEntries(["cli", ...SERVICES].map((s) => [s, maxOf(steps, "iotvault", s)]));
  const executorFullPeak = Math.max(
    0,
    ...steps.filter((r) => r.tool === "iotvault" && r.step === "full").map((r) => r.peakRss?.["executor"] ?? 0),
  );
  return {
    startedAt: input.startedAt.toISOString(),
    finishedAt: new Date().toISOString(),
    options: {
      sizeMiB: o.sizeMiB,
      reps: o.reps,
      seed: o.seed,
      serviceEnv: o.mallocTuning ? MALLOC_TUNING : {},
      h2Window: o.h2Window,
    },
    machine: { ...input.machineBefore, loadavgAfter: loadavg() },
    cache: "warm: nothing is dropped from the page cache; `sync` before every timed step",
    restic: restic?.version,
    corpus,
    steps,
    table,
    repositoryBytes: Object.fromEntries(
      tools.map((t) => [t, { full: repoBytes(t, "full"), incremental: repoBytes(t, "incremental") }]),
    ),
    ratios: {
      fullThroughput: ratio("full"),
      incrementalThroughput: ratio("incremental"),
      restoreThroughput: ratio("restore"),
      restoreAgainThroughput: ratio("restore-again"),
      fullThroughputToEvent: ratio("full", "eventMs"),
      incrementalThroughputToEvent: ratio("incremental", "eventMs"),
      repositorySizeFull: restic ? repoBytes("iotvault", "full") / repoBytes("restic", "full") : undefined,
      repositorySizeIncremental: restic
        ? repoBytes("iotvault", "incremental") / repoBytes("restic", "incremental")
        : undefined,
      gatewayOverDirectSpeed: direct.length ? directBest.best / gatewayBest.best : undefined,
    },
    peakRssBytes: { iotvault: peak, restic: restic ? maxOf(steps, "restic", "restic") : undefined },
    executorPeakRss: { corpus1x: executorFullPeak, corpus2x: doubled?.executorPeakRss, doubled },
    direct: {
      runs: direct,
      direct: direct.length ? directBest : undefined,
      gateway: direct.length ? gatewayBest : undefined,
      inProcess: direct.length
        ? { direct: inProcessSummary("direct"), gateway: inProcessSummary("gateway") }
        : undefined,
    },
  };
}

function printReport(r: Report): void {
  const line = (cols: string[]) => console.log(cols.map((c, i) => (i === 0 ? c.padEnd(24) : c.padStart(14))).join(""));
  console.log(
    `\n== results: ${fmtMiB(r.corpus.bytes)} MiB, ${r.corpus.files} files, best of ${r.options.reps} (spread = (worst - best) / best)`,
  );
  line(["", "best s", "spread", "MB/s", "cpu s (best)"]);
  for (const [tool, steps] of Object.entries(r.table)) {
    for (const [step, s] of Object.entries(steps)) {
      line([
        `${tool} ${step}`,
        fmtS(s.wallMs.best),
        fmtPct(s.wallMs.spread),
        s.throughputMBps.toFixed(0),
        fmtS(s.cpuMs.best),
      ]);
      if (s.eventMs) line([`  (to completed event)`, fmtS(s.eventMs.best), fmtPct(s.eventMs.spread), "", ""]);
    }
  }
  console.log("\nrepository size (MiB)      after full   after incremental");
  for (const [tool, b] of Object.entries(r.repositoryBytes)) {
    console.log(`  ${tool.padEnd(24)} ${fmtMiB(b.full).padStart(10)} ${fmtMiB(b.incremental).padStart(19)}`);
  }
  console.log("\npeak RSS (MiB) of the iotvault processes during the steps:");
  console.log(
    "  " +
      Object.entries(r.peakRssBytes.iotvault)
        .map(([k, v]) => `${k} ${fmtMiB(v)}`)
        .join(", "),
  );
  if (r.peakRssBytes.restic !== undefined) console.log(`  restic ${fmtMiB(r.peakRssBytes.restic)}`);
  console.log(
    `  executor, full backup: ${fmtMiB(r.executorPeakRss.corpus1x)} MiB at 1x corpus` +
      (r.executorPeakRss.corpus2x ? `, ${fmtMiB(r.executorPeakRss.corpus2x)} MiB at 2x` : ""),
  );
  if (r.direct.inProcess) {
    const d = r.direct.inProcess;
    console.log(
      `\nin-process (library, no services): full backup direct ${fmtS(d.direct.backupMs.best)} s / cpu ${fmtS(d.direct.backupCpuMs.best)} s, ` +
        `gateway ${fmtS(d.gateway.backupMs.best)} s / cpu ${fmtS(d.gateway.backupCpuMs.best)} s; ` +
        `restore direct ${fmtS(d.direct.restoreMs.best)} s / cpu ${fmtS(d.direct.restoreCpuMs.best)} s, ` +
        `gateway ${fmtS(d.gateway.restoreMs.best)} s / cpu ${fmtS(d.gateway.restoreCpuMs.best)} s`,
    );
  }
  if (r.direct.direct && r.direct.gateway) {
    console.log(
      `\nin-process full backup: direct ${fmtS(r.direct.direct.best)} s (spread ${fmtPct(r.direct.direct.spread)}), through the gateway ${fmtS(r.direct.gateway.best)} s (spread ${fmtPct(r.direct.gateway.spread)})`,
    );
  }
  const x = (v: number | undefined) => (v === undefined ? "-" : `${v.toFixed(2)}x`);
  console.log("\nratios");
  console.log(
    `  iotvault/restic throughput: full ${x(r.ratios.fullThroughput)}, incremental ${x(r.ratios.incrementalThroughput)}, restore ${x(r.ratios.restoreThroughput)}`,
  );
  console.log(`    (the same restore again: ${x(r.ratios.restoreAgainThroughput)})`);
  console.log(
    `    (to the completed event: full ${x(r.ratios.fullThroughputToEvent)}, incremental ${x(r.ratios.incrementalThroughputToEvent)})`,
  );
  console.log(
    `  repository size iotvault/restic: full ${x(r.ratios.repositorySizeFull)}, after incremental ${x(r.ratios.repositorySizeIncremental)}`,
  );
  console.log(
    `  gateway path / direct speed: ${r.ratios.gatewayOverDirectSpeed === undefined ? "-" : fmtPct(r.ratios.gatewayOverDirectSpeed)}`,
  );
}

main().catch((err: unknown) => {
  console.error(err instanceof Error ? (err.stack ?? err.message) : err);
  process.exit(1);
});

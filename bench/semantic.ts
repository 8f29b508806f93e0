/**
 * The semantic benchmark: a generated SOSA/SSN model of about one million triples in several
 * named graphs (one TriG file per graph, blank-node results included), backed up in-process
 * into a local repository through the rdf: source (parse + RDFC-1.0 canonical hash + store),
 * then loaded into an oxigraph Graph Store Protocol server (a child process) and backed up
 * through the sparql+http: source; then the time of a one-graph restore against a whole
 * restore (into a second store, and into a directory), and every phase's peak RSS (each phase
 * runs in its own process, so that one's memory does not hide another's).
 *
 * ```sh
 * npx tsc -b bench && node bench/dist/semantic.js                 # ~1M triples, 8 graphs
 * node bench/dist/semantic.js --triples 200000 --graphs 4 --keep
 * ```
 */
import { spawn } from "node:child_process";
import { mkdirSync, rmSync, writeFileSync, existsSync, readdirSync } from "node:fs";
import { join, resolve } from "node:path";
import { fileURLToPath } from "node:url";
import { parseArgs } from "node:util";
import { Repository } from "@iotvault/repo";
import { catalogSummaryOf, sourceAdapterFor, type SourceWarning } from "@iotvault/sources";
import { startGraphStore, sosaTurtle } from "@iotvault/semantic/testing";
import { LocalDirectoryStore } from "@iotvault/storage";

const HERE = fileURLToPath(import.meta.url);
const BENCH_ROOT = resolve(HERE, "../..");
const PASSWORD = Buffer.from("semantic benchmark passphrase", "utf8");
const GRAPH = (i: number) => `http://example.org/bench/graph/${i}`;

const USAGE = `usage: node bench/dist/semantic.js [--triples N] [--graphs N] [--heap-mib N] [--workdir DIR] [--keep]
  --triples N   about this many triples in all (default 1000000)
  --graphs N    named graphs (default 8)
  --heap-mib N  run every phase with node --max-old-space-size=N (shows the memory a phase needs,
                as opposed to what V8 lets the heap grow to)
  --workdir DIR work directory (default bench/out/semantic-work)
  --keep        keep the work directory`;

interface PhaseResult {
  phase: string;
  wallMs: number;
  maxRssMiB: number;
  triples?: number;
  graphs?: number;
  files?: number;
  bytesStored?: number;
}

// ------------------------------------------------------------------------------------------ model

/** Observations per graph so that `graphs` graphs hold about `triples` triples (9 per observation). */
function observationsPerGraph(triples: number, graphs: number): number {
  return Math.max(1, Math.round((triples / graphs - 32) / 9 / 4));
}

function writeModel(dir: string, triples: number, graphs: number): number {
  mkdirSync(dir, { recursive: true });
  const perSensor = observationsPerGraph(triples, graphs);
  let total = 0;
  for (let g = 0; g < graphs; g++) {
    const ttl = sosaTurtle({
      sensors: 4,
      observationsPerSensor: perSensor,
      seed: g + 1,
      base: `http://example.org/bench/${g}/`,
    });
    const lines = ttl.split("\n");
    const prefixes = lines.filter((l) => l.startsWith("@prefix"));
    const body = lines.filter((l) => !l.startsWith("@prefix"));
    writeFileSync(
      join(dir, `graph-${String(g).padStart(2, "0")}.trig`),
      `${prefixes.join("\n")}\n<${GRAPH(g)}> {\n${body.join("\n")}\n}\n`,
    );
    total += 7 + 5 * 4 + 9 * 4 * perSensor;
  }
  return total;
}

// ------------------------------------------------------------------------------------------ phases (child processes)

async function openRepo(dir: string): Promise<Repository> {
  mkdirSync(dir, { recursive: true });
  const store = new LocalDirectoryStore(dir);
  return (await Repository.exists(store))
    ? Repository.open(store, PASSWORD, { workers: 0 })
    : Repository.init(store, PASSWORD, { scryptLogN: 12, workers: 0 });
}

async function backupPhase(
  repoDir: string,
  source: string,
  runId: string,
  env: Record<string, string>,
): Promise<PhaseResult> {
  Object.assign(process.env, env);
  const repo = await openRepo(repoDir);
  try {
    const started = performance.now();
    const parent = (await repo.listSnapshots()).find((s) => s.source === source);
    const writer = await repo.startBackup({ runId, parent });
    const warnings: SourceWarning[] = [];
    const result = await sourceAdapterFor(source).backup({
      repo,
      writer,
      job: { id: "bench", name: "bench", source, include: [], exclude: [], labels: {} },
      backupType: parent ? "incremental" : "full",
      parent,
      services: {},
      signal: new AbortController().signal,
      onProgress: () => undefined,
      onWarning: (w) => warnings.push(w),
    });
    const { snapshot, stats } = await writer.commit({
      jobId: "bench",
      jobName: "bench",
      source,
      backupType: parent ? "incremental" : "full",
      metadata: result.metadata,
    });
    if (warnings.length) throw new Error(`warnings: ${JSON.stringify(warnings.slice(0, 3))}`);
    const summary = catalogSummaryOf(snapshot)!;
    return {
      phase: runId,
      wallMs: performance.now() - started,
      maxRssMiB: process.resourceUsage().maxRSS / 1024,
      triples: summary.triples,
      graphs: summary.graphs,
      files: result.files,
      bytesStored: stats.bytesStored,
    };
  } finally {
    await repo.close();
  }
}

async function restorePhase(
  repoDir: string,
  source: string,
  target: string,
  include: string[],
  name: string,
): Promise<PhaseResult> {
  const repo = await openRepo(repoDir);
  try {
    const snapshot = (await repo.listSnapshots()).find((s) => s.source === source)!;
    const started = performance.now();
    const r = await sourceAdapterFor(source).restore({
      repo,
      snapshot,
      target,
      include,
      overwrite: true,
      verify: true,
      allowExternalSymlinks: false,
      options: {},
      services: {},
      signal: new AbortController().signal,
      onProgress: () => undefined,
    });
    return {
      phase: name,
      wallMs: performance.now() - started,
      maxRssMiB: process.resourceUsage().maxRSS / 1024,
      files: r.files,
    };
  } finally {
    await repo.close();
  }
}

/** A child: serves two oxigraph stores (source loaded from the model, target empty); prints their URLs. */
async function serveStores(modelDir: string): Promise<void> {
  const source = await startGraphStore();
  const target = await startGraphStore();
  const { readFileSync } = await import("node:fs");
  for (const f of readdirSync(modelDir).sort()) {
    source.store.load(readFileSync(join(modelDir, f), "utf8"), { format: "application/trig" });
  }
  process.stdout.write(JSON.stringify({ source: source.gspUrl, target: target.gspUrl }) + "\n");
  await new Promise<void>((done) => process.once("SIGTERM", () => done()));
  await Promise.all([source.close(), target.close()]);
}

let nodeFlags: string[] = [];

function child(args: string[]): Promise<PhaseResult> {
  return new Promise((resolvePromise, reject) => {
    const p = spawn(process.execPath, [...nodeFlags, HERE, ...args], { stdio: ["ignore", "pipe", "inherit"] });
    let out = "";
    p.stdout.on("data", (d: Buffer) => (out += d.toString()));
    p.on("error", reject);
    p.on("close", (code) => {
      if (code !== 0) return reject(new Error(`phase ${args[1]} exited ${code}`));
      resolvePromise(JSON.parse(out.trim().split("\n").pop()!) as PhaseResult);
    });
  });
}

function startStores(
  modelDir: string,
): Promise<{ urls: { source: string; target: string }; stop: () => Promise<void> }> {
  return new Promise((resolvePromise, reject) => {
    const p = spawn(process.execPath, [HERE, "--phase", "serve", "--model", modelDir], {
      stdio: ["ignore", "pipe", "inherit"],
    });
    let out = "";
    p.on("error", reject);
    p.stdout.on("data", (d: Buffer) => {
      out += d.toString();
      if (!out.includes("\n")) return;
      const urls = JSON.parse(out.split("\n")[0]!) as { source: string; target: string };
      resolvePromise({
        urls,
        stop: () =>
          new Promise<void>((done) => {
            p.once("close", () => done());
            p.kill("SIGTERM");
          }),
      });
    });
  });
}

// ------------------------------------------------------------------------------------------ main

const fmt = (ms: number) => `${(ms / 1000).toFixed(2)} s`;

async function main(): Promise<void> {
  const { values } = parseArgs({
    options: {
      triples: { type: "string" },
      graphs: { type: "string" },
      workdir: { type: "string" },
      keep: { type: "boolean" },
      phase: { type: "string" },
      repo: { type: "string" },
      source: { type: "string" },
      target: { type: "string" },
      include: { type: "string" },
      model: { type: "string" },
      "heap-mib": { type: "string" },
      help: { type: "boolean", short: "h" },
    },
  });
  if (values.help) return void process.stdout.write(USAGE + "\n");
  const phase = values.phase;
  if (phase === "serve") return serveStores(values.model!);
  if (phase?.startsWith("backup")) {
    return void process.stdout.write(JSON.stringify(await backupPhase(values.repo!, values.source!, phase, {})) + "\n");
  }
  if (phase?.startsWith("restore")) {
    const include = values.include ? [values.include] : [];
    return void process.stdout.write(
      JSON.stringify(await restorePhase(values.repo!, values.source!, values.target!, include, phase)) + "\n",
    );
  }

  if (values["heap-mib"]) nodeFlags = [`--max-old-space-size=${Number(values["heap-mib"])}`];
  const triples = Number(values.triples ?? 1_000_000);
  const graphs = Number(values.graphs ?? 8);
  const work = resolve(values.workdir ?? join(BENCH_ROOT, "out", "semantic-work"));
  rmSync(work, { recursive: true, force: true });
  mkdirSync(work, { recursive: true });
  const model = join(work, "model");
  const t0 = performance.now();
  const generated = writeModel(model, triples, graphs);
  const results: PhaseResult[] = [
    {
      phase: "generate",
      wallMs: performance.now() - t0,
      maxRssMiB: process.resourceUsage().maxRSS / 1024,
      triples: generated,
      graphs,
    },
  ];
  try {
    const rdfRepo = join(work, "repo-rdf");
    const rdfSource = `rdf:${model}`;
    results.push(await child(["--phase", "backup-rdf", "--repo", rdfRepo, "--source", rdfSource]));
    results.push(await child(["--phase", "backup-rdf-unchanged", "--repo", rdfRepo, "--source", rdfSource]));
    results.push(
      await child([
        "--phase",
        "restore-rdf-one-file",
        "--repo",
        rdfRepo,
        "--source",
        rdfSource,
        "--target",
        join(work, "restore-one"),
        "--include",
        "graph-00.trig",
      ]),
    );
    results.push(
      await child([
        "--phase",
        "restore-rdf-whole",
        "--repo",
        rdfRepo,
        "--source",
        rdfSource,
        "--target",
        join(work, "restore-all"),
      ]),
    );
    const stores = await startStores(model);
    try {
      const sparqlRepo = join(work, "repo-sparql");
      const source = `sparql+${stores.urls.source}`;
      const target = `sparql+${stores.urls.target}`;
      results.push(await child(["--phase", "backup-sparql", "--repo", sparqlRepo, "--source", source]));
      results.push(await child(["--phase", "backup-sparql-unchanged", "--repo", sparqlRepo, "--source", source]));
      results.push(
        await child([
          "--phase",
          "restore-sparql-one-graph",
          "--repo",
          sparqlRepo,
          "--source",
          source,
          "--target",
          target,
          "--include",
          GRAPH(0),
        ]),
      );
      results.push(
        await child(["--phase", "restore-sparql-whole", "--repo", sparqlRepo, "--source", source, "--target", target]),
      );
    } finally {
      await stores.stop();
    }
  } finally {
    if (!values.keep) rmSync(work, { recursive: true, force: true });
  }
  report(results, triples, graphs, nodeFlags);
}

function report(results: PhaseResult[], triples: number, graphs: number, flags: string[]): void {
  const lines = [`semantic benchmark: ~${triples} triples in ${graphs} named graphs ${flags.join(" ")}`.trimEnd(), ""];
  lines.push("phase                          wall      triples/s   peak RSS   stored");
  for (const r of results) {
    const rate =
      r.triples && r.phase.startsWith("backup")
        ? `${Math.round(r.triples / (r.wallMs / 1000))}`.padStart(9)
        : "         ";
    const stored = r.bytesStored !== undefined ? `${(r.bytesStored / 1048576).toFixed(1)} MiB` : "";
    lines.push(
      `${r.phase.padEnd(30)} ${fmt(r.wallMs).padStart(8)}  ${rate}   ${r.maxRssMiB.toFixed(0).padStart(5)} MiB   ${stored}`,
    );
  }
  const get = (p: string) => results.find((r) => r.phase === p)?.wallMs ?? NaN;
  lines.push(
    "",
    `one-graph vs whole restore: sparql ${fmt(get("restore-sparql-one-graph"))} vs ${fmt(get("restore-sparql-whole"))}; files ${fmt(get("restore-rdf-one-file"))} vs ${fmt(get("restore-rdf-whole"))}`,
  );
  process.stdout.write(lines.join("\n") + "\n");
  const outDir = join(BENCH_ROOT, "out");
  if (existsSync(outDir)) {
    const file = join(outDir, `semantic-${new Date().toISOString().replace(/[:.]/g, "-")}.json`);
    writeFileSync(file, JSON.stringify({ triples, graphs, flags, results }, null, 2));
    writeFileSync(join(outDir, "semantic-latest.json"), JSON.stringify({ triples, graphs, flags, results }, null, 2));
  }
}

main().catch((err: unknown) => {
  process.stderr.write(`${(err as Error).stack ?? String(err)}\n`);
  process.exit(1);
});

/**
 * Timing helpers of the benchmark: child processes timed by wall clock, with their CPU time and
 * peak RSS from GNU time when it is installed; `sync` between steps; best / median / spread.
 */
import { spawn, spawnSync } from "node:child_process";
import { existsSync, readFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";

export interface Timed {
  code: number;
  stdout: string;
  stderr: string;
  wallMs: number;
  /** User + system CPU of the process and its children (GNU time); undefined without it. */
  cpuMs?: number | undefined;
  maxRssBytes?: number | undefined;
}

const GNU_TIME = "/usr/bin/time";
const hasGnuTime = existsSync(GNU_TIME);

/** Runs a command to its end; never throws for a non-zero exit (see `code`). */
export function run(cmd: string, args: string[], options: { env?: NodeJS.ProcessEnv; cwd?: string } = {}) {
  const timeFile = join(tmpdir(), `iotvault-bench-time-${process.pid}-${Math.random().toString(36).slice(2)}`);
  const [file, argv] = hasGnuTime ? [GNU_TIME, ["-f", "%e %U %S %M", "-o", timeFile, cmd, ...args]] : [cmd, args];
  return new Promise<Timed>((resolve, reject) => {
    const start = performance.now();
    const child = spawn(file, argv, {
      env: options.env ?? process.env,
      cwd: options.cwd,
      stdio: ["ignore", "pipe", "pipe"],
    });
    let stdout = "";
    let stderr = "";
    child.stdout.on("data", (d: Buffer) => (stdout += d.toString()));
    child.stderr.on("data", (d: Buffer) => (stderr += d.toString()));
    child.on("error", reject);
    child.on("close", (code) => {
      const wallMs = performance.now() - start;
      let cpuMs: number | undefined;
      let maxRssBytes: number | undefined;
      if (hasGnuTime && existsSync(timeFile)) {
        const parts = readFileSync(timeFile, "utf8").trim().split("\n").pop()!.split(" ").map(Number);
        rmSync(timeFile, { force: true });
        if (parts.length === 4 && parts.every(Number.isFinite)) {
          cpuMs = (parts[1]! + parts[2]!) * 1000;
          maxRssBytes = parts[3]! * 1024;
        }
      }
      resolve({ code: code ?? -1, stdout, stderr, wallMs, cpuMs, maxRssBytes });
    });
  });
}

/** Flushes dirty pages so that one step's writeback does not land in the next step's time. */
export function syncDisks(): void {
  spawnSync("sync");
}

export interface Summary {
  best: number;
  median: number;
  worst: number;
  /** (worst - best) / best. */
  spread: number;
  samples: number[];
}

export function summarize(samples: readonly number[]): Summary {
  const sorted = [...samples].sort((a, b) => a - b);
  const best = sorted[0] ?? NaN;
  const worst = sorted.at(-1) ?? NaN;
  const median =
    sorted.length % 2
      ? sorted[(sorted.length - 1) / 2]!
      : (sorted[sorted.length / 2 - 1]! + sorted[sorted.length / 2]!) / 2;
  return { best, median, worst, spread: (worst - best) / best, samples: [...samples] };
}

export const MiB = 1024 * 1024;
export const fmtS = (ms: number): string => (ms / 1000).toFixed(2);
export const fmtMiB = (bytes: number): string => (bytes / MiB).toFixed(1);
export const fmtPct = (x: number): string => `${(x * 100).toFixed(0)} %`;

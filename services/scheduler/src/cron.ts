/**
 * The cron loop: for each job with a schedule, the next fire time is computed with croner in
 * the job's time zone; when it passes, the run is published with that exact time as its
 * scheduled time (so replicas agree on the run id and the duplicate is dropped). Runs missed
 * while no scheduler was up are not made up for: after a restart the next fire time is the
 * first one after now, and after a stall of this process only the latest due run fires
 * (catch-up policy "skip"; see the service README).
 */
import { Cron } from "croner";
import type { Job } from "@iotvault/proto";

export interface CronLoopOptions {
  /** Called for each due run; errors are reported to onError and the run is retried next tick. */
  fire(job: Job, scheduledAt: Date): Promise<void>;
  onError(job: Job, err: unknown): void;
  /** Runs skipped by the catch-up policy (the latest due one fires). */
  onSkipped?: (job: Job, skipped: number, fired: Date) => void;
  tickMs?: number;
  now?: () => Date;
}

interface Entry {
  job: Job;
  cron: Cron;
  next: Date | null;
}

export class CronLoop {
  private readonly entries = new Map<string, Entry>();
  private timer: NodeJS.Timeout | undefined;
  private ticking = false;
  private readonly now: () => Date;

  constructor(private readonly options: CronLoopOptions) {
    this.now = options.now ?? (() => new Date());
  }

  /** Adds, replaces (job changed) or removes (job undefined) a job. */
  set(id: string, job: Job | undefined): void {
    const old = this.entries.get(id);
    if (!job || !job.schedule || job.paused) {
      this.entries.delete(id);
      return;
    }
    if (old && old.job.schedule === job.schedule && old.job.timeZone === job.timeZone) {
      old.job = job;
      return;
    }
    const cron = new Cron(job.schedule, { timezone: job.timeZone || "UTC", paused: true });
    this.entries.set(id, { job, cron, next: cron.nextRun(this.now()) });
  }

  nextRuns(): { jobId: string; next: Date | null }[] {
    return [...this.entries].map(([jobId, e]) => ({ jobId, next: e.next }));
  }

  start(): void {
    this.timer = setInterval(() => void this.tick(), this.options.tickMs ?? 1000);
    this.timer.unref();
  }

  stop(): void {
    if (this.timer) clearInterval(this.timer);
    this.timer = undefined;
  }

  /** Fires every due run once; exported for tests. */
  async tick(): Promise<void> {
    if (this.ticking) return;
    this.ticking = true;
    try {
      const now = this.now();
      for (const entry of this.entries.values()) {
        if (!entry.next || entry.next.getTime() > now.getTime()) continue;
        // Catch-up policy "skip": after a stall (a suspended process, a long GC), only the latest
        // due time fires; the ones before it are skipped (and logged).
        let due = entry.next;
        let skipped = 0;
        for (let n = entry.cron.nextRun(due); n && n.getTime() <= now.getTime(); n = entry.cron.nextRun(n)) {
          due = n;
          skipped++;
        }
        if (skipped > 0) this.options.onSkipped?.(entry.job, skipped, due);
        try {
          await this.options.fire(entry.job, due);
        } catch (err) {
          this.options.onError(entry.job, err);
          entry.next = due; // retry this scheduled time on the next tick
          continue;
        }
        entry.next = entry.cron.nextRun(due);
      }
    } finally {
      this.ticking = false;
    }
  }
}

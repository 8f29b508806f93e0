/**
 * Retention: which snapshots a policy keeps (restic's `forget` semantics), and `forget`, which
 * deletes the manifests of the others. Data is not touched: `prune` frees it afterwards.
 *
 * Snapshots are grouped by job id; within a group the unit is a run: the member snapshots of one
 * consistency-group run (same group id) are kept or removed together, so `keepLast 3` keeps the
 * three newest runs, whole. Within a group, newest first:
 * - `keepLast n` keeps the n newest;
 * - `keepHourly/Daily/Weekly/Monthly/Yearly n` keeps the newest snapshot of each of the n newest
 *   hours / days / ISO weeks / months / years that have one (in `timeZone`, default UTC);
 * - `keepWithinDays d` keeps every snapshot taken less than d days before `now`;
 * - a held snapshot (`holds/<id>`) is always kept, and with it the other members of its run.
 * A snapshot is removed only when no rule keeps it. A policy without any rule is refused.
 *
 * ```ts
 * const { decisions, removed } = await repo.forget({ policy: { keepDaily: 7, keepWeekly: 4 }, jobId });
 * ```
 */
import { IotvaultError } from "@iotvault/errors";
import { storeError, throwIfAborted, type RepoCore } from "./core.js";
import { snapshotKey } from "./format.js";
import { readHold, readHolds, type Hold } from "./holds.js";
import type { RepoLocks } from "./locks.js";
import { snapshotGroupId, type SnapshotManifest } from "./snapshot.js";

export interface RetentionPolicy {
  keepLast?: number | undefined;
  keepHourly?: number | undefined;
  keepDaily?: number | undefined;
  keepWeekly?: number | undefined;
  keepMonthly?: number | undefined;
  keepYearly?: number | undefined;
  /** Keep every snapshot younger than this many days (the job's retention_days). */
  keepWithinDays?: number | undefined;
  /** Time zone for hour/day/week/month/year buckets (IANA; default UTC). */
  timeZone?: string | undefined;
}

export interface ForgetOptions {
  policy: RetentionPolicy;
  /** Only this job's snapshots (default: every job, each a group of its own). */
  jobId?: string | undefined;
  /** Decide and report, delete nothing. */
  dryRun?: boolean | undefined;
  /** The time `keepWithinDays` counts from (default: now). */
  now?: Date | undefined;
  /** Wait this long for a prune's exclusive lock to go away (default 0). */
  lockWaitMs?: number | undefined;
  signal?: AbortSignal | undefined;
}

export interface ForgetDecision {
  snapshot: SnapshotManifest;
  keep: boolean;
  /** Why it is kept, e.g. ["last 3", "daily 2026-11-24", "hold: legal", "within 30 days"]; empty when removed. */
  reasons: string[];
}

export interface ForgetResult {
  decisions: ForgetDecision[];
  /** Ids of the snapshots deleted (empty on a dry run). */
  removed: string[];
}

type BucketRule = "hourly" | "daily" | "weekly" | "monthly" | "yearly";
const BUCKET_RULES: readonly { rule: BucketRule; option: keyof RetentionPolicy }[] = [
  { rule: "hourly", option: "keepHourly" },
  { rule: "daily", option: "keepDaily" },
  { rule: "weekly", option: "keepWeekly" },
  { rule: "monthly", option: "keepMonthly" },
  { rule: "yearly", option: "keepYearly" },
];

const DAY_MS = 86_400_000;

interface CheckedPolicy {
  keepLast: number;
  buckets: { rule: BucketRule; count: number }[];
  withinDays: number | undefined;
  calendar: Calendar;
}

/** Validates a policy; INVALID_ARGUMENT for bad numbers, an unknown time zone, or no rule at all. */
export function checkPolicy(policy: RetentionPolicy): CheckedPolicy {
  const count = (name: keyof RetentionPolicy): number => {
    const v = policy[name];
    if (v === undefined) return 0;
    if (typeof v !== "number" || !Number.isSafeInteger(v) || v < 0) {
      throw new IotvaultError("INVALID_ARGUMENT", `${name} must be a whole number >= 0, got ${String(v)}`);
    }
    return v;
  };
  const within = policy.keepWithinDays;
  if (within !== undefined && (typeof within !== "number" || !Number.isFinite(within) || within < 0)) {
    throw new IotvaultError("INVALID_ARGUMENT", `keepWithinDays must be a number >= 0, got ${String(within)}`);
  }
  const checked: CheckedPolicy = {
    keepLast: count("keepLast"),
    buckets: BUCKET_RULES.map(({ rule, option }) => ({ rule, count: count(option) })).filter((b) => b.count > 0),
    withinDays: within !== undefined && within > 0 ? within : undefined,
    calendar: new Calendar(policy.timeZone ?? "UTC"),
  };
  if (checked.keepLast === 0 && checked.buckets.length === 0 && checked.withinDays === undefined) {
    throw new IotvaultError("INVALID_ARGUMENT", "refusing to forget every snapshot: the retention policy has no rule", {
      hint: "give at least one of keepLast, keepHourly, keepDaily, keepWeekly, keepMonthly, keepYearly, keepWithinDays",
    });
  }
  return checked;
}

/** Calendar buckets of an instant in one time zone. */
class Calendar {
  private readonly format: Intl.DateTimeFormat;

  constructor(readonly timeZone: string) {
    try {
      this.format = new Intl.DateTimeFormat("en-US", {
        timeZone,
        hourCycle: "h23",
        year: "numeric",
        month: "2-digit",
        day: "2-digit",
        hour: "2-digit",
      });
    } catch {
      throw new IotvaultError("INVALID_ARGUMENT", `unknown time zone ${JSON.stringify(timeZone)}`, {
        hint: 'give an IANA time zone name such as "UTC" or "Europe/Berlin"',
      });
    }
  }

  bucket(rule: BucketRule, time: Date): string {
    const parts = Object.fromEntries(this.format.formatToParts(time).map((p) => [p.type, p.value]));
    const y = Number(parts["year"]);
    const m = Number(parts["month"]);
    const d = Number(parts["day"]);
    const pad = (n: number, w = 2): string => String(n).padStart(w, "0");
    switch (rule) {
      case "hourly":
        return `${pad(y, 4)}-${pad(m)}-${pad(d)}T${pad(Number(parts["hour"]))}`;
      case "daily":
        return `${pad(y, 4)}-${pad(m)}-${pad(d)}`;
      case "weekly": {
        const { year, week } = isoWeek(y, m, d);
        return `${pad(year, 4)}-W${pad(week)}`;
      }
      case "monthly":
        return `${pad(y, 4)}-${pad(m)}`;
      case "yearly":
        return pad(y, 4);
    }
  }
}

/** ISO 8601 week of a calendar date: weeks start on Monday; week 1 holds the year's first Thursday. */
export function isoWeek(year: number, month: number, day: number): { year: number; week: number } {
  const date = new Date(Date.UTC(year, month - 1, day));
  const weekday = (date.getUTCDay() + 6) % 7; // Monday = 0
  const thursday = new Date(date.getTime() + (3 - weekday) * DAY_MS);
  const isoYear = thursday.getUTCFullYear();
  const firstThursday = new Date(Date.UTC(isoYear, 0, 4));
  const firstMonday = firstThursday.getTime() - ((firstThursday.getUTCDay() + 6) % 7) * DAY_MS;
  return { year: isoYear, week: Math.floor((date.getTime() - firstMonday) / (7 * DAY_MS)) + 1 };
}

/** What a policy needs to know of a snapshot. */
export interface RetentionCandidate {
  id: string;
  /** ISO 8601. */
  time: string;
  jobId: string;
  /**
   * The consistency group it belongs to (the group run's id): members are decided as one.
   * Absent: read from a manifest's `metadata.group.id`, else the snapshot is on its own.
   */
  groupId?: string | undefined;
  metadata?: Record<string, unknown> | undefined;
}

function groupOf(s: RetentionCandidate): string | undefined {
  return s.groupId ?? (s.metadata ? snapshotGroupId({ metadata: s.metadata }) : undefined);
}

/**
 * Decides, without touching storage, which snapshots a policy keeps. The result follows the
 * input order; groups (job ids) are decided independently.
 */
export function decideRetention<T extends RetentionCandidate>(
  snapshots: readonly T[],
  policy: RetentionPolicy,
  now: Date,
  holds: ReadonlyMap<string, Pick<Hold, "reason">>,
): { snapshot: T; keep: boolean; reasons: string[] }[] {
  const checked = checkPolicy(policy);
  const reasons = new Map<string, string[]>(snapshots.map((s) => [s.id, []]));
  // One unit per run (its members decided together), each unit in its job's group.
  const units = new Map<string, { unit: RetentionCandidate; members: T[] }>();
  for (const s of snapshots) {
    const time = Date.parse(s.time);
    // Never happens with manifests iotvault writes; if it does, keeping is the safe answer.
    if (!Number.isFinite(time)) {
      reasons.get(s.id)?.push("time not understood");
      continue;
    }
    const group = groupOf(s);
    const key = group ? `group:${s.jobId}:${group}` : `snapshot:${s.id}`;
    const entry = units.get(key);
    if (!entry) units.set(key, { unit: { id: key, time: s.time, jobId: s.jobId }, members: [s] });
    else {
      entry.members.push(s);
      if (time > Date.parse(entry.unit.time)) entry.unit.time = s.time;
    }
  }
  const unitReasons = new Map<string, string[]>([...units.keys()].map((k) => [k, []]));
  const unitHolds = new Map<string, Pick<Hold, "reason">>();
  const groups = new Map<string, RetentionCandidate[]>();
  for (const [key, { unit, members }] of units) {
    const held = members.find((m) => holds.has(m.id));
    if (held) {
      const reason = holds.get(held.id)!.reason;
      unitHolds.set(key, {
        reason: members.length > 1 ? `${reason} (on ${held.id.slice(0, 12)} of this run)` : reason,
      });
    }
    const group = groups.get(unit.jobId);
    if (group) group.push(unit);
    else groups.set(unit.jobId, [unit]);
  }
  for (const group of groups.values()) decideGroup(newestFirst(group), checked, now, unitHolds, unitReasons);
  for (const [key, { members }] of units) {
    for (const m of members) reasons.get(m.id)?.push(...unitReasons.get(key)!);
  }
  return snapshots.map((snapshot) => {
    const why = reasons.get(snapshot.id) ?? [];
    return { snapshot, keep: why.length > 0, reasons: why };
  });
}

function newestFirst<T extends RetentionCandidate>(group: T[]): T[] {
  const at = (s: T): number => Date.parse(s.time);
  return [...group].sort((a, b) => at(b) - at(a) || (a.id < b.id ? 1 : a.id > b.id ? -1 : 0));
}

function decideGroup(
  group: readonly RetentionCandidate[],
  policy: CheckedPolicy,
  now: Date,
  holds: ReadonlyMap<string, Pick<Hold, "reason">>,
  reasons: Map<string, string[]>,
): void {
  const add = (s: RetentionCandidate, why: string): void => void reasons.get(s.id)?.push(why);
  group.slice(0, policy.keepLast).forEach((s) => add(s, `last ${policy.keepLast}`));
  for (const { rule, count } of policy.buckets) {
    let kept = 0;
    let last: string | undefined;
    for (const s of group) {
      if (kept >= count) break;
      const bucket = policy.calendar.bucket(rule, new Date(s.time));
      if (bucket === last) continue;
      last = bucket;
      kept++;
      add(s, `${rule} ${bucket}`);
    }
  }
  for (const s of group) {
    const hold = holds.get(s.id);
    if (hold) add(s, `hold: ${hold.reason}`);
    if (policy.withinDays !== undefined && now.getTime() - Date.parse(s.time) < policy.withinDays * DAY_MS) {
      add(s, `within ${policy.withinDays} days`);
    }
  }
}

/**
 * Applies a policy: decides, then (unless a dry run) deletes the manifests of the snapshots no
 * rule keeps, under a shared lock (safe beside backups, never beside a prune). Each hold is
 * read again right before its snapshot would be deleted.
 */
export async function forgetSnapshots(
  core: RepoCore,
  locks: RepoLocks,
  options: ForgetOptions,
  listSnapshots: (signal?: AbortSignal) => Promise<SnapshotManifest[]>,
): Promise<ForgetResult> {
  checkPolicy(options.policy);
  const signal = options.signal;
  const lock = options.dryRun
    ? undefined
    : await locks.acquire(core, "shared", { purpose: "forget", waitMs: options.lockWaitMs, signal });
  try {
    const all = await listSnapshots(signal);
    const chosen = options.jobId === undefined ? all : all.filter((s) => s.jobId === options.jobId);
    const holds = new Map((await readHolds(core, signal)).map((h) => [h.snapshotId, h]));
    const decisions = decideRetention(chosen, options.policy, options.now ?? new Date(), holds);
    const removed: string[] = [];
    if (lock) {
      await lock.check("forget");
      for (const decision of decisions.filter((d) => !d.keep)) {
        throwIfAborted(signal, "forget");
        if (await removeUnlessHeld(core, decision, signal)) removed.push(decision.snapshot.id);
      }
    }
    return { decisions, removed };
  } finally {
    await lock?.release().catch(() => undefined);
  }
}

async function removeUnlessHeld(core: RepoCore, decision: ForgetDecision, signal?: AbortSignal): Promise<boolean> {
  const id = decision.snapshot.id;
  const hold = await readHold(core, id, signal); // a hold placed after the decision still wins
  if (hold) {
    decision.keep = true;
    decision.reasons.push(`hold: ${hold.reason}`);
    return false;
  }
  try {
    return await core.store.delete(snapshotKey(id));
  } catch (err) {
    throw storeError(err, `deleting snapshot ${id}`);
  }
}

/**
 * A job's retention settings (the RetentionPolicy message of the protos: counts, 0 = rule not
 * used; `retentionDays` = keep everything younger) as a policy; undefined when no rule is set.
 */
export function policyFromJobRetention(
  r:
    | {
        keepLast: number;
        keepHourly: number;
        keepDaily: number;
        keepWeekly: number;
        keepMonthly: number;
        keepYearly: number;
        retentionDays: number;
      }
    | undefined,
  timeZone?: string,
): RetentionPolicy | undefined {
  if (!r) return undefined;
  const n = (v: number) => (v > 0 ? v : undefined);
  const policy: RetentionPolicy = {
    keepLast: n(r.keepLast),
    keepHourly: n(r.keepHourly),
    keepDaily: n(r.keepDaily),
    keepWeekly: n(r.keepWeekly),
    keepMonthly: n(r.keepMonthly),
    keepYearly: n(r.keepYearly),
    keepWithinDays: n(r.retentionDays),
    timeZone: timeZone || undefined,
  };
  const hasRule = Object.entries(policy).some(([k, v]) => k !== "timeZone" && v !== undefined);
  return hasRule ? policy : undefined;
}

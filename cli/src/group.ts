/**
 * `iotvault restore-group <run-id>`: brings every member of a consistency group back to the
 * group's recovery point (docs/consistency-groups.md). Members that restore into a directory
 * (files, RDF, rules, configuration, a physical PostgreSQL data directory) go under `--to`, one
 * directory each; members that restore into a service (a database, a KV bucket, a SPARQL store)
 * need `--map <source>=<target>`.
 */
import { resolve } from "node:path";
import { IotvaultError } from "@iotvault/errors";
import { RestoreResult, type Snapshot } from "@iotvault/proto";
import { callServerStream, callUnary } from "@iotvault/rpc/client";
import { flag, list, parse, required, str } from "./args.js";
import type { Context } from "./context.js";
import { formatBytes, table } from "./output.js";

/** Where a member goes by default: a directory for kinds that restore into one. */
function defaultTarget(source: string, index: number, to: string): string | undefined {
  const scheme = /^([a-z][a-z0-9+.-]*):/.exec(source)?.[1] ?? "fs";
  const dirKinds = ["fs", "rdf", "rules", "config"];
  const physicalPg = /^postgres(ql)?:/.test(source) && /[?&]mode=physical/.test(source);
  if (dirKinds.includes(scheme) || physicalPg) return resolve(to, `${index}-${scheme}`);
  return undefined;
}

/**
 * `--map SOURCE=TARGET`: both sides may hold `=` (URL queries), so SOURCE is matched against the
 * group's member sources (the longest that fits) rather than split at a fixed `=`. A map that
 * names no member is refused: a typo must not silently send a member to its default place.
 */
export function parseMaps(args: string[], sources: string[]): Map<string, string> {
  const maps = new Map<string, string>();
  const bySize = [...sources].sort((a, b) => b.length - a.length);
  for (const arg of args) {
    const source = bySize.find((s) => arg.startsWith(`${s}=`));
    if (!source) {
      throw new IotvaultError("INVALID_ARGUMENT", `--map ${arg}: names no member of the group`, {
        hint: `expected SOURCE=TARGET with SOURCE one of: ${sources.join(", ")}`,
      });
    }
    const target = arg.slice(source.length + 1);
    if (!target) throw new IotvaultError("INVALID_ARGUMENT", `--map ${arg}: the target is empty`);
    maps.set(source, target);
  }
  return maps;
}

export async function restoreGroup(ctx: Context, argv: string[]): Promise<void> {
  const usage =
    "iotvault restore-group <run-id> --to <dir> [--map SOURCE=TARGET]... [--option KEY=VALUE]... [--overwrite] [--no-verify]";
  const p = parse(
    argv,
    {
      to: { type: "string" },
      map: { type: "string", multiple: true },
      option: { type: "string", multiple: true },
      overwrite: { type: "boolean" },
      "no-verify": { type: "boolean" },
    },
    usage,
  );
  const runId = required(p.positionals[0], "run id", usage);
  const extra: Record<string, string> = Object.fromEntries(
    list(p, "option").map((o): [string, string] => {
      const at = o.indexOf("=");
      if (at <= 0) throw new IotvaultError("INVALID_ARGUMENT", `--option ${o}: expected KEY=VALUE`);
      return [o.slice(0, at), o.slice(at + 1)];
    }),
  );
  const to = required(str(p, "to"), "--to", usage);
  const members: Snapshot[] = (
    await callUnary(ctx.catalog, "listSnapshots", { job: "", repository: "", limit: 1000, groupId: runId })
  ).snapshots;
  if (members.length === 0) {
    throw new IotvaultError("NOT_FOUND", `run ${runId} is not a consistency group in the catalog`, {
      hint: "restore a single snapshot with `iotvault restore`; list groups with `iotvault snapshots --group <run-id>`",
    });
  }
  const maps = parseMaps(
    list(p, "map"),
    members.map((m) => m.source),
  );
  members.sort((a, b) => a.source.localeCompare(b.source));
  const plan = members.map((m, i) => {
    const mapped = maps.get(m.source);
    const target = mapped ?? defaultTarget(m.source, i, to);
    if (!target) {
      throw new IotvaultError(
        "INVALID_ARGUMENT",
        `member ${m.source} restores into a service: give --map ${m.source}=<target URL>`,
      );
    }
    return { member: m, target };
  });
  const results: RestoreResult[] = [];
  for (const { member, target } of plan) {
    ctx.info(`restoring ${member.source} (snapshot ${member.snapshotId.slice(0, 12)}) to ${target}`);
    const isUrl = /^[a-z][a-z0-9+.-]*:/.test(target);
    let result: RestoreResult | undefined;
    for await (const msg of callServerStream(ctx.restore, "restore", {
      repository: member.repository,
      snapshotId: member.snapshotId,
      targetDir: isUrl ? "" : target,
      target: isUrl ? target : "",
      include: [],
      overwrite: flag(p, "overwrite"),
      verify: !flag(p, "no-verify"),
      allowExternalSymlinks: false,
      // The group's recovery point (e.g. the PostgreSQL restore point), plus the caller's options.
      options: mergeOptions(member.groupRestoreOptions, extra),
    })) {
      if (msg.message?.$case === "result") result = msg.message.value;
    }
    if (!result) throw new IotvaultError("INTERNAL", `no result for the restore of ${member.source}`);
    results.push(result);
  }
  ctx.print(
    {
      runId,
      members: results.map((r, i) => ({ source: plan[i]!.member.source, ...(RestoreResult.toJSON(r) as object) })),
    },
    () =>
      table(
        ["SOURCE", "SNAPSHOT", "TARGET", "FILES", "SIZE", "VERIFIED", "RECOVERY POINT"],
        results.map((r, i) => [
          plan[i]!.member.source,
          r.snapshotId.slice(0, 12),
          plan[i]!.target,
          String(Number(r.files)),
          formatBytes(r.bytes),
          r.verified ? "yes" : "no",
          Object.entries(plan[i]!.member.groupRestoreOptions)
            .map(([k, v]) => `${k}=${v}`)
            .join(" ") || "-",
        ]),
      ),
  );
}

/** The caller's options win; a recovery target of theirs replaces the group's (PostgreSQL takes one). */
function mergeOptions(group: Record<string, string>, extra: Record<string, string>): Record<string, string> {
  const isTarget = (k: string) => /^recovery_target(_(name|time|lsn|xid))?$/.test(k);
  const callerTarget = Object.keys(extra).some(isTarget);
  const kept = Object.fromEntries(Object.entries(group).filter(([k]) => !(callerTarget && isTarget(k))));
  return { ...kept, ...extra };
}

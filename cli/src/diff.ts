/**
 * `iotvault diff <snapshotA> <snapshotB> [--repo R] [--sample N] [--max N] [--json]`: what changed
 * from A to B, asked of the restore service (RestoreService.Diff). For semantic sources: graphs
 * added, removed and changed with the triples added and removed (blank-node safe, a sample of
 * each), and ontology version changes; for every source: files added, removed and changed.
 *
 * ```sh
 * iotvault diff 3f9a2c 7be01d            # human-readable
 * iotvault diff 3f9a2c 7be01d --json     # the DiffResponse as proto3 JSON
 * ```
 */
import { IotvaultError } from "@iotvault/errors";
import { DiffResponse, type GraphDelta } from "@iotvault/proto";
import { callUnary } from "@iotvault/rpc/client";
import { parse, required, str } from "./args.js";
import type { Context } from "./context.js";
import { formatBytes } from "./output.js";

const USAGE = "iotvault diff <snapshotA> <snapshotB> [--repo R] [--sample N] [--max N] [--json]";

function count(value: string | undefined, name: string, fallback: number): number {
  if (value === undefined) return fallback;
  const n = Number(value);
  if (!Number.isInteger(n) || n < 0)
    throw new IotvaultError("INVALID_ARGUMENT", `${name} must be a whole number, got "${value}"`);
  return n;
}

export async function diff(ctx: Context, argv: string[]): Promise<void> {
  const p = parse(argv, { repo: { type: "string" }, sample: { type: "string" }, max: { type: "string" } }, USAGE);
  const a = required(p.positionals[0], "snapshotA", USAGE);
  const b = required(p.positionals[1], "snapshotB", USAGE);
  let repository = str(p, "repo");
  if (!repository) {
    const res = await callUnary(ctx.catalog, "getSnapshot", { snapshotId: a });
    repository = res.snapshot?.repository;
    if (!repository)
      throw new IotvaultError("NOT_FOUND", `snapshot ${a} is not in the catalog`, { hint: "pass --repo R" });
  }
  const res = await callUnary(ctx.restore, "diff", {
    repository,
    snapshotA: a,
    snapshotB: b,
    sampleSize: count(str(p, "sample"), "--sample", 5),
    maxItems: count(str(p, "max"), "--max", 1000),
  });
  ctx.print(DiffResponse.toJSON(res), () => renderDiff(res));
}

const short = (id: string) => id.slice(0, 12);
const num = (v: bigint) => Number(v);

function graphLine(g: GraphDelta): string[] {
  const delta = `+${num(g.triplesAdded)} -${num(g.triplesRemoved)}`;
  const sizes = g.change === "changed" ? ` (${num(g.triplesBefore)} -> ${num(g.triplesAfter)} triples)` : "";
  const lines = [`  ${g.change.padEnd(8)} ${g.graph}  ${delta}${sizes}`];
  for (const t of g.sampleAdded) lines.push(`      + ${t}`);
  for (const t of g.sampleRemoved) lines.push(`      - ${t}`);
  return lines;
}

/** The human form of a diff. */
export function renderDiff(d: DiffResponse): string {
  const out = [`diff ${short(d.snapshotA)} (${d.sourceA}) -> ${short(d.snapshotB)} (${d.sourceB})`];
  const by = (c: string) => d.graphs.filter((g) => g.change === c).length;
  if (d.graphs.length > 0 || num(d.graphsUnchanged) > 0) {
    out.push(
      `graphs: ${by("changed")} changed, ${by("added")} added, ${by("removed")} removed, ${num(d.graphsUnchanged)} unchanged; triples +${num(d.triplesAdded)} -${num(d.triplesRemoved)}`,
    );
    for (const g of d.graphs) out.push(...graphLine(g));
  }
  if (d.ontologyChanges.length > 0) {
    out.push("ontology versions:");
    for (const o of d.ontologyChanges) {
      const before = o.versionIriBefore || o.versionInfoBefore || "-";
      const after = o.versionIriAfter || o.versionInfoAfter || "-";
      out.push(`  ${o.change.padEnd(8)} ${o.ontology}  ${before} -> ${after}  (in ${o.graph})`);
    }
  }
  out.push(
    `files: ${num(d.filesChanged)} changed, ${num(d.filesAdded)} added, ${num(d.filesRemoved)} removed, ${num(d.filesUnchanged)} unchanged`,
  );
  for (const f of d.files) {
    const sizes =
      f.change === "changed"
        ? `${formatBytes(f.sizeBefore)} -> ${formatBytes(f.sizeAfter)}`
        : formatBytes(f.change === "added" ? f.sizeAfter : f.sizeBefore);
    out.push(`  ${f.change.padEnd(8)} ${f.path}  (${sizes})`);
  }
  if (d.truncated) out.push("(lists cut at --max; the counts are complete)");
  return out.join("\n");
}

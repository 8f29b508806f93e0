import type { SpanRecord } from "./span-file.js";

export interface RenderTraceTreeOptions {
  /** Siblings with the same name beyond this count are summarised in one line (default 8). */
  collapseAfter?: number;
  /** ANSI colours: errors in red, service and offsets dimmed (default false). */
  color?: boolean;
}

type Item =
  | { kind: "span"; span: SpanRecord; orphan: boolean }
  | { kind: "summary"; name: string; count: number; totalMs: number };

interface Tree {
  children: Map<string, SpanRecord[]>;
  roots: Item[];
  startMs: number;
}

const RED = "\u001b[31m";
const DIM = "\u001b[2m";
const RESET = "\u001b[0m";

const byStart = (a: SpanRecord, b: SpanRecord): number => a.startTimeMs - b.startTimeMs || a.name.localeCompare(b.name);

function buildTree(spans: SpanRecord[]): Tree {
  const ids = new Set(spans.map((s) => s.spanId));
  const children = new Map<string, SpanRecord[]>();
  const roots: Item[] = [];
  for (const span of [...spans].sort(byStart)) {
    const parent = span.parentSpanId;
    if (parent !== undefined && parent !== span.spanId && ids.has(parent)) {
      const list = children.get(parent) ?? [];
      list.push(span);
      children.set(parent, list);
    } else {
      roots.push({ kind: "span", span, orphan: parent !== undefined });
    }
  }
  addUnreachable(spans, children, roots);
  const startMs = spans.reduce((min, s) => Math.min(min, s.startTimeMs), Infinity);
  return { children, roots, startMs };
}

/** Spans caught in a parent cycle are reachable from no root: show them at the root too. */
function addUnreachable(spans: SpanRecord[], children: Map<string, SpanRecord[]>, roots: Item[]): void {
  const reached = new Set<string>();
  const stack = roots.flatMap((r) => (r.kind === "span" ? [r.span] : []));
  for (let span = stack.pop(); span; span = stack.pop()) {
    if (reached.has(span.spanId)) continue;
    reached.add(span.spanId);
    stack.push(...(children.get(span.spanId) ?? []));
  }
  for (const span of spans) {
    if (!reached.has(span.spanId)) {
      roots.push({ kind: "span", span, orphan: true });
      reached.add(span.spanId);
    }
  }
}

/**
 * Keeps the first `limit` spans of each name (and every failed one) and replaces the rest by
 * one summary line, placed where the first hidden span would have been.
 */
function collapse(siblings: SpanRecord[], limit: number): Item[] {
  const counts = new Map<string, number>();
  for (const s of siblings) counts.set(s.name, (counts.get(s.name) ?? 0) + 1);
  const shown = new Map<string, number>();
  const summaries = new Map<string, Extract<Item, { kind: "summary" }>>();
  const items: Item[] = [];
  for (const span of siblings) {
    const seen = shown.get(span.name) ?? 0;
    if ((counts.get(span.name) ?? 0) <= limit || seen < limit || span.status === "error") {
      shown.set(span.name, seen + 1);
      items.push({ kind: "span", span, orphan: false });
      continue;
    }
    let summary = summaries.get(span.name);
    if (!summary) {
      summary = { kind: "summary", name: span.name, count: 0, totalMs: 0 };
      summaries.set(span.name, summary);
      items.push(summary);
    }
    summary.count += 1;
    summary.totalMs += span.durationMs;
  }
  return items;
}

const ms = (value: number): string => `${value.toFixed(1)} ms`;
const humanDuration = (value: number): string => (value >= 1000 ? `${(value / 1000).toFixed(1)} s` : ms(value));

function spanLine(item: Extract<Item, { kind: "span" }>, startMs: number, color: boolean): string {
  const { span } = item;
  const dim = (s: string): string => (color ? `${DIM}${s}${RESET}` : s);
  let line = `${span.name}  ${dim(`[${span.service}]`)}  ${ms(span.durationMs)}  ${dim(`(+${ms(span.startTimeMs - startMs)})`)}`;
  if (span.status === "error") {
    const mark = span.statusMessage ? `✗ error: ${span.statusMessage}` : "✗ error";
    line += `  ${color ? `${RED}${mark}${RESET}` : mark}`;
  }
  if (item.orphan) line += `  ${dim("(parent span not recorded)")}`;
  return line;
}

function itemLine(item: Item, startMs: number, color: boolean): string {
  if (item.kind === "span") return spanLine(item, startMs, color);
  return `… ${item.count} more ${item.name}, total ${humanDuration(item.totalMs)}`;
}

/**
 * Renders one trace as a tree: children under their parent span, ordered by start time, one
 * line per span with its service, duration and offset from the start of the trace:
 *
 * ```text
 * backup.run  [scheduler]  812.4 ms  (+0.0 ms)
 * ├─ StorageGatewayService/PutObject  [storage-gateway]  20.1 ms  (+3.2 ms)
 * ├─ … 37 more StorageGatewayService/PutObject, total 1.2 s
 * └─ executor.commit  [executor]  4.0 ms  (+801.0 ms)  ✗ error: snapshot exists
 * ```
 *
 * Spans whose parent is not among `spans` (another process did not record it) are shown at the
 * root, marked. Failed spans are never collapsed.
 */
export function renderTraceTree(spans: SpanRecord[], options: RenderTraceTreeOptions = {}): string {
  if (spans.length === 0) return "";
  const limit = Math.max(1, options.collapseAfter ?? 8);
  const color = options.color ?? false;
  const tree = buildTree(spans);
  const lines: string[] = [];
  const seen = new Set<SpanRecord>();
  const visit = (item: Item, prefix: string, connector: string, childPrefix: string): void => {
    if (item.kind === "span") {
      if (seen.has(item.span)) return;
      seen.add(item.span);
    }
    lines.push(`${prefix}${connector}${itemLine(item, tree.startMs, color)}`);
    if (item.kind !== "span") return;
    const children = collapse(tree.children.get(item.span.spanId) ?? [], limit);
    children.forEach((child, i) => {
      const last = i === children.length - 1;
      visit(child, prefix + childPrefix, last ? "└─ " : "├─ ", last ? "   " : "│  ");
    });
  };
  for (const root of tree.roots) visit(root, "", "", "");
  return lines.join("\n");
}

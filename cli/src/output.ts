/**
 * Terminal output: tables, sizes, durations, and a progress bar that is drawn only on a TTY.
 */
export function formatBytes(n: number | bigint): string {
  let v = Number(n);
  const units = ["B", "KiB", "MiB", "GiB", "TiB"];
  let i = 0;
  while (Math.abs(v) >= 1024 && i < units.length - 1) {
    v /= 1024;
    i++;
  }
  return i === 0 ? `${v} B` : `${v.toFixed(v < 10 ? 2 : 1)} ${units[i]}`;
}

export function formatDuration(ms: number | bigint): string {
  const v = Number(ms);
  if (v < 1000) return `${v.toFixed(0)} ms`;
  if (v < 60_000) return `${(v / 1000).toFixed(v < 10_000 ? 2 : 1)} s`;
  const m = Math.floor(v / 60_000);
  return `${m} min ${Math.round((v % 60_000) / 1000)} s`;
}

export function formatTime(d: Date | undefined): string {
  return d
    ? d
        .toISOString()
        .replace("T", " ")
        .replace(/\.\d+Z$/, "Z")
    : "-";
}

/** A plain text table with a header row; columns sized to their content. */
export function table(header: string[], rows: string[][]): string {
  const widths = header.map((h, i) => Math.max(h.length, ...rows.map((r) => (r[i] ?? "").length)));
  const line = (cells: string[]) =>
    cells
      .map((c, i) => c.padEnd(widths[i] ?? 0))
      .join("  ")
      .trimEnd();
  return [line(header), line(widths.map((w) => "-".repeat(w))), ...rows.map(line)].join("\n");
}

export interface ProgressState {
  done: number;
  total: number;
  label: string;
  detail?: string;
  /** What done and total count (default bytes). */
  unit?: "bytes" | "items";
}

/** A one-line progress bar on stderr, redrawn at most every 100 ms; silent when not a TTY. */
export class ProgressBar {
  private last = 0;
  private drawn = false;
  private readonly started = Date.now();

  constructor(private readonly stream: NodeJS.WriteStream = process.stderr) {}

  get enabled(): boolean {
    return this.stream.isTTY === true;
  }

  update(state: ProgressState): void {
    if (!this.enabled) return;
    const now = Date.now();
    if (now - this.last < 100) return;
    this.last = now;
    const width = 24;
    const ratio = state.total > 0 ? Math.min(1, state.done / state.total) : 0;
    const filled = Math.round(ratio * width);
    const bar =
      state.total > 0
        ? `[${"#".repeat(filled)}${"-".repeat(width - filled)}] ${(ratio * 100).toFixed(0).padStart(3)}%`
        : "[working]";
    const rate = state.done / Math.max(0.001, (now - this.started) / 1000);
    const fmt = state.unit === "items" ? (n: number) => String(n) : formatBytes;
    const sizes = state.total > 0 ? `${fmt(state.done)} / ${fmt(state.total)}` : fmt(state.done);
    let text = `${state.label} ${bar} ${sizes}${state.unit === "items" ? "" : ` ${formatBytes(rate)}/s`}`;
    if (state.detail) text += `  ${state.detail}`;
    const cols = this.stream.columns || 100;
    if (text.length > cols - 1) text = text.slice(0, cols - 2) + "…";
    this.stream.write(`\r\x1b[2K${text}`);
    this.drawn = true;
  }

  done(): void {
    if (this.drawn) this.stream.write("\r\x1b[2K");
    this.drawn = false;
  }
}

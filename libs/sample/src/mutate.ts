/**
 * The change an edge gateway goes through between two nightly backups, applied to a tree made
 * by `makeGatewayTree`: deterministic for a seed (same tree + same options = same bytes), about
 * `percent` % of the tree's bytes new. The budget is spent like the project's corpus mutation:
 *   ~45 %  a new day of CSV + JSON-lines telemetry for every device;
 *   ~15 %  rows appended to each device's latest CSV and JSON-lines logs;
 *   ~15 %  camera snapshots rewritten in place (same size, new content);
 *   one    firmware image replaced, together with its identical per-device copies;
 *   small  ~2 % of the config files edited in place (values changed, a comment appended);
 *   64 KiB of rows inserted in the middle of the historian CSV (every later byte shifts:
 *          fixed-size chunking loses, content-defined chunking keeps the rest);
 *   deletes the oldest day of three devices, three camera snapshots and five config files.
 * Files are streamed in blocks: memory stays small whatever the size of the tree.
 *
 * ```ts
 * await makeGatewayTree("/tmp/gw", { sizeBytes: 64 << 20, seed: 1 });
 * const summary = await mutateGatewayTree("/tmp/gw", { percent: 5, seed: 2 });
 * ```
 */
import { lstat, open, readdir, readFile, rename, rm, writeFile, type FileHandle } from "node:fs/promises";
import { join } from "node:path";
import { Rng, randomBlocks } from "./random.js";

export interface MutateOptions {
  /** Share of the tree's bytes to write anew (default 5). */
  percent?: number;
  /** Seed of the change (default 2); independent of the seed the tree was made with. */
  seed?: number;
}

export interface MutateSummary {
  /** Bytes of regular files in the tree before the change. */
  totalBytes: number;
  /** Bytes written that the tree did not hold before (identical firmware copies count once). */
  newBytes: number;
  filesAdded: number;
  /** Files whose content changed (appended, rewritten, edited, inserted into). */
  filesChanged: number;
  filesDeleted: number;
}

const CSV_HEADER = "ts,device,temp_c,humidity_pct,pressure_hpa,battery_v,rssi_dbm,status\n";
const HISTORIAN = "telemetry/historian/plant-historian-2024.csv";
const INSERT_BYTES = 64 * 1024;
const BLOCK = 1 << 20;

/** Regular files under root, as sorted root-relative paths, with their sizes. */
async function listFiles(root: string, rel = "", out: { path: string; size: number }[] = []) {
  const names = (await readdir(join(root, rel))).sort();
  for (const name of names) {
    const path = rel ? `${rel}/${name}` : name;
    const st = await lstat(join(root, path));
    if (st.isDirectory()) await listFiles(root, path, out);
    else if (st.isFile()) out.push({ path, size: st.size });
  }
  return out;
}

/** CSV rows in the corpus format, about `bytes` long, in blocks. */
function* csvRows(rng: Rng, dev: string, t0: number, bytes: number): Generator<string> {
  let temp = rng.uniform(15, 30);
  let hum = rng.uniform(30, 70);
  let block: string[] = [];
  let blockBytes = 0;
  for (let n = 0, t = t0; n < bytes; t += 10) {
    temp += rng.gauss(0, 0.04);
    hum += rng.gauss(0, 0.08);
    const ts = new Date(t * 1000).toISOString().replace(/\.\d+Z$/, "Z");
    const row =
      `${ts},${dev},${temp.toFixed(2)},${hum.toFixed(1)},${rng.uniform(990, 1030).toFixed(2)},` +
      `${rng.uniform(3.6, 4.2).toFixed(3)},${-60 - rng.int(0, 20)},OK\n`;
    block.push(row);
    n += row.length;
    blockBytes += row.length;
    if (blockBytes >= 256 * 1024) {
      yield block.join("");
      block = [];
      blockBytes = 0;
    }
  }
  if (block.length > 0) yield block.join("");
}

/** JSON-lines rows in the corpus format, about `bytes` long, in blocks. */
function* jsonRows(rng: Rng, dev: string, t0: number, bytes: number): Generator<string> {
  let block: string[] = [];
  let blockBytes = 0;
  for (let n = 0, i = 0; n < bytes; i++) {
    const row =
      JSON.stringify({
        ts: t0 + 20 * i,
        dev,
        metric: "temp_c",
        value: rng.uniform(15, 30).toFixed(3),
        q: "good",
        seq: i,
      }) + "\n";
    block.push(row);
    n += row.length;
    blockBytes += row.length;
    if (blockBytes >= 256 * 1024) {
      yield block.join("");
      block = [];
      blockBytes = 0;
    }
  }
  if (block.length > 0) yield block.join("");
}

async function writeAll(fh: FileHandle, data: string | Buffer): Promise<number> {
  const bytes = typeof data === "string" ? Buffer.from(data, "utf8") : data;
  for (let done = 0; done < bytes.length;) done += (await fh.write(bytes, done, bytes.length - done)).bytesWritten;
  return bytes.length;
}

/** Writes (flag "w") or appends (flag "a") the pieces; returns the bytes written. */
async function streamTo(path: string, flag: "w" | "a", pieces: Iterable<string | Buffer>): Promise<number> {
  const fh = await open(path, flag);
  try {
    let n = 0;
    for (const piece of pieces) n += await writeAll(fh, piece);
    return n;
  } finally {
    await fh.close();
  }
}

/** Copies [start, end) of `src` into `dst` in blocks. */
async function copyRange(src: FileHandle, dst: FileHandle, start: number, end: number): Promise<void> {
  const buf = Buffer.allocUnsafe(BLOCK);
  for (let at = start; at < end;) {
    const { bytesRead } = await src.read(buf, 0, Math.min(BLOCK, end - at), at);
    if (bytesRead === 0) break;
    await writeAll(dst, buf.subarray(0, bytesRead));
    at += bytesRead;
  }
}

/** Inserts `insert` after the first newline at or past the middle of the file (through a temp file). */
async function insertInMiddle(path: string, insert: Buffer): Promise<void> {
  const src = await open(path, "r");
  const tmp = `${path}.mutate-tmp`;
  try {
    const size = (await src.stat()).size;
    const probe = Buffer.allocUnsafe(64 * 1024);
    const { bytesRead } = await src.read(probe, 0, probe.length, Math.floor(size / 2));
    const nl = probe.subarray(0, bytesRead).indexOf(10);
    const mid = nl === -1 ? size : Math.floor(size / 2) + nl + 1;
    const dst = await open(tmp, "w");
    try {
      await copyRange(src, dst, 0, mid);
      await writeAll(dst, insert);
      await copyRange(src, dst, mid, size);
    } finally {
      await dst.close();
    }
  } finally {
    await src.close();
  }
  await rename(tmp, path);
}

const nextDay = (isoDay: string): string =>
  new Date(Date.parse(`${isoDay}T00:00:00Z`) + 86400_000).toISOString().slice(0, 10);

/** Applies the change described in the module comment to the tree at `root`. */
export async function mutateGatewayTree(root: string, options: MutateOptions = {}): Promise<MutateSummary> {
  const percent = options.percent ?? 5;
  const seed = options.seed ?? 2;
  const files = await listFiles(root);
  const totalBytes = files.reduce((n, f) => n + f.size, 0);
  const budget = Math.floor((totalBytes * percent) / 100);
  const s: MutateSummary = { totalBytes, newBytes: 0, filesAdded: 0, filesChanged: 0, filesDeleted: 0 };
  const R = new Rng(`${seed}/mutate`);
  const paths = files.map((f) => f.path);
  const devs = [...new Set(paths.filter((p) => /^telemetry\/[^/]+\/[^/]+$/.test(p)).map((p) => p.split("/")[1]!))]
    .filter((d) => d !== "historian")
    .sort();

  // New day files and appends, per device.
  const perDev = Math.floor((budget * 45) / 100 / Math.max(1, devs.length));
  const perAppend = Math.floor((budget * 15) / 100 / Math.max(1, devs.length) / 2);
  for (const dev of devs) {
    const days = paths.filter((p) => p.startsWith(`telemetry/${dev}/`) && p.endsWith(".csv")).sort();
    const last = days.at(-1);
    if (!last) continue;
    const lastDay = last.slice(-14, -4);
    const next = nextDay(lastDay);
    const t0 = Date.parse(`${next}T00:00:00Z`) / 1000;
    const rng = new Rng(`${seed}/mutate/${dev}`);
    s.newBytes += await streamTo(join(root, `telemetry/${dev}/${next}.csv`), "w", [
      CSV_HEADER,
      ...csvRows(rng, dev, t0, perDev / 2),
    ]);
    s.newBytes += await streamTo(join(root, `telemetry/${dev}/${next}.jsonl`), "w", jsonRows(rng, dev, t0, perDev / 2));
    s.newBytes += await streamTo(join(root, last), "a", csvRows(rng, dev, t0 - 3600, perAppend));
    s.newBytes += await streamTo(
      join(root, `${last.slice(0, -4)}.jsonl`),
      "a",
      jsonRows(rng, dev, t0 - 3600, perAppend),
    );
    s.filesAdded += 2;
    s.filesChanged += 2;
  }

  // Camera snapshots rewritten in place, in a seeded order.
  const snaps = files.filter((f) => f.path.startsWith("blobs/camera/"));
  const order = shuffle(R, snaps);
  let left = Math.floor((budget * 15) / 100);
  const touched = new Set<string>();
  for (let i = 0; i < order.length && left > 0; i++) {
    const f = order[i]!;
    await streamTo(join(root, f.path), "w", [
      Buffer.from([0xff, 0xd8, 0xff, 0xe0]),
      ...randomBlocks(`${seed}/mutate/snap/${i}`, Math.max(0, f.size - 4)),
    ]);
    touched.add(f.path);
    left -= f.size;
    s.newBytes += f.size;
    s.filesChanged++;
  }

  // One firmware image replaced, with its identical per-device copies.
  const firmware = paths.filter((p) => p.startsWith("blobs/firmware/")).sort();
  if (firmware.length > 0) {
    const fw = firmware[R.int(0, firmware.length - 1)]!;
    const model = fw.slice("blobs/firmware/".length).split("-v")[0]!;
    const size = files.find((f) => f.path === fw)!.size;
    const copies = [fw, ...paths.filter((p) => p.endsWith(`/${model}-current.bin`))];
    for (const p of copies) await streamTo(join(root, p), "w", randomBlocks(`${seed}/mutate/fw/${model}`, size));
    s.newBytes += size;
    s.filesChanged += copies.length;
  }

  // A few config files edited in place.
  const configs = paths.filter((p) => p.startsWith("config/"));
  for (const p of shuffle(R, configs).slice(0, Math.max(1, Math.floor(configs.length / 50)))) {
    touched.add(p);
    const text = await readFile(join(root, p), "utf8");
    const edited =
      text.replace("true", "false").replace("10.", `172.${R.int(16, 31)}.`) + `\n# edited by mutate seed ${seed}\n`;
    await writeFile(join(root, p), edited);
    s.newBytes += 40;
    s.filesChanged++;
  }

  // 64 KiB of rows in the middle of the historian.
  if (paths.includes(HISTORIAN)) {
    const rows = Buffer.from(
      [...csvRows(new Rng(`${seed}/mutate/hist`), "hist-ins", 1735689600, INSERT_BYTES)].join(""),
    );
    await insertInMiddle(join(root, HISTORIAN), rows);
    s.newBytes += rows.length;
    s.filesChanged++;
  }

  // Deletions: the oldest day of three devices, three snapshots, five config files (among the
  // files not changed above, so that each kind of change stays visible in a small tree).
  const untouched = (list: string[]) => list.filter((p) => !touched.has(p));
  const gone = [
    ...devs.slice(0, 3).flatMap((d) => paths.filter((p) => p.startsWith(`telemetry/${d}/`)).slice(0, 1)),
    ...shuffle(R, untouched(snaps.map((f) => f.path))).slice(0, 3),
    ...shuffle(R, untouched(configs)).slice(0, 5),
  ];
  for (const p of new Set(gone)) {
    await rm(join(root, p), { force: true });
    s.filesDeleted++;
  }
  return s;
}

/** A seeded Fisher-Yates shuffle (a copy). */
function shuffle<T>(rng: Rng, items: readonly T[]): T[] {
  const out = [...items];
  for (let i = out.length - 1; i > 0; i--) {
    const j = rng.int(0, i);
    [out[i], out[j]] = [out[j]!, out[i]!];
  }
  return out;
}

/**
 * A synthetic IoT edge-gateway tree, deterministic for a given seed and size:
 *   ~60 % telemetry  per-device-per-day CSV and JSON-lines logs (noisy random walks, which
 *                    compress like real sensor logs) and one large historian CSV;
 *   ~20 % blobs      incompressible: a rootfs image, firmware images copied into device
 *                    directories (duplicates that dedup must catch), camera snapshots of which
 *                    about a fifth repeat the previous frame;
 *   ~10 % config     many small YAML / JSON / INI / .conf files;
 *   ~10 % RDF        SOSA/SSN-style Turtle and N-Triples (platforms, sensors, observations);
 * plus, for file-system fidelity, empty files, empty directories, relative symlinks, non-ASCII
 * names and a few modes. Files are written in blocks: memory stays small whatever the size.
 */
import { createWriteStream } from "node:fs";
import { chmod, mkdir, symlink, utimes, writeFile } from "node:fs/promises";
import { dirname, join } from "node:path";
import { once } from "node:events";
import { Rng, randomBlocks } from "./random.js";

export interface GatewayTreeOptions {
  /** Approximate total size in bytes (default 16 MiB). */
  sizeBytes?: number;
  seed?: number;
  /** Number of devices (default 8, or 24 from 256 MiB up). */
  devices?: number;
}

export interface GatewayTreeSummary {
  files: number;
  bytes: number;
  dirs: number;
  symlinks: number;
}

const METRICS = ["temp_c", "humidity_pct", "pressure_hpa", "co2_ppm", "vibration_rms", "current_a"];
const WORDS = (
  "enabled interval timeout retries host port topic qos broker tls cert sample_rate threshold unit " +
  "scale offset min max alarm level baud parity path user group mode buffer flush window"
).split(" ");
const T0 = Date.UTC(2025, 2, 1) / 1000;
const CSV_HEADER = "ts,device,temp_c,humidity_pct,pressure_hpa,battery_v,rssi_dbm,status\n";

class Writer {
  files = 0;
  bytes = 0;
  dirs = new Set<string>();

  constructor(readonly root: string) {}

  /** Records a directory and its ancestors (relative to the root). */
  addDir(rel: string): void {
    for (let d = rel; d !== "." && d !== "" && !this.dirs.has(d); d = dirname(d)) this.dirs.add(d);
  }

  async file(rel: string, content: string | Buffer | Iterable<string | Buffer>, mode?: number): Promise<number> {
    const path = join(this.root, rel);
    await mkdir(dirname(path), { recursive: true });
    this.addDir(dirname(rel));
    let n = 0;
    if (typeof content === "string" || Buffer.isBuffer(content)) {
      await writeFile(path, content);
      n = Buffer.byteLength(content);
    } else {
      const out = createWriteStream(path);
      for (const part of content) {
        n += Buffer.byteLength(part);
        if (!out.write(part)) await once(out, "drain");
      }
      out.end();
      await once(out, "finish");
    }
    if (mode !== undefined) await chmod(path, mode);
    this.files++;
    this.bytes += n;
    return n;
  }
}

function day(d: number): string {
  return new Date((T0 + d * 86400) * 1000).toISOString().slice(0, 10);
}

function* csvRows(rng: Rng, dev: string, t0: number, rows: number, step: number): Generator<string> {
  let temp = rng.uniform(15, 30);
  let hum = rng.uniform(30, 70);
  let pres = rng.uniform(990, 1030);
  let bat = rng.uniform(3.7, 4.2);
  let chunk: string[] = [];
  for (let i = 0; i < rows; i++) {
    temp += rng.gauss(0, 0.04);
    hum += rng.gauss(0, 0.08);
    pres += rng.gauss(0, 0.02);
    bat -= Math.abs(rng.gauss(0, 0.00002));
    const ts = new Date((t0 + i * step) * 1000).toISOString().replace(/\.\d+Z$/, "Z");
    chunk.push(
      `${ts},${dev},${(temp + rng.gauss(0, 0.05)).toFixed(2)},${(hum + rng.gauss(0, 0.3)).toFixed(1)},` +
        `${pres.toFixed(2)},${bat.toFixed(3)},${-60 - Math.floor(Math.abs(rng.gauss(0, 8)))},${rng.next() > 0.002 ? "OK" : "WARN"}\n`,
    );
    if (chunk.length === 2048) {
      yield chunk.join("");
      chunk = [];
    }
  }
  if (chunk.length) yield chunk.join("");
}

function* jsonlRows(rng: Rng, dev: string, t0: number, rows: number, step: number): Generator<string> {
  const base = Object.fromEntries(METRICS.map((m) => [m, rng.uniform(1, 500)]));
  let chunk: string[] = [];
  for (let i = 0; i < rows; i++) {
    const m = METRICS[i % METRICS.length]!;
    base[m]! += rng.gauss(0, base[m]! * 0.002);
    const value = Math.round((base[m]! + rng.gauss(0, 0.01 * base[m]!)) * 1000) / 1000;
    chunk.push(
      JSON.stringify({
        ts: t0 + i * step,
        dev,
        metric: m,
        value,
        q: rng.next() > 0.01 ? "good" : "uncertain",
        seq: i,
      }) + "\n",
    );
    if (chunk.length === 2048) {
      yield chunk.join("");
      chunk = [];
    }
  }
  if (chunk.length) yield chunk.join("");
}

function value(rng: Rng): string {
  switch (rng.int(0, 4)) {
    case 0:
      return String(rng.int(0, 65535));
    case 1:
      return rng.uniform(0, 100).toFixed(3);
    case 2:
      return rng.next() < 0.5 ? "true" : "false";
    case 3:
      return `10.${rng.int(0, 255)}.${rng.int(0, 255)}.${rng.int(1, 254)}`;
    default:
      return `${rng.pick(WORDS)}-${rng.int(1, 99)}`;
  }
}

function config(rng: Rng, ext: string, n: number): string {
  if (ext === "json") {
    const obj: Record<string, Record<string, string>> = {};
    for (let j = 0; j < n / 4 + 1; j++) {
      obj[`${rng.pick(WORDS)}_${j}`] = Object.fromEntries([0, 1, 2, 3].map(() => [rng.pick(WORDS), value(rng)]));
    }
    return JSON.stringify(obj, null, 2) + "\n";
  }
  const lines: string[] = [];
  for (let j = 0; j < n; j++) {
    if (ext === "yaml")
      lines.push(`${rng.pick(WORDS)}_${j}:\n` + [0, 1, 2].map(() => `  ${rng.pick(WORDS)}: ${value(rng)}\n`).join(""));
    else if (ext === "ini")
      lines.push(`[${rng.pick(WORDS)}_${j}]\n` + [0, 1, 2].map(() => `${rng.pick(WORDS)} = ${value(rng)}\n`).join(""));
    else lines.push(`# ${rng.pick(WORDS)} settings\n${rng.pick(WORDS)} ${value(rng)};\n`);
  }
  return lines.join("\n");
}

const PREFIXES =
  "@prefix sosa: <http://www.w3.org/ns/sosa/> .\n@prefix ssn: <http://www.w3.org/ns/ssn/> .\n" +
  "@prefix xsd: <http://www.w3.org/2001/XMLSchema#> .\n@prefix ex: <https://iot.example.org/site/> .\n\n";

function* observations(
  rng: Rng,
  site: string,
  devs: string[],
  d: number,
  count: number,
  format: "ttl" | "nt",
): Generator<string> {
  if (format === "ttl") yield PREFIXES;
  const SOSA = "http://www.w3.org/ns/sosa/";
  const EX = "https://iot.example.org/site/";
  const XSD = "http://www.w3.org/2001/XMLSchema#";
  let chunk: string[] = [];
  for (let k = 0; k < count; k++) {
    const dev = rng.pick(devs);
    const m = rng.pick(METRICS);
    const o = `${site}-obs-${d}-${String(k).padStart(6, "0")}`;
    const v = rng.uniform(0, 500).toFixed(3);
    const t = `${day(d)}T${new Date(k * 14 * 1000).toISOString().slice(11, 19)}Z`;
    chunk.push(
      format === "ttl"
        ? `ex:${o} a sosa:Observation ;\n  sosa:madeBySensor ex:${site}-${dev}-${m} ;\n  sosa:observedProperty ex:${m} ;\n` +
            `  sosa:hasSimpleResult "${v}"^^xsd:double ;\n  sosa:resultTime "${t}"^^xsd:dateTime .\n`
        : `<${EX}${o}> <http://www.w3.org/1999/02/22-rdf-syntax-ns#type> <${SOSA}Observation> .\n` +
            `<${EX}${o}> <${SOSA}madeBySensor> <${EX}${site}-${dev}-${m}> .\n` +
            `<${EX}${o}> <${SOSA}hasSimpleResult> "${v}"^^<${XSD}double> .\n<${EX}${o}> <${SOSA}resultTime> "${t}"^^<${XSD}dateTime> .\n`,
    );
    if (chunk.length === 1000) {
      yield chunk.join("");
      chunk = [];
    }
  }
  if (chunk.length) yield chunk.join("");
}

/** Writes the tree under `root` (created when missing) and returns what it wrote. */
export async function makeGatewayTree(root: string, options: GatewayTreeOptions = {}): Promise<GatewayTreeSummary> {
  const total = options.sizeBytes ?? 16 << 20;
  const seed = options.seed ?? 1;
  const ndev = options.devices ?? (total >= 256 << 20 ? 24 : 8);
  const devs = Array.from(
    { length: ndev },
    (_, i) => `gw${String(seed).padStart(2, "0")}-dev-${String(i).padStart(4, "0")}`,
  );
  const w = new Writer(root);
  await mkdir(root, { recursive: true });

  // --- ~60 % telemetry: one historian CSV (12.5 %) + per device per day CSV and JSONL
  const histRows = Math.max(100, Math.floor(total / 8 / 62));
  await w.file("telemetry/historian/plant-historian-2024.csv", [
    CSV_HEADER,
    ...csvRows(new Rng(`${seed}/hist`), "hist-001", T0 - 365 * 86400, histRows, 1),
  ]);
  let budget = Math.floor((total * 60) / 100) - w.bytes;
  const rowsPerDay = Math.max(50, Math.min(8640, Math.floor(total / 8 / ndev / 62 / 4)));
  for (let d = 0; budget > 0; d++) {
    for (const dev of devs) {
      const rng = new Rng(`${seed}/${dev}/${d}`);
      budget -= await w.file(`telemetry/${dev}/${day(d)}.csv`, [
        CSV_HEADER,
        ...csvRows(rng, dev, T0 + d * 86400, rowsPerDay, 10),
      ]);
      budget -= await w.file(
        `telemetry/${dev}/${day(d)}.jsonl`,
        jsonlRows(rng, dev, T0 + d * 86400, Math.floor(rowsPerDay / 2), 20),
      );
      if (budget <= 0) break;
    }
  }

  // --- ~20 % incompressible blobs
  const blobs = Math.floor(total / 5);
  await w.file("blobs/images/gateway-rootfs-v3.2.img", randomBlocks(`${seed}/rootfs`, Math.floor(blobs / 2)));
  const fwSize = Math.max(4096, Math.floor(blobs / 40));
  const firmware = ["sensorhub-a", "sensorhub-b", "cam-c"];
  for (const m of firmware)
    await w.file(`blobs/firmware/${m}-v1.4.2.bin`, randomBlocks(`${seed}/fw/${m}`, fwSize), 0o644);
  let left = Math.floor(blobs / 4) - 3 * fwSize;
  for (let i = 0; left > 0; i++) {
    const m = firmware[i % 3]!;
    left -= await w.file(
      `devices/${devs[i % devs.length]}/firmware/${m}-current.bin`,
      randomBlocks(`${seed}/fw/${m}`, fwSize),
    );
  }
  const rng = new Rng(`${seed}/camera`);
  left = Math.floor(blobs / 4);
  let prev: string | undefined;
  for (let n = 0; left > 0; n++) {
    const same = prev !== undefined && rng.next() < 0.2;
    const frameSeed = same ? prev! : `${seed}/snap/${n}`;
    const size = new Rng(frameSeed).int(Math.min(80_000, left), Math.min(400_000, Math.max(80_000, left)));
    left -= await w.file(`blobs/camera/${devs[n % Math.min(6, devs.length)]}/snap-${String(n).padStart(5, "0")}.jpg`, [
      Buffer.from([0xff, 0xd8, 0xff, 0xe0]),
      ...randomBlocks(frameSeed, size),
    ]);
    prev = frameSeed;
  }

  // --- ~10 % configuration
  left = Math.floor(total / 10);
  for (let n = 0; left > 0; n++) {
    const ext = ["yaml", "json", "ini", "conf"][n % 4]!;
    const r = new Rng(`${seed}/cfg/${n}`);
    const area = r.pick(["agent", "modbus", "mqtt", "opcua", "rules", "net", "devices"]);
    left -= await w.file(
      `config/${area}/${String(n % 37).padStart(2, "0")}/cfg-${String(n).padStart(5, "0")}.${ext}`,
      config(r, ext, Math.floor(2 ** r.uniform(1, 9))),
    );
  }

  // --- ~10 % RDF
  left = Math.floor(total / 10);
  for (let s = 0; left > 0; s++) {
    const site = `site${String(s).padStart(2, "0")}`;
    const platforms = devs
      .flatMap((d) =>
        METRICS.map(
          (m) =>
            `ex:${site}-${d} a sosa:Platform ;\n  sosa:hosts ex:${site}-${d}-${m} .\nex:${site}-${d}-${m} a sosa:Sensor ;\n  sosa:observes ex:${m} ;\n  ssn:isHostedBy ex:${site}-${d} .\n`,
        ),
      )
      .join("");
    left -= await w.file(`models/${site}/platforms.ttl`, PREFIXES + platforms);
    const perFile = Math.max(20, Math.min(6000, Math.floor(total / 10 / 8 / 600)));
    for (let d = 0; d < 4 && left > 0; d++) {
      const r = new Rng(`${seed}/rdf/${site}/${d}`);
      left -= await w.file(`models/${site}/observations-${day(d)}.ttl`, observations(r, site, devs, d, perFile, "ttl"));
      left -= await w.file(`models/${site}/observations-${day(d)}.nt`, observations(r, site, devs, d, perFile, "nt"));
    }
  }

  // --- file-system fidelity: empty files and dirs, symlinks, non-ASCII names, modes, old mtimes
  await w.file("config/agent/EMPTY.flag", "");
  await mkdir(join(root, "spool/outbox"), { recursive: true });
  w.addDir("spool/outbox");
  await w.file("config/données/capteurs-Æ.yaml", "capteur: température\nunité: °C\n");
  await w.file("models/日本語/センサー.ttl", PREFIXES + "ex:センサー a sosa:Sensor ; sosa:observes ex:温度 .\n");
  await w.file("bin/collect.sh", "#!/bin/sh\nexec /usr/bin/env true\n", 0o755);
  await w.file("secrets/gateway.key.pem", "-----BEGIN TEST KEY-----\nnot a real key\n-----END TEST KEY-----\n", 0o600);
  await symlink("../blobs/firmware/sensorhub-a-v1.4.2.bin", join(root, "devices/current-sensorhub-firmware.bin")).catch(
    () => undefined,
  );
  await symlink("historian/plant-historian-2024.csv", join(root, "telemetry/latest.csv"));
  const old = new Date(Date.UTC(2024, 0, 15, 8, 30, 0, 123));
  await utimes(join(root, "bin/collect.sh"), old, old);
  return { files: w.files, bytes: w.bytes, dirs: w.dirs.size, symlinks: 2 };
}

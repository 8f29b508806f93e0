/**
 * The NATS KV source `kv:<bucket>`: every key with its revision (through `@nats-io/kv` on the
 * bus's NATS connection, `services.bus.nc`). A key's value is stored as the file
 * `keys/<percent-encoded key>`; the catalog records each key's revision and creation time.
 * Incremental: a key whose revision equals the parent snapshot's is taken from the parent.
 *
 * Restore into a bucket (`--to kv:<bucket>`, the same or another; created when missing) with a
 * revision check: a key that changed since the backup (in the backed-up bucket: another
 * revision; in another bucket: another value) is not overwritten unless `--option force=true`,
 * and the refusal names the keys; nothing is written then. Keys equal to the snapshot are left
 * alone; keys absent from the snapshot are kept. A kv: snapshot also restores into a directory
 * (one file per key).
 */
import { createHash } from "node:crypto";
import { Kvm, type KV, type KvEntry } from "@nats-io/kv";
import { IotvaultError, toIotvaultError } from "@iotvault/errors";
import { compareUtf8, type TreeNode } from "@iotvault/repo";
import type {
  BackupContext,
  BackupSourceResult,
  RestoreContext,
  RestoreTargetResult,
  SourceAdapter,
} from "../adapter.js";
import { compileGlobs } from "../fs/globs.js";
import { parseKvUrl } from "./url.js";
import { restoreToDirectory } from "../fs/restore.js";
import { byPath, loadCatalog, storeCatalog, type CatalogEntry } from "../rdf/catalog.js";

export { parseKvUrl } from "./url.js";

const KEYS_DIR = "keys";

/** The snapshot path of a key: one file per key, the key percent-encoded. */
export function keyPath(key: string): string {
  return `${KEYS_DIR}/${encodeURIComponent(key)}`;
}

function natsOf(services: Readonly<Record<string, unknown>>): unknown {
  const bus = services["bus"] as { nc?: unknown } | undefined;
  if (!bus?.nc) {
    throw new IotvaultError(
      "FAILED_PRECONDITION",
      "kv: sources need the NATS connection (services.bus) and none was given",
      {
        hint: "run kv: backups and restores through the executor and the restore service",
      },
    );
  }
  return bus.nc;
}

async function openBucket(services: Readonly<Record<string, unknown>>, bucket: string, create: boolean): Promise<KV> {
  const kvm = new Kvm(natsOf(services) as ConstructorParameters<typeof Kvm>[0]);
  try {
    if (create) return await kvm.create(bucket);
    const kv = await kvm.open(bucket);
    await kv.status();
    return kv;
  } catch (err) {
    const e = toIotvaultError(err, `KV bucket ${bucket}`);
    if (/not found/i.test(e.message)) {
      throw new IotvaultError("NOT_FOUND", `the KV bucket ${bucket} does not exist`, {
        hint: "check the bucket name in the job's source",
        cause: err,
      });
    }
    throw e;
  }
}

const sha256 = (b: Uint8Array) => createHash("sha256").update(b).digest("hex");
const byBytes = compareUtf8;

async function* once(bytes: Uint8Array): AsyncGenerator<Uint8Array> {
  yield bytes;
}

function nsOf(d: Date): string {
  return (BigInt(d.getTime()) * 1_000_000n).toString();
}

async function backupKv(ctx: BackupContext): Promise<BackupSourceResult> {
  const bucket = parseKvUrl(ctx.job.source);
  const kv = await openBucket(ctx.services, bucket, false);
  const include = ctx.job.include.length ? compileGlobs(ctx.job.include, "include") : undefined;
  const exclude = ctx.job.exclude.length ? compileGlobs(ctx.job.exclude, "exclude") : undefined;
  const keys: string[] = [];
  for await (const k of await kv.keys()) {
    if ((!include || include(k)) && !exclude?.(k)) keys.push(k);
  }
  keys.sort((a, b) => byBytes(encodeURIComponent(a), encodeURIComponent(b)));
  const parentCatalog = ctx.parent ? await loadCatalog(ctx.repo, ctx.parent).catch(() => undefined) : undefined;
  const parentEntries = byPath(parentCatalog);
  const parentNodes = new Map<string, TreeNode>();
  if (ctx.parent)
    for await (const n of ctx.repo.readTree(ctx.parent, ctx.signal)) if (n.type === "file") parentNodes.set(n.path, n);
  const now = nsOf(new Date());
  await ctx.writer.addNode({ path: KEYS_DIR, type: "dir", mode: 0o755, mtimeNs: now, uid: 0, gid: 0 });
  const result: BackupSourceResult = { files: 0, dirs: 1, symlinks: 0, bytes: 0, warnings: 0, metadata: {} };
  const entries: CatalogEntry[] = [];
  for (const key of keys) {
    ctx.signal.throwIfAborted();
    const entry: KvEntry | null = await kv.get(key);
    if (!entry || entry.operation !== "PUT") continue; // deleted since it was listed
    const path = keyPath(key);
    const previous = parentEntries.get(path);
    const prevNode = parentNodes.get(path);
    const node: TreeNode = {
      path,
      type: "file",
      mode: 0o644,
      mtimeNs: nsOf(entry.created),
      uid: 0,
      gid: 0,
      size: entry.value.length,
    };
    const base = { path, key, revision: entry.revision, created: entry.created.toISOString() };
    if (
      previous?.revision === entry.revision &&
      prevNode?.sha256 !== undefined &&
      (prevNode.chunks ?? []).every((c) => ctx.repo.hasChunk(c))
    ) {
      await ctx.writer.addUnchangedFile({ ...node, chunks: prevNode.chunks ?? [], sha256: prevNode.sha256 });
      entries.push({ ...base, sha256: previous.sha256, size: previous.size, status: "unchanged" });
    } else {
      const stored = await ctx.writer.addFile(node, once(entry.value), { existedInParent: previous !== undefined });
      entries.push({
        ...base,
        sha256: stored.sha256 ?? sha256(entry.value),
        size: entry.value.length,
        status: previous ? "changed" : "new",
      });
    }
    result.files++;
    result.bytes += entry.value.length;
    ctx.onProgress({ filesDone: result.files, bytesDone: result.bytes, currentPath: key });
  }
  const summary = await storeCatalog(ctx.repo, { version: 1, kind: "kv", entries }, ctx.signal);
  result.metadata = {
    semantic: summary,
    bucket,
    keys: entries.length,
    keysUnchanged: entries.filter((e) => e.status === "unchanged").length,
  };
  return result;
}

interface Planned {
  entry: CatalogEntry;
  key: string;
  current: KvEntry | null;
}

async function restoreKv(ctx: RestoreContext): Promise<RestoreTargetResult> {
  if (!ctx.target.startsWith("kv:")) {
    const r = await restoreToDirectory(ctx.repo, ctx.snapshot, {
      target: ctx.target,
      include: [...ctx.include],
      overwrite: ctx.overwrite,
      verify: ctx.verify,
      signal: ctx.signal,
      onProgress: (p) => ctx.onProgress(p),
    });
    return { ...r, details: { kind: "kv", target: "directory" } };
  }
  const source = parseKvUrl(ctx.snapshot.source);
  const bucket = parseKvUrl(ctx.target);
  const catalog = await loadCatalog(ctx.repo, ctx.snapshot);
  if (!catalog) throw new IotvaultError("DATA_CORRUPT", `snapshot ${ctx.snapshot.id} has no KV catalog`);
  const include = ctx.include.length ? compileGlobs(ctx.include, "include") : undefined;
  const force = ctx.options["force"] === "true" || ctx.overwrite;
  const kv = await openBucket(ctx.services, bucket, true);
  const plan: Planned[] = [];
  const conflicts: string[] = [];
  let unchanged = 0;
  for (const entry of catalog.entries) {
    const key = entry.key!;
    if (include && !include(key)) continue;
    const current = await kv.get(key);
    const live = current && current.operation === "PUT" ? current : null;
    if (live && sha256(live.value) === entry.sha256) {
      unchanged++;
      continue;
    }
    if (live && (bucket !== source || live.revision !== entry.revision)) conflicts.push(key);
    plan.push({ entry, key, current: live });
  }
  if (conflicts.length > 0 && !force) {
    const shown = conflicts.slice(0, 20).join(", ");
    throw new IotvaultError(
      "FAILED_PRECONDITION",
      `${conflicts.length} key(s) of ${bucket} changed since the backup and were not overwritten: ${shown}${conflicts.length > 20 ? ", ..." : ""}`,
      {
        hint: "nothing was written; pass --option force=true to overwrite them",
        details: { keys: conflicts.slice(0, 100).join(",") },
      },
    );
  }
  const nodes = new Map<string, TreeNode>();
  for await (const n of ctx.repo.readTree(ctx.snapshot, ctx.signal)) if (n.type === "file") nodes.set(n.path, n);
  let bytes = 0;
  let files = 0;
  for (const p of plan) {
    ctx.signal.throwIfAborted();
    const node = nodes.get(p.entry.path);
    if (!node) throw new IotvaultError("DATA_CORRUPT", `snapshot ${ctx.snapshot.id} has no value for key ${p.key}`);
    const parts: Buffer[] = [];
    for await (const b of ctx.repo.readFile(node, ctx.signal)) parts.push(b);
    const value = Buffer.concat(parts);
    if (p.current) await kv.put(p.key, value);
    else await kv.create(p.key, value);
    files++;
    bytes += value.length;
    ctx.onProgress({ filesDone: files, bytesDone: bytes, currentPath: p.key });
  }
  let verified = false;
  if (ctx.verify) {
    for (const p of plan) {
      const now = await kv.get(p.key);
      if (!now || sha256(now.value) !== p.entry.sha256) {
        throw new IotvaultError("DATA_CORRUPT", `key ${p.key} of ${bucket} does not read back as restored`, {
          hint: "another writer changed it during the restore; restore again",
        });
      }
    }
    verified = true;
  }
  return {
    files,
    dirs: 0,
    symlinks: 0,
    bytes,
    verified,
    details: {
      kind: "kv",
      bucket,
      keys: plan.length + unchanged,
      written: files,
      unchanged,
      overwritten: force ? conflicts : [],
    },
  };
}

export const kvAdapter: SourceAdapter = {
  schemes: ["kv"],
  validate(url) {
    parseKvUrl(url);
  },
  backup: backupKv,
  restore: restoreKv,
};

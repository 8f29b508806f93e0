/**
 * The backup of a directory (or one file) of semantic or configuration files: every file is
 * stored byte for byte, and each file the source understands is analysed (parsed, hashed,
 * checked) into a catalog entry. Shared by the rdf:, rules: and config: sources.
 *
 * Incremental: a file whose bytes equal the parent snapshot's (same size, mtime, ctime and
 * inode, or the same SHA-256) is taken from the parent without being stored or analysed again;
 * a file whose bytes changed but whose graphs all keep their canonical hash is stored (restore
 * stays byte-faithful; dedup keeps it cheap) and recorded as `reserialised`, not as a change.
 */
import { constants, type BigIntStats } from "node:fs";
import { open, readlink, stat, type FileHandle } from "node:fs/promises";
import { basename, dirname } from "node:path";
import { IotvaultError, toIotvaultError } from "@iotvault/errors";
import type { Repository, SnapshotManifest, TreeNode } from "@iotvault/repo";
import { sha256Hex } from "@iotvault/semantic";
import type { BackupContext, BackupSourceResult } from "../adapter.js";
import { compileGlobs, isUnder } from "../fs/globs.js";
import { walk, type WalkEntry } from "../fs/walk.js";
import { AnalysePool, type AnalyseKind } from "./analyse-pool.js";
import {
  loadCatalog,
  storeCatalog,
  byPath,
  type CatalogEntry,
  type SemanticCatalog,
  type SemanticSourceKind,
} from "./catalog.js";

/** What an analysis adds to a file's catalog entry. */
export type Analysis = Omit<CatalogEntry, "path" | "sha256" | "size" | "status">;

export interface FileTreeOptions {
  kind: SemanticSourceKind;
  /** A directory or a single file. */
  root: string;
  /** True for the files this source analyses (others are stored byte for byte only). */
  isCandidate(path: string): boolean;
  /** Parses and checks one file; never throws for bad content (it says so in `error`). */
  analyse(path: string, bytes: Buffer, signal: AbortSignal): Promise<Analysis>;
  /** A short description of an analysis problem for the warning, or undefined when all is well. */
  problem(analysis: Analysis): string | undefined;
  /** Analyse files of at least POOL_MIN_BYTES in worker threads with this kind of analysis. */
  pool?: AnalyseKind | undefined;
}

/** Smaller files are analysed on the calling thread (a worker round trip would cost more). */
export const POOL_MIN_BYTES = 256 * 1024;

/** Files larger than this are stored without analysis (a warning says so): parsing is in memory. */
export const ANALYSE_MAX_BYTES = 512 * 1024 * 1024;
const READ_PIECE = 1 << 20;
const PROGRESS_INTERVAL_MS = 100;

function node(path: string, type: TreeNode["type"], s: BigIntStats): TreeNode {
  const base: TreeNode = {
    path,
    type,
    mode: Number(s.mode & 0o7777n),
    mtimeNs: s.mtimeNs.toString(),
    uid: Number(s.uid),
    gid: Number(s.gid),
  };
  if (type !== "file") return base;
  return {
    ...base,
    size: Number(s.size),
    inode: s.ino.toString(),
    dev: s.dev.toString(),
    ctimeNs: s.ctimeNs.toString(),
  };
}

function sameStat(previous: TreeNode | undefined, s: BigIntStats): boolean {
  return (
    previous !== undefined &&
    previous.size === Number(s.size) &&
    previous.mtimeNs === s.mtimeNs.toString() &&
    previous.ctimeNs === s.ctimeNs.toString() &&
    previous.inode === s.ino.toString()
  );
}

async function* pieces(fh: FileHandle, signal: AbortSignal): AsyncGenerator<Buffer> {
  const buffer = Buffer.allocUnsafe(READ_PIECE);
  let position = 0;
  for (;;) {
    signal.throwIfAborted();
    const { bytesRead } = await fh.read(buffer, 0, buffer.length, position);
    if (bytesRead === 0) return;
    position += bytesRead;
    yield buffer.subarray(0, bytesRead);
  }
}

async function* once(bytes: Buffer): AsyncGenerator<Buffer> {
  yield bytes;
}

/** The files of the parent snapshot by path (their chunks are reused for unchanged files). */
async function parentFiles(
  repo: Repository,
  parent: SnapshotManifest | undefined,
  signal: AbortSignal,
): Promise<Map<string, TreeNode>> {
  const out = new Map<string, TreeNode>();
  if (!parent) return out;
  for await (const n of repo.readTree(parent, signal)) if (n.type === "file") out.set(n.path, n);
  return out;
}

class FileTreeBackup {
  readonly result: BackupSourceResult = { files: 0, dirs: 0, symlinks: 0, bytes: 0, warnings: 0, metadata: {} };
  readonly entries: CatalogEntry[] = [];
  private lastProgress = -Infinity;
  private readonly include: ((p: string) => boolean) | undefined;
  private readonly exclude: ((p: string) => boolean) | undefined;
  private readonly pendingDirs: WalkEntry[] = [];
  private readonly includedDirs: string[] = [];

  constructor(
    private readonly ctx: BackupContext,
    private readonly options: FileTreeOptions,
    private readonly parentNodes: Map<string, TreeNode>,
    private readonly parentEntries: Map<string, CatalogEntry>,
    private readonly pool: AnalysePool | undefined,
  ) {
    this.include = ctx.job.include.length ? compileGlobs(ctx.job.include, "include") : undefined;
    this.exclude = ctx.job.exclude.length ? compileGlobs(ctx.job.exclude, "exclude") : undefined;
  }

  accept(path: string): boolean {
    return !this.exclude?.(path);
  }

  warn(path: string, message: string): void {
    this.result.warnings++;
    try {
      this.ctx.onWarning({ path, message });
    } catch {
      // a failing callback never fails the backup
    }
  }

  private progress(path: string): void {
    const now = performance.now();
    if (now - this.lastProgress < PROGRESS_INTERVAL_MS) return;
    this.lastProgress = now;
    try {
      this.ctx.onProgress({ filesDone: this.result.files, bytesDone: this.result.bytes, currentPath: path });
    } catch {
      // ignore
    }
  }

  /** Include globs: an entry is included when it or an ancestor directory matches. */
  private included(entry: WalkEntry): boolean {
    if (!this.include) return true;
    while (this.includedDirs.length > 0 && !isUnder(this.includedDirs.at(-1)!, entry.path)) this.includedDirs.pop();
    while (this.pendingDirs.length > 0 && !isUnder(this.pendingDirs.at(-1)!.path, entry.path)) this.pendingDirs.pop();
    const yes = this.includedDirs.length > 0 || this.include(entry.path);
    if (entry.kind === "dir") {
      if (yes) this.includedDirs.push(entry.path);
      else this.pendingDirs.push(entry);
    }
    return yes;
  }

  async visit(entry: WalkEntry): Promise<void> {
    this.ctx.signal.throwIfAborted();
    if (entry.kind === "other") {
      this.warn(entry.path, "skipped: sockets, FIFOs and device files are not backed up");
      return;
    }
    if (!this.included(entry)) return;
    for (const dir of this.pendingDirs.splice(0)) await this.addDir(dir);
    if (entry.kind === "dir") await this.addDir(entry);
    else if (entry.kind === "symlink") await this.addSymlink(entry);
    else await this.addFile(entry);
  }

  private async addDir(entry: WalkEntry): Promise<void> {
    await this.ctx.writer.addNode(node(entry.path, "dir", entry.stat));
    this.result.dirs++;
  }

  private async addSymlink(entry: WalkEntry): Promise<void> {
    try {
      const target = await readlink(entry.abs);
      await this.ctx.writer.addNode({ ...node(entry.path, "symlink", entry.stat), target });
      this.result.symlinks++;
    } catch (err) {
      this.warn(entry.path, `skipped, the symlink cannot be read: ${(err as Error).message}`);
    }
  }

  private reusable(previous: TreeNode | undefined): previous is TreeNode {
    return (
      previous !== undefined &&
      previous.sha256 !== undefined &&
      (previous.chunks ?? []).every((id) => this.ctx.repo.hasChunk(id))
    );
  }

  private async addFile(entry: WalkEntry): Promise<void> {
    const candidate = this.options.isCandidate(entry.path);
    const previous = this.parentNodes.get(entry.path);
    const previousEntry = this.parentEntries.get(entry.path);
    const fileNode = node(entry.path, "file", entry.stat);
    // Unchanged by stat: neither read nor analysed again.
    if (sameStat(previous, entry.stat) && this.reusable(previous) && (!candidate || previousEntry)) {
      await this.ctx.writer.addUnchangedFile({ ...fileNode, chunks: previous.chunks ?? [], sha256: previous.sha256! });
      if (previousEntry) this.entries.push({ ...previousEntry, status: "unchanged" });
      return this.done(entry.path, previous.size ?? 0);
    }
    let fh;
    try {
      fh = await open(entry.abs, constants.O_RDONLY | constants.O_NOFOLLOW);
    } catch (err) {
      this.warn(entry.path, `skipped, it vanished or cannot be opened: ${(err as Error).message}`);
      return;
    }
    try {
      const size = Number((await fh.stat({ bigint: true })).size);
      if (!candidate || size > ANALYSE_MAX_BYTES) {
        if (candidate) {
          this.warn(entry.path, `stored without analysis: ${size} bytes is more than ${ANALYSE_MAX_BYTES}`);
        }
        const stored = await this.ctx.writer.addFile(fileNode, pieces(fh, this.ctx.signal), {
          existedInParent: previous !== undefined,
        });
        if (candidate) {
          this.entries.push({
            path: entry.path,
            sha256: stored.sha256 ?? "",
            size: stored.size ?? size,
            status: previous ? "changed" : "new",
            error: { message: `too large to analyse (${size} bytes)` },
          });
        }
        return this.done(entry.path, stored.size ?? size);
      }
      const bytes = await fh.readFile();
      await this.addAnalysed(entry, fileNode, bytes, previous, previousEntry);
    } finally {
      await fh.close();
    }
  }

  private async addAnalysed(
    entry: WalkEntry,
    fileNode: TreeNode,
    bytes: Buffer,
    previous: TreeNode | undefined,
    previousEntry: CatalogEntry | undefined,
  ): Promise<void> {
    const sha256 = sha256Hex(bytes);
    const sized = { ...fileNode, size: bytes.length };
    if (
      previousEntry &&
      previous &&
      previousEntry.sha256 === sha256 &&
      previous.sha256 === sha256 &&
      this.reusable(previous)
    ) {
      await this.ctx.writer.addUnchangedFile({ ...sized, chunks: previous.chunks ?? [], sha256 });
      this.entries.push({ ...previousEntry, status: "unchanged" });
      return this.done(entry.path, bytes.length);
    }
    // The file is stored now, in tree order; its analysis fills its catalog slot when it is done
    // (in a worker for large files, so the next files are read and stored meanwhile).
    const slot = this.entries.length;
    this.entries.push({ path: entry.path, sha256, size: bytes.length, status: previous ? "changed" : "new" });
    const analysed = this.analyse(entry.path, bytes).then((analysis) => {
      const problem = this.options.problem(analysis);
      if (problem) this.warn(entry.path, problem);
      this.entries[slot] = {
        path: entry.path,
        sha256,
        size: bytes.length,
        status: statusOf(analysis, previousEntry),
        ...analysis,
      };
    });
    this.track(analysed);
    await this.ctx.writer.addFile(sized, once(bytes), { existedInParent: previous !== undefined });
    await this.settle(this.pool?.capacity ?? 0);
    this.done(entry.path, bytes.length);
  }

  private readonly analyses = new Set<Promise<void>>();
  private failure: { error: unknown } | undefined;

  private analyse(path: string, bytes: Buffer): Promise<Analysis> {
    const inline = () => this.options.analyse(path, bytes, this.ctx.signal);
    if (!this.pool || bytes.length < POOL_MIN_BYTES) return inline();
    // A worker that fails (not the file: a bad file is an analysis result) falls back to inline.
    return this.pool.analyse(this.options.pool!, path, bytes, this.ctx.signal).catch(() => inline());
  }

  private track(task: Promise<void>): void {
    const settled = task.catch((error: unknown) => {
      this.failure ??= { error };
    });
    this.analyses.add(settled);
    void settled.finally(() => this.analyses.delete(settled));
  }

  /** Waits until at most `inFlight` analyses are running; rethrows the first failure. */
  async settle(inFlight: number): Promise<void> {
    while (this.analyses.size > inFlight) await Promise.race(this.analyses);
    if (this.failure) throw this.failure.error;
  }

  private done(path: string, size: number): void {
    this.result.files++;
    this.result.bytes += size;
    this.progress(path);
  }
}

/** new / changed / reserialised (every graph keeps its canonical hash) against the parent's entry. */
function statusOf(analysis: Analysis, previous: CatalogEntry | undefined): CatalogEntry["status"] {
  if (!previous) return "new";
  const before = previous.graphs;
  const after = analysis.graphs;
  if (before && after && before.length === after.length && after.length > 0) {
    const same = after.every((g, i) => g.name === before[i]!.name && g.canonicalHash === before[i]!.canonicalHash);
    if (same) return "reserialised";
  }
  if (previous.rules?.canonicalHash && analysis.rules?.canonicalHash === previous.rules.canonicalHash)
    return "reserialised";
  return "changed";
}

/**
 * Backs up `options.root` into the context's writer and stores the catalog; returns the
 * source result whose metadata (`semantic`) goes into the snapshot manifest.
 */
export async function backupFileTree(ctx: BackupContext, options: FileTreeOptions): Promise<BackupSourceResult> {
  let info: BigIntStats;
  try {
    info = await stat(options.root, { bigint: true });
  } catch (err) {
    throw toIotvaultError(err, `source ${options.root}`);
  }
  let parentCatalog: SemanticCatalog | undefined;
  try {
    parentCatalog = ctx.parent ? await loadCatalog(ctx.repo, ctx.parent) : undefined;
  } catch (err) {
    ctx.onWarning({
      path: "(parent snapshot)",
      message: `its catalog cannot be read (${(err as Error).message}); every file is analysed again`,
    });
  }
  const pool = options.pool ? new AnalysePool() : undefined;
  const run = new FileTreeBackup(
    ctx,
    options,
    await parentFiles(ctx.repo, ctx.parent, ctx.signal),
    byPath(parentCatalog),
    pool,
  );
  try {
    if (info.isFile()) {
      await run.visit({ path: basename(options.root), abs: options.root, kind: "file", stat: info });
    } else if (info.isDirectory()) {
      const hooks = {
        accept: (p: string) => run.accept(p),
        warn: (p: string, m: string) => run.warn(p, m),
        signal: ctx.signal,
      };
      for await (const entry of walk(options.root, hooks)) await run.visit(entry);
    } else {
      throw new IotvaultError("INVALID_ARGUMENT", `source ${options.root} is neither a file nor a directory`, {
        hint: `point the ${options.kind}: source at a directory or a file`,
      });
    }
    await run.settle(0);
  } finally {
    await pool?.close();
  }
  const summary = await storeCatalog(ctx.repo, { version: 1, kind: options.kind, entries: run.entries }, ctx.signal);
  run.result.metadata = { semantic: summary, root: info.isFile() ? dirname(options.root) : options.root };
  return run.result;
}

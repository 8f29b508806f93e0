/**
 * One backup run: nodes and file contents in, packs, index files and one snapshot manifest out.
 * Nodes are appended in the order the calls are made (the tree keeps the order of the source);
 * calls need not wait for each other, but a caller SHOULD keep only a few dozen pending.
 */
import { createHash } from "node:crypto";
import { hostname } from "node:os";
import { IotvaultError } from "@iotvault/errors";
import { chunkId } from "./blob.js";
import { KnownChunks } from "./known-chunks.js";
import { EMPTY_SHA256, type LocalFileStat, type SealedFile, type StreamedChunk } from "./pipeline-core.js";
import { Chunker } from "./chunker.js";
import { cancelled, storeError, throwIfAborted, type RepoCore } from "./core.js";
import { FORMAT_VERSION, snapshotKey, type BlobTypeName } from "./format.js";
import { Packer } from "./packer.js";
import { encodedLineOf } from "./reader.js";
import type { HeldLock } from "./locks.js";
import type { ChunkSealer, StreamedLocalFile } from "./sealer.js";
import {
  emptyStats,
  encodeManifest,
  type BackupStatsInfo,
  type SnapshotManifest,
  type SnapshotMeta,
} from "./snapshot.js";
import { encodeNode, nodeProblem, type TreeNode } from "./tree.js";

export interface BackupOptions {
  /** The run this backup belongs to; the snapshot id is derived from it. */
  runId: string;
  /** The snapshot unchanged files are taken from (recorded as the parent). */
  parent?: SnapshotManifest | undefined;
  signal?: AbortSignal | undefined;
  onProgress?: ((p: BackupProgressInfo) => void) | undefined;
  /** Wait this long for a prune's exclusive lock to go away (default 0: fail at once, retryable). */
  lockWaitMs?: number | undefined;
}

export interface BackupProgressInfo {
  filesDone: number;
  bytesRead: number;
  bytesNew: number;
  bytesStored: number;
  packsWritten: number;
  currentPath: string;
}

export interface AddFileOptions {
  /** The parent snapshot had a file at this path (counts as changed, not new). */
  existedInParent?: boolean | undefined;
  /**
   * The caller gives up the content's buffers as it yields them (it never reads or reuses
   * them again): the writer may move them to a worker thread without copying them, which
   * leaves them empty. Without it, every piece is copied before the next one is asked for.
   */
  transfer?: boolean | undefined;
}

export interface LocalFileOptions {
  /** The parent snapshot had a file at this path (counts as changed, not new). */
  existedInParent?: boolean | undefined;
  /** Reads to try while the file keeps changing under the read (default 3). */
  attempts?: number | undefined;
  /**
   * Keep what was read even when the file changes under the read (database data files, whose
   * torn pages WAL replay repairs): read to the end, no stat check, the node's size is what was
   * read. The file is streamed through one worker whatever its size.
   */
  tolerateChanges?: boolean | undefined;
  /**
   * Cut the file into chunks of the chunker's average size at fixed offsets instead of at
   * content-defined boundaries (streamed files only): for files whose pages are updated in place
   * and never shift, such as a database's relation files. A changed page changes one chunk, as
   * with content-defined chunks, and no time is spent finding boundaries.
   */
  fixedChunks?: boolean | undefined;
  /** Builds the file's node from the stat its content was read under (size, chunks, sha256 are filled in). */
  node(stat: LocalFileStat): Omit<TreeNode, "chunks" | "sha256">;
  /**
   * The read of this file started earlier by readLocalFileEarly (same path): its result is
   * used instead of reading the file now. Ignored with tolerateChanges or fixedChunks.
   */
  early?: EarlyLocalFile | undefined;
}

/** A large local file being read ahead of its place in the tree (see BackupWriter.readLocalFileEarly). */
export interface EarlyLocalFile {
  readonly absPath: string;
  /** Settles (never rejects) once the read is over, whatever became of it. */
  readonly done: Promise<void>;
}

/** What became of a local file: added to the tree, or not (it vanished, or kept changing). */
export type LocalFileOutcome =
  { added: true; node: TreeNode } | { added: false; reason: "changed" | "gone"; message: string };

/** Local files up to this size are read whole in a worker by addLocalFile; larger ones are streamed through one. */
export const LOCAL_FILE_MAX_BYTES = 8 * 1024 * 1024;

export interface BackupWriter {
  /** The id the snapshot will have (`repo.snapshotIdFor(runId)`). */
  readonly snapshotId: string;
  /** Adds a directory or symlink node. */
  addNode(node: TreeNode): Promise<void>;
  /** Chunks, dedups and stores the content, then adds the file node (chunks, sha256, size filled in). */
  addFile(
    node: Omit<TreeNode, "chunks" | "sha256">,
    content: AsyncIterable<Uint8Array>,
    options?: AddFileOptions,
  ): Promise<TreeNode>;
  /**
   * Adds a local regular file that the writer reads itself, in a worker thread: opened with
   * O_NOFOLLOW, read (whole up to LOCAL_FILE_MAX_BYTES, a segment at a time through one worker
   * above), and read again while its fstat before and after the read disagree (size, mtime,
   * ctime, inode), up to `attempts` times. A file that vanished, is no longer a regular file,
   * grew past 4 x LOCAL_FILE_MAX_BYTES (read whole) or kept changing is not added; the outcome
   * says why. Its place in the tree is the call's place. `expectedBytes` is the size the caller
   * saw (it picks the way the file is read).
   */
  addLocalFile(absPath: string, expectedBytes: number, options: LocalFileOptions): Promise<LocalFileOutcome>;
  /**
   * Starts reading a large local file now, ahead of its place in the tree, as addLocalFile
   * streams one (new chunks go to packs as they come): a source that knows early which large
   * files changed keeps every core busy while it walks the rest. The file is added by a later
   * addLocalFile call for the same path with `early` set to the returned handle; a read never
   * added costs only its orphan chunks (prune removes them). commit and abort wait for it.
   * Undefined, and nothing read, with a single pipeline thread: there, reading early would
   * only change the order of the same work on the same thread.
   */
  readLocalFileEarly(absPath: string, options?: { attempts?: number | undefined }): EarlyLocalFile | undefined;
  /**
   * Adds a file node unchanged from the parent snapshot (its chunks are known to exist). A node
   * as read from the parent with `readTree(parent, signal, { frozen: true })` is added by
   * copying the line it was stored as (nothing to encode or check again).
   */
  addUnchangedFile(node: TreeNode): Promise<void>;
  /** File nodes added so far by copying their stored line (see addUnchangedFile). */
  readonly nodesCopied: number;
  /** Flushes packs and indexes, writes the tree and the manifest. */
  commit(meta: SnapshotMeta): Promise<{ snapshot: SnapshotManifest; stats: BackupStatsInfo }>;
  /** Stops; already stored packs stay indexed (for resume). */
  abort(): Promise<void>;
}

type State = "open" | "committing" | "aborting" | "done";

/** A file that arrives as one piece of at most this size is chunked, hashed and sealed in a worker. */
const WHOLE_FILE_BYTES = 8 * 1024 * 1024;
const noop = (): void => undefined;
/** A streamed chunk was left unsealed as known, and is not (see KnownChunks). */
class NotKnownAfterAll extends Error {}
/** Progress callbacks come at most this often. */
const PROGRESS_INTERVAL_MS = 100;
/** Characters of encoded nodes hashed and chunked at once (one Buffer per batch, not per node). */
const TREE_BATCH_CHARS = 64 * 1024;

interface FileContent {
  chunks: string[];
  size: number;
  sha256: string;
  /** Hands the file's sealed chunks to the packer; called in tree order, so packs hold files in tree order. */
  accept?: (() => void) | undefined;
}

/**
 * Two queues keep the work ordered: contents are consumed one file at a time in call order
 * (the chunker is shared), and nodes are appended to the tree in call order. A file that is a
 * single small piece is hashed and sealed in a worker without holding up the next call, so a
 * caller that keeps several addFile calls pending uses every core.
 */
export class BackupSession implements BackupWriter {
  private readonly stats = emptyStats();
  private readonly started = Date.now();
  /** New chunks of this run not yet in the master index (queued, sealing, uploading, unindexed). */
  private readonly pending = new Set<string>();
  /** The index's ids and `pending`, shared with the workers (see KnownChunks); made when first needed. */
  private known: KnownChunks | undefined;
  private readonly dataChunker: Chunker;
  private readonly treeChunker: Chunker;
  private readonly treeHash = createHash("sha256");
  private readonly treeChunks: string[] = [];
  private treeNodes = 0;
  private treeBytes = 0;
  /** Encoded nodes not yet hashed and chunked (see appendLine). */
  private treeText = "";
  private filesDone = 0;
  private copied = 0;
  /** Reads started by readLocalFileEarly and not yet added. */
  private readonly earlyReads = new Map<EarlyLocalFile, Promise<StreamedLocalFile>>();
  private lastProgress = -Infinity;
  private inputTail: Promise<unknown> = Promise.resolve();
  private treeTail: Promise<unknown> = Promise.resolve();
  private state: State = "open";
  private readonly packer: Packer;

  constructor(
    private readonly core: RepoCore,
    private readonly sealer: ChunkSealer,
    readonly snapshotId: string,
    private readonly options: BackupOptions,
    /** The shared lock taken by startBackup: checked before the manifest, released when done. */
    private readonly lock?: HeldLock | undefined,
  ) {
    sealer.configure({ gear: core.gear, chunker: core.config.chunker });
    this.dataChunker = new Chunker(core.config.chunker, core.gear);
    this.treeChunker = new Chunker(core.config.chunker, core.gear);
    this.packer = new Packer(
      core,
      sealer,
      {
        onPackStored: (bytes) => {
          this.stats.packsWritten++;
          this.stats.bytesStored += bytes;
          this.progress("");
        },
        onIndexStored: (bytes) => {
          this.stats.bytesStored += bytes;
        },
      },
      options.signal,
    );
  }

  get nodesCopied(): number {
    return this.copied;
  }

  addNode(node: TreeNode): Promise<void> {
    const refused = this.refuseCall() ?? nodeError(node, node.type === "file" ? "file-via-addNode" : undefined);
    if (refused) return Promise.reject(refused);
    return this.inTreeOrder(async () => {
      await this.appendNode(node);
      if (node.type === "dir") this.stats.dirs++;
      else this.stats.symlinks++;
    });
  }

  addFile(
    node: Omit<TreeNode, "chunks" | "sha256">,
    content: AsyncIterable<Uint8Array>,
    options: AddFileOptions = {},
  ): Promise<TreeNode> {
    const refused =
      this.refuseCall() ??
      (node.type !== "file"
        ? new IotvaultError("INVALID_ARGUMENT", `${node.path} is not a file node`)
        : nodeError({ ...node, size: node.size ?? 0 }));
    if (refused) return Promise.reject(refused);
    const prepared = this.inInputOrder(() => this.prepareContent(content, options.transfer === true));
    return this.inTreeOrder(async () => {
      const { chunks, size, sha256, accept } = await (await prepared).result;
      accept?.();
      const full: TreeNode = { ...node, size, chunks, sha256 };
      await this.appendNode(full);
      if (options.existedInParent) this.stats.filesChanged++;
      else this.stats.filesNew++;
      this.stats.totalBytes += size;
      this.filesDone++;
      this.progress(node.path);
      return full;
    });
  }

  addLocalFile(absPath: string, expectedBytes: number, options: LocalFileOptions): Promise<LocalFileOutcome> {
    try {
      const refused = this.refuseCall();
      if (refused) throw refused;
      this.checkRunning();
    } catch (err) {
      return Promise.reject(err instanceof Error ? err : new Error(String(err)));
    }
    const attempts = Math.max(1, options.attempts ?? 3);
    // The read started by readLocalFileEarly for this path, if that is what the handle is.
    const handle = options.early;
    const early = handle?.absPath === absPath ? this.earlyReads.get(handle) : undefined;
    if (handle && early && !options.tolerateChanges && !options.fixedChunks) {
      this.earlyReads.delete(handle);
      return this.addStreamedLocalFile(absPath, attempts, options, early);
    }
    if (expectedBytes > LOCAL_FILE_MAX_BYTES || options.tolerateChanges) {
      return this.addStreamedLocalFile(absPath, attempts, options);
    }
    const readOptions = { attempts, maxBytes: 4 * LOCAL_FILE_MAX_BYTES };
    const sealed = this.sealer.sealLocalFile(absPath, expectedBytes, readOptions, this.core.currentKey());
    sealed.catch(noop); // awaited by the tree step
    return this.inTreeOrder(async (): Promise<LocalFileOutcome> => {
      const r = await sealed;
      if (r.kind !== "read") return { added: false, reason: r.kind, message: r.message };
      this.stats.bytesRead += r.file.size;
      this.acceptSealed(r.file);
      const outcome = await this.addReadFile(options, r.stat, {
        size: r.file.size,
        chunks: r.file.chunks.map((c) => c.id),
        sha256: r.file.sha256,
      });
      // Backpressure, as for streamed files: while a full pack waits for an upload slot, the
      // packer keeps copies of the blobs that arrive; without this wait a store slower than the
      // workers made that copy grow with the size of the source (117 MiB held at 4 GiB).
      await this.packer.room();
      return outcome;
    });
  }

  /**
   * A large local file (or one that may change under the read) goes through one worker a
   * segment at a time; its new chunks go to the packer as they come (out of tree order, so that
   * the file is never held whole), its node in tree order.
   */
  private addStreamedLocalFile(
    absPath: string,
    attempts: number,
    options: LocalFileOptions,
    streamed = this.streamLocalFile(absPath, attempts, options),
  ): Promise<LocalFileOutcome> {
    return this.inTreeOrder(async (): Promise<LocalFileOutcome> => {
      const r = await streamed;
      if (r.kind !== "read") return { added: false, reason: r.kind, message: r.message };
      this.stats.bytesRead += r.size;
      return this.addReadFile(options, r.stat, { size: r.size, chunks: r.chunks, sha256: r.sha256 });
    });
  }

  readLocalFileEarly(absPath: string, options: { attempts?: number | undefined } = {}): EarlyLocalFile | undefined {
    const refused = this.refuseCall();
    if (refused) throw refused;
    this.checkRunning();
    if (this.sealer.parallelism < 2) return undefined;
    // In one worker: the other ones keep sealing what the caller adds meanwhile.
    const read = this.streamLocalFile(absPath, Math.max(1, options.attempts ?? 3), { oneWorker: true });
    const handle: EarlyLocalFile = { absPath, done: read.then(noop, noop) };
    this.earlyReads.set(handle, read);
    return handle;
  }

  /** Streams a local file through the sealer; its new chunks go to the packer as they come. */
  private streamLocalFile(
    absPath: string,
    attempts: number,
    options: Pick<LocalFileOptions, "tolerateChanges" | "fixedChunks"> & { oneWorker?: boolean },
  ): Promise<StreamedLocalFile> {
    const read = (known: KnownChunks | undefined) =>
      this.sealer.sealStreamedLocalFile(
        absPath,
        {
          attempts,
          tolerateChanges: options.tolerateChanges,
          fixedChunks: options.fixedChunks,
          known: known?.shared,
          oneWorker: options.oneWorker,
        },
        () => this.core.currentKey(),
        (chunks) => {
          this.checkRunning();
          if (!this.acceptChunks(chunks)) throw new NotKnownAfterAll();
          return this.packer.room();
        },
      );
    // A chunk the table only seemed to know (64-bit prefixes collide): read it all again, sealing everything.
    const streamed = read(this.knownChunks()).catch((err: unknown) => {
      if (err instanceof NotKnownAfterAll) return read(undefined);
      throw err;
    });
    streamed.catch(noop); // awaited by the tree step (or by commit and abort, read early and never added)
    return streamed;
  }

  /** The chunks this run need not seal again, for the workers (made at the first streamed file). */
  private knownChunks(): KnownChunks {
    if (!this.known) {
      this.known = new KnownChunks(this.core.index.chunkCount + this.pending.size);
      for (const id of this.core.index.ids()) this.known.add(id);
      for (const id of this.pending) this.known.add(id);
    }
    return this.known;
  }

  /** Marks a chunk as new in this run (queued for a pack). */
  private addPending(id: string): void {
    this.pending.add(id);
    this.known?.add(id);
  }

  /** The tree step of a local file read by the sealer. */
  private async addReadFile(
    options: LocalFileOptions,
    stat: LocalFileStat,
    content: { size: number; chunks: string[]; sha256: string },
  ): Promise<LocalFileOutcome> {
    const node: TreeNode = { ...options.node(stat), type: "file", ...content };
    const refused = nodeError(node);
    if (refused) throw refused;
    await this.appendNode(node);
    if (options.existedInParent) this.stats.filesChanged++;
    else this.stats.filesNew++;
    this.stats.totalBytes += content.size;
    this.filesDone++;
    this.progress(node.path);
    return { added: true, node };
  }

  addUnchangedFile(node: TreeNode): Promise<void> {
    // A node of a tree read with `frozen` was checked when it was decoded and cannot have
    // changed since: the line it was stored as is appended as it is.
    const line = encodedLineOf(node);
    const refused =
      this.refuseCall() ?? (line === undefined ? nodeError(node) : undefined) ?? this.unchangedError(node);
    if (refused) return Promise.reject(refused);
    return this.inTreeOrder(async () => {
      if (line === undefined) await this.appendNode(node);
      else {
        await this.appendLine(line + "\n");
        this.copied++;
      }
      this.stats.filesUnchanged++;
      this.stats.totalBytes += node.size ?? 0;
      this.stats.chunksTotal += node.chunks?.length ?? 0;
      this.filesDone++;
      this.progress(node.path);
    });
  }

  commit(meta: SnapshotMeta): Promise<{ snapshot: SnapshotManifest; stats: BackupStatsInfo }> {
    const refused = this.refuseCall();
    if (refused) return Promise.reject(refused);
    this.state = "committing";
    const run = this.treeTail.then(async () => {
      try {
        await this.inputTail;
        await this.settleEarlyReads();
        throwIfAborted(this.options.signal, "the backup");
        await this.flushTree();
        for (const chunk of this.treeChunker.finish()) this.treeChunks.push(await this.storeChunk(chunk, "tree"));
        await this.packer.flush();
        const snapshot = this.manifest(meta);
        await this.lock?.check(`the backup of snapshot ${this.snapshotId}`); // never commit after a prune may have run
        await this.storeManifest(snapshot);
        this.state = "done";
        await this.lock?.release().catch(noop);
        return { snapshot, stats: { ...snapshot.stats } };
      } catch (err) {
        if (this.state === "committing") this.state = "open";
        throw err;
      }
    });
    this.treeTail = run.catch(noop);
    return run;
  }

  async abort(): Promise<void> {
    if (this.state === "done" || this.state === "aborting") return;
    this.state = "aborting";
    await this.inputTail.catch(noop);
    await this.treeTail.catch(noop);
    await this.settleEarlyReads();
    await this.packer.abort();
    this.state = "done";
    await this.lock?.release().catch(noop);
  }

  /** Waits for the early reads never added: their chunks reach the packer before it is flushed. */
  private async settleEarlyReads(): Promise<void> {
    const reads = [...this.earlyReads.values()];
    this.earlyReads.clear();
    await Promise.allSettled(reads);
  }

  private refuseCall(): IotvaultError | undefined {
    if (this.state === "open") return undefined;
    return new IotvaultError("FAILED_PRECONDITION", `the backup of snapshot ${this.snapshotId} is already finished`);
  }

  private unchangedError(node: TreeNode): IotvaultError | undefined {
    if (node.type !== "file" || !node.chunks || node.sha256 === undefined || node.size === undefined) {
      return new IotvaultError("INVALID_ARGUMENT", `${node.path}: an unchanged file needs its chunks, size and sha256`);
    }
    const missing = node.chunks.find((id) => !this.core.index.has(id) && !this.pending.has(id));
    if (missing === undefined) return undefined;
    return new IotvaultError("NOT_FOUND", `chunk ${missing} of ${node.path} is not in the repository index`, {
      hint: "read the file again (back it up with addFile)",
    });
  }

  /** Runs `fn` after every earlier content step; its failure never blocks later steps. */
  private inInputOrder<T>(fn: () => Promise<T>): Promise<T> {
    const run = this.inputTail.then(() => {
      this.checkRunning();
      return fn();
    });
    this.inputTail = run.catch(noop);
    run.catch(noop); // awaited by the tree step; never an unhandled rejection meanwhile
    return run;
  }

  /** Runs `fn` after every earlier tree step (node order = call order). */
  private inTreeOrder<T>(fn: () => Promise<T>): Promise<T> {
    const run = this.treeTail.then(fn);
    this.treeTail = run.catch(noop);
    return run;
  }

  /**
   * Consumes a file's content. A file that arrives as one piece of at most WHOLE_FILE_BYTES is
   * chunked, hashed and sealed by the sealer (a worker) while later calls go on.
   */
  private async prepareContent(
    content: AsyncIterable<Uint8Array>,
    transfer: boolean,
  ): Promise<{ result: Promise<FileContent> }> {
    const it = content[Symbol.asyncIterator]();
    try {
      const first = await it.next();
      if (first.done) return { result: Promise.resolve({ chunks: [], size: 0, sha256: EMPTY_SHA256 }) };
      this.checkRunning();
      const whole = first.value.length <= WHOLE_FILE_BYTES;
      // A producer may reuse its buffer for the next piece: keep a copy before asking for it.
      const head = whole && !transfer ? Buffer.from(first.value) : first.value;
      const second = whole ? await it.next() : undefined;
      if (second?.done) return { result: this.sealWholeFile(head, transfer) };
      const pieces = second ? [head, second.value] : [head];
      return { result: Promise.resolve(await this.storeContent(pieces, it)) };
    } catch (err) {
      await it.return?.().catch(noop);
      throw err;
    }
  }

  private sealWholeFile(piece: Uint8Array, owned: boolean): Promise<FileContent> {
    const size = piece.length;
    this.stats.bytesRead += size;
    const result = this.sealer.sealFile(piece, owned, this.core.currentKey()).then((file): FileContent => ({
      chunks: file.chunks.map((c) => c.id),
      size,
      sha256: file.sha256,
      accept: () => this.acceptSealed(file),
    }));
    result.catch(noop); // awaited by the tree step
    return result;
  }

  /** Queues the chunks of a file sealed in a worker that are new to the repository (the others are dropped). */
  private acceptSealed(file: SealedFile): void {
    this.acceptChunks(file.chunks);
    file.release?.(); // every blob was copied into a pack (or dropped)
  }

  /**
   * Queues sealed chunks that are new to the repository (copied at once; the others are
   * dropped). False when a chunk left unsealed as known is not known after all.
   */
  private acceptChunks(chunks: readonly StreamedChunk[]): boolean {
    for (const c of chunks) {
      this.stats.chunksTotal++;
      if (this.core.index.has(c.id) || this.pending.has(c.id)) continue;
      if (!("sealed" in c)) return false;
      this.addPending(c.id);
      this.stats.chunksNew++;
      this.stats.bytesNew += c.rawLength;
      this.packer.addSealed({ id: c.id, type: "data", flags: c.flags, rawLength: c.rawLength, sealed: c.sealed });
    }
    return true;
  }

  /** The general path: every piece through the chunker, sha256 over the whole content. */
  private async storeContent(first: Uint8Array[], rest: AsyncIterator<Uint8Array>): Promise<FileContent> {
    const hash = createHash("sha256");
    const chunks: string[] = [];
    let size = 0;
    const feed = async (piece: Uint8Array): Promise<void> => {
      this.checkRunning();
      hash.update(piece);
      size += piece.length;
      this.stats.bytesRead += piece.length;
      for (const chunk of this.dataChunker.push(piece)) chunks.push(await this.storeChunk(chunk, "data"));
    };
    try {
      for (const piece of first) await feed(piece);
      for (let r = await rest.next(); r.done !== true; r = await rest.next()) await feed(r.value);
      for (const chunk of this.dataChunker.finish()) chunks.push(await this.storeChunk(chunk, "data"));
    } catch (err) {
      this.dataChunker.reset();
      throw err;
    }
    return { chunks, size, sha256: hash.digest("hex") };
  }

  private checkRunning(): void {
    if (this.state === "aborting") throw cancelled("the backup");
    throwIfAborted(this.options.signal, "the backup");
    this.packer.check();
  }

  private async storeChunk(plain: Buffer, type: BlobTypeName): Promise<string> {
    const id = chunkId(this.core.macKey, plain);
    this.stats.chunksTotal++;
    if (this.core.index.has(id) || this.pending.has(id)) return id;
    this.addPending(id);
    this.stats.chunksNew++;
    this.stats.bytesNew += plain.length;
    await this.packer.add(id, type, plain);
    return id;
  }

  private appendNode(node: TreeNode): Promise<void> {
    return this.appendLine(encodeNode(node));
  }

  /**
   * Appends one encoded node (ending in a newline) to the tree. Lines are hashed and chunked a
   * batch at a time (TREE_BATCH_CHARS): the tree's bytes, and so its chunks, are the same.
   */
  private async appendLine(line: string): Promise<void> {
    this.treeText += line;
    this.treeNodes++;
    if (this.treeText.length >= TREE_BATCH_CHARS) await this.flushTree();
  }

  private async flushTree(): Promise<void> {
    if (this.treeText === "") return;
    const bytes = Buffer.from(this.treeText, "utf8");
    this.treeText = "";
    this.treeHash.update(bytes);
    this.treeBytes += bytes.length;
    for (const chunk of this.treeChunker.push(bytes)) this.treeChunks.push(await this.storeChunk(chunk, "tree"));
  }

  private manifest(meta: SnapshotMeta): SnapshotManifest {
    this.stats.durationMs = Date.now() - this.started;
    return {
      version: FORMAT_VERSION,
      id: this.snapshotId,
      time: (meta.time ?? new Date()).toISOString(),
      hostname: meta.hostname ?? hostname(),
      runId: this.options.runId,
      jobId: meta.jobId,
      jobName: meta.jobName,
      source: meta.source,
      backupType: meta.backupType,
      ...(this.options.parent ? { parent: this.options.parent.id } : {}),
      tags: [...(meta.tags ?? [])],
      labels: { ...(meta.labels ?? {}) },
      stats: { ...this.stats },
      metadata: meta.metadata ?? {},
      tree: {
        chunks: [...this.treeChunks],
        nodes: this.treeNodes,
        bytes: this.treeBytes,
        sha256: this.treeHash.copy().digest("hex"),
      },
    };
  }

  private async storeManifest(snapshot: SnapshotManifest): Promise<void> {
    const key = snapshotKey(snapshot.id);
    const sealed = this.core.sealObject(key, encodeManifest(snapshot));
    let existed: boolean;
    try {
      ({ existed } = await this.core.store.put(key, sealed, { ifAbsent: true, signal: this.options.signal }));
    } catch (err) {
      throw storeError(err, `storing snapshot ${snapshot.id}`);
    }
    if (existed) {
      throw new IotvaultError("ALREADY_EXISTS", `snapshot ${snapshot.id} of run ${snapshot.runId} already exists`, {
        hint: "the run was committed before; load that snapshot instead of backing up again",
      });
    }
  }

  /** Reports progress at most every PROGRESS_INTERVAL_MS (a callback per small file costs more than the file). */
  private progress(currentPath: string): void {
    const onProgress = this.options.onProgress;
    if (!onProgress) return;
    const now = performance.now();
    if (now - this.lastProgress < PROGRESS_INTERVAL_MS) return;
    this.lastProgress = now;
    try {
      onProgress({
        filesDone: this.filesDone,
        bytesRead: this.stats.bytesRead,
        bytesNew: this.stats.bytesNew,
        bytesStored: this.stats.bytesStored,
        packsWritten: this.stats.packsWritten,
        currentPath,
      });
    } catch {
      // A failing progress callback must not fail the backup.
    }
  }
}

function nodeError(
  node: TreeNode | Omit<TreeNode, "chunks" | "sha256">,
  special?: "file-via-addNode",
): IotvaultError | undefined {
  if (special)
    return new IotvaultError("INVALID_ARGUMENT", `${node.path} is a file: add it with addFile or addUnchangedFile`);
  const problem = nodeProblem(node);
  if (problem) return new IotvaultError("INVALID_ARGUMENT", `tree node ${JSON.stringify(node.path)} ${problem}`);
  return undefined;
}

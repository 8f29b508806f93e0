/**
 * Where chunks are hashed, compressed, encrypted, and read back: in the calling thread
 * (InlineSealer) or in a small pool of worker threads (WorkerSealer, workers.ts). Both give
 * identical bytes; the worker pool moves buffers between threads without copying them when
 * the caller hands them over (`owned`).
 */
import type { SealKey, Sealed } from "./blob.js";
import { readBack, type ReadBack } from "./read-back.js";
import {
  LocalFileStream,
  PipelineCore,
  type BlobRef,
  type LargeReadOptions,
  type LocalFileStat,
  type LocalReadOptions,
  type PipelineParams,
  type SealedFile,
  type StreamedChunk,
} from "./pipeline-core.js";

/** What the pipeline needs from the repository besides the level and MAC key (set once). */
export type PipelineShape = Pick<PipelineParams, "gear" | "chunker">;

/** A local file read and sealed by the sealer itself, or why it was not. */
export type SealedLocalFile =
  { kind: "read"; stat: LocalFileStat; file: SealedFile } | { kind: "changed" | "gone"; message: string };

/** How sealStreamedLocalFile reads a file. */
export type StreamOptions = LargeReadOptions & { attempts: number; oneWorker?: boolean | undefined };

/** A local file streamed through the sealer (its chunks went to the caller segment by segment), or why not. */
export type StreamedLocalFile =
  | { kind: "read"; stat: LocalFileStat; sha256: string; size: number; chunks: string[] }
  | { kind: "changed" | "gone"; message: string };

/**
 * A blob opened, or why not: `targetError` (an errno code such as ENOSPC) when the blob was
 * fine and writing it to the restored file failed.
 */
export type OpenedBlob =
  | { ok: true; plain: Buffer; digest: string }
  | { ok: false; problem: string; unknownKeyId?: number; targetError?: string };

export interface ChunkSealer {
  /** How many chunks it works on at once (callers keep about twice that queued). */
  readonly parallelism: number;
  /** The chunker's gear table and sizes; the first backup or read session sets them. */
  configure(shape: PipelineShape): void;
  /**
   * Starts its threads now rather than with the first job (a worker takes tens of milliseconds
   * to load), so that their start overlaps a session's set-up (loading the tree, the walk).
   */
  warm(): void;
  /**
   * Compresses and encrypts one chunk whose id is known. With `owned`, the caller gives the
   * buffer up (it may be moved to another thread and become empty); otherwise it is copied
   * before the call returns.
   */
  seal(plain: Uint8Array, owned: boolean, id: string, key: SealKey): Promise<Sealed>;
  /** Chunks, hashes (chunk ids, the file's sha256), compresses and encrypts a whole file. */
  sealFile(content: Uint8Array, owned: boolean, key: SealKey): Promise<SealedFile>;
  /**
   * Reads a local file (see PipelineCore.readLocalFile) and seals it like sealFile; in a worker
   * thread, so that the reads of many small files leave the calling thread free. `expectedBytes`
   * is the size the caller saw (for balancing the workers).
   */
  sealLocalFile(path: string, expectedBytes: number, options: LocalReadOptions, key: SealKey): Promise<SealedLocalFile>;
  /**
   * Reads, chunks, hashes and seals a local file of any size a segment at a time, in one
   * worker (see LocalFileStream), read again from the start up to `attempts` times while it
   * changes under the read. `onChunks` gets each segment's sealed chunks in file order and
   * must copy them before it returns (their memory is reused); the next segments wait for the
   * promise it returns (backpressure). Chunks of an attempt that failed were handed over too.
   * With `options.known`, chunks found there come back unsealed (KnownChunk). `oneWorker`:
   * never split the file across the workers (a read in the background of other work).
   */
  sealStreamedLocalFile(
    path: string,
    options: StreamOptions,
    key: () => SealKey,
    onChunks: (chunks: StreamedChunk[]) => Promise<void> | void,
  ): Promise<StreamedLocalFile>;
  /** Decrypts, decompresses and checks the blobs found at `blobs[i].at` in `data`. */
  open(
    data: Uint8Array,
    owned: boolean,
    blobs: BlobRef[],
    keys: ReadonlyMap<number, Uint8Array>,
  ): Promise<OpenedBlob[]>;
  /**
   * The SHA-256 and length of what the open descriptor `fd` reads back (a restored file),
   * computed in a worker thread when there are any; `expectedBytes` for balancing.
   */
  readBack(fd: number, expectedBytes: number): Promise<ReadBack>;
  close(): Promise<void>;
}

export const notConfigured = (): Error =>
  new Error("the chunk sealer was not configured with the chunker's parameters");

export class InlineSealer implements ChunkSealer {
  readonly parallelism = 1;
  private core: PipelineCore | undefined;
  private configured = false;

  constructor(
    private readonly compressionLevel: number,
    private readonly macKey: Uint8Array,
  ) {}

  configure(shape: PipelineShape): void {
    if (this.configured && this.core?.params.gear === shape.gear) return;
    this.core = new PipelineCore({ compressionLevel: this.compressionLevel, macKey: this.macKey, ...shape });
    this.configured = true;
  }

  warm(): void {
    // the calling thread needs no start
  }

  async seal(plain: Uint8Array, _owned: boolean, id: string, key: SealKey): Promise<Sealed> {
    return this.pipeline().sealChunk(plain, id, key);
  }

  async sealFile(content: Uint8Array, _owned: boolean, key: SealKey): Promise<SealedFile> {
    if (!this.configured) throw notConfigured();
    return this.pipeline().sealFile(content, key);
  }

  async sealLocalFile(path: string, _expectedBytes: number, options: LocalReadOptions, key: SealKey) {
    if (!this.configured) throw notConfigured();
    const core = this.pipeline();
    const read = core.readLocalFile(path, options);
    if (read.kind !== "read") return read;
    return { kind: "read" as const, stat: read.stat, file: core.sealFile(read.content, key) };
  }

  async sealStreamedLocalFile(
    path: string,
    options: StreamOptions,
    key: () => SealKey,
    onChunks: (chunks: StreamedChunk[]) => Promise<void> | void,
  ): Promise<StreamedLocalFile> {
    if (!this.configured) throw notConfigured();
    const core = this.pipeline();
    let last: StreamedLocalFile = { kind: "changed", message: "" };
    for (let attempt = 1; attempt <= Math.max(1, options.attempts); attempt++) {
      const stream = core.openStream(path, options);
      if (!(stream instanceof LocalFileStream)) return stream;
      const ids: string[] = [];
      try {
        for (;;) {
          const step = stream.next(core.sealing(options.known, core.sealerOwn(key())));
          if ("message" in step) {
            last = step;
            break;
          }
          for (const c of step.chunks) ids.push(c.id);
          await onChunks(step.chunks);
          if (step.kind === "end")
            return { kind: "read", stat: step.stat, sha256: step.sha256, size: step.size, chunks: ids };
        }
      } finally {
        stream.close();
      }
      if (last.kind === "gone") return last;
    }
    return { kind: "changed", message: `skipped: it changed while being read, ${options.attempts} times in a row` };
  }

  async open(data: Uint8Array, _owned: boolean, blobs: BlobRef[], keys: ReadonlyMap<number, Uint8Array>) {
    const core = this.pipeline();
    return blobs.map((ref): OpenedBlob => {
      const r = core.openBlob(data.subarray(ref.at, ref.at + ref.length), ref, (id) => keys.get(id));
      if (!r.ok) return r;
      return { ok: true, plain: ref.sink ? Buffer.alloc(0) : r.plain, digest: r.digest.toString("hex") };
    });
  }

  readBack(fd: number, expectedBytes: number): Promise<ReadBack> {
    return readBack(fd, expectedBytes);
  }

  async close(): Promise<void> {}

  private pipeline(): PipelineCore {
    this.core ??= new PipelineCore({
      compressionLevel: this.compressionLevel,
      macKey: this.macKey,
      ...READ_ONLY_SHAPE,
    });
    return this.core;
  }
}

/** The shape of a pipeline that only seals known chunks and opens blobs (no chunking). */
export const READ_ONLY_SHAPE: PipelineShape = {
  gear: new Uint32Array(256),
  chunker: { minSize: 64, avgSize: 256, maxSize: 1024, normalization: 2 },
};

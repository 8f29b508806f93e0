/**
 * Where chunks are compressed and encrypted: in the calling thread (InlineSealer) or in a
 * small pool of worker threads (WorkerSealer, workers.ts). Both give identical bytes.
 */
import { createHash } from "node:crypto";
import { BlobSealer, chunkId, type SealKey, type Sealed } from "./blob.js";

/** A whole small file sealed as one chunk: its chunk id and its sha256 come with it. */
export interface SealedWhole extends Sealed {
  id: string;
  sha256: string;
}

export interface ChunkSealer {
  /** How many chunks it can work on at once (the packer keeps about twice that queued). */
  readonly parallelism: number;
  /** Compresses and encrypts one chunk whose id is known (`plain` is copied or consumed at once). */
  seal(plain: Buffer, id: string, key: SealKey): Promise<Sealed>;
  /**
   * Hashes (sha256 and chunk id), compresses and encrypts a file that is exactly one chunk.
   * The sealer copies or consumes `plain` before it returns: the caller keeps its buffer.
   */
  sealWhole(plain: Buffer, key: SealKey): Promise<SealedWhole>;
  close(): Promise<void>;
}

export function sealWholeNow(sealer: BlobSealer, plain: Uint8Array, key: SealKey, macKey: Uint8Array): SealedWhole {
  const id = chunkId(macKey, plain);
  const sha256 = createHash("sha256").update(plain).digest("hex");
  return { id, sha256, ...sealer.seal(plain, id, key) };
}

export class InlineSealer implements ChunkSealer {
  readonly parallelism = 1;
  private readonly sealer: BlobSealer;

  constructor(
    compressionLevel: number,
    private readonly macKey: Uint8Array,
  ) {
    this.sealer = new BlobSealer(compressionLevel);
  }

  async seal(plain: Buffer, id: string, key: SealKey): Promise<Sealed> {
    return this.sealer.seal(plain, id, key);
  }

  async sealWhole(plain: Buffer, key: SealKey): Promise<SealedWhole> {
    return sealWholeNow(this.sealer, plain, key, this.macKey);
  }

  async close(): Promise<void> {}
}

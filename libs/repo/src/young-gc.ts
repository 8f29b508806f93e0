/**
 * A scavenge on demand. The pipeline allocates little JavaScript but many large buffers
 * (blobs, cipher outputs, arenas moved between threads, gRPC messages): V8 frees them only when
 * a young generation fills up or external memory has grown by about 64 MiB, so each thread
 * would keep that much dead memory resident. A minor collection every few MiB of buffers frees
 * them for a fraction of a millisecond each (measured: docs/performance.md).
 *
 * `gc` is reached through a fresh context once --expose-gc is set (it only adds a global to
 * contexts created afterwards); when that is refused, nothing is collected early.
 */
import { setFlagsFromString } from "node:v8";
import { runInNewContext } from "node:vm";

type Gc = (options: { type: "minor" | "major" }) => void;

function findGc(): Gc | undefined {
  try {
    const existing = (globalThis as { gc?: Gc }).gc;
    if (typeof existing === "function") return existing;
    setFlagsFromString("--expose-gc");
    const gc = runInNewContext("gc") as unknown;
    return typeof gc === "function" ? (gc as Gc) : undefined;
  } catch {
    return undefined;
  }
}

let gc: Gc | null | undefined = null;

/** Counts bytes of buffers let go; runs a minor GC every `everyBytes`. */
export class YoungGc {
  private since = 0;

  constructor(private readonly everyBytes: number) {}

  note(bytes: number): void {
    this.since += bytes;
    if (this.since < this.everyBytes) return;
    this.since = 0;
    if (gc === null) gc = findGc();
    gc?.({ type: "minor" });
  }
}

/**
 * A full collection, for the end of a session (a closed repository): the buffers of a backup or
 * a restore are large and would otherwise stay resident until V8 next feels the need.
 */
export function collectAll(): void {
  if (gc === null) gc = findGc();
  gc?.({ type: "major" });
}

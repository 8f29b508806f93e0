/**
 * Cuts a stream of chunks of any size into parts of exactly `partBytes` (the last one may be
 * shorter, and there is no empty last part), copying into one buffer per part: memory stays
 * at one part plus the chunk being copied.
 *
 * ```ts
 * for await (const part of fixedSizeParts(chunks, 8 << 20)) await uploadPart(part);
 * ```
 */
export async function* fixedSizeParts(source: AsyncIterable<Uint8Array>, partBytes: number): AsyncGenerator<Buffer> {
  if (!Number.isSafeInteger(partBytes) || partBytes < 1) throw new RangeError(`invalid part size ${partBytes}`);
  let part = Buffer.allocUnsafe(partBytes);
  let filled = 0;
  for await (const chunk of source) {
    let at = 0;
    while (at < chunk.length) {
      const n = Math.min(partBytes - filled, chunk.length - at);
      part.set(chunk.subarray(at, at + n), filled);
      filled += n;
      at += n;
      if (filled === partBytes) {
        yield part;
        part = Buffer.allocUnsafe(partBytes);
        filled = 0;
      }
    }
  }
  if (filled > 0) yield part.subarray(0, filled);
}

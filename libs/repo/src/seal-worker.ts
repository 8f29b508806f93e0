/**
 * Worker thread body of WorkerSealer: hashes, compresses and encrypts the chunks of a batch
 * and answers with one message whose arena holds every sealed blob (transferred, not cloned).
 */
import { parentPort } from "node:worker_threads";
import { BlobSealer } from "./blob.js";
import { sealWholeNow, type SealedWhole } from "./sealer.js";
import type { SealBatch, SealBatchReply, SealResult } from "./workers.js";

const port = parentPort;
let sealer: BlobSealer | undefined;
let level = -1;

function sealOne(batch: SealBatch, keys: Map<number, Uint8Array>, r: SealBatch["requests"][number]): SealedWhole {
  const key = keys.get(r.keyId);
  if (!key) throw new Error(`no key with id ${r.keyId} in the batch`);
  if (level !== batch.compressionLevel || !sealer) {
    sealer = new BlobSealer(batch.compressionLevel);
    level = batch.compressionLevel;
  }
  const plain = Buffer.from(batch.arena, r.offset, r.length);
  const k = { key, keyId: r.keyId };
  return r.kind === "whole"
    ? sealWholeNow(sealer, plain, k, batch.macKey)
    : { id: r.id, sha256: "", ...sealer.seal(plain, r.id, k) };
}

port?.on("message", (batch: SealBatch) => {
  const keys = new Map(batch.keys);
  const outs = batch.requests.map((r): SealedWhole | string => {
    try {
      return sealOne(batch, keys, r);
    } catch (err) {
      return err instanceof Error ? err.message : String(err);
    }
  });
  const total = outs.reduce((n, o) => n + (typeof o === "string" ? 0 : o.sealed.length), 0);
  const arena = Buffer.from(new ArrayBuffer(total));
  let offset = 0;
  const results = outs.map((o): SealResult => {
    if (typeof o === "string") return { ok: false, message: o };
    arena.set(o.sealed, offset);
    const result: SealResult = {
      ok: true,
      flags: o.flags,
      offset,
      length: o.sealed.length,
      id: o.id,
      sha256: o.sha256,
    };
    offset += o.sealed.length;
    return result;
  });
  const reply: SealBatchReply = { seq: batch.seq, arena: arena.buffer, results };
  port.postMessage(reply, [reply.arena]);
});

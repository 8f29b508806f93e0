/**
 * Worker thread body of WorkerSealer: runs the jobs of a batch through a PipelineCore and
 * answers with one message. Sealed blobs are written into the arena the batch brought along
 * (the caller reuses it), opened plaintexts come back as their own buffers. Every buffer moves
 * by transfer, never by copy.
 */
import { createHash, type Hash } from "node:crypto";
import { parentPort } from "node:worker_threads";
import { Arena } from "./blob.js";
import { LocalFileStream, PipelineCore, STREAM_SEGMENT_BYTES } from "./pipeline-core.js";
import { readBackSync } from "./read-back.js";
import { YoungGc } from "./young-gc.js";
import type { BatchReply, JobBatch, JobResult, OpenedResult, StreamChunkRef, WorkerInit } from "./workers.js";

const port = parentPort;
/** Dead buffers are collected every few MiB (see young-gc.ts). */
const youngGc = new YoungGc(8 * 1024 * 1024);
let core: PipelineCore | undefined;
/** Large files being streamed, by the caller's token (their segments come to this worker only). */
const streams = new Map<number, LocalFileStream>();
/** SHA-256 of split streams' files, by the caller's token (a split stream's worker leaves it to another). */
const fileHashes = new Map<number, Hash>();
/** The buffer restored files are read back into ("readback" jobs). */
let readBuffer: Buffer | undefined;

/** A buffer that owns its whole ArrayBuffer (to be transferred), copying when it does not. */
function standalone(buf: Uint8Array): Uint8Array {
  if (buf.byteOffset === 0 && buf.byteLength === buf.buffer.byteLength && buf.buffer instanceof ArrayBuffer) return buf;
  const copy = new Uint8Array(new ArrayBuffer(buf.length));
  copy.set(buf);
  return copy;
}

function run(batch: JobBatch, pipeline: PipelineCore, arena: Arena, transfer: ArrayBuffer[]): JobResult[] {
  const keys = new Map(batch.keys);
  const key = { key: keys.get(batch.keyId) ?? new Uint8Array(0), keyId: batch.keyId };
  return batch.jobs.map((job): JobResult => {
    try {
      switch (job.kind) {
        case "chunk": {
          return { ok: true, kind: "chunk", ...pipeline.sealChunkInto(job.data, job.id, key, arena) };
        }
        case "plain": {
          const plain = new Uint8Array(job.ring, job.at, job.length);
          const c = pipeline.sealPlainInto(plain, job.known, key, arena);
          return { ok: true, kind: "plain", chunk: "known" in c ? { ...c, flags: 0, at: 0, length: 0 } : c };
        }
        case "file": {
          const f = pipeline.sealFileInto(job.data, key, arena);
          return { ok: true, kind: "file", ...f };
        }
        case "path": {
          const read = pipeline.readLocalFile(job.path, job.options);
          if (read.kind !== "read") return { ok: true, kind: "path", outcome: read.kind, message: read.message };
          const f = pipeline.sealFileInto(read.content, key, arena);
          return { ok: true, kind: "path", stat: read.stat, ...f };
        }
        case "stream": {
          let stream = streams.get(job.token);
          if (job.close) {
            stream?.close();
            streams.delete(job.token);
            return { ok: true, kind: "stream", outcome: "closed", message: "closed" };
          }
          if (!stream) {
            if (job.path === undefined) return { ok: true, kind: "stream", outcome: "closed", message: "closed" };
            const opened = pipeline.openStream(job.path, job.options ?? {});
            if (!(opened instanceof LocalFileStream))
              return { ok: true, kind: "stream", outcome: opened.kind, message: opened.message };
            stream = opened;
            streams.set(job.token, stream);
          }
          // Split: the segment is read into a slot of the caller's shared ring and this thread
          // only cuts it; the file's hash ("hash" jobs) and each chunk's id and sealing
          // ("plain" jobs) are done by the workers the caller picks, reading the ring.
          const step = job.slot
            ? stream.next(
                (plain): StreamChunkRef => ({ rawLength: plain.length, ringAt: plain.byteOffset }),
                Buffer.from(job.slot.ring, job.slot.at, job.slot.length),
                true,
              )
            : stream.next(pipeline.sealing(stream.known, pipeline.sealerInto(key, arena)));
          if (step.kind !== "chunks") streams.delete(job.token);
          if ("message" in step) return { ok: true, kind: "stream", outcome: step.kind, message: step.message };
          const chunks = step.chunks.map((c) => ("known" in c ? { ...c, flags: 0, at: 0, length: 0 } : c));
          if (step.kind === "chunks") return { ok: true, kind: "stream", chunks, read: step.read };
          const { stat, sha256, size, read } = step;
          return { ok: true, kind: "stream", chunks, read, stat, sha256, size };
        }
        case "hash": {
          // The file hash of a split stream: its segments in order, from the shared ring.
          if (job.drop) {
            fileHashes.delete(job.token);
            return { ok: true, kind: "hash" };
          }
          let hash = fileHashes.get(job.token);
          if (!hash) fileHashes.set(job.token, (hash = createHash("sha256")));
          hash.update(new Uint8Array(job.ring, job.at, job.length));
          if (!job.final) return { ok: true, kind: "hash" };
          fileHashes.delete(job.token);
          return { ok: true, kind: "hash", sha256: hash.digest("hex") };
        }
        case "readback": {
          const { sha256, size } = readBackSync(job.fd, (readBuffer ??= Buffer.allocUnsafeSlow(1024 * 1024)));
          return { ok: true, kind: "readback", sha256, size };
        }
        case "open": {
          const blobs = job.blobs.map((ref): OpenedResult => {
            const r = pipeline.openBlob(job.data.subarray(ref.at, ref.at + ref.length), ref, (id) => keys.get(id));
            if (!r.ok) return r;
            if (ref.sink) return { ok: true, digest: r.digest.toString("hex") };
            const plain = standalone(r.plain);
            transfer.push(plain.buffer as ArrayBuffer);
            return { ok: true, plain, digest: r.digest.toString("hex") };
          });
          return { ok: true, kind: "open", blobs };
        }
      }
    } catch (err) {
      return { ok: false, message: err instanceof Error ? err.message : String(err) };
    }
  });
}

port?.on("message", (msg: WorkerInit | JobBatch) => {
  if ("init" in msg) {
    core = new PipelineCore(msg.init);
    return;
  }
  // Blobs are sealed into the arena the batch brought along (reused by the caller), grown if needed.
  const arena = new Arena(Buffer.from(msg.arena ?? new ArrayBuffer(0)));
  const transfer: ArrayBuffer[] = [];
  const results = core
    ? run(msg, core, arena, transfer)
    : msg.jobs.map((): JobResult => ({ ok: false, message: "the worker was not initialised" }));
  const reply: BatchReply = { seq: msg.seq, arena: arena.buf.buffer as ArrayBuffer, results };
  port.postMessage(reply, [reply.arena, ...transfer]);
  const read = results.reduce(
    (n, r) =>
      n + (r.ok && r.kind === "path" && "size" in r ? r.size : r.ok && r.kind === "stream" ? STREAM_SEGMENT_BYTES : 0),
    0,
  );
  youngGc.note(msg.jobs.reduce((n, j) => n + j.data.length, read) + arena.used);
});

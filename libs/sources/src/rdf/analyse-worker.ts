/**
 * Worker thread of the analysis pool: parses, canonicalises and checks one file per message
 * (`{ id, kind, path, bytes }` -> `{ id, analysis }` or `{ id, error }`).
 */
import { parentPort } from "node:worker_threads";
import { analyseRdf } from "./adapter.js";
import { analyseRule } from "../rules/adapter.js";
import type { AnalyseRequest, AnalyseResponse } from "./analyse-pool.js";

const never = new AbortController().signal;

parentPort?.on("message", (req: AnalyseRequest) => {
  const bytes = Buffer.from(req.bytes.buffer, req.bytes.byteOffset, req.bytes.byteLength);
  const work = req.kind === "rules" ? analyseRule(req.path, bytes, never) : analyseRdf(req.path, bytes, never);
  work.then(
    (analysis) => parentPort?.postMessage({ id: req.id, analysis } satisfies AnalyseResponse),
    (err: unknown) =>
      parentPort?.postMessage({ id: req.id, error: (err as Error).message ?? String(err) } satisfies AnalyseResponse),
  );
});

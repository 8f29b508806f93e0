/** The SHACL verdict of a restore, as it goes into the result details, the events and the catalog. */
import { inDefaultGraph, validateShacl, type Quad, type ShaclVerdict } from "@iotvault/semantic";

export interface ShaclDetails extends ShaclVerdict {
  /** The shapes file or graph the data was validated against. */
  shapes: string;
}

/** Results listed in a restore's details (the counts are always complete). */
export const SHACL_RESULTS_LISTED = 100;

/** Validates the union of the data graphs (as one graph) against the shapes. */
export async function shaclVerdict(
  shapes: string,
  data: readonly Quad[],
  shapeQuads: readonly Quad[],
): Promise<ShaclDetails> {
  const verdict = await validateShacl(inDefaultGraph(data), inDefaultGraph(shapeQuads), {
    maxResults: SHACL_RESULTS_LISTED,
  });
  return { shapes, ...verdict };
}

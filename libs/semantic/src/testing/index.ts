/**
 * @iotvault/semantic/testing — test and benchmark helpers: an in-process Graph Store Protocol
 * server over oxigraph, Virtuoso from Debian on loopback ports, and generated SOSA/SSN data.
 *
 * ```ts
 * import { startGraphStore, sosaTurtle } from "@iotvault/semantic/testing";
 * const gs = await startGraphStore();
 * gs.load("http://example.org/g1", sosaTurtle(), "text/turtle");
 * await gs.close();
 * ```
 */
export { startGraphStore, type GraphStoreServer, type GraphStoreServerOptions } from "./graph-store.js";
export { startVirtuoso, virtuosoUnavailableReason, type VirtuosoHandle } from "./virtuoso.js";
export { sosaShapesTurtle, sosaTripleCount, sosaTurtle, type SosaOptions } from "./sosa.js";

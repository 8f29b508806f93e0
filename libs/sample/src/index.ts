/**
 * @iotvault/sample — deterministic sample data of an IoT edge gateway for the demo, tests and
 * benchmarks.
 *
 * ```ts
 * const summary = await makeGatewayTree("/tmp/gateway", { sizeBytes: 64 << 20, seed: 1 });
 * ```
 */
export { makeGatewayTree, type GatewayTreeOptions, type GatewayTreeSummary } from "./gateway.js";
export { Rng, randomBlocks } from "./random.js";

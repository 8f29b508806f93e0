/**
 * @iotvault/sample — deterministic sample data of an IoT edge gateway for the demo, tests and
 * benchmarks, and the change such a gateway goes through between two backups.
 *
 * ```ts
 * const summary = await makeGatewayTree("/tmp/gateway", { sizeBytes: 64 << 20, seed: 1 });
 * const change = await mutateGatewayTree("/tmp/gateway", { percent: 5, seed: 2 });
 * ```
 */
export { makeGatewayTree, type GatewayTreeOptions, type GatewayTreeSummary } from "./gateway.js";
export { mutateGatewayTree, type MutateOptions, type MutateSummary } from "./mutate.js";
export { Rng, randomBlocks } from "./random.js";

/**
 * @iotvault/testing — the test kit every package's tests use: real servers on ephemeral
 * loopback ports (nats-server with JetStream, PostgreSQL databases), free ports, temp dirs and
 * polling. Everything it starts is torn down by the test, or at process exit if the test failed
 * before it could.
 *
 * ```ts
 * import { startNats, createTestDatabase, tempDir, waitFor } from "@iotvault/testing";
 *
 * const nats = await startNats();                 // nats://127.0.0.1:<free port>, JetStream on
 * const db = await createTestDatabase({ prefix: "catalog" });
 * const dir = await tempDir();
 * try {
 *   // ... exercise the code under test against nats.url, db.url, dir.path
 *   await waitFor(() => seen.length === 3 || undefined, { what: "three events" });
 * } finally {
 *   await Promise.all([nats.stop(), db.drop(), dir.cleanup()]);
 * }
 * ```
 */
export { findNatsServer, findPostgresBin } from "./binaries.js";
export { startNats, type NatsServerHandle, type StartNatsOptions } from "./nats-server.js";
export { freePort } from "./ports.js";
export { missingRadosgwPrograms, startRadosgw, type RadosgwHandle, type StartRadosgwOptions } from "./radosgw.js";
export { createTestDatabase, type CreateTestDatabaseOptions, type TestDatabase } from "./postgres.js";
export { SSHD_TEST_USER, sshdUnavailableReason, startSshd, type SshdHandle, type StartSshdOptions } from "./sshd.js";
export { startTcpProxy, type TcpProxyHandle } from "./tcp-proxy.js";
export { tempDir, type TempDir } from "./temp.js";
export { waitFor, type WaitForOptions } from "./wait.js";

/**
 * @iotvault/host — the local processes of a single-node iotvault, for `iotvault stack` and the
 * test kit: finding binaries, pid files, detached processes, and the NATS server and private
 * PostgreSQL cluster started when none is reachable.
 *
 * ```ts
 * if (!(await isPortOpen("127.0.0.1", 4222))) await startNatsServer({ host: "127.0.0.1", port: 4222, storeDir, logFile, pidFile });
 * ```
 */
export { findNatsServer, findPostgresBin, findRunuser } from "./binaries.js";
export {
  fileExists,
  isAlive,
  isPortOpen,
  readPidFile,
  removeFile,
  runSync,
  runsCommand,
  serviceNodeFlags,
  startDetached,
  stopPid,
  waitForPort,
  type DetachedProcess,
} from "./processes.js";
export { isLoopback, startNatsServer, startPrivatePostgres, stopPrivatePostgres, type Endpoint } from "./infra.js";

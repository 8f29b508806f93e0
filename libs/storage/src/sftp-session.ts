/**
 * Connections of the SFTP store: a small pool of SSH connections (ssh2-sftp-client), opened on
 * first use, reused by every operation, replaced after a drop, closed after some idle time.
 * Operations share connections (SFTP multiplexes requests), and a semaphore bounds how many
 * run at once. Host keys are checked on every connect (see host-keys.ts).
 */
import { IotvaultError } from "@iotvault/errors";
import type SftpClient from "ssh2-sftp-client";
import { checkHostKey, hostKeyAlgorithms, type HostKeyPolicy, type HostKeyVerdict } from "./host-keys.js";
import { Semaphore } from "./semaphore.js";

/** The raw SFTP channel of ssh2 (positioned reads and writes, extensions). */
export type SftpChannel = Awaited<ReturnType<SftpClient["connect"]>>;

export interface SftpConnectOptions {
  host: string;
  port: number;
  username: string;
  privateKey: Buffer | string;
  passphrase?: string | undefined;
  hostKey: HostKeyPolicy;
  connectTimeoutMs: number;
  keepaliveIntervalMs: number;
  requestTimeoutMs: number;
}

export interface SftpPoolOptions extends SftpConnectOptions {
  connections: number;
  maxConcurrentOps: number;
  idleTimeoutMs: number;
}

/** One live connection as an operation sees it. */
export interface SftpSession {
  readonly sftp: SftpChannel;
  /** True once the connection this session runs on has closed or failed. */
  readonly lost: boolean;
  /** A request without an answer for this long fails, and the connection is dropped. */
  readonly requestTimeoutMs: number;
  /** Gives the connection up (after a request timed out): the next operation reconnects. */
  markLost(): void;
  /** Keeps the connection open (not idle) until the returned function is called. */
  hold(): () => void;
}

/** A connection that can be opened again after it dropped. */
class PooledConnection {
  active = 0;
  private current: LiveConnection | undefined;
  private opening: Promise<LiveConnection> | undefined;
  private idleTimer: NodeJS.Timeout | undefined;

  constructor(private readonly options: SftpPoolOptions) {}

  async session(): Promise<LiveConnection> {
    if (this.current && !this.current.lost) return this.current;
    this.opening ??= openConnection(this.options, this).then(
      (live) => {
        this.current = live;
        this.opening = undefined;
        return live;
      },
      (err: unknown) => {
        this.opening = undefined;
        throw err;
      },
    );
    return this.opening;
  }

  hold(): () => void {
    this.active++;
    clearTimeout(this.idleTimer);
    let released = false;
    return () => {
      if (released) return;
      released = true;
      if (--this.active === 0) this.scheduleIdleClose();
    };
  }

  async close(): Promise<void> {
    clearTimeout(this.idleTimer);
    const live = this.current ?? (await this.opening?.catch(() => undefined));
    this.current = undefined;
    await live?.end();
  }

  private scheduleIdleClose(): void {
    clearTimeout(this.idleTimer);
    this.idleTimer = setTimeout(() => {
      if (this.active === 0) void this.close();
    }, this.options.idleTimeoutMs);
    this.idleTimer.unref();
  }
}

class LiveConnection implements SftpSession {
  lost = false;

  constructor(
    private readonly client: SftpClient,
    readonly sftp: SftpChannel,
    readonly requestTimeoutMs: number,
    private readonly owner: { hold(): () => void },
  ) {
    // The channel ends before the pending requests' failures reach their callers, so a
    // caller never issues a request on a dead channel (ssh2 would never answer it).
    sftp.once("end", () => this.markLost());
    sftp.once("close", () => this.markLost());
  }

  hold(): () => void {
    return this.owner.hold();
  }

  markLost(): void {
    if (this.lost) return;
    this.lost = true;
    void this.client.end().catch(() => undefined);
  }

  async end(): Promise<void> {
    this.lost = true;
    await this.client.end().catch(() => undefined);
  }
}

/**
 * The pool. `run()` is the only way operations reach a connection: it takes a slot, picks the
 * least busy connection (opening it when needed) and turns a failure on a connection that
 * dropped meanwhile into UNAVAILABLE (retryable).
 */
export class SftpPool {
  private readonly connections: PooledConnection[];
  private readonly slots: Semaphore;

  constructor(readonly options: SftpPoolOptions) {
    this.connections = Array.from({ length: Math.max(1, options.connections) }, () => new PooledConnection(options));
    this.slots = new Semaphore(Math.max(1, options.maxConcurrentOps));
  }

  get target(): string {
    return `${this.options.username}@${this.options.host}:${this.options.port}`;
  }

  /** Runs `operation` on a session, holding one of the maxConcurrentOps slots meanwhile. */
  async run<T>(operation: (session: SftpSession) => Promise<T>, signal?: AbortSignal): Promise<T> {
    const release = await this.slots.acquire(signal);
    try {
      return await this.onSession(operation);
    } finally {
      release();
    }
  }

  /** Runs a short step on a session an operation already holds (e.g. one read of a stream). */
  async step<T>(
    session: SftpSession,
    operation: (session: SftpSession) => Promise<T>,
    signal?: AbortSignal,
  ): Promise<T> {
    const release = await this.slots.acquire(signal);
    try {
      return await this.guard(session, () => operation(session));
    } finally {
      release();
    }
  }

  async close(): Promise<void> {
    await Promise.all(this.connections.map((connection) => connection.close()));
  }

  private async onSession<T>(operation: (session: SftpSession) => Promise<T>): Promise<T> {
    const pooled = this.connections.reduce((best, c) => (c.active < best.active ? c : best));
    const releaseHold = pooled.hold();
    try {
      const session = await pooled.session();
      return await this.guard(session, () => operation(session));
    } finally {
      releaseHold();
    }
  }

  private async guard<T>(session: SftpSession, operation: () => Promise<T>): Promise<T> {
    try {
      return await operation();
    } catch (err) {
      if (!session.lost || err instanceof IotvaultError) throw err;
      throw new IotvaultError("UNAVAILABLE", `the connection to SFTP server ${this.target} was lost`, {
        cause: err,
        retryable: true,
        hint: "the network or the server dropped the connection; the operation can be retried (it reconnects)",
        details: { target: this.target },
      });
    }
  }
}

async function openConnection(options: SftpPoolOptions, owner: { hold(): () => void }): Promise<LiveConnection> {
  let verdict: HostKeyVerdict | undefined;
  let live: LiveConnection | undefined;
  const onDown = () => live?.markLost();
  // Loaded on first use: importing ssh2 costs about 60 ms, and most processes never need it.
  const { default: Client } = await import("ssh2-sftp-client");
  const client = new Client("iotvault", { error: onDown, end: onDown, close: onDown });
  const algorithms = hostKeyAlgorithms(options.hostKey, options.host, options.port);
  try {
    const sftp = await client.connect({
      host: options.host,
      port: options.port,
      username: options.username,
      privateKey: options.privateKey,
      ...(options.passphrase === undefined ? {} : { passphrase: options.passphrase }),
      readyTimeout: options.connectTimeoutMs,
      keepaliveInterval: options.keepaliveIntervalMs,
      keepaliveCountMax: 3,
      hostVerifier: (key: Buffer) => {
        verdict = checkHostKey(options.hostKey, options.host, options.port, key);
        return verdict.ok;
      },
      ...(algorithms ? { algorithms: { serverHostKey: algorithms as never } } : {}),
    });
    live = new LiveConnection(client, sftp, options.requestTimeoutMs, owner);
    return live;
  } catch (err) {
    await client.end().catch(() => undefined);
    throw connectError(err, options, verdict);
  }
}

function connectError(err: unknown, options: SftpConnectOptions, verdict: HostKeyVerdict | undefined): IotvaultError {
  const target = `${options.username}@${options.host}:${options.port}`;
  const details = { target };
  if (verdict && !verdict.ok) {
    const hint =
      verdict.reason === "changed" || verdict.reason === "revoked"
        ? "if the server's key really changed, replace its entry in the known_hosts file (ssh-keygen -R); otherwise do not connect"
        : `if this is the right server, pin it (fingerprint=${verdict.fingerprint} in the repository URL) or add it to the known_hosts file (ssh-keyscan -p ${options.port} ${options.host})`;
    return new IotvaultError("PERMISSION_DENIED", `${verdict.message}; connection refused`, {
      cause: err,
      hint,
      details: { ...details, fingerprint: verdict.fingerprint },
    });
  }
  const message = err instanceof Error ? err.message : String(err);
  const rawCode = (err as { code?: unknown } | null)?.code;
  const code = typeof rawCode === "string" || typeof rawCode === "number" ? String(rawCode) : undefined;
  if (/authentication methods failed/i.test(message)) {
    return new IotvaultError("PERMISSION_DENIED", `SFTP server ${target} refused the key of user ${options.username}`, {
      cause: err,
      hint: `add the public key of the configured private key (IOTVAULT_SFTP_KEY_FILE) to ~${options.username}/.ssh/authorized_keys on the server`,
      details,
    });
  }
  if (/passphrase|private key|unsupported key|cannot parse/i.test(message)) {
    return new IotvaultError("FAILED_PRECONDITION", `the SFTP private key for ${target} cannot be used: ${message}`, {
      cause: err,
      hint: "point IOTVAULT_SFTP_KEY_FILE at an OpenSSH or PEM private key (and set its passphrase if it has one)",
      details,
    });
  }
  return new IotvaultError(
    "UNAVAILABLE",
    `SFTP server ${target} is unreachable: ${message}${code ? ` (${code})` : ""}`,
    {
      cause: err,
      retryable: true,
      hint: "check that the SSH server runs and accepts connections on that host and port; the operation can be retried",
      details,
    },
  );
}

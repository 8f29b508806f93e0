/**
 * A real SFTP server for tests: Debian's OpenSSH `sshd` on a free loopback port with its own
 * host key, configuration and pid file in a temp dir, `internal-sftp` only, and key
 * authentication of a throw-away system account (`iotvault-sftp`, created with useradd when
 * missing, never a login shell) whose data directory is `root`, under the temp dir.
 *
 * ```ts
 * const sshd = await startSshd();
 * try {
 *   const store = new SftpStore({ host: sshd.host, port: sshd.port, username: sshd.user,
 *     privateKey: await readFile(sshd.keyFile), root: sshd.root,
 *     hostKey: { fingerprints: [sshd.hostKeyFingerprint] } });
 * } finally {
 *   await sshd.stop();
 * }
 * ```
 */
import { spawn, spawnSync, type ChildProcess } from "node:child_process";
import { createHash } from "node:crypto";
import { once } from "node:events";
import { rmSync } from "node:fs";
import { chmod, chown, mkdir, readFile, writeFile } from "node:fs/promises";
import { connect } from "node:net";
import { userInfo } from "node:os";
import { join } from "node:path";
import { setTimeout as sleep } from "node:timers/promises";
import { IotvaultError } from "@iotvault/errors";
import { findProgram, run } from "./commands.js";
import { onProcessExit } from "./exit-hooks.js";
import { OutputTail } from "./output-buffer.js";
import { freePort } from "./ports.js";
import { tempDir, type TempDir } from "./temp.js";

/** The account tests log in as when the kit runs as root. */
export const SSHD_TEST_USER = "iotvault-sftp";

export interface SshdHandle {
  readonly host: string;
  readonly port: number;
  /** The account the client key logs in as. */
  readonly user: string;
  /** The client's private key (ed25519, OpenSSH format, no passphrase). */
  readonly keyFile: string;
  /** The server's host key fingerprint, "SHA256:..." as `ssh-keygen -l` prints it. */
  readonly hostKeyFingerprint: string;
  /** A known_hosts file with the server's key for `[127.0.0.1]:<port>`. */
  readonly knownHostsFile: string;
  /** An empty directory the user owns (absolute path on the server, which is this machine). */
  readonly root: string;
  /** The listening sshd's process id. */
  readonly pid: number;
  /** Stops sshd (SIGTERM) and removes its directory. Safe to call twice. */
  stop(): Promise<void>;
}

export interface StartSshdOptions {
  /** How long to wait for the SSH banner (default 10 s). */
  readyTimeoutMs?: number;
}

/** Why startSshd cannot run here (sshd or ssh-keygen missing), or undefined when it can. */
export function sshdUnavailableReason(): string | undefined {
  if (!findProgram("sshd")) return "sshd is not installed (Debian package openssh-server)";
  if (!findProgram("ssh-keygen")) return "ssh-keygen is not installed (Debian package openssh-client)";
  if (isRoot() && !findProgram("useradd")) return "useradd is not installed (Debian package passwd)";
  return undefined;
}

/**
 * Starts an sshd for SFTP on a free loopback port (retrying on another port if it was taken)
 * and waits for its SSH banner. FAILED_PRECONDITION when sshd is not installed (check
 * `sshdUnavailableReason()` first to skip); UNAVAILABLE with sshd's output when it fails.
 */
export async function startSshd(options: StartSshdOptions = {}): Promise<SshdHandle> {
  const reason = sshdUnavailableReason();
  if (reason) {
    throw new IotvaultError("FAILED_PRECONDITION", `cannot start sshd: ${reason}`, {
      hint: "apt-get install openssh-server",
    });
  }
  const user = isRoot() ? await ensureTestUser() : userInfo().username;
  const dir = await tempDir("iotvault-sshd-");
  try {
    const files = await prepareFiles(dir.path, user);
    for (let attempt = 1; ; attempt++) {
      const server = new Sshd(dir, user, files, await freePort());
      try {
        await server.start(options.readyTimeoutMs ?? 10_000);
        return server;
      } catch (err) {
        await server.kill();
        if (!(err instanceof PortTakenError) || attempt >= 3) throw err;
      }
    }
  } catch (err) {
    await dir.cleanup();
    throw err;
  }
}

class PortTakenError extends IotvaultError {}

interface SshdFiles {
  config: (port: number) => string;
  keyFile: string;
  hostKeyBlob: Buffer;
  knownHostsFile: string;
  root: string;
}

class Sshd implements SshdHandle {
  readonly host = "127.0.0.1";
  readonly hostKeyFingerprint: string;
  private child: ChildProcess | undefined;
  private readonly output = new OutputTail();
  private unregister: (() => void) | undefined;
  private stopped = false;

  constructor(
    private readonly dir: TempDir,
    readonly user: string,
    private readonly files: SshdFiles,
    readonly port: number,
  ) {
    this.hostKeyFingerprint = `SHA256:${createHash("sha256").update(files.hostKeyBlob).digest("base64").replace(/=+$/, "")}`;
  }

  get keyFile(): string {
    return this.files.keyFile;
  }

  get knownHostsFile(): string {
    return this.files.knownHostsFile;
  }

  get root(): string {
    return this.files.root;
  }

  get pid(): number {
    return this.child?.pid ?? -1;
  }

  async start(readyTimeoutMs: number): Promise<void> {
    const configFile = join(this.dir.path, "sshd_config");
    await writeFile(configFile, this.files.config(this.port));
    const entry = `[${this.host}]:${this.port} ssh-ed25519 ${this.files.hostKeyBlob.toString("base64")}\n`;
    await writeFile(this.files.knownHostsFile, entry);
    if (isRoot()) await mkdir("/run/sshd", { recursive: true, mode: 0o755 }); // sshd's privilege separation dir
    const child = spawn(findProgram("sshd") ?? "sshd", ["-D", "-e", "-f", configFile], {
      stdio: ["ignore", "pipe", "pipe"],
    });
    this.child = child;
    child.unref();
    this.output.follow(child.stdout);
    this.output.follow(child.stderr);
    this.unregister ??= onProcessExit(() => this.killAtExit());
    await this.waitForBanner(child, readyTimeoutMs);
  }

  async stop(): Promise<void> {
    if (this.stopped) return;
    this.stopped = true;
    await this.terminate("SIGTERM");
    this.unregister?.();
    await this.dir.cleanup();
  }

  /** Kills a server that failed to start (the directory stays for another attempt). */
  async kill(): Promise<void> {
    await this.terminate("SIGKILL");
    this.unregister?.();
    this.unregister = undefined;
  }

  private async terminate(signal: NodeJS.Signals): Promise<void> {
    const child = this.child;
    if (!child || child.exitCode !== null || child.signalCode !== null) return;
    child.ref();
    const exited = once(child, "exit");
    child.kill(signal);
    await exited;
  }

  private killAtExit(): void {
    const child = this.child;
    if (child && child.exitCode === null && child.signalCode === null) child.kill("SIGKILL");
    rmSync(this.dir.path, { recursive: true, force: true });
  }

  private async waitForBanner(child: ChildProcess, timeoutMs: number): Promise<void> {
    const deadline = Date.now() + timeoutMs;
    while (Date.now() < deadline && child.exitCode === null && child.signalCode === null) {
      if (await sshBanner(this.host, this.port)) return;
      await sleep(25);
    }
    const output = this.output.value;
    if (/address already in use/i.test(output)) {
      throw new PortTakenError("UNAVAILABLE", `port ${this.port} was taken before sshd could bind it`);
    }
    const what = child.exitCode === null && child.signalCode === null ? "did not answer in time" : "exited";
    throw new IotvaultError("UNAVAILABLE", `sshd on ${this.host}:${this.port} ${what}; its output:\n${output}`, {
      hint: "read sshd's output above (configuration, keys, /run/sshd)",
    });
  }
}

/** Keys, authorized_keys and the data root in the temp dir, readable by the test user. */
async function prepareFiles(dir: string, user: string): Promise<SshdFiles> {
  await chmod(dir, 0o755); // the user must reach its data root inside
  const hostKey = join(dir, "host_key");
  const keyFile = join(dir, "client_key");
  await run("ssh-keygen", ["-q", "-t", "ed25519", "-N", "", "-C", "iotvault-test-host", "-f", hostKey]);
  await run("ssh-keygen", ["-q", "-t", "ed25519", "-N", "", "-C", "iotvault-test-client", "-f", keyFile]);
  const authorizedKeys = join(dir, "authorized_keys");
  await writeFile(authorizedKeys, await readFile(`${keyFile}.pub`));
  await chmod(authorizedKeys, 0o644);
  const root = join(dir, "root");
  await mkdir(root, { mode: 0o700 });
  if (isRoot()) {
    const ids = userIds(user);
    await chown(root, ids.uid, ids.gid);
  }
  const hostKeyBlob = Buffer.from((await readFile(`${hostKey}.pub`, "utf8")).split(/\s+/)[1] ?? "", "base64");
  const config = (port: number) => `# iotvault test sshd (generated)
Port ${port}
ListenAddress 127.0.0.1
HostKey ${hostKey}
PidFile ${join(dir, "sshd.pid")}
AuthorizedKeysFile ${authorizedKeys}
# The files live under the world-writable temp dir, which StrictModes would refuse.
StrictModes no
UsePAM no
PasswordAuthentication no
KbdInteractiveAuthentication no
PubkeyAuthentication yes
PermitRootLogin no
AllowUsers ${user}
Subsystem sftp internal-sftp
ForceCommand internal-sftp
AllowTcpForwarding no
AllowAgentForwarding no
X11Forwarding no
PermitTTY no
LogLevel INFO
`;
  return { config, keyFile, hostKeyBlob, knownHostsFile: join(dir, "known_hosts"), root };
}

function isRoot(): boolean {
  return process.getuid?.() === 0;
}

function userIds(user: string): { uid: number; gid: number } {
  const uid = Number(spawnSync("id", ["-u", user], { encoding: "utf8" }).stdout.trim());
  const gid = Number(spawnSync("id", ["-g", user], { encoding: "utf8" }).stdout.trim());
  return { uid, gid };
}

/**
 * The throw-away system account: created when missing (no home, no login shell), and its
 * password field set to '*' so that sshd (without PAM) does not treat it as locked.
 */
async function ensureTestUser(): Promise<string> {
  const exists = spawnSync("id", ["-u", SSHD_TEST_USER]).status === 0;
  if (!exists) {
    const shell = findProgram("nologin") ?? "/usr/sbin/nologin";
    const args = ["--system", "--no-create-home", "--home-dir", "/nonexistent", "--shell", shell, SSHD_TEST_USER];
    const created = spawnSync(findProgram("useradd") ?? "useradd", args, { encoding: "utf8" });
    // 9: created meanwhile by another test process
    if (created.status !== 0 && created.status !== 9) {
      throw new IotvaultError("FAILED_PRECONDITION", `useradd ${SSHD_TEST_USER} failed: ${created.stderr.trim()}`, {
        hint: "run the tests as root, or create the account by hand",
      });
    }
  }
  await run("usermod", ["-p", "*", SSHD_TEST_USER]);
  return SSHD_TEST_USER;
}

/** True when the port answers with an SSH identification line. */
function sshBanner(host: string, port: number): Promise<boolean> {
  return new Promise((resolve) => {
    const socket = connect({ host, port });
    let text = "";
    const done = (ok: boolean) => {
      socket.destroy();
      resolve(ok);
    };
    socket.setTimeout(1000, () => done(false));
    socket.setEncoding("utf8");
    socket.on("data", (chunk: string) => {
      text += chunk;
      if (text.includes("\n")) done(text.startsWith("SSH-2.0-"));
    });
    socket.on("error", () => done(false));
    socket.on("close", () => done(false));
  });
}

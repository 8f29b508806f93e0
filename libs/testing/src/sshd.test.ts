import assert from "node:assert/strict";
import { execFile } from "node:child_process";
import { existsSync } from "node:fs";
import { readFile, stat, writeFile } from "node:fs/promises";
import { connect, createServer, type Socket } from "node:net";
import { join } from "node:path";
import { test } from "node:test";
import { pathToFileURL } from "node:url";
import { promisify } from "node:util";
import { sshdUnavailableReason, startSshd, startTcpProxy } from "./index.js";

const exec = promisify(execFile);
const unavailable = sshdUnavailableReason();

/** Resolves with the first line the server sends, or rejects when the connection fails. */
function firstLine(port: number): Promise<string> {
  return new Promise((resolve, reject) => {
    const socket = connect({ host: "127.0.0.1", port });
    let text = "";
    socket.setEncoding("utf8");
    socket.on("data", (chunk: string) => {
      text += chunk;
      if (text.includes("\n")) {
        socket.destroy();
        resolve(text.split("\n")[0]!.trim());
      }
    });
    socket.on("error", reject);
  });
}

if (unavailable) {
  void test("startSshd", (t) => t.skip(`cannot start sshd: ${unavailable}`));
} else {
  void test("startSshd: OpenSSH's sftp client uploads with the kit's key, strict host key checking on", async (t) => {
    const sshd = await startSshd();
    t.after(() => sshd.stop());
    assert.match(await firstLine(sshd.port), /^SSH-2\.0-OpenSSH/);
    const { stdout } = await exec("ssh-keygen", ["-l", "-E", "sha256", "-f", sshd.knownHostsFile]);
    assert.ok(stdout.includes(sshd.hostKeyFingerprint), `${stdout} lists ${sshd.hostKeyFingerprint}`);

    const source = join(sshd.root, "..", "upload.txt");
    await writeFile(source, "hello over sftp\n");
    const batch = join(sshd.root, "..", "batch");
    await writeFile(batch, `put ${source} ${sshd.root}/uploaded.txt\n`);
    const sshOptions = [
      "-o",
      "BatchMode=yes",
      "-o",
      "StrictHostKeyChecking=yes",
      "-o",
      `UserKnownHostsFile=${sshd.knownHostsFile}`,
      "-i",
      sshd.keyFile,
      "-P",
      String(sshd.port),
    ];
    await exec("sftp", [...sshOptions, "-b", batch, `${sshd.user}@127.0.0.1`]);
    assert.equal(await readFile(join(sshd.root, "uploaded.txt"), "utf8"), "hello over sftp\n");
    const owner = (await stat(join(sshd.root, "uploaded.txt"))).uid;
    if (process.getuid?.() === 0) assert.notEqual(owner, 0, "the upload ran as the throw-away user, not root");

    // A shell is refused: the account only has internal-sftp.
    await assert.rejects(
      exec("ssh", [...sshOptions.slice(0, -2), "-p", String(sshd.port), `${sshd.user}@127.0.0.1`, "id"]),
    );
  });

  void test("startSshd: two servers at once on their own ports; stop closes the port and removes the files", async () => {
    const [a, b] = await Promise.all([startSshd(), startSshd()]);
    assert.notEqual(a.port, b.port);
    assert.notEqual(a.hostKeyFingerprint, b.hostKeyFingerprint);
    await a.stop();
    await a.stop(); // twice is fine
    assert.equal(existsSync(a.root), false);
    await assert.rejects(firstLine(a.port), /ECONNREFUSED/);
    assert.match(await firstLine(b.port), /^SSH-2\.0-/, "the other server is untouched");
    await b.stop();
  });

  void test("startSshd: a test process that exits without stop() leaves no sshd and no files", async () => {
    const kit = pathToFileURL(join(import.meta.dirname, "index.js")).href;
    const script = `
      import { startSshd } from ${JSON.stringify(kit)};
      const sshd = await startSshd();
      process.stdout.write(JSON.stringify({ port: sshd.port, root: sshd.root, pid: sshd.pid }) + "\\n");
      process.exit(0);
    `;
    const { stdout } = await exec(process.execPath, ["--input-type=module", "-e", script]);
    const { port, root, pid } = JSON.parse(stdout) as { port: number; root: string; pid: number };
    await assert.rejects(firstLine(port), /ECONNREFUSED/);
    assert.equal(existsSync(root), false);
    // Gone, or a zombie when this machine's init does not reap orphans.
    const state = await readFile(`/proc/${pid}/stat`, "utf8").then(
      (text) => text.slice(text.lastIndexOf(")") + 2, text.lastIndexOf(")") + 3),
      () => "gone",
    );
    assert.ok(state === "gone" || state === "Z", `the sshd process is ${state}`);
  });
}

void test("startTcpProxy forwards bytes, and dropConnections cuts open connections like a network failure", async (t) => {
  const sockets = new Set<Socket>();
  const echo = createServer((socket) => {
    sockets.add(socket);
    socket.on("close", () => sockets.delete(socket));
    socket.on("error", () => undefined);
    socket.pipe(socket);
  });
  await new Promise<void>((resolve) => echo.listen(0, "127.0.0.1", resolve));
  const address = echo.address();
  const port = typeof address === "object" && address ? address.port : 0;
  t.after(() => new Promise<void>((resolve) => echo.close(() => resolve())));
  const proxy = await startTcpProxy({ host: "127.0.0.1", port });
  t.after(() => proxy.close());

  const client = connect({ host: proxy.host, port: proxy.port });
  client.setEncoding("utf8");
  const echoed = new Promise<string>((resolve) => client.once("data", resolve));
  client.write("ping");
  assert.equal(await echoed, "ping");
  assert.equal(proxy.accepted, 1);
  assert.equal(proxy.open, 1);

  const closed = new Promise<void>((resolve) => client.once("close", () => resolve()));
  client.on("error", () => undefined);
  proxy.dropConnections();
  await closed;
  assert.equal(proxy.open, 0);

  const again = connect({ host: proxy.host, port: proxy.port });
  again.setEncoding("utf8");
  const reply = new Promise<string>((resolve) => again.once("data", resolve));
  again.write("pong");
  assert.equal(await reply, "pong", "new connections are accepted after a drop");
  again.destroy();
  for (const socket of sockets) socket.destroy();
});

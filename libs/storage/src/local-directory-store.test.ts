import assert from "node:assert/strict";
import { execFile, spawn } from "node:child_process";
import { createHash, randomBytes } from "node:crypto";
import { mkdtemp, readdir, rm, stat, utimes, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { describe, test, type TestContext } from "node:test";
import { pathToFileURL } from "node:url";
import { promisify } from "node:util";
import { isCode, type ErrorCode } from "@iotvault/errors";
import { runObjectStoreConformance } from "./conformance.js";
import { LOCAL_TEMP_PREFIX, LocalDirectoryStore } from "./local-directory-store.js";
import { nodeFs, type LocalFileHandle, type LocalFs } from "./local-fs.js";

const run = promisify(execFile);
const sha256 = (data: Uint8Array) => createHash("sha256").update(data).digest("hex");
const code = (expected: ErrorCode, message?: RegExp) => (err: unknown) => {
  assert.ok(isCode(err, expected), `expected ${expected}, got ${String(err)}`);
  if (message) assert.match(err.message, message);
  return true;
};

/** A fresh temp directory, removed after the test whatever happens. */
async function tempDir(t: TestContext): Promise<string> {
  const dir = await mkdtemp(join(tmpdir(), "iotvault-storage-"));
  t.after(() => rm(dir, { recursive: true, force: true }));
  return dir;
}

/** Every file under `dir`, as paths relative to it. */
async function filesUnder(dir: string): Promise<string[]> {
  const entries = await readdir(dir, { recursive: true, withFileTypes: true });
  return entries.filter((e) => e.isFile()).map((e) => join(e.parentPath, e.name).slice(dir.length + 1));
}

const tempFilesUnder = async (dir: string) =>
  (await filesUnder(dir)).filter((f) => f.split("/").pop()!.startsWith(LOCAL_TEMP_PREFIX));

runObjectStoreConformance("LocalDirectoryStore", async () => {
  const root = await mkdtemp(join(tmpdir(), "iotvault-conformance-"));
  const store = new LocalDirectoryStore(root);
  return {
    store,
    cleanup: () => rm(root, { recursive: true, force: true }),
    // The write path is interrupted as the gateway does when a client goes away: the signal
    // fires while the source is stalled half-way through the object.
    interruptPut: async (key, data) => {
      const controller = new AbortController();
      async function* stalled(): AsyncGenerator<Uint8Array> {
        yield data.subarray(0, data.length >> 1);
        controller.abort();
        await new Promise(() => undefined);
      }
      await store.putStream(key, stalled(), { signal: controller.signal }).then(
        () => assert.fail("the interrupted put resolved"),
        (err: unknown) => assert.ok(isCode(err, "CANCELLED"), String(err)),
      );
      assert.deepEqual(await tempFilesUnder(root), [], "the interrupted write removed its temp file");
    },
  };
});

void describe("LocalDirectoryStore", () => {
  void test("objects are files at their key path; new directories are 0700 and files 0600", async (t) => {
    const root = await tempDir(t);
    const store = new LocalDirectoryStore(root);
    assert.equal(store.location, `file://${root}`);
    await store.put("data/ab/pack1", Buffer.from("hello"));
    assert.deepEqual(await filesUnder(root), ["data/ab/pack1"]);
    assert.equal((await stat(join(root, "data"))).mode & 0o777, 0o700);
    assert.equal((await stat(join(root, "data/ab"))).mode & 0o777, 0o700);
    assert.equal((await stat(join(root, "data/ab/pack1"))).mode & 0o777, 0o600);
  });

  void test("a write fsyncs the file, renames it into place, then fsyncs the directories it changed", async (t) => {
    const root = await tempDir(t);
    const events: string[] = [];
    const rel = (p: string) => p.slice(root.length) || "/";
    const tracing: LocalFs = {
      ...nodeFs,
      open: async (path, flags, mode) => {
        const handle = await nodeFs.open(path, flags, mode);
        const name = rel(path).replace(/\.tmp~[0-9a-f]+$/, ".tmp~*");
        return wrapHandle(handle, { sync: () => events.push(`fsync ${name}`) });
      },
      mkdir: async (path, mode) => {
        await nodeFs.mkdir(path, mode);
        events.push(`mkdir ${rel(path)}`);
      },
      rename: async (from, to) => {
        await nodeFs.rename(from, to);
        events.push(`rename -> ${rel(to)}`);
      },
    };
    await new LocalDirectoryStore(root, { fs: tracing }).put("snapshots/s1", Buffer.from("x"));
    assert.deepEqual(events, [
      "mkdir /snapshots",
      "fsync /",
      "fsync /snapshots/.tmp~*",
      "rename -> /snapshots/s1",
      "fsync /snapshots",
    ]);
  });

  void test("temp files are never listed or read; cleanupTemp removes only old ones", async (t) => {
    const root = await tempDir(t);
    const store = new LocalDirectoryStore(root);
    await store.put("data/ab/real", Buffer.from("real"));
    // What a writer killed mid-way leaves behind, one old and one recent.
    const old = join(root, "data/ab", `${LOCAL_TEMP_PREFIX}0123456789abcdef`);
    const recent = join(root, `${LOCAL_TEMP_PREFIX}fedcba9876543210`);
    await writeFile(old, "partial");
    await writeFile(recent, "partial");
    const twoHoursAgo = new Date(Date.now() - 2 * 3600_000);
    await utimes(old, twoHoursAgo, twoHoursAgo);

    const listed: string[] = [];
    for await (const info of store.list("")) listed.push(info.key);
    assert.deepEqual(listed, ["data/ab/real"]);
    await assert.rejects(store.get(`data/ab/${LOCAL_TEMP_PREFIX}0123456789abcdef`), code("INVALID_ARGUMENT"));

    assert.deepEqual(await store.cleanupTemp(), { removed: 1 });
    assert.deepEqual((await filesUnder(root)).sort(), [`${LOCAL_TEMP_PREFIX}fedcba9876543210`, "data/ab/real"]);
    assert.deepEqual(await store.cleanupTemp({ olderThanMs: 0 }), { removed: 1 });
    assert.deepEqual(await filesUnder(root), ["data/ab/real"]);
  });

  void test("a writer killed with SIGKILL mid-write leaves nothing visible", async (t) => {
    const root = await tempDir(t);
    const moduleUrl = pathToFileURL(join(import.meta.dirname, "local-directory-store.js")).href;
    const script = `
      import { LocalDirectoryStore } from ${JSON.stringify(moduleUrl)};
      const store = new LocalDirectoryStore(${JSON.stringify(root)});
      async function* chunks() {
        for (let i = 0; ; i++) {
          if (i === 3) { process.stdout.write("wrote 3\\n"); await new Promise(() => setInterval(() => {}, 1000)); }
          yield Buffer.alloc(1 << 20, i);
        }
      }
      await store.putStream("data/cc/killed", chunks());
    `;
    const child = spawn(process.execPath, ["--input-type=module", "-e", script], { stdio: ["ignore", "pipe", "pipe"] });
    t.after(() => child.kill("SIGKILL"));
    await new Promise<void>((resolve, reject) => {
      let out = "";
      child.stdout.on("data", (d: Buffer) => {
        out += d.toString();
        if (out.includes("wrote 3")) resolve();
      });
      child.on("exit", (c) => reject(new Error(`writer exited early (${c}) before writing`)));
    });
    child.kill("SIGKILL");
    await new Promise((resolve) => child.once("exit", resolve));

    const temps = await tempFilesUnder(root);
    assert.equal(temps.length, 1, "the killed writer left its partial temp file");
    assert.equal((await stat(join(root, temps[0]!))).size, 3 << 20);
    const store = new LocalDirectoryStore(root);
    assert.equal(await store.stat("data/cc/killed"), undefined);
    await assert.rejects(store.get("data/cc/killed"), code("NOT_FOUND"));
    const listed: string[] = [];
    for await (const info of store.list("")) listed.push(info.key);
    assert.deepEqual(listed, []);
    assert.deepEqual(await store.cleanupTemp({ olderThanMs: 0 }), { removed: 1 });
  });

  void test("failed streamed writes leave neither the object nor a temp file", async (t) => {
    const root = await tempDir(t);
    const store = new LocalDirectoryStore(root);
    const data = randomBytes(3 << 20);
    async function* chunks(fail = false): AsyncGenerator<Uint8Array> {
      for (let at = 0; at < data.length; at += 1 << 20) {
        if (fail && at > 0) throw new Error("source broke");
        yield data.subarray(at, at + (1 << 20));
      }
    }
    await assert.rejects(
      store.putStream("p/short", chunks(), { expectedSize: data.length + 1 }),
      code("INVALID_ARGUMENT"),
    );
    await assert.rejects(store.putStream("p/long", chunks(), { expectedSize: 1000 }), code("INVALID_ARGUMENT"));
    await assert.rejects(store.putStream("p/bad", chunks(), { expectedSha256: "0".repeat(64) }), code("DATA_CORRUPT"));
    await assert.rejects(store.putStream("p/big", chunks(), { maxBytes: 1 << 20 }), code("RESOURCE_EXHAUSTED"));
    await assert.rejects(store.putStream("p/broken", chunks(true)), /source broke/);
    assert.deepEqual(await filesUnder(root), []);
    const ok = await store.putStream("p/ok", chunks(), { expectedSize: data.length, expectedSha256: sha256(data) });
    assert.deepEqual(ok, { existed: false, size: data.length, sha256: sha256(data) });
    assert.deepEqual(await filesUnder(root), ["p/ok"]);
  });

  void test("getStream yields bounded chunks of one consistent version, even if the object is replaced", async (t) => {
    const root = await tempDir(t);
    const store = new LocalDirectoryStore(root);
    const first = Buffer.alloc(5 << 20, 1);
    await store.put("data/ab/p", first);
    const chunks: Buffer[] = [];
    for await (const chunk of store.getStream(
      "data/ab/p",
      { offset: 10, length: (4 << 20) + 5 },
      { chunkBytes: 1 << 20 },
    )) {
      chunks.push(chunk);
      if (chunks.length === 1) await store.put("data/ab/p", Buffer.alloc(1000, 2)); // replaced mid-read
    }
    assert.deepEqual(
      chunks.map((c) => c.length),
      [1 << 20, 1 << 20, 1 << 20, 1 << 20, 5],
    );
    assert.ok(chunks.every((c) => c.every((b) => b === 1)));
    await assert.rejects(
      (async () => {
        for await (const _ of store.getStream("data/ab/none")) assert.fail("yielded a missing object");
      })(),
      code("NOT_FOUND"),
    );
  });

  void test("list reads only the directories the prefix can match", async (t) => {
    const root = await tempDir(t);
    const read: string[] = [];
    const store = new LocalDirectoryStore(root, {
      fs: {
        ...nodeFs,
        readdir: (path) => {
          read.push(path.slice(root.length) || "/");
          return nodeFs.readdir(path);
        },
      },
    });
    for (const key of ["data/ab/1", "data/ab/2", "data/ac/3", "data/bb/4", "index/5", "snapshots/6"]) {
      await store.put(key, Buffer.from(key));
    }
    const keys: string[] = [];
    for await (const info of store.list("data/a")) keys.push(info.key);
    assert.deepEqual(keys, ["data/ab/1", "data/ab/2", "data/ac/3"]);
    assert.deepEqual(read, ["/data", "/data/ab", "/data/ac"]);
    read.length = 0;
    for await (const _ of store.list("nothing/here/")) assert.fail("listed something under a missing prefix");
    assert.deepEqual(read, ["/nothing/here"]);
  });

  void test("a missing or non-directory root is FAILED_PRECONDITION, and put does not create it", async (t) => {
    const parent = await tempDir(t);
    const missing = new LocalDirectoryStore(join(parent, "not-there"));
    const precondition = code("FAILED_PRECONDITION", /does not exist/);
    await assert.rejects(missing.put("data/ab/x", Buffer.from("x")), precondition);
    await assert.rejects(missing.put("config", Buffer.from("x"), { ifAbsent: true }), precondition);
    await assert.rejects(missing.get("config"), precondition);
    await assert.rejects(missing.stat("config"), precondition);
    await assert.rejects(missing.delete("config"), precondition);
    await assert.rejects(
      (async () => {
        for await (const _ of missing.list("")) assert.fail("listed a missing root");
      })(),
      precondition,
    );
    assert.deepEqual(await readdir(parent), []);
    await writeFile(join(parent, "file"), "x");
    await assert.rejects(
      new LocalDirectoryStore(join(parent, "file")).put("config", Buffer.from("x")),
      code("FAILED_PRECONDITION", /not a directory/),
    );
  });

  void test("a key that collides with a directory of other objects is FAILED_PRECONDITION", async (t) => {
    const root = await tempDir(t);
    const store = new LocalDirectoryStore(root);
    await store.put("a/b/c", Buffer.from("x"));
    await assert.rejects(store.put("a/b", Buffer.from("y")), code("FAILED_PRECONDITION", /collides/));
    await assert.rejects(store.put("a/b/c/d", Buffer.from("y")), code("FAILED_PRECONDITION", /collides/));
    assert.equal(await store.stat("a/b"), undefined);
    await assert.rejects(store.get("a/b"), code("NOT_FOUND"));
    assert.equal(await store.delete("a/b"), false);
    assert.deepEqual(await tempFilesUnder(root), []);
  });

  void test("ifAbsent still works on a file system without hard links (link fails with EPERM)", async (t) => {
    const root = await tempDir(t);
    const store = new LocalDirectoryStore(root, { fs: { ...nodeFs, link: () => Promise.reject(errno("EPERM")) } });
    assert.deepEqual(await store.put("keys/k", Buffer.from("one"), { ifAbsent: true }), { existed: false });
    assert.deepEqual(await store.put("keys/k", Buffer.from("two"), { ifAbsent: true }), { existed: true });
    assert.equal((await store.get("keys/k")).toString(), "one");
    assert.deepEqual(await filesUnder(root), ["keys/k"]);
  });

  // EACCES cannot be provoked as root and ENOSPC / EROFS need special volumes, so the errno
  // classification is checked through an injected file-system layer that fails on purpose
  // (the real kernel errors are exercised on a tmpfs below when this machine allows mounts).
  void describe("errno classification (injected failures)", () => {
    const failing = (call: keyof LocalFs | "write" | "read", err: NodeJS.ErrnoException): LocalFs => ({
      ...nodeFs,
      ...(call === "write" || call === "read"
        ? {
            open: async (path, flags, mode) =>
              wrapHandle(await nodeFs.open(path, flags, mode), {
                [call]: () => {
                  throw err;
                },
              }),
          }
        : { [call]: () => Promise.reject(err) }),
    });
    const cases: {
      name: string;
      fs: LocalFs;
      op: (s: LocalDirectoryStore) => Promise<unknown>;
      expect: ErrorCode;
      message: RegExp;
    }[] = [
      {
        name: "ENOSPC while writing",
        fs: failing("write", errno("ENOSPC")),
        op: (s) => s.put("data/ab/p", randomBytes(100)),
        expect: "RESOURCE_EXHAUSTED",
        message: /^disk full writing data\/ab\/p to file:\/\//,
      },
      {
        name: "EDQUOT while writing",
        fs: failing("write", errno("EDQUOT")),
        op: (s) => s.put("data/ab/p", randomBytes(100)),
        expect: "RESOURCE_EXHAUSTED",
        message: /quota exceeded writing data\/ab\/p/,
      },
      {
        name: "EROFS creating the temp file",
        fs: failing("open", errno("EROFS")),
        op: (s) => s.put("config", randomBytes(10)),
        expect: "PERMISSION_DENIED",
        message: /read-only file system: cannot write config/,
      },
      {
        name: "EACCES creating a directory",
        fs: failing("mkdir", errno("EACCES")),
        op: (s) => s.put("new/dir/obj", randomBytes(10)),
        expect: "PERMISSION_DENIED",
        message: /permission denied writing new\/dir\/obj/,
      },
      {
        name: "EACCES reading",
        fs: failing("open", errno("EACCES")),
        op: (s) => s.get("config"),
        expect: "PERMISSION_DENIED",
        message: /permission denied reading config/,
      },
      {
        name: "EACCES listing",
        fs: failing("readdir", errno("EACCES")),
        op: async (s) => {
          for await (const _ of s.list("data/")) assert.fail("listed");
        },
        expect: "PERMISSION_DENIED",
        message: /permission denied listing data/,
      },
      {
        name: "EIO reading (a failing disk or NFS server)",
        fs: failing("read", errno("EIO")),
        op: (s) => s.get("config"),
        expect: "UNAVAILABLE",
        message: /I\/O error \(EIO\) reading config/,
      },
      {
        name: "EPERM deleting",
        fs: failing("unlink", errno("EPERM")),
        op: (s) => s.delete("config"),
        expect: "PERMISSION_DENIED",
        message: /permission denied deleting config/,
      },
    ];
    for (const c of cases) {
      void test(c.name, async (t) => {
        const root = await tempDir(t);
        await new LocalDirectoryStore(root).put("config", Buffer.from("existing"));
        await assert.rejects(c.op(new LocalDirectoryStore(root, { fs: c.fs })), (err) => {
          code(c.expect, c.message)(err);
          assert.ok(isCode(err, c.expect) && err.hint, "the error says what to do");
          return true;
        });
        assert.deepEqual(await filesUnder(root), ["config"], "no temp file or partial object is left");
      });
    }
  });

  void test("a real full and read-only volume (tmpfs) give RESOURCE_EXHAUSTED and PERMISSION_DENIED", async (t) => {
    const mountPoint = await tempDir(t);
    try {
      await run("mount", ["-t", "tmpfs", "-o", "size=1m,mode=0700", "tmpfs", mountPoint]);
    } catch (err) {
      t.skip(`cannot mount a tmpfs here (${(err as Error).message.split("\n")[0]}); covered by the injected failures`);
      return;
    }
    // Unmounted before the temp directory is removed (after-hooks run in registration order).
    try {
      const store = new LocalDirectoryStore(mountPoint);
      await store.put("config", Buffer.from("small"));
      await assert.rejects(
        store.put("data/ab/huge", randomBytes(2 << 20)),
        code("RESOURCE_EXHAUSTED", /disk full writing/),
      );
      assert.deepEqual(await filesUnder(mountPoint), ["config"], "the failed write removed its temp file");
      await store.put("index/after", Buffer.from("space is back")); // nothing leaked

      await run("mount", ["-o", "remount,ro", mountPoint]);
      await assert.rejects(store.put("index/ro", Buffer.from("x")), code("PERMISSION_DENIED", /read-only file system/));
      await assert.rejects(store.delete("config"), code("PERMISSION_DENIED"));
      assert.equal((await store.get("config")).toString(), "small");
    } finally {
      await run("umount", ["-l", mountPoint]);
    }
  });
});

function errno(code: string): NodeJS.ErrnoException {
  return Object.assign(new Error(`${code}: simulated failure`), { code });
}

/** A file handle with some methods replaced (the rest forwarded to the real one). */
function wrapHandle(
  handle: LocalFileHandle,
  overrides: Partial<Record<keyof LocalFileHandle, () => unknown>>,
): LocalFileHandle {
  return {
    write: async (b, o, l) => (overrides.write?.(), handle.write(b, o, l)),
    read: async (b, o, l, p) => (overrides.read?.(), handle.read(b, o, l, p)),
    stat: () => handle.stat(),
    sync: async () => (overrides.sync?.(), handle.sync()),
    close: () => handle.close(),
  };
}

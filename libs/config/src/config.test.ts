import assert from "node:assert/strict";
import { writeFile } from "node:fs/promises";
import { join } from "node:path";
import { describe, it } from "node:test";
import { isCode } from "@iotvault/errors";
import { tempDir } from "@iotvault/testing";
import { loadConfig, parseConfig, readRepositoryPassword, repositoryOptionsOf } from "./index.js";

describe("configuration", () => {
  it("has working defaults with no file and no environment", () => {
    const c = parseConfig({}, { env: { HOME: "/home/op" } });
    assert.equal(c.home, "/home/op/.iotvault");
    assert.equal(c.nats.url, "nats://127.0.0.1:4222");
    assert.equal(c.database.url, "postgres://postgres@127.0.0.1:5432/iotvault");
    assert.equal(c.addressOf("storage-gateway"), "127.0.0.1:7603");
    assert.equal(c.repository.scryptLogN, 17);
    assert.equal(c.paths.traces, "/home/op/.iotvault/traces");
    assert.equal(c.site, "default");
  });

  it("applies environment overrides over the file, and names the variable when one is bad", () => {
    const c = parseConfig(
      { nats: { url: "nats://file:4222" }, services: { catalog: { listen: "0.0.0.0:9000", address: "catalog:9000" } } },
      { env: { IOTVAULT_NATS_URL: "nats://env:4222", IOTVAULT_ACK_WAIT_MS: "5000", IOTVAULT_HOME: "/srv/iv" } },
    );
    assert.equal(c.nats.url, "nats://env:4222");
    assert.equal(c.bus.ackWaitMs, 5000);
    assert.equal(c.addressOf("catalog"), "catalog:9000");
    assert.equal(c.home, "/srv/iv");
    assert.throws(
      () => parseConfig({}, { env: { IOTVAULT_CATALOG_LISTEN: "nonsense" } }),
      (e: unknown) =>
        isCode(e, "CONFIG_INVALID") &&
        /services\.catalog\.listen \(from IOTVAULT_CATALOG_LISTEN\): expected host:port/.test(e.message),
    );
    assert.throws(
      () => parseConfig({}, { env: { IOTVAULT_MAX_DELIVER: "many" } }),
      (e: unknown) => isCode(e, "CONFIG_INVALID") && /IOTVAULT_MAX_DELIVER: expected a number/.test(e.message),
    );
  });

  it("refuses unknown and invalid fields, naming each of them", () => {
    assert.throws(
      () => parseConfig({ bus: { ackWaitMs: 10 }, database: { url: "mysql://x/y" }, colour: "blue" }),
      (e: unknown) =>
        isCode(e, "CONFIG_INVALID") &&
        /bus\.ackWaitMs: expected at least 1000/.test(e.message) &&
        /database\.url: expected a URL with scheme postgres/.test(e.message) &&
        /colour: unknown setting "colour"/.test(e.message),
    );
    assert.throws(
      () =>
        parseConfig({
          storage: { repositories: { main: {}, Other: { url: "file:///x" } } },
          repository: { workers: 1.5 },
          nats: "nats://x",
          log: { level: "loud" },
        }),
      (e: unknown) =>
        isCode(e, "CONFIG_INVALID") &&
        /storage\.repositories\.main\.url: required/.test(e.message) &&
        /storage\.repositories\.Other: repository names are lower-case/.test(e.message) &&
        /repository\.workers: expected an integer/.test(e.message) &&
        /nats: expected a mapping of settings/.test(e.message) &&
        /log\.level: expected debug, info, warn or error/.test(e.message),
    );
    assert.throws(
      () => parseConfig([1, 2]),
      (e: unknown) => isCode(e, "CONFIG_INVALID"),
    );
  });

  it("reads the file named by IOTVAULT_CONFIG, with a clear error for bad YAML or a missing file", async () => {
    const dir = await tempDir("iotvault-config-");
    try {
      const file = join(dir.path, "c.yaml");
      await writeFile(file, "site: edge-7\nrepository:\n  packSizeMiB: 8\n");
      const c = loadConfig({ IOTVAULT_CONFIG: file, HOME: dir.path });
      assert.equal(c.site, "edge-7");
      assert.equal(c.repository.packSizeMiB, 8);
      assert.equal(c.configFile, file);
      await writeFile(file, "site: [unclosed\n");
      assert.throws(
        () => loadConfig({ IOTVAULT_CONFIG: file }),
        (e: unknown) => isCode(e, "CONFIG_INVALID") && /not valid YAML/.test(e.message),
      );
      assert.throws(
        () => loadConfig({ IOTVAULT_CONFIG: join(dir.path, "missing.yaml") }),
        (e: unknown) => isCode(e, "CONFIG_INVALID") && /cannot read/.test(e.message),
      );
      // <home>/config.yaml is picked up without IOTVAULT_CONFIG.
      await writeFile(join(dir.path, "config.yaml"), "site: from-home\n");
      assert.equal(loadConfig({ IOTVAULT_HOME: dir.path }).site, "from-home");
    } finally {
      await dir.cleanup();
    }
  });
});

describe("repository passphrase", () => {
  it("comes from IOTVAULT_PASSWORD, else IOTVAULT_PASSWORD_FILE, else the configured file; never a default", async () => {
    const dir = await tempDir("iotvault-pass-");
    try {
      const file = join(dir.path, "pass");
      await writeFile(file, "from file\n", { mode: 0o600 });
      assert.equal(readRepositoryPassword({ IOTVAULT_PASSWORD: "direct" }).password.toString(), "direct");
      const f = readRepositoryPassword({ IOTVAULT_PASSWORD_FILE: file });
      assert.equal(f.password.toString(), "from file");
      assert.equal(f.source, "IOTVAULT_PASSWORD_FILE");
      assert.equal(readRepositoryPassword({}, file).source, "repository.passwordFile");
      assert.throws(
        () => readRepositoryPassword({}),
        (e: unknown) => isCode(e, "FAILED_PRECONDITION") && e.hint !== undefined && /IOTVAULT_PASSWORD/.test(e.hint),
      );
      await writeFile(file, "\n");
      assert.throws(
        () => readRepositoryPassword({ IOTVAULT_PASSWORD_FILE: file }),
        (e: unknown) => isCode(e, "FAILED_PRECONDITION") && /empty/.test(e.message),
      );
      const missing = join(dir.path, "nope");
      assert.throws(
        () => readRepositoryPassword({ IOTVAULT_PASSWORD_FILE: missing }),
        (e: unknown) => isCode(e, "FAILED_PRECONDITION") && !/from file/.test(e.message),
      );
    } finally {
      await dir.cleanup();
    }
  });
});

describe("repositoryOptionsOf", () => {
  it("passes every repository setting on, pack size in bytes", () => {
    const config = parseConfig(
      { repository: { packSizeMiB: 32, compressionLevel: 7, scryptLogN: 14, workers: 1 } },
      { env: { HOME: "/home/op" } },
    );
    assert.deepEqual(repositoryOptionsOf(config), {
      scryptLogN: 14,
      packSizeBytes: 32 * 1024 * 1024,
      compressionLevel: 7,
      workers: 1,
    });
    assert.deepEqual(repositoryOptionsOf(parseConfig({}, { env: { HOME: "/home/op" } })), {
      scryptLogN: 17,
      packSizeBytes: 16 * 1024 * 1024,
      compressionLevel: 3,
      workers: 0,
    });
  });
});

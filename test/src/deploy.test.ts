/**
 * The compose file of the single-node shape is validated, not run (no container engine here):
 * it parses, names NATS, PostgreSQL, MinIO and the five services, points each service at an
 * entry point that exists, wires the dependencies, and holds no secret in clear text.
 */
import assert from "node:assert/strict";
import { existsSync, readFileSync } from "node:fs";
import { join } from "node:path";
import { describe, it } from "node:test";
import { fileURLToPath } from "node:url";
import { parseConfig } from "@iotvault/config";
import { serviceNodeFlags } from "@iotvault/host";
import { parse } from "yaml";

const root = fileURLToPath(new URL("../../", import.meta.url));
const compose = parse(readFileSync(join(root, "deploy/compose.yaml"), "utf8"), { merge: true }) as {
  services: Record<string, any>;
  secrets: Record<string, { file: string }>;
  volumes: Record<string, unknown>;
};
const IOTVAULT = ["scheduler", "executor", "storage-gateway", "catalog", "restore"];

describe("deploy/compose.yaml (single node)", () => {
  it("has NATS with JetStream, PostgreSQL, MinIO and the five services", () => {
    for (const s of ["nats", "postgres", "minio", ...IOTVAULT]) assert.ok(compose.services[s], `service ${s} missing`);
    assert.ok(compose.services["nats"].command.includes("--jetstream"));
    assert.match(compose.services["postgres"].image, /^postgres:15/);
    assert.match(compose.services["minio"].image, /^minio\/minio/);
  });

  it("starts each iotvault service from its built entry point, with the bus and config wired", () => {
    for (const s of IOTVAULT) {
      const svc = compose.services[s];
      assert.equal(svc.command.at(-1), `services/${s}/dist/main.js`, s);
      assert.ok(existsSync(join(root, "services", s, "src", "main.ts")), `services/${s}/src/main.ts`);
      assert.equal(svc.environment.IOTVAULT_NATS_URL, "nats://nats:4222", s);
      assert.equal(svc.environment.IOTVAULT_CONFIG, "/etc/iotvault/iotvault.yaml", s);
      assert.ok(svc.depends_on.nats, `${s} depends on nats`);
    }
    assert.ok(compose.services["catalog"].depends_on.postgres, "catalog depends on postgres");
    assert.match(
      compose.services["catalog"].environment.IOTVAULT_DATABASE_URL,
      /^postgres:\/\/iotvault@postgres:5432\/iotvault$/,
    );
    assert.ok(compose.services["executor"].depends_on["storage-gateway"]);
  });

  it("keeps secrets in secret files, never inline", () => {
    const text = readFileSync(join(root, "deploy/compose.yaml"), "utf8");
    for (const [, key, value] of text.matchAll(/^[ \t]*([A-Z_]*(?:PASSWORD|SECRET|TOKEN)[A-Z_]*):[ \t]*(\S+)/gm)) {
      assert.match(key!, /_FILE$/, `${key}=${value} must be a *_FILE reference`);
      assert.match(value!, /^\/run\/secrets\//);
    }
    for (const s of Object.values(compose.services)) {
      for (const secret of (s.secrets ?? []) as string[])
        assert.ok(compose.secrets[secret], `secret ${secret} is declared`);
    }
    assert.doesNotMatch(text, /:[^@/\s]+@postgres/, "no password in a database URL");
    // Each secret goes only where it is needed.
    const holders = (secret: string) =>
      Object.entries(compose.services)
        .filter(([, svc]) => (svc.secrets ?? []).includes(secret))
        .map(([name]) => name)
        .sort();
    assert.deepEqual(holders("repository-password"), ["cli", "executor", "restore"]);
    assert.deepEqual(holders("postgres-password"), ["catalog", "postgres"]);
    assert.deepEqual(holders("minio-password"), ["minio"]);
  });

  it("runs each service of the image with its Node options (entrypoint, then command)", () => {
    const dockerfile = readFileSync(join(root, "deploy/Dockerfile"), "utf8");
    const entrypoint = /^ENTRYPOINT (\[.*\])$/m.exec(dockerfile);
    assert.ok(entrypoint, "the Dockerfile has an ENTRYPOINT in exec form");
    const argv = JSON.parse(entrypoint[1]!) as string[];
    assert.equal(argv[argv.indexOf("node") - 1], "--", "node runs under tini");
    const common = argv.slice(argv.indexOf("node") + 1);
    for (const s of IOTVAULT) {
      const command = compose.services[s].command as string[];
      assert.deepEqual([...common, ...command.slice(0, -1)], serviceNodeFlags(s, {}), s);
    }
  });

  it("ships a configuration file that the services accept", () => {
    const cfg = parse(readFileSync(join(root, "deploy/config/iotvault.yaml"), "utf8"));
    const config = parseConfig(cfg, { env: { IOTVAULT_HOME: "/var/lib/iotvault" } });
    assert.equal(config.addressOf("storage-gateway"), "storage-gateway:7603");
    assert.equal(config.nats.url, "nats://nats:4222");
    for (const s of IOTVAULT) {
      assert.ok(
        compose.services[s].ports === undefined ||
          compose.services[s].ports.every((p: string) => p.startsWith("127.0.0.1:")),
        `${s} publishes on loopback only`,
      );
    }
  });
});

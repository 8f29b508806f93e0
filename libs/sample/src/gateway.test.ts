import assert from "node:assert/strict";
import { createHash } from "node:crypto";
import { lstat, readFile, readdir, readlink } from "node:fs/promises";
import { join } from "node:path";
import { describe, it } from "node:test";
import { tempDir } from "@iotvault/testing";
import { makeGatewayTree } from "./gateway.js";

async function digest(root: string, rel = ""): Promise<string[]> {
  const out: string[] = [];
  for (const name of (await readdir(join(root, rel))).sort()) {
    const p = rel ? `${rel}/${name}` : name;
    const st = await lstat(join(root, p));
    if (st.isSymbolicLink()) out.push(`L ${p} -> ${await readlink(join(root, p))}`);
    else if (st.isDirectory()) out.push(`D ${p}`, ...(await digest(root, p)));
    else
      out.push(
        `F ${p} ${(st.mode & 0o777).toString(8)} ${createHash("sha256")
          .update(await readFile(join(root, p)))
          .digest("hex")}`,
      );
  }
  return out;
}

describe("sample IoT gateway tree", () => {
  it("is deterministic for a seed, reports what it wrote, and differs for another seed", async () => {
    const dir = await tempDir("iotvault-sample-");
    try {
      const a = await makeGatewayTree(join(dir.path, "a"), { sizeBytes: 2 << 20, seed: 3 });
      const b = await makeGatewayTree(join(dir.path, "b"), { sizeBytes: 2 << 20, seed: 3 });
      const c = await makeGatewayTree(join(dir.path, "c"), { sizeBytes: 2 << 20, seed: 4 });
      const [da, db, dc] = await Promise.all(["a", "b", "c"].map((x) => digest(join(dir.path, x))));
      assert.deepEqual(da, db);
      assert.notDeepEqual(da, dc);
      assert.deepEqual(a, b);
      assert.equal(da!.filter((l) => l.startsWith("F ")).length, a.files);
      assert.equal(da!.filter((l) => l.startsWith("D ")).length, a.dirs);
      assert.equal(da!.filter((l) => l.startsWith("L ")).length, a.symlinks);
      assert.ok(a.bytes > 1.6 * (1 << 20) && a.bytes < 2.6 * (1 << 20), `size ${a.bytes}`);
      assert.ok(c.files > 50);
      // The mix: telemetry, blobs with duplicate firmware, configs, RDF, and the fidelity cases.
      for (const re of [
        /^F telemetry\/.*\.csv /,
        /^F telemetry\/.*\.jsonl /,
        /^F blobs\/firmware\//,
        /^F config\/.*\.yaml /,
        /^F models\/.*\.ttl /,
        /^F models\/.*\.nt /,
        /^F config\/agent\/EMPTY\.flag /,
        /^D spool\/outbox$/,
        /^F bin\/collect\.sh 755 /,
        /日本語/,
      ]) {
        assert.ok(
          da!.some((l) => re.test(l)),
          `no entry matches ${re}`,
        );
      }
      const firmware = da!.filter((l) => l.includes("sensorhub-a")).map((l) => l.split(" ").pop());
      assert.ok(new Set(firmware).size < firmware.length, "firmware copies are byte-identical duplicates");
    } finally {
      await dir.cleanup();
    }
  });
});

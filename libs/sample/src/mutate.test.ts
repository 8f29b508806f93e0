import assert from "node:assert/strict";
import { createHash } from "node:crypto";
import { lstat, readFile, readdir } from "node:fs/promises";
import { join } from "node:path";
import { describe, it } from "node:test";
import { tempDir } from "@iotvault/testing";
import { makeGatewayTree } from "./gateway.js";
import { mutateGatewayTree } from "./mutate.js";

/** path -> sha256 of every regular file. */
async function files(root: string, rel = "", out = new Map<string, string>()): Promise<Map<string, string>> {
  for (const name of (await readdir(join(root, rel))).sort()) {
    const p = rel ? `${rel}/${name}` : name;
    const st = await lstat(join(root, p));
    if (st.isDirectory()) await files(root, p, out);
    else if (st.isFile())
      out.set(
        p,
        createHash("sha256")
          .update(await readFile(join(root, p)))
          .digest("hex"),
      );
  }
  return out;
}

const HIST = "telemetry/historian/plant-historian-2024.csv";

describe("mutateGatewayTree", () => {
  it("is deterministic, changes about the asked share, and makes each kind of change", async () => {
    const dir = await tempDir("iotvault-mutate-");
    try {
      const [a, b, c] = ["a", "b", "c"].map((x) => join(dir.path, x)) as [string, string, string];
      for (const root of [a, b, c]) await makeGatewayTree(root, { sizeBytes: 4 << 20, seed: 3 });
      const before = await files(a);
      const histBefore = await readFile(join(a, HIST));

      const sa = await mutateGatewayTree(a, { percent: 5, seed: 2 });
      const sb = await mutateGatewayTree(b, { percent: 5, seed: 2 });
      const sc = await mutateGatewayTree(c, { percent: 5, seed: 9 });
      const [fa, fb, fc] = await Promise.all([files(a), files(b), files(c)]);
      assert.deepEqual([...fa], [...fb], "same tree + same seed = same bytes");
      assert.deepEqual(sa, sb);
      assert.notDeepEqual([...fa], [...fc], "another seed changes other bytes");
      assert.ok(sc.newBytes > 0);

      // About 5 % new bytes.
      const share = sa.newBytes / sa.totalBytes;
      assert.ok(share > 0.03 && share < 0.08, `new share ${share}`);
      // New day files for every device, deletions, changed files.
      const added = [...fa.keys()].filter((p) => !before.has(p));
      const deleted = [...before.keys()].filter((p) => !fa.has(p));
      const changed = [...fa.keys()].filter((p) => before.has(p) && before.get(p) !== fa.get(p));
      assert.equal(added.length, sa.filesAdded);
      assert.ok(added.some((p) => /^telemetry\/[^/]+\/.*\.csv$/.test(p)) && added.some((p) => p.endsWith(".jsonl")));
      assert.equal(deleted.length, sa.filesDeleted);
      assert.ok(deleted.some((p) => p.startsWith("blobs/camera/")) && deleted.some((p) => p.startsWith("config/")));
      assert.ok(
        changed.some((p) => p.startsWith("blobs/camera/")),
        "camera snapshots rewritten",
      );
      assert.ok(
        changed.some((p) => p.startsWith("config/")),
        "configs edited",
      );
      // The firmware and its copies got the same new content.
      const fw = changed.filter((p) => p.endsWith(".bin"));
      assert.ok(fw.length >= 2, `firmware copies changed: ${fw.join(", ")}`);
      assert.equal(new Set(fw.map((p) => fa.get(p))).size, 1);
      // 64 KiB inserted in the middle of the historian; both ends kept.
      const hist = await readFile(join(a, HIST));
      assert.ok(hist.length >= histBefore.length + 64 * 1024 && hist.length < histBefore.length + 66 * 1024);
      const head = histBefore.subarray(0, histBefore.length / 4);
      const tail = histBefore.subarray((histBefore.length * 3) / 4);
      assert.ok(hist.subarray(0, head.length).equals(head));
      assert.ok(hist.subarray(hist.length - tail.length).equals(tail));
      assert.ok(hist.includes("hist-ins"));
    } finally {
      await dir.cleanup();
    }
  });
});

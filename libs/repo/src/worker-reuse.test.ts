/**
 * A closed repository's pipeline threads wait, reset, for the next repository opened in the
 * process (a service opens one per request): the next one must get its own keys and nothing
 * of the previous one's state.
 */
import assert from "node:assert/strict";
import { test } from "node:test";
import { Repository } from "./repository.js";
import { FAST, META, PASSWORD, collect, fileNode, jsonLines, newRepo, pieces, random, readAll } from "./test-util.js";
import { idlePipelineWorkers } from "./workers.js";

void test("a closed repository's workers serve the next repository, with that repository's keys", async () => {
  const data = Buffer.concat([jsonLines(3 << 20), random(3 << 20)]);
  const a = await newRepo({ workers: 2 });
  const wa = await a.repo.startBackup({ runId: "first" });
  const nodeA = await wa.addFile(fileNode("data.bin"), pieces(data));
  await wa.commit(META);
  await a.repo.close();
  assert.equal(idlePipelineWorkers(), 2, "both threads wait for the next repository");

  const b = await newRepo({ workers: 2 });
  let snapshot;
  let nodeB;
  try {
    const wb = await b.repo.startBackup({ runId: "second" });
    assert.equal(idlePipelineWorkers(), 0, "the second repository took the waiting threads");
    nodeB = await wb.addFile(fileNode("data.bin"), pieces(data));
    ({ snapshot } = await wb.commit(META));
  } finally {
    await b.repo.close();
  }
  // Chunk ids and cut points depend on each repository's keys: a thread that kept the first
  // repository's pipeline would give the second chunks its own key does not confirm.
  assert.ok(nodeA.chunks!.length > 0 && nodeB.chunks!.length > 0);
  const inline = await Repository.open(b.store, PASSWORD, FAST);
  try {
    const [node] = await collect(inline.readTree(snapshot));
    assert.deepEqual(node!.chunks, nodeB.chunks);
    assert.ok((await readAll(inline.readFile(node!))).equals(data), "the second repository's data reads back");
    assert.deepEqual((await inline.verify({ readData: true })).problems, []);
  } finally {
    await inline.close();
  }

  // And the restore side: reading through reused threads checks against the right key.
  const reader = await Repository.open(b.store, PASSWORD, { ...FAST, workers: 2 });
  try {
    assert.equal(idlePipelineWorkers(), 2, "the closed backup's threads wait");
    const [node] = await collect(reader.readTree(snapshot));
    assert.ok((await readAll(reader.readFile(node!))).equals(data));
    assert.equal(idlePipelineWorkers(), 0, "the reader took them");
  } finally {
    await reader.close();
  }
});

/**
 * Reading blobs back: one ranged get per chunk, every chunk decrypted and checked against its
 * id, errors that name the pack (and the file when known). Never yields unchecked bytes.
 */
import { createHash } from "node:crypto";
import { IotvaultError, isNotFound } from "@iotvault/errors";
import { unsealBlob } from "./blob.js";
import { storeError, throwIfAborted, type RepoCore } from "./core.js";
import { corrupt, packKey } from "./format.js";
import type { MasterIndex } from "./index-file.js";
import { ReadAhead } from "./read-ahead.js";
import type { ChunkSealer } from "./sealer.js";
import type { SnapshotManifest } from "./snapshot.js";
import { decodeNode, type TreeNode } from "./tree.js";

/** Chunks fetched ahead of the consumer while reading a tree. */
const READ_AHEAD = 4;
/** Plain bytes fetched ahead while reading one file. */
const FILE_AHEAD_BYTES = 16 * 1024 * 1024;

export interface BlobContext {
  /** What the blob belongs to, for messages: `file etc/app.yaml`, `the tree of snapshot <id>`. */
  owner: string;
  signal?: AbortSignal | undefined;
  /** The index to look chunks up in (verify passes a freshly loaded one); default: the repository's. */
  index?: MasterIndex | undefined;
}

export async function loadBlob(core: RepoCore, id: string, ctx: BlobContext): Promise<Buffer> {
  throwIfAborted(ctx.signal, `reading ${ctx.owner}`);
  const loc = (ctx.index ?? core.index).get(id);
  if (!loc) {
    throw new IotvaultError("NOT_FOUND", `chunk ${id} of ${ctx.owner} is not in the repository index`, {
      hint: "run `iotvault verify`; an index file or pack may have been deleted",
      details: { chunk: id },
    });
  }
  let sealed: Buffer;
  try {
    sealed = await core.store.get(packKey(loc.packId), { offset: loc.offset, length: loc.length }, ctx.signal);
  } catch (err) {
    if (isNotFound(err)) {
      throw new IotvaultError("NOT_FOUND", `pack ${loc.packId} is missing (needed for chunk ${id} of ${ctx.owner})`, {
        hint: "run `iotvault verify` to list what is affected; restore the pack from another replica",
        details: { pack: loc.packId, chunk: id },
      });
    }
    throw storeError(err, `reading pack ${loc.packId}`);
  }
  const details = { pack: loc.packId, chunk: id };
  if (sealed.length < loc.length) {
    throw corrupt(`pack ${loc.packId} is truncated: chunk ${id} of ${ctx.owner} is cut off`, undefined, details);
  }
  await core.ensureKey(sealed);
  const result = unsealBlob(sealed, { id, rawLength: loc.rawLength, flags: loc.flags }, core.keyFor, core.macKey);
  if (!result.ok) {
    throw corrupt(`pack ${loc.packId} is corrupt: chunk ${id} of ${ctx.owner}: ${result.problem}`, undefined, details);
  }
  return result.plain;
}

/** Loads blobs in order with a few fetched ahead; prefetched failures never go unhandled. */
async function* loadInOrder(core: RepoCore, ids: readonly string[], ctx: BlobContext): AsyncGenerator<Buffer> {
  const pending: Promise<Buffer>[] = [];
  let next = 0;
  const fill = (): void => {
    while (pending.length < READ_AHEAD && next < ids.length) {
      const p = loadBlob(core, ids[next++]!, ctx);
      p.catch(() => undefined);
      pending.push(p);
    }
  };
  fill();
  while (pending.length > 0) {
    const plain = await pending.shift()!;
    fill();
    yield plain;
  }
}

/** A file's content, fetched ahead in a few large requests and checked (see ReadAhead). */
export async function* readFile(
  core: RepoCore,
  sealer: ChunkSealer,
  node: TreeNode,
  signal?: AbortSignal,
): AsyncGenerator<Buffer> {
  const reader = new ReadAhead(core, sealer, { signal, aheadBytes: FILE_AHEAD_BYTES });
  try {
    yield* reader.read(node);
  } finally {
    reader.close();
  }
}

/**
 * The encoded line (without its newline) of nodes read with `frozen` (see readTree): a backup
 * given one of them back as an unchanged file copies the line instead of encoding the node.
 */
const encodedLines = new WeakMap<TreeNode, string>();

/** The line a frozen node was decoded from, or undefined for any other node. */
export function encodedLineOf(node: TreeNode): string | undefined {
  return encodedLines.get(node);
}

export interface ReadTreeOptions {
  /** The index to look chunks up in (verify passes a freshly loaded one); default: the repository's. */
  index?: MasterIndex | undefined;
  /**
   * Yield frozen nodes (their chunk lists too) that remember the line they were decoded from:
   * a backup that gets one back through addUnchangedFile appends that line as it is. For a
   * parent snapshot's tree, whose unchanged files are most of an incremental backup's nodes.
   */
  frozen?: boolean | undefined;
  /**
   * Yield only the file nodes of at least this size (the rest of the tree is still read and
   * checked). Lines are picked by their `"size":` member before they are decoded, so that
   * finding a tree's large files costs little more than reading it.
   */
  filesOfAtLeast?: number | undefined;
}

const SIZE_MEMBER = Buffer.from('"size":');

/**
 * Whether the line data[start, end) has a `"size":` member of at least `min`. A prefilter:
 * lines it passes are decoded and checked. (In lines written by encodeNode the first
 * `"size":` is the member; a crafted line may only be missed, never let through unchecked.)
 */
function sizeAtLeast(data: Buffer, start: number, end: number, min: number): boolean {
  // Searched within the line: lines without a size (directories) must not scan the rest.
  const found = data.subarray(start, end).indexOf(SIZE_MEMBER);
  if (found < 0) return false;
  const at = start + found;
  let value = 0;
  for (let i = at + SIZE_MEMBER.length; i < end; i++) {
    const digit = data[i]! - 48;
    if (digit < 0 || digit > 9) break;
    value = value * 10 + digit;
  }
  return value >= min;
}

export async function* readTree(
  core: RepoCore,
  snapshot: SnapshotManifest,
  signal?: AbortSignal,
  options: ReadTreeOptions = {},
): AsyncGenerator<TreeNode> {
  const { index, frozen = false, filesOfAtLeast } = options;
  const owner = `the tree of snapshot ${snapshot.id}`;
  const hash = createHash("sha256");
  let carry: Buffer = Buffer.alloc(0);
  let count = 0;
  for await (const plain of loadInOrder(core, snapshot.tree.chunks, { owner, signal, index })) {
    hash.update(plain);
    const data = carry.length > 0 ? Buffer.concat([carry, plain]) : plain;
    let start = 0;
    for (let nl = data.indexOf(10, start); nl !== -1; nl = data.indexOf(10, start)) {
      count++;
      const lineStart = start;
      start = nl + 1;
      if (filesOfAtLeast !== undefined && !sizeAtLeast(data, lineStart, nl, filesOfAtLeast)) continue;
      const line = data.toString("utf8", lineStart, nl);
      const node = decodeNode(line, `${owner}: node ${count}`);
      if (filesOfAtLeast !== undefined && (node.type !== "file" || (node.size ?? 0) < filesOfAtLeast)) continue;
      if (frozen) {
        if (node.chunks) Object.freeze(node.chunks);
        encodedLines.set(Object.freeze(node), line);
      }
      yield node;
    }
    carry = data.subarray(start);
  }
  if (carry.length > 0) throw corrupt(`${owner} ends in the middle of a node`);
  if (hash.digest("hex") !== snapshot.tree.sha256 || count !== snapshot.tree.nodes) {
    throw corrupt(`${owner} does not match the sha256 or node count recorded in the manifest`);
  }
}

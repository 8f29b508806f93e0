import assert from "node:assert/strict";
import { test } from "node:test";
import { compareUtf8, comparePaths } from "./tree.js";

/** The orders by definition: UTF-8 bytes, and paths segment by segment. */
const byBytes = (a: string, b: string): number => Buffer.compare(Buffer.from(a, "utf8"), Buffer.from(b, "utf8"));
function pathsByBytes(a: string, b: string): number {
  const as = a.split("/");
  const bs = b.split("/");
  for (let i = 0; i < Math.min(as.length, bs.length); i++) {
    const c = byBytes(as[i]!, bs[i]!);
    if (c !== 0) return c;
  }
  return as.length - bs.length;
}

// ASCII, 2- and 3-byte characters, U+E000-U+FFFF (after every surrogate in UTF-16, before
// astral characters in UTF-8), an astral character (a surrogate pair), lone surrogates.
const ALPHABET = ["a", "b", "-", ".", "0", "~", "é", "中", "\uE000", "\uFFFD", "\uFFFF", "😀", "𝄞", "\uD800", "\uDC00"];

let seed = 42;
function next(n: number): number {
  seed = (seed * 1103515245 + 12345) & 0x7fffffff;
  return seed % n;
}
function word(alphabet: string[], max: number): string {
  let s = "";
  for (let i = next(max + 1); i > 0; i--) s += alphabet[next(alphabet.length)]!;
  return s;
}
const sign = (n: number): number => Math.sign(n);

void test("compareUtf8 orders strings as their UTF-8 bytes", () => {
  for (let k = 0; k < 20_000; k++) {
    const a = word(ALPHABET, 6);
    // Often a prefix of a, or a with one more or one other character: the close calls.
    const kind = next(4);
    const b =
      kind === 0
        ? a.slice(0, next(a.length + 1))
        : kind === 1
          ? a + word(ALPHABET, 2)
          : kind === 2
            ? word(ALPHABET, 6)
            : a;
    assert.equal(sign(compareUtf8(a, b)), sign(byBytes(a, b)), `${JSON.stringify(a)} vs ${JSON.stringify(b)}`);
    assert.equal(sign(compareUtf8(b, a)), sign(byBytes(b, a)), `${JSON.stringify(b)} vs ${JSON.stringify(a)}`);
  }
  // Where UTF-16 order and UTF-8 order differ: U+FFFF sorts before an astral character in bytes.
  assert.ok(compareUtf8("\uFFFF", "😀") < 0);
  assert.ok(compareUtf8("x\uE000", "x𝄞") < 0);
  // A lone surrogate is encoded as U+FFFD: equal bytes, though not equal strings.
  assert.equal(compareUtf8("\uD800", "\uFFFD"), 0);
  // A prefix that ends inside the other's surrogate pair (its lone surrogate is U+FFFD, EF BF BD).
  assert.equal(sign(compareUtf8("a\uD83D", "a😀")), sign(byBytes("a\uD83D", "a😀")));
});

void test("comparePaths orders paths segment by segment, as a depth-first walk", () => {
  const withSlash = [...ALPHABET, "/", "/"];
  for (let k = 0; k < 20_000; k++) {
    const a = word(withSlash, 8);
    const kind = next(3);
    const b = kind === 0 ? a.slice(0, next(a.length + 1)) : kind === 1 ? a + word(withSlash, 3) : word(withSlash, 8);
    assert.equal(sign(comparePaths(a, b)), sign(pathsByBytes(a, b)), `${JSON.stringify(a)} vs ${JSON.stringify(b)}`);
  }
  // A directory's children come right after it, before a sibling that sorts after it by bytes.
  const paths = ["a-b", "a/b", "a", "a/b/c", "a.txt", "b", "a/😀", "a/\uFFFF", "A"];
  assert.deepEqual([...paths].sort(comparePaths), [...paths].sort(pathsByBytes));
  assert.deepEqual([...paths].sort(comparePaths), ["A", "a", "a/b", "a/b/c", "a/\uFFFF", "a/😀", "a-b", "a.txt", "b"]);
});

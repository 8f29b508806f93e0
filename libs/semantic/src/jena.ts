/**
 * A parse check of Apache Jena rule files (the syntax of Jena's `Rule.parseRules`): `@prefix`
 * and `@include` directives, `[name: body -> head]` forward rules, `head <- body` backward
 * rules, bare rules ending with `.`, triple patterns `(s p o)` with optional commas, builtins
 * and functors `name(args)`, nested rules in heads, `?vars`, `<IRIs>`, `prefix:names` (declared,
 * or one of Jena's standard prefixes), bare `scheme://` URIs, `'literals'` / `"literals"` with
 * `^^type` or `@lang`, numbers, and `#` / `//` comments. No maintained JavaScript parser of this
 * syntax exists, so this is a small recursive-descent checker: it reports the line of the first
 * error, it does not evaluate rules.
 */

export interface JenaCheck {
  ok: boolean;
  /** Rules found (nested rules in heads count too). */
  rules: number;
  /** First error, with its 1-based line. */
  error?: { line: number; message: string };
}

/** Prefixes Jena knows without an @prefix (PrefixMapping.Standard and the rule parser's own). */
const STANDARD_PREFIXES = new Set([
  "rdf",
  "rdfs",
  "owl",
  "xsd",
  "dc",
  "dcterms",
  "rss",
  "vcard",
  "jms",
  "eg",
  "ja",
  "fn",
]);

type TokKind = "punct" | "iri" | "var" | "string" | "word" | "directive" | "eof";

interface Token {
  kind: TokKind;
  text: string;
  line: number;
}

class JenaSyntaxError extends Error {
  constructor(
    message: string,
    readonly line: number,
  ) {
    super(message);
  }
}

const WORD_STOP = /[\s()[\],'"<>]/;

function tokenize(text: string): Token[] {
  const tokens: Token[] = [];
  let i = 0;
  let line = 1;
  const n = text.length;
  while (i < n) {
    const c = text[i]!;
    if (c === "\n") {
      line++;
      i++;
      continue;
    }
    if (/\s/.test(c)) {
      i++;
      continue;
    }
    if (c === "#" || (c === "/" && text[i + 1] === "/")) {
      while (i < n && text[i] !== "\n") i++;
      continue;
    }
    if (c === "-" && text[i + 1] === ">") {
      tokens.push({ kind: "punct", text: "->", line });
      i += 2;
      continue;
    }
    if (c === "<" && text[i + 1] === "-") {
      tokens.push({ kind: "punct", text: "<-", line });
      i += 2;
      continue;
    }
    if (c === "<") {
      const end = text.indexOf(">", i + 1);
      const nl = text.indexOf("\n", i + 1);
      if (end < 0 || (nl >= 0 && nl < end)) throw new JenaSyntaxError("unterminated <IRI>", line);
      tokens.push({ kind: "iri", text: text.slice(i + 1, end), line });
      i = end + 1;
      continue;
    }
    if ("[](),".includes(c)) {
      tokens.push({ kind: "punct", text: c, line });
      i++;
      continue;
    }
    if (c === "'" || c === '"') {
      const start = line;
      let j = i + 1;
      let value = "";
      while (j < n && text[j] !== c) {
        if (text[j] === "\\") j++;
        if (text[j] === "\n") line++;
        value += text[j] ?? "";
        j++;
      }
      if (j >= n) throw new JenaSyntaxError("unterminated string literal", start);
      i = j + 1;
      tokens.push({ kind: "string", text: value, line: start });
      continue;
    }
    if (c === "?") {
      let j = i + 1;
      while (j < n && /[A-Za-z0-9_]/.test(text[j]!)) j++;
      if (j === i + 1) throw new JenaSyntaxError("a variable needs a name after '?'", line);
      tokens.push({ kind: "var", text: text.slice(i, j), line });
      i = j;
      continue;
    }
    if (c === "@") {
      let j = i + 1;
      while (j < n && /[A-Za-z0-9-]/.test(text[j]!)) j++;
      tokens.push({ kind: "directive", text: text.slice(i, j), line });
      i = j;
      continue;
    }
    if (c === "." && (i + 1 >= n || /\s/.test(text[i + 1]!))) {
      tokens.push({ kind: "punct", text: ".", line });
      i++;
      continue;
    }
    if (c === "^" && text[i + 1] === "^") {
      tokens.push({ kind: "punct", text: "^^", line });
      i += 2;
      continue;
    }
    let j = i;
    while (j < n && !WORD_STOP.test(text[j]!)) {
      // a word ends before a "." that ends a statement
      if (text[j] === "." && (j + 1 >= n || /\s/.test(text[j + 1]!))) break;
      if (text[j] === "^" && text[j + 1] === "^") break;
      j++;
    }
    if (j === i) throw new JenaSyntaxError(`unexpected character ${JSON.stringify(c)}`, line);
    tokens.push({ kind: "word", text: text.slice(i, j), line });
    i = j;
  }
  tokens.push({ kind: "eof", text: "end of file", line });
  return tokens;
}

class RuleParser {
  private pos = 0;
  private readonly prefixes = new Set(STANDARD_PREFIXES);
  rules = 0;

  constructor(private readonly tokens: Token[]) {}

  private peek(offset = 0): Token {
    return this.tokens[Math.min(this.pos + offset, this.tokens.length - 1)]!;
  }

  private next(): Token {
    const t = this.peek();
    if (this.pos < this.tokens.length - 1) this.pos++;
    return t;
  }

  private fail(message: string, token = this.peek()): never {
    throw new JenaSyntaxError(message, token.line);
  }

  private expect(text: string): Token {
    const t = this.next();
    if (t.kind !== "punct" || t.text !== text) this.fail(`expected "${text}" but found ${describe(t)}`, t);
    return t;
  }

  private isPunct(text: string, offset = 0): boolean {
    const t = this.peek(offset);
    return t.kind === "punct" && t.text === text;
  }

  parseFile(): void {
    while (this.peek().kind !== "eof") {
      const t = this.peek();
      if (t.kind === "directive") this.directive();
      else if (this.isPunct("[")) {
        this.next();
        this.bracketRule();
      } else {
        this.bareRule(false);
        this.expect(".");
      }
    }
  }

  private directive(): void {
    const d = this.next();
    if (d.text === "@prefix") {
      const p = this.next();
      if (p.kind !== "word" || !p.text.endsWith(":"))
        this.fail(`@prefix needs a name ending with ":", found ${describe(p)}`, p);
      const iri = this.next();
      if (iri.kind !== "iri") this.fail(`@prefix ${p.text} needs an <IRI>, found ${describe(iri)}`, iri);
      this.prefixes.add(p.text.slice(0, -1));
    } else if (d.text === "@include") {
      const iri = this.next();
      if (iri.kind !== "iri") this.fail(`@include needs an <IRI> (or <RDFS>, <OWL>, ...), found ${describe(iri)}`, iri);
    } else {
      this.fail(`unknown directive ${d.text}`, d);
    }
    this.expect(".");
  }

  /** After "[": an optional `name:` then a bare rule and "]". */
  private bracketRule(): void {
    const t = this.peek();
    if (t.kind === "word" && t.text.endsWith(":") && t.text.length > 1) this.next();
    this.bareRule(true);
    this.expect("]");
  }

  private bareRule(nested: boolean): void {
    this.rules++;
    const body = this.termList(nested);
    if (this.isPunct("->")) {
      this.next();
      const head = this.termList(true);
      if (head === 0) this.fail("a rule needs at least one term after ->");
    } else if (this.isPunct("<-")) {
      this.next();
      if (body !== 1) this.fail("a backward rule has exactly one triple pattern before <-");
      this.termList(false);
    } else {
      this.fail(`expected "->" or "<-" but found ${describe(this.peek())}`);
    }
  }

  private termList(allowNested: boolean): number {
    let count = 0;
    for (;;) {
      const t = this.peek();
      if (this.isPunct("(")) this.triple();
      else if (allowNested && this.isPunct("[")) {
        this.next();
        this.bracketRule();
      } else if (t.kind === "word" && this.isPunct("(", 1)) this.functor();
      else break;
      count++;
      if (this.isPunct(",")) this.next();
    }
    return count;
  }

  private triple(): void {
    this.expect("(");
    for (let i = 0; i < 3; i++) {
      if (this.isPunct(")")) this.fail(`a triple pattern has 3 nodes, found ${i}`);
      this.node();
      if (this.isPunct(",")) this.next();
    }
    if (!this.isPunct(")")) this.fail(`a triple pattern has 3 nodes; expected ")" but found ${describe(this.peek())}`);
    this.next();
  }

  private functor(): void {
    this.next();
    this.expect("(");
    while (!this.isPunct(")")) {
      if (this.peek().kind === "eof") this.fail('unterminated argument list, expected ")"');
      this.node();
      if (this.isPunct(",")) this.next();
    }
    this.next();
  }

  private node(): void {
    const t = this.peek();
    switch (t.kind) {
      case "iri":
      case "var":
        this.next();
        return;
      case "string":
        this.next();
        if (this.isPunct("^^")) {
          this.next();
          this.node();
        } else if (this.peek().kind === "directive") {
          this.next(); // @lang
        }
        return;
      case "word":
        if (this.isPunct("(", 1)) return this.functor();
        this.next();
        return this.word(t);
      default:
        this.fail(`expected a node (?var, <IRI>, prefix:name, 'literal' or number) but found ${describe(t)}`, t);
    }
  }

  private word(t: Token): void {
    const w = t.text;
    if (/^[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?$/.test(w)) return;
    if (/^[A-Za-z][A-Za-z0-9+.-]*:\/\//.test(w) || w.startsWith("urn:")) return;
    const colon = w.indexOf(":");
    if (colon < 0) this.fail(`"${w}" is not a node: use ?var, <IRI>, prefix:name, 'literal' or a number`, t);
    const prefix = w.slice(0, colon);
    if (!this.prefixes.has(prefix)) this.fail(`undeclared prefix "${prefix}:" in ${w}`, t);
  }
}

function describe(t: Token): string {
  if (t.kind === "eof") return "the end of the file";
  if (t.kind === "string") return `'${t.text}'`;
  if (t.kind === "iri") return `<${t.text}>`;
  return `"${t.text}"`;
}

/**
 * Checks a Jena rules file.
 *
 * ```ts
 * const r = checkJenaRules("@prefix ex: <http://example.org/>.\n[r1: (?a ex:p ?b) -> (?b ex:q ?a)]\n");
 * // { ok: true, rules: 1 }
 * ```
 */
export function checkJenaRules(text: string): JenaCheck {
  let parser: RuleParser | undefined;
  try {
    parser = new RuleParser(tokenize(text));
    parser.parseFile();
    return { ok: true, rules: parser.rules };
  } catch (err) {
    if (err instanceof JenaSyntaxError) {
      return { ok: false, rules: parser?.rules ?? 0, error: { line: err.line, message: err.message } };
    }
    throw err;
  }
}

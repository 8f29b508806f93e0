/**
 * Value forms of typed literals. Triple stores may keep a literal's value rather than its
 * lexical form (oxigraph writes `"15.20"^^xsd:decimal` back as `"15.2"`, `"007"^^xsd:int` as
 * `"7"^^xsd:integer`); comparing value forms tells such a store's answer from a real change.
 */
import type { Quad, Term } from "@rdfjs/types";
import { DataFactory } from "n3";

const XSD = "http://www.w3.org/2001/XMLSchema#";
const INTEGER_TYPES = new Set(
  [
    "integer",
    "int",
    "long",
    "short",
    "byte",
    "nonNegativeInteger",
    "positiveInteger",
    "negativeInteger",
    "nonPositiveInteger",
    "unsignedLong",
    "unsignedInt",
    "unsignedShort",
    "unsignedByte",
  ].map((t) => XSD + t),
);

function decimalForm(lex: string): string | undefined {
  const m = /^([+-]?)(\d*)(?:\.(\d*))?$/.exec(lex.trim());
  if (!m || (m[2] === "" && (m[3] ?? "") === "")) return undefined;
  const int = (m[2] ?? "").replace(/^0+(?=\d)/, "") || "0";
  const frac = (m[3] ?? "").replace(/0+$/, "");
  const zero = /^0*$/.test(int + frac);
  return `${m[1] === "-" && !zero ? "-" : ""}${int}${frac ? `.${frac}` : ""}`;
}

/** The value form of a literal's lexical form under its datatype, or undefined to keep it. */
function valueOf(lex: string, datatype: string): { lex: string; datatype: string } | undefined {
  if (INTEGER_TYPES.has(datatype) && /^[+-]?\d+$/.test(lex.trim())) {
    return { lex: BigInt(lex.trim()).toString(), datatype: `${XSD}integer` };
  }
  if (datatype === `${XSD}decimal`) {
    const d = decimalForm(lex);
    return d === undefined ? undefined : { lex: d, datatype };
  }
  if (datatype === `${XSD}double` || datatype === `${XSD}float`) {
    const n = Number(lex.trim());
    return Number.isNaN(n) && lex.trim() !== "NaN" ? undefined : { lex: String(n), datatype };
  }
  if (datatype === `${XSD}boolean`) {
    const t = lex.trim();
    return t === "1" || t === "true"
      ? { lex: "true", datatype }
      : t === "0" || t === "false"
        ? { lex: "false", datatype }
        : undefined;
  }
  return undefined;
}

function term(t: Term): Term {
  if (t.termType !== "Literal" || t.language || !t.datatype) return t;
  const v = valueOf(t.value, t.datatype.value);
  if (!v || (v.lex === t.value && v.datatype === t.datatype.value)) return t;
  return DataFactory.literal(v.lex, DataFactory.namedNode(v.datatype));
}

/**
 * The quads with numeric and boolean literals in value form (integer types as `xsd:integer`,
 * decimals without redundant zeros, doubles and floats as JavaScript prints them).
 *
 * ```ts
 * const same = (await canonicalize(valueForms(a), { asGraph: true })).hash === (await canonicalize(valueForms(b), { asGraph: true })).hash;
 * ```
 */
export function valueForms(quads: readonly Quad[]): Quad[] {
  return quads.map((q) => {
    const o = term(q.object);
    return o === q.object ? q : DataFactory.quad(q.subject, q.predicate, o as never, q.graph);
  });
}

/**
 * The table of contents of a pg_dump archive (`pg_restore -l`), and the selection of the
 * entries a restore of chosen tables or schemas needs: the tables, their owned sequences,
 * defaults, indexes, constraints, triggers, policies, rules, comments and privileges; foreign
 * keys only when the table they reference is restored too. SCHEMA entries are left out (the
 * restore creates missing schemas itself with CREATE SCHEMA IF NOT EXISTS).
 */
import type { TableRecord } from "./metadata.js";

export interface TocEntry {
  /** The line as pg_restore printed it (a list file takes these lines back). */
  line: string;
  id: number;
  desc: string;
  namespace: string;
  tag: string;
}

/** Entry kinds pg_dump writes, longest first so that "FK CONSTRAINT" wins over "CONSTRAINT". */
const DESCS = [
  "MATERIALIZED VIEW DATA",
  "SEQUENCE OWNED BY",
  "DEFAULT ACL",
  "FK CONSTRAINT",
  "CHECK CONSTRAINT",
  "TABLE ATTACH",
  "INDEX ATTACH",
  "SECURITY LABEL",
  "EVENT TRIGGER",
  "ROW SECURITY",
  "LARGE OBJECT",
  "MATERIALIZED VIEW",
  "SEQUENCE SET",
  "TABLE DATA",
  "BLOBS",
  "BLOB",
  "SEQUENCE",
  "CONSTRAINT",
  "STATISTICS",
  "PUBLICATION TABLE",
  "PUBLICATION",
  "SUBSCRIPTION",
  "TRIGGER",
  "DEFAULT",
  "COMMENT",
  "POLICY",
  "SCHEMA",
  "EXTENSION",
  "FUNCTION",
  "PROCEDURE",
  "AGGREGATE",
  "OPERATOR",
  "TYPE",
  "DOMAIN",
  "TABLE",
  "INDEX",
  "VIEW",
  "RULE",
  "ACL",
  "ENCODING",
  "STDSTRINGS",
  "SEARCHPATH",
].sort((a, b) => b.length - a.length);

/** Parses `pg_restore -l` output (comment lines are skipped). */
export function parseToc(text: string): TocEntry[] {
  const out: TocEntry[] = [];
  for (const line of text.split("\n")) {
    const m = /^(\d+); \d+ \d+ (.*)$/.exec(line);
    if (!m) continue;
    const rest = m[2]!;
    const desc = DESCS.find((d) => rest.startsWith(d + " "));
    if (!desc) {
      out.push({ line, id: Number(m[1]), desc: rest.split(" ")[0] ?? "", namespace: "-", tag: "" });
      continue;
    }
    const fields = rest.slice(desc.length + 1);
    const space = fields.indexOf(" ");
    const namespace = space < 0 ? fields : fields.slice(0, space);
    const afterNs = space < 0 ? "" : fields.slice(space + 1);
    const lastSpace = afterNs.lastIndexOf(" ");
    const tag = lastSpace < 0 ? afterNs : afterNs.slice(0, lastSpace);
    out.push({ line, id: Number(m[1]), desc, namespace, tag });
  }
  return out;
}

export interface Selection {
  /** Whole schemas. */
  schemas: ReadonlySet<string>;
  /** Chosen tables (with the subsidiary objects the backup recorded). */
  tables: readonly TableRecord[];
  /** Types ("schema.name") that already exist in the target: their entries are left out. */
  existingTypes?: ReadonlySet<string> | undefined;
}

const key = (schema: string, name: string) => `${schema}\u0000${name}`;

/** True when a table is part of the selection (chosen, or in a chosen schema). */
export function tableSelected(sel: Selection, schema: string, name: string): boolean {
  return sel.schemas.has(schema) || sel.tables.some((t) => t.schema === schema && t.name === name);
}

/** The entries a restore of the selection needs; the reasons foreign keys were left out. */
export function selectEntries(
  entries: readonly TocEntry[],
  sel: Selection,
  allTables: readonly TableRecord[],
): { keep: TocEntry[]; skippedForeignKeys: string[] } {
  const byTable = new Map<string, TableRecord>();
  for (const t of allTables) byTable.set(key(t.schema, t.name), t);
  const chosen = new Map<string, TableRecord>();
  for (const t of sel.tables) chosen.set(key(t.schema, t.name), byTable.get(key(t.schema, t.name)) ?? t);
  const fkTarget = new Map<string, { refSchema: string; refTable: string }>();
  for (const t of allTables) for (const fk of t.foreignKeys) fkTarget.set(key(t.schema, `${t.name} ${fk.name}`), fk);
  const skippedForeignKeys: string[] = [];
  const keep: TocEntry[] = [];
  for (const e of entries) {
    if (
      e.desc === "SCHEMA" ||
      e.desc === "EXTENSION" ||
      e.desc === "ENCODING" ||
      e.desc === "STDSTRINGS" ||
      e.desc === "SEARCHPATH"
    )
      continue;
    if (e.desc === "FK CONSTRAINT") {
      const ref = fkTarget.get(key(e.namespace, e.tag));
      const owner = e.tag.split(" ")[0] ?? "";
      if (!tableSelected(sel, e.namespace, owner)) continue;
      if (ref && !tableSelected(sel, ref.refSchema, ref.refTable)) {
        skippedForeignKeys.push(
          `${e.namespace}.${e.tag.replace(" ", ": ")} (references ${ref.refSchema}.${ref.refTable}, not restored)`,
        );
        continue;
      }
      keep.push(e);
      continue;
    }
    if (sel.schemas.has(e.namespace)) {
      keep.push(e);
      continue;
    }
    if (belongsToChosen(e, chosen) || typeOfChosen(e, chosen, sel.existingTypes)) keep.push(e);
  }
  return { keep, skippedForeignKeys };
}

function belongsToChosen(e: TocEntry, chosen: ReadonlyMap<string, TableRecord>): boolean {
  for (const t of chosen.values()) {
    if (t.schema !== e.namespace) continue;
    switch (e.desc) {
      case "TABLE":
      case "TABLE DATA":
      case "ROW SECURITY":
        if (e.tag === t.name) return true;
        break;
      case "INDEX":
        if (t.indexes.includes(e.tag)) return true;
        break;
      case "TYPE":
      case "DOMAIN":
        break;
      case "SEQUENCE":
      case "SEQUENCE SET":
      case "SEQUENCE OWNED BY":
        if (t.sequences.includes(e.tag)) return true;
        break;
      case "CONSTRAINT":
      case "CHECK CONSTRAINT":
      case "TRIGGER":
      case "POLICY":
      case "RULE":
      case "DEFAULT":
        if (e.tag.startsWith(`${t.name} `)) return true;
        break;
      case "COMMENT":
      case "ACL":
      case "SECURITY LABEL":
        if (
          e.tag === `TABLE ${t.name}` ||
          e.tag.startsWith(`COLUMN ${t.name}.`) ||
          t.sequences.some((s) => e.tag === `SEQUENCE ${s}`) ||
          t.indexes.some((i) => e.tag === `INDEX ${i}`) ||
          (e.tag.startsWith("CONSTRAINT ") && e.tag.endsWith(` ON ${t.name}`)) ||
          (e.tag.startsWith("TRIGGER ") && e.tag.endsWith(` ON ${t.name}`))
        )
          return true;
        break;
      default:
        break;
    }
  }
  return false;
}

/** A type or domain a chosen table's columns use, not in the target yet. */
function typeOfChosen(
  e: TocEntry,
  chosen: ReadonlyMap<string, TableRecord>,
  existing: ReadonlySet<string> | undefined,
): boolean {
  if (e.desc !== "TYPE" && e.desc !== "DOMAIN") return false;
  if (existing?.has(`${e.namespace}.${e.tag}`)) return false;
  for (const t of chosen.values())
    if (t.types?.some((ty) => ty.schema === e.namespace && ty.name === e.tag)) return true;
  return false;
}

/**
 * Syntax checks of configuration files: YAML, JSON, TOML, INI and `.conf`. A check never throws
 * for a bad file: it returns the line of the first error so the file is flagged (and still
 * backed up byte for byte).
 */
import { parse as parseToml } from "smol-toml";
import { parseAllDocuments } from "yaml";
import { jsonErrorOffset, lineAt } from "./json-position.js";

export type ConfigFormat = "yaml" | "json" | "toml" | "ini" | "conf";

export interface ConfigCheck {
  format: ConfigFormat;
  ok: boolean;
  error?: { line?: number; message: string };
}

const BY_EXTENSION: Readonly<Record<string, ConfigFormat>> = {
  yaml: "yaml",
  yml: "yaml",
  json: "json",
  toml: "toml",
  ini: "ini",
  conf: "conf",
  cfg: "conf",
  cnf: "conf",
  properties: "conf",
};

/** The configuration format of a file by its extension, or undefined. */
export function configFormatOf(path: string): ConfigFormat | undefined {
  const name = path.slice(path.lastIndexOf("/") + 1).toLowerCase();
  const dot = name.lastIndexOf(".");
  return dot < 0 ? undefined : BY_EXTENSION[name.slice(dot + 1)];
}

/**
 * Checks one configuration file's syntax.
 *
 * ```ts
 * const c = checkConfig("etc/app.yaml", await readFile(path));
 * if (!c.ok) console.warn(`line ${c.error?.line}: ${c.error?.message}`);
 * ```
 */
export function checkConfig(
  path: string,
  content: Uint8Array | string,
  format = configFormatOf(path) ?? "conf",
): ConfigCheck {
  let text: string;
  try {
    text = typeof content === "string" ? content : new TextDecoder("utf-8", { fatal: true }).decode(content);
  } catch {
    return { format, ok: false, error: { message: "the file is not valid UTF-8 text" } };
  }
  const bad = (message: string, line?: number): ConfigCheck => ({
    format,
    ok: false,
    error: { ...(line ? { line } : {}), message },
  });
  switch (format) {
    case "json":
      try {
        JSON.parse(text);
        return { format, ok: true };
      } catch (err) {
        const message = (err as Error).message;
        const pos = /position (\d+)/.exec(message);
        return bad(message, lineAt(text, pos ? Number(pos[1]) : jsonErrorOffset(text)));
      }
    case "yaml": {
      for (const doc of parseAllDocuments(text)) {
        const first = doc.errors[0];
        if (first) return bad(first.message.split("\n")[0]!, first.linePos?.[0]?.line);
      }
      return { format, ok: true };
    }
    case "toml":
      try {
        parseToml(text);
        return { format, ok: true };
      } catch (err) {
        const e = err as { message: string; line?: number };
        return bad(e.message.split("\n")[0]!, e.line);
      }
    case "ini":
      return checkIni(text);
    case "conf":
      return text.includes("\0") ? bad("the file contains NUL bytes (not a text configuration)") : { format, ok: true };
  }
}

/** INI: blank lines, `;`/`#` comments, `[section]`, `key = value` / `key: value`, indented continuations. */
function checkIni(text: string): ConfigCheck {
  const lines = text.split(/\r?\n/);
  for (let i = 0; i < lines.length; i++) {
    const line = lines[i]!;
    const t = line.trim();
    if (t === "" || t.startsWith(";") || t.startsWith("#")) continue;
    if (t.startsWith("[")) {
      if (!/^\[[^\]]+\]\s*([;#].*)?$/.test(t))
        return { format: "ini", ok: false, error: { line: i + 1, message: `malformed section header: ${t}` } };
      continue;
    }
    if (/^\s/.test(line) && i > 0) continue; // continuation of the previous value
    if (!/^[^=:]+[=:]/.test(t))
      return { format: "ini", ok: false, error: { line: i + 1, message: `expected "key = value", found: ${t}` } };
  }
  return { format: "ini", ok: true };
}

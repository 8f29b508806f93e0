/**
 * Argument parsing on node's util.parseArgs: each command declares its options; unknown
 * options and missing values are errors that name the command and show its usage.
 */
import { parseArgs, type ParseArgsConfig } from "node:util";
import { IotvaultError } from "@iotvault/errors";

export type OptionSpec = NonNullable<ParseArgsConfig["options"]>;

export interface Parsed {
  positionals: string[];
  values: Record<string, string | boolean | string[] | undefined>;
}

/** Thrown by parse() for `-h` / `--help` after a command: main prints the usage and exits 0. */
export class UsageRequested extends Error {
  constructor(readonly usage: string) {
    super("usage requested");
  }
}

export function parse(argv: string[], options: OptionSpec, usage: string): Parsed {
  if (argv.includes("-h") || argv.includes("--help")) throw new UsageRequested(usage);
  try {
    const { values, positionals } = parseArgs({
      args: argv,
      options: { ...options, json: { type: "boolean" }, help: { type: "boolean", short: "h" } },
      allowPositionals: true,
      strict: true,
    });
    return { values: values, positionals };
  } catch (err) {
    throw new IotvaultError("INVALID_ARGUMENT", (err as Error).message.replace(/\. To specify.*$/s, ""), {
      hint: `usage: ${usage}`,
    });
  }
}

export function str(p: Parsed, name: string): string | undefined {
  const v = p.values[name];
  return typeof v === "string" ? v : undefined;
}

export function list(p: Parsed, name: string): string[] {
  const v = p.values[name];
  return Array.isArray(v) ? v : typeof v === "string" ? [v] : [];
}

export function flag(p: Parsed, name: string): boolean {
  return p.values[name] === true;
}

export function required(value: string | undefined, what: string, usage: string): string {
  if (!value) throw new IotvaultError("INVALID_ARGUMENT", `missing ${what}`, { hint: `usage: ${usage}` });
  return value;
}

#!/usr/bin/env node
/**
 * iotvault — the command line of iotvault: a gRPC client of the services, plus `stack` to run
 * them on this host. `iotvault help` lists the commands; every command takes --json.
 */
import { toIotvaultError } from "@iotvault/errors";
import { backup, job, key, repo, restore, runs, sample, snapshots, stack, traceCmd, verify } from "./commands.js";
import { Context } from "./context.js";

const HELP = `iotvault — backup and restore for IoT platforms

usage: iotvault <command> [options] [--json]

  stack up | down | status          run the five services on this host (and NATS / PostgreSQL
                                    when none is reachable); state under IOTVAULT_HOME
  repo init <name> --url file:///path
  repo list
  key list | add | remove <slot> | rotate --repo R
                                    passphrase and key-file slots; rotate makes a new data key
                                    and master key without rewriting packs
  job create <name> --source fs:/path --repo <name> [--schedule CRON] [--tz ZONE]
             [--type full|incremental|differential] [--site S] [--include GLOB]... [--exclude GLOB]...
  job list | show <job> | delete <job>
  backup <job> [--type T] [--wait]  run now; with --wait, print run, snapshot, trace and sizes
  runs [--job J] [--limit N]
  snapshots [--job J] [--repo R]
  restore <snapshot> --to <dir> [--include GLOB]... [--overwrite] [--no-verify]
  verify <snapshot> | --all --repo R [--read-data[=PCT]]
  trace <run-id>                    the run's spans across services, as a tree
  sample <dir> [--size-mib N]       write a sample IoT gateway tree (for demos and tests)

The repository passphrase comes from IOTVAULT_PASSWORD or IOTVAULT_PASSWORD_FILE (or a key
file: IOTVAULT_KEY_FILE).
Set IOTVAULT_DEBUG=1 to see stack traces of errors.`;

const COMMANDS: Record<string, (ctx: Context, argv: string[]) => Promise<void>> = {
  stack,
  repo,
  key,
  job,
  backup,
  runs,
  snapshots,
  restore,
  verify,
  trace: traceCmd,
  sample,
};

async function main(argv: string[]): Promise<number> {
  const [command, ...rest] = argv;
  if (!command || command === "help" || command === "--help" || command === "-h") {
    process.stdout.write(HELP + "\n");
    return command ? 0 : 2;
  }
  const run = COMMANDS[command];
  const json = rest.includes("--json");
  if (!run) {
    process.stderr.write(`iotvault: unknown command "${command}"\n\n${HELP}\n`);
    return 2;
  }
  let ctx: Context | undefined;
  try {
    ctx = new Context(process.env, json);
    await run(ctx, rest);
    return typeof process.exitCode === "number" ? process.exitCode : 0;
  } catch (err) {
    const e = toIotvaultError(err);
    if (json) {
      process.stdout.write(
        JSON.stringify({ error: { code: e.code, message: e.message, hint: e.hint ?? "", retryable: e.retryable } }) +
          "\n",
      );
    } else {
      process.stderr.write(`iotvault: ${e.message}\n`);
      if (e.hint) process.stderr.write(`hint: ${e.hint}\n`);
      if (process.env["IOTVAULT_DEBUG"]) process.stderr.write(`${(err as Error).stack ?? ""}\n`);
    }
    return e.code === "INVALID_ARGUMENT" ? 2 : 1;
  } finally {
    ctx?.close();
  }
}

process.exitCode = await main(process.argv.slice(2));

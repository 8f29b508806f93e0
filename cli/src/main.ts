#!/usr/bin/env node
/**
 * iotvault — the command line of iotvault: a gRPC client of the services, plus `stack` to run
 * them on this host. `iotvault help` lists the commands; every command takes --json.
 */
import { toIotvaultError } from "@iotvault/errors";
import { UsageRequested } from "./args.js";
import type { Context } from "./context.js";

const HELP = `iotvault — backup and restore for IoT platforms

usage: iotvault <command> [options] [--json]

  stack up | down | status          run the five services on this host (and NATS / PostgreSQL
                                    when none is reachable); state under IOTVAULT_HOME
  repo init <name> --url <url> [--replica <url>]...
                                    file:///path, s3://bucket/prefix?endpoint=host:port,
                                    sftp://user@host/path; replicas get every write
  repo list
  key list | add | remove <slot> | rotate --repo R
                                    passphrase and key-file slots; rotate makes a new data key
                                    and master key without rewriting packs
  job create <name> --source URL --repo <name> [--schedule CRON] [--tz ZONE]
             [--type full|incremental|differential] [--site S] [--include GLOB]... [--exclude GLOB]...
             [--group-source URL]... [--keep-last N] [--keep-hourly N] [--keep-daily N]
             [--keep-weekly N] [--keep-monthly N] [--keep-yearly N] [--retention-days N]
                                    sources: fs:/path, postgres://...?mode=logical|physical,
                                    rdf:/dir, rules:/dir, config:/dir, kv:bucket, sparql+http://...
  job update <job> [the same flags]  change only the flags given
  job list | show <job> | delete <job>
  backup <job> [--type T] [--wait] [--timeout SECONDS]
                                    run now; with --wait, print run, snapshot, trace and sizes
  runs [--job J] [--limit N]
  snapshots [--job J] [--repo R] [--group RUN] [--limit N]
  restore <snapshot> --to <dir | URL> [--repo R] [--include GLOB]... [--overwrite] [--no-verify]
          [--allow-external-symlinks] [--option K=V]...
  verify <snapshot> [--repo R] | --all --repo R [--read-data[=PCT]]
  diff <snapshotA> <snapshotB> [--repo R] [--sample N] [--max N]
                                    files, graphs, triples and ontology versions that changed
  trace <run-id | trace-id>         the run's spans across services, as a tree
  restore-group <run-id> --to <dir> [--map SOURCE=TARGET]... [--option K=V]...
                                    every member of a consistency group, back to its recovery point
  forget --job J [--keep-* N] [--retention-days N] [--tz ZONE] [--dry-run]
                                    remove snapshots a retention policy does not keep (the
                                    job's own policy when no flag is given); holds are kept
  prune --repo R [--dry-run] [--wait SECONDS] [--repack-threshold 0..1]
                                    free the data no snapshot uses (waits for running backups)
  hold <snapshot> --reason TEXT | hold --release <snapshot> | hold --list --repo R
  locks --repo R                    who holds the repository (backups, prune, key rotation)
  catalog rebuild --repo R          the catalog's snapshots from the repository alone
  sample [<dir>] [--size-mib N] [--seed N]
                                    write a sample IoT gateway tree (for demos and tests)
  wal-push <%p> --repo R [--system-id S] [--pgdata DIR]
                                    PostgreSQL archive_command: store a WAL file (idempotent)
  wal-fetch <%f> <%p> --repo R --system-id S [--prefetch N]
                                    PostgreSQL restore_command (exit 1: not archived);
                                    --prefetch: the next N segments fetched ahead
  wal-list --repo R [--system-id S] the WAL archive per cluster and timeline
  wal-prune --repo R [--system-id S] [--dry-run]
                                    remove WAL older than the oldest kept physical backup
  drill <job> [--snapshot ID] [--keep] [--option K=V]... | drill <job> --schedule CRON|off
                                    restore the job's newest snapshot into a scratch target,
                                    check it, remove it (now, or on a schedule)

\`iotvault <command> --help\` shows the usage of one command.

The repository passphrase comes from IOTVAULT_PASSWORD or IOTVAULT_PASSWORD_FILE (or a key
file: IOTVAULT_KEY_FILE).
Set IOTVAULT_DEBUG=1 to see stack traces of errors.`;

type Command = (ctx: Context, argv: string[]) => Promise<void>;

/**
 * Each command's module is loaded when the command runs: loading every module (gRPC, NATS, the
 * repository, the telemetry SDK) costs about half a second, and some commands run often
 * (wal-push is PostgreSQL's archive_command, once per WAL segment).
 */
const commands = () => import("./commands.js");
const retention = () => import("./retention.js");
const postgres = () => import("./postgres.js");
const COMMANDS: Record<string, () => Promise<Command>> = {
  stack: async () => (await commands()).stack,
  repo: async () => (await commands()).repo,
  key: async () => (await commands()).key,
  job: async () => (await commands()).job,
  backup: async () => (await commands()).backup,
  runs: async () => (await commands()).runs,
  snapshots: async () => (await commands()).snapshots,
  restore: async () => (await commands()).restore,
  verify: async () => (await commands()).verify,
  diff: async () => (await import("./diff.js")).diff,
  trace: async () => (await commands()).traceCmd,
  forget: async () => (await retention()).forget,
  prune: async () => (await retention()).prune,
  "restore-group": async () => (await import("./group.js")).restoreGroup,
  hold: async () => (await retention()).hold,
  locks: async () => (await retention()).locks,
  catalog: async () => (await retention()).catalog,
  sample: async () => (await commands()).sample,
  "wal-push": async () => (await postgres()).walPushCmd,
  "wal-fetch": async () => (await postgres()).walFetchCmd,
  "wal-list": async () => (await postgres()).walListCmd,
  "wal-prune": async () => (await postgres()).walPruneCmd,
  drill: async () => (await postgres()).drillCmd,
};

async function main(argv: string[]): Promise<number> {
  const [command, ...rest] = argv;
  if (!command || command === "help" || command === "--help" || command === "-h") {
    process.stdout.write(HELP + "\n");
    return command ? 0 : 2;
  }
  const load = COMMANDS[command];
  const json = rest.includes("--json");
  if (!load) {
    process.stderr.write(`iotvault: unknown command "${command}"\n\n${HELP}\n`);
    return 2;
  }
  let ctx: Context | undefined;
  try {
    // restore_command with --prefetch: a segment fetched ahead is moved into place before
    // anything heavier than this module loads.
    const prefetching = command === "wal-fetch" && rest.some((a) => a.startsWith("--prefetch"));
    const spooled = prefetching ? await (await import("./wal-fetch.js")).fetchFromSpool(rest) : undefined;
    if (spooled !== undefined) {
      if (json) process.stdout.write(JSON.stringify({ name: spooled, restored: true, prefetched: true }) + "\n");
      return 0;
    }
    const [run, { Context }] = await Promise.all([load(), import("./context.js")]);
    ctx = new Context(process.env, json);
    await run(ctx, rest);
    return typeof process.exitCode === "number" ? process.exitCode : 0;
  } catch (err) {
    if (err instanceof UsageRequested) {
      process.stdout.write(`usage: ${err.usage}\n`);
      return 0;
    }
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
    // As PostgreSQL's restore_command, wal-fetch exits 1 only for "this segment is not archived"
    // (it ends recovery): any other failure, configuration included, is 126 (recovery stops).
    if (command === "wal-fetch") return 126;
    return e.code === "INVALID_ARGUMENT" ? 2 : 1;
  } finally {
    await ctx?.close();
  }
}

// Not a top-level await: the bundle (scripts/bundle-cli.mjs) is a CommonJS script, loaded with
// V8's code cache by the bin.
void main(process.argv.slice(2)).then((code) => {
  process.exitCode = code;
});

/**
 * archive_command / restore_command of this package's tests: the WAL functions of the library
 * on a repository in a local directory, opened with a key file (the CLI's wal-push/wal-fetch do
 * the same through the storage-gateway). Exit codes as the CLI: 0 done, 1 not in the archive,
 * 126 any other failure (PostgreSQL then stops recovery instead of ending it early).
 *
 *   node test-wal-command.js push  <repo dir> <key file> <%p>
 *   node test-wal-command.js fetch <repo dir> <key file> <system id> <%f> <%p>
 */
import { readFileSync } from "node:fs";
import { Repository } from "@iotvault/repo";
import { LocalDirectoryStore } from "@iotvault/storage";
import { walFetch, walPush } from "./wal.js";

async function main(argv: string[]): Promise<number> {
  const [command, repoDir, keyFile, ...rest] = argv;
  if (!command || !repoDir || !keyFile) return 126;
  const repo = await Repository.open(
    new LocalDirectoryStore(repoDir),
    { keyFile: readFileSync(keyFile) },
    { loadIndex: false, workers: 1 },
  );
  try {
    if (command === "push") {
      await walPush(repo, rest[0]!);
      return 0;
    }
    if (command === "fetch") {
      return (await walFetch(repo, rest[1]!, rest[2]!, { systemId: rest[0]! })) ? 0 : 1;
    }
    return 126;
  } finally {
    await repo.close();
  }
}

main(process.argv.slice(2)).then(
  (code) => {
    process.exitCode = code;
  },
  (err: unknown) => {
    process.stderr.write(`test-wal-command: ${(err as Error).message}\n`);
    process.exitCode = 126;
  },
);

/**
 * The configuration source `config:/path` (a directory or one file): YAML, JSON, TOML, INI and
 * `.conf` files are syntax-checked (a broken file is still stored byte for byte and flagged by
 * name and line); every file is stored byte for byte; incremental backups store only the files
 * that changed; restore writes them back into a directory.
 */
import { checkConfig, configFormatOf } from "@iotvault/semantic";
import type { SourceAdapter } from "../adapter.js";
import { problemOf } from "../rdf/adapter.js";
import { backupFileTree } from "../rdf/file-tree.js";
import { restoreFileTree } from "../rdf/restore-files.js";
import { parsePathUrl } from "../rdf/url.js";

export const configAdapter: SourceAdapter = {
  schemes: ["config"],
  validate(url) {
    parsePathUrl(url, "config");
  },
  backup(ctx) {
    return backupFileTree(ctx, {
      kind: "config",
      root: parsePathUrl(ctx.job.source, "config"),
      isCandidate: (p) => configFormatOf(p) !== undefined,
      analyse: async (path, bytes) => {
        const config = checkConfig(path, bytes);
        return { format: config.format, config };
      },
      problem: problemOf,
    });
  },
  restore: restoreFileTree,
};

/** The file-system source as a SourceAdapter (fs:/path). */
import { isAbsolute } from "node:path";
import { IotvaultError, redactUrl } from "@iotvault/errors";
import { backupDirectory } from "../fs/backup.js";
import { restoreToDirectory } from "../fs/restore.js";
import { parseSourceUrl } from "../fs/url.js";
import type { SourceAdapter } from "../adapter.js";

export const fsAdapter: SourceAdapter = {
  schemes: ["fs"],
  validate(url) {
    parseSourceUrl(url);
  },
  async backup(ctx) {
    const { root } = parseSourceUrl(ctx.job.source);
    const r = await backupDirectory(ctx.repo, ctx.writer, {
      root,
      include: [...ctx.job.include],
      exclude: [...ctx.job.exclude],
      parent: ctx.parent,
      signal: ctx.signal,
      onProgress: (p) => ctx.onProgress(p),
      onWarning: (w) => ctx.onWarning(w),
    });
    return { files: r.files, dirs: r.dirs, symlinks: r.symlinks, bytes: r.bytes, warnings: r.warnings, metadata: {} };
  },
  async restore(ctx) {
    // A directory, never a relative path or another kind's URL (which would otherwise become
    // a directory named after it in the restore service's working directory).
    if (!isAbsolute(ctx.target)) {
      throw new IotvaultError(
        "INVALID_ARGUMENT",
        `a file-system snapshot restores into a directory, not ${JSON.stringify(redactUrl(ctx.target, { onlySchemeUrls: true, unparsable: "<unparsable target>" }))}`,
        { hint: "pass an absolute directory with --to" },
      );
    }
    const r = await restoreToDirectory(ctx.repo, ctx.snapshot, {
      target: ctx.target,
      include: [...ctx.include],
      overwrite: ctx.overwrite,
      verify: ctx.verify,
      allowExternalSymlinks: ctx.allowExternalSymlinks,
      signal: ctx.signal,
      onProgress: (p) => ctx.onProgress(p),
    });
    return { ...r, details: {} };
  },
};

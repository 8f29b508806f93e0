/**
 * The PostgreSQL source as a SourceAdapter (postgres:// and postgresql:// URLs): logical or
 * physical backups by the URL's mode, restores into a database URL (logical), a new data
 * directory (physical) or a directory of dump files (logical).
 *
 * Services it takes from the caller (`services.postgres`, optional): how restore_command
 * reaches the repository's WAL archive (the restore service builds `iotvault wal-fetch`).
 */
import { isAbsolute } from "node:path";
import { IotvaultError } from "@iotvault/errors";
import type { SourceAdapter } from "../adapter.js";
import { restoreToDirectory } from "../fs/restore.js";
import { backupLogical } from "./logical-backup.js";
import { restoreLogical } from "./logical-restore.js";
import { pgMetadataOf } from "./metadata.js";
import { backupPhysical } from "./physical-backup.js";
import { restorePhysical } from "./physical-restore.js";
import { withPg } from "./connection.js";
import { isPostgresUrl, parsePostgresUrl } from "./url.js";

/** What the PostgreSQL adapter may be given in `services.postgres`. */
export interface PgServices {
  /** restore_command for a repository (its store location) and a cluster's system identifier. */
  restoreCommand?: ((location: string, systemId: string) => string | undefined) | undefined;
}

function servicesOf(services: Readonly<Record<string, unknown>>): PgServices {
  return (services["postgres"] as PgServices | undefined) ?? {};
}

export const pgAdapter: SourceAdapter = {
  schemes: ["postgres", "postgresql"],
  validate(url) {
    parsePostgresUrl(url);
  },
  async backup(ctx) {
    const source = parsePostgresUrl(ctx.job.source);
    if (source.mode === "physical") {
      if (ctx.job.include.length || ctx.job.exclude.length) {
        throw new IotvaultError(
          "INVALID_ARGUMENT",
          "include/exclude patterns do not apply to physical PostgreSQL backups",
          {
            hint: "a physical backup copies the whole cluster; use mode=logical to choose tables",
          },
        );
      }
      const r = await backupPhysical(ctx.repo, ctx.writer, {
        source,
        label: ctx.writer.snapshotId.slice(0, 16),
        parent: ctx.backupType === "full" ? undefined : ctx.parent,
        signal: ctx.signal,
        onProgress: (p) => ctx.onProgress(p),
        onWarning: (w) => ctx.onWarning(w),
      });
      return {
        files: r.files,
        dirs: r.dirs,
        symlinks: r.symlinks,
        bytes: r.bytes,
        warnings: 0,
        metadata: { postgres: r.metadata },
      };
    }
    let warnings = 0;
    const r = await backupLogical(ctx.writer, {
      source,
      include: ctx.job.include,
      exclude: ctx.job.exclude,
      signal: ctx.signal,
      onProgress: (p) => ctx.onProgress(p),
      onWarning: (w) => {
        warnings++;
        ctx.onWarning(w);
      },
    });
    return { files: r.files, dirs: r.dirs, symlinks: 0, bytes: r.bytes, warnings, metadata: { postgres: r.metadata } };
  },
  async restore(ctx) {
    const meta = pgMetadataOf(ctx.snapshot);
    if (meta.mode === "physical") {
      const r = await restorePhysical(ctx.repo, ctx.snapshot, meta, {
        target: ctx.target,
        options: ctx.options,
        restoreCommand: servicesOf(ctx.services).restoreCommand?.(ctx.repo.store.location, meta.systemIdentifier),
        verify: ctx.verify,
        signal: ctx.signal,
        onProgress: (p) => ctx.onProgress(p),
      });
      return {
        files: r.files,
        dirs: r.dirs,
        symlinks: r.symlinks,
        bytes: r.bytes,
        verified: r.verified,
        details: r.details,
      };
    }
    if (isPostgresUrl(ctx.target)) {
      const r = await restoreLogical(ctx.repo, ctx.snapshot, meta, {
        target: ctx.target,
        options: ctx.options,
        verify: ctx.verify,
        signal: ctx.signal,
        onProgress: (p) => ctx.onProgress(p),
      });
      return { files: r.files, dirs: 0, symlinks: 0, bytes: r.bytes, verified: r.verified, details: r.details };
    }
    if (!isAbsolute(ctx.target)) {
      throw new IotvaultError(
        "INVALID_ARGUMENT",
        `restore target "${ctx.target}" is neither a postgres:// URL nor a directory`,
        {
          hint: "restore a logical backup into --to postgres://user@host:port/newdb (with --option create_database=true), or into a directory to get the dump files",
        },
      );
    }
    const r = await restoreToDirectory(ctx.repo, ctx.snapshot, {
      target: ctx.target,
      include: [...ctx.include],
      overwrite: ctx.overwrite,
      verify: ctx.verify,
      signal: ctx.signal,
      onProgress: (p) => ctx.onProgress(p),
    });
    return { ...r, details: { mode: "logical", files: "pg_dump archives: restore them with pg_restore" } };
  },
  async recoveryPoint(url, label, signal) {
    const source = parsePostgresUrl(url);
    if (source.mode !== "physical") return undefined; // a logical dump is its own point in time
    return withPg(
      source,
      async (client) => {
        const name = label.slice(0, 63);
        const { rows } = await client.query<{ lsn: string; at: Date }>(
          "SELECT pg_create_restore_point($1)::text AS lsn, now() AS at",
          [name],
        );
        // Close the segment so that archive_command stores the restore point soon.
        await client.query("SELECT pg_switch_wal()");
        return {
          description: { restorePoint: name, lsn: rows[0]!.lsn, time: rows[0]!.at.toISOString() },
          restoreOptions: { recovery_target_name: name },
        };
      },
      { signal },
    );
  },
};

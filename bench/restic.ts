/**
 * restic, the tool users compare iotvault with, driven the way a user would: a repository on a
 * local directory, a password file, `restic backup <dir>` (the previous snapshot of the same
 * path is its parent), `restic restore latest --target <dir>`. Installed from the distribution
 * when missing (Debian/Ubuntu: `apt-get install -y restic`, as root or through sudo).
 */
import { spawnSync } from "node:child_process";
import { join } from "node:path";
import { run, type Timed } from "./measure.js";

function which(cmd: string): string | undefined {
  const r = spawnSync("sh", ["-c", `command -v ${cmd}`], { encoding: "utf8" });
  return r.status === 0 ? r.stdout.trim() : undefined;
}

function aptInstall(pkg: string): void {
  const [cmd, ...base]: [string, ...string[]] = process.getuid?.() === 0 ? ["apt-get"] : ["sudo", "-n", "apt-get"];
  const apt = (args: string[]) =>
    spawnSync(cmd, [...base, ...args], { stdio: "inherit", env: { ...process.env, DEBIAN_FRONTEND: "noninteractive" } })
      .status === 0;
  if (apt(["install", "-y", pkg])) return;
  if (apt(["update"]) && apt(["install", "-y", pkg])) return;
  throw new Error(
    `${pkg} is not installed and \`apt-get install -y ${pkg}\` failed; install it (as root) or run the bench with --no-restic`,
  );
}

export class Restic {
  private constructor(
    readonly binary: string,
    readonly version: string,
    private readonly env: NodeJS.ProcessEnv,
  ) {}

  /** Finds restic (installing it when missing); runs it with `passwordFile` and a cache under `cacheDir`. */
  static ensure(passwordFile: string, cacheDir: string): Restic {
    let binary = which("restic");
    if (!binary) {
      console.log("restic is not installed: installing it with apt-get");
      aptInstall("restic");
      binary = which("restic");
      if (!binary) throw new Error("restic is still not on PATH after installing it");
    }
    const version = spawnSync(binary, ["version"], { encoding: "utf8" }).stdout.trim();
    const env: NodeJS.ProcessEnv = { ...process.env, RESTIC_PASSWORD_FILE: passwordFile, RESTIC_CACHE_DIR: cacheDir };
    delete env["RESTIC_REPOSITORY"];
    delete env["RESTIC_PASSWORD"];
    return new Restic(binary, version, env);
  }

  private async run(args: string[]): Promise<Timed> {
    const r = await run(this.binary, ["--quiet", ...args], { env: this.env });
    if (r.code !== 0) throw new Error(`restic ${args.join(" ")} exited ${r.code}: ${r.stderr.trim()}`);
    return r;
  }

  init(repo: string): Promise<Timed> {
    return this.run(["-r", repo, "init"]);
  }

  backup(repo: string, dir: string): Promise<Timed> {
    return this.run(["-r", repo, "backup", dir]);
  }

  restore(repo: string, target: string): Promise<Timed> {
    return this.run(["-r", repo, "restore", "latest", "--target", target]);
  }

  /** Where `restic restore --target` puts the tree that was backed up from `dir`. */
  static restoredPath(target: string, dir: string): string {
    return join(target, dir);
  }
}

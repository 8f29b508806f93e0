/**
 * @iotvault/config — one configuration for every iotvault process, in three typed steps:
 * what the user writes (a YAML or JSON file, plus environment overrides), the same with
 * defaults, and the compiled form with absolute paths and units in names. Validation fails
 * fast with errors that name the bad field (and the environment variable it came from).
 *
 * Only a process's main.ts reads process.env; it passes it here:
 * ```ts
 * const config = loadConfig(process.env);
 * ```
 */
export {
  loadConfig,
  parseConfig,
  repositoryOptionsOf,
  configFilePath,
  defaultHome,
  ENV_OVERRIDES,
  SERVICE_NAMES,
  type IotvaultConfig,
  type ServiceName,
  type UserConfig,
} from "./config.js";
export {
  readKeyFile,
  readRepositoryPassword,
  readRepositorySecret,
  type PasswordSource,
  type RepositorySecretValue,
} from "./secrets.js";

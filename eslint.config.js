// Lint rules that keep the layers and async hygiene honest (run by `npm test`).
// Layers: proto <- libs <- services, cli <- test. Libs never import services; services never
// import each other; nobody reaches into another package's src/ or dist/.
import js from "@eslint/js";
import tseslint from "typescript-eslint";

const SERVICES = ["scheduler", "executor", "storage-gateway", "catalog", "restore"];
const deepImports = {
  group: ["@iotvault/*/src/*", "@iotvault/*/dist/*"],
  message: "import the package entry point",
};
const restrict = (names, message) => [
  "error",
  { patterns: [deepImports], paths: names.map((name) => ({ name, message })) },
];

export default tseslint.config(
  {
    ignores: [
      "**/dist/**",
      "cli/bundle/**",
      "**/node_modules/**",
      "proto/src/gen/**",
      "**/*.js",
      "**/*.mjs",
      "bench/out/**",
    ],
  },
  js.configs.recommended,
  ...tseslint.configs.recommendedTypeChecked,
  {
    languageOptions: {
      parserOptions: { projectService: true, tsconfigRootDir: import.meta.dirname },
    },
    rules: {
      "@typescript-eslint/no-floating-promises": [
        "error",
        {
          allowForKnownSafeCalls: [
            { from: "package", package: "node:test", name: ["describe", "it", "test", "suite", "before", "after"] },
          ],
        },
      ],
      "@typescript-eslint/no-misused-promises": ["error", { checksVoidReturn: { arguments: false } }],
      "@typescript-eslint/consistent-type-imports": ["error", { fixStyle: "inline-type-imports" }],
      "@typescript-eslint/no-unused-vars": ["error", { argsIgnorePattern: "^_", varsIgnorePattern: "^_" }],
      "@typescript-eslint/require-await": "off",
      "no-restricted-syntax": [
        "error",
        { selector: "ExportAllDeclaration", message: "name every export (no export * barrels)" },
      ],
      "no-restricted-imports": restrict([], ""),
    },
  },
  {
    files: ["libs/**/*.ts", "proto/**/*.ts"],
    rules: {
      "no-restricted-imports": restrict(
        [...SERVICES.map((s) => `@iotvault/${s}`), "iotvault", "@iotvault/e2e"],
        "libs never import services or the CLI",
      ),
    },
  },
  ...SERVICES.map((s) => ({
    files: [`services/${s}/**/*.ts`],
    rules: {
      "no-restricted-imports": restrict(
        [...SERVICES.filter((x) => x !== s).map((x) => `@iotvault/${x}`), "iotvault"],
        "services never import each other; share code through libs/",
      ),
    },
  })),
  {
    files: ["proto/src/index.ts"],
    rules: { "no-restricted-syntax": "off" },
  },
  {
    files: [
      "**/*.test.ts",
      "test/**/*.ts",
      "bench/**/*.ts",
      "**/test-util.ts",
      "**/test-helpers.ts",
      "**/test-support.ts",
    ],
    rules: {
      "@typescript-eslint/no-non-null-assertion": "off",
      "@typescript-eslint/no-unsafe-assignment": "off",
      "@typescript-eslint/no-unsafe-member-access": "off",
      "@typescript-eslint/no-unsafe-argument": "off",
      "@typescript-eslint/no-unsafe-call": "off",
      "@typescript-eslint/no-unsafe-return": "off",
      "@typescript-eslint/no-explicit-any": "off",
    },
  },
);

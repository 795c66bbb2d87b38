// ESLint for the page scripts (static/, ES modules the browser loads as they are) and their unit
// tests (tests/js/, run by `node --test`). `make js` runs it; static/vendor/ is third-party.
import js from "@eslint/js";
import globals from "globals";

export default [
  { ignores: ["static/vendor/**", "node_modules/**", "staticfiles/**", ".venv*/**", "dist/**"] },
  js.configs.recommended,
  {
    linterOptions: { reportUnusedDisableDirectives: "error" },
    rules: {
      eqeqeq: "error",
      "no-var": "error",
      "prefer-const": "error",
      "no-unused-vars": ["error", { args: "after-used", caughtErrors: "none" }],
    },
  },
  {
    files: ["static/**/*.js"],
    languageOptions: { sourceType: "module", globals: globals.browser },
  },
  {
    files: ["tests/js/**/*.{js,mjs}", "eslint.config.js"],
    languageOptions: { sourceType: "module", globals: globals.node },
  },
];

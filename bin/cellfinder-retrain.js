#!/usr/bin/env node
// Thin launcher so `npx cellfinder-retrain` runs the bundled CLI.
require('../dist/cli.js').runCommandLine(process.argv.slice(2)).then((code) => {
  process.exitCode = code;
});

// Bundles the extension host entry, the CLI, the training worker and its
// batch-assembly thread into dist/, and each webview page's script into
// dist/webview/, with esbuild.
// `vscode` is provided by the editor at run time and must stay external.
import { build } from 'esbuild';

const common = {
  bundle: true,
  platform: 'node',
  target: 'node20',
  format: 'cjs',
  sourcemap: true,
  logLevel: 'warning',
  // h5wasm's Node build (ESM) asks import.meta.url for its own location;
  // a CommonJS bundle has none, so give it the bundle's file URL.
  define: { 'import.meta.url': 'importMetaUrl' },
  banner: { js: "const importMetaUrl = require('node:url').pathToFileURL(__filename).href;" },
};

await Promise.all([
  build({ ...common, entryPoints: ['src/extension.ts'], outfile: 'dist/extension.js', external: ['vscode'] }),
  build({ ...common, entryPoints: ['src/cli/main.ts'], outfile: 'dist/cli.js' }),
  build({ ...common, entryPoints: ['src/training/worker.ts'], outfile: 'dist/worker.js' }),
  // The batch-assembly thread that dist/worker.js and dist/cli.js start (next to them, see batchThread.ts).
  build({ ...common, entryPoints: ['src/training/batchThreadEntry.ts'], outfile: 'dist/batchThreadEntry.js' }),
  build({
    entryPoints: { labelling: 'src/webview/labelling/main.ts', training: 'src/webview/training/main.ts' },
    outdir: 'dist/webview',
    bundle: true,
    platform: 'browser',
    format: 'iife',
    target: 'chrome120',
    minify: true,
    sourcemap: true,
    logLevel: 'warning',
  }),
]);

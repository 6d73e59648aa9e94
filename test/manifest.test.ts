import assert from 'node:assert/strict';
import { readdirSync, readFileSync } from 'node:fs';
import * as path from 'node:path';
import { test } from 'node:test';
import { REPO_ROOT } from './helpers';

function listTs(folder: string): string[] {
  return readdirSync(folder, { withFileTypes: true }).flatMap((entry) => (entry.isDirectory() ? listTs(path.join(folder, entry.name)) : entry.name.endsWith('.ts') ? [path.join(folder, entry.name)] : []));
}

test('every contributed command is registered by the extension, and the core never imports vscode', () => {
  const manifest = JSON.parse(readFileSync(path.join(REPO_ROOT, 'package.json'), 'utf8'));
  const extension = readFileSync(path.join(REPO_ROOT, 'src', 'extension.ts'), 'utf8');
  const registered = [...extension.matchAll(/command\('(cellfinder\.[^']+)'/g)].map((m) => m[1]).sort();
  const contributed = manifest.contributes.commands.map((c: { command: string; category: string }) => {
    assert.equal(c.category, 'Cellfinder');
    return c.command;
  });
  assert.deepEqual(registered, contributed.sort());
  assert.ok(manifest.activationEvents.includes('workspaceContains:**/training.yaml'));
  // Every menu entry names a contributed command; every view lives in our container.
  for (const entries of Object.values(manifest.contributes.menus) as Array<Array<{ command: string }>>) {
    for (const entry of entries) assert.ok(contributed.includes(entry.command), `menu names unknown command ${entry.command}`);
  }
  assert.deepEqual(manifest.contributes.views.cellfinder.map((v: { id: string }) => v.id), ['cellfinder.datasets', 'cellfinder.models', 'cellfinder.runs']);
  // Settings the editor code reads are declared (and so documented in the Settings editor).
  const editorCode = ['settings.ts', 'training.ts', 'labellingPanel.ts'].map((f) => readFileSync(path.join(REPO_ROOT, 'src', 'editor', f), 'utf8')).join('\n');
  const declared = Object.keys(manifest.contributes.configuration.properties);
  for (const [, key] of editorCode.matchAll(/setting(?:<[^>]+>)?\('([^']+)'/g)) assert.ok(declared.includes(`cellfinder.${key}`), `setting cellfinder.${key} is not declared`);
  assert.equal(manifest.capabilities.untrustedWorkspaces.supported, 'limited');
  const bundle = readFileSync(path.join(REPO_ROOT, 'dist', 'cli.js'), 'utf8');
  assert.doesNotMatch(bundle, /require\("vscode"\)/, 'the CLI bundle (core only) must not need vscode');
  for (const folder of ['core', 'cluster', 'engine', 'training', 'sharing', 'controllers', 'webview']) {
    for (const file of listTs(path.join(REPO_ROOT, 'src', folder))) assert.doesNotMatch(readFileSync(file, 'utf8'), /from 'vscode'/, `${file} must not import vscode`);
  }
  // The domain core stands alone: training and the engine build on it, never the other way.
  for (const file of listTs(path.join(REPO_ROOT, 'src', 'core'))) assert.doesNotMatch(readFileSync(file, 'utf8'), /from '\.\.\/(training|engine)\//, `${file} must not import training or engine code`);
});

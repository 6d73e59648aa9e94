import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import * as path from 'node:path';
import { test } from 'node:test';
import { REPO_ROOT } from './helpers';

test('every contributed command is registered by the extension, and the core never imports vscode', () => {
  const manifest = JSON.parse(readFileSync(path.join(REPO_ROOT, 'package.json'), 'utf8'));
  const extension = readFileSync(path.join(REPO_ROOT, 'src', 'extension.ts'), 'utf8');
  const registered = [...extension.matchAll(/registerCommand\('([^']+)'/g)].map((m) => m[1]).sort();
  const contributed = manifest.contributes.commands.map((c: { command: string; category: string }) => {
    assert.equal(c.category, 'Cellfinder');
    return c.command;
  });
  assert.deepEqual(registered, contributed.sort());
  assert.deepEqual(manifest.activationEvents, ['workspaceContains:**/training.yaml']);
  const bundle = readFileSync(path.join(REPO_ROOT, 'dist', 'cli.js'), 'utf8');
  assert.doesNotMatch(bundle, /require\("vscode"\)/, 'the CLI bundle (core only) must not need vscode');
});

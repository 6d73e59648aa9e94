/** Shared paths and scratch folders for the tests. */
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import * as path from 'node:path';

/** The repository root, found from the compiled test file (out/test/*.js). */
export const REPO_ROOT = path.resolve(__dirname, '..', '..');
/** Real BrainGlobe cellfinder test data (BSD 3-Clause, see its LICENSE). */
export const SAMPLE = path.join(REPO_ROOT, 'test', 'fixtures', 'cellfinder-data');
export const RESCALED_FIXTURES = path.join(REPO_ROOT, 'test', 'fixtures', 'cellfinder-rescaled');
export const BRAINGLOBE_FIXTURES = path.join(REPO_ROOT, 'test', 'fixtures', 'brainglobe-utils');

/** A fresh scratch folder, removed when the test ends. */
export function scratch(t: { after(fn: () => void): void }, prefix = 'cfr-test-'): string {
  const folder = mkdtempSync(path.join(tmpdir(), prefix));
  t.after(() => rmSync(folder, { recursive: true, force: true }));
  return folder;
}

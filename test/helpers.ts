/** Shared paths and scratch folders for the tests. */
import { mkdtempSync, promises as fs, rmSync } from 'node:fs';
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

/**
 * A training dataset of cellfinder's own labelled test cubes (2 cells, 2
 * non-cells, both channels) in `root`; returns its training.yaml.
 */
export async function tinyDataset(root: string): Promise<string> {
  await fs.cp(path.join(SAMPLE, 'training', 'cells'), path.join(root, 'cells'), { recursive: true });
  await fs.cp(path.join(SAMPLE, 'training', 'non_cells'), path.join(root, 'non_cells'), { recursive: true });
  const yaml = path.join(root, 'training.yaml');
  await fs.writeFile(yaml, "data:\n- bg_channel: 1\n  cell_def: ''\n  cube_dir: cells\n  signal_channel: 0\n  type: cell\n- bg_channel: 1\n  cell_def: ''\n  cube_dir: non_cells\n  signal_channel: 0\n  type: no_cell\n");
  return yaml;
}

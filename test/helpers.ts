/** Shared paths and scratch folders for the tests. */
import { existsSync, mkdtempSync, promises as fs, rmSync, symlinkSync } from 'node:fs';
import { tmpdir } from 'node:os';
import * as path from 'node:path';
import { zipSync } from 'fflate';

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
 * non-cells, both channels) in `root`; returns its training.yaml. With
 * `copies` > 1 each cube is there that many times, under as many positions.
 */
export async function tinyDataset(root: string, copies = 1): Promise<string> {
  for (const folder of ['cells', 'non_cells']) {
    await fs.mkdir(path.join(root, folder), { recursive: true });
    for (const name of await fs.readdir(path.join(SAMPLE, 'training', folder))) {
      for (let copy = 0; copy < copies; copy++) await fs.copyFile(path.join(SAMPLE, 'training', folder, name), path.join(root, folder, copy === 0 ? name : name.replace(/x(\d+)Ch/, `x$1${copy}Ch`)));
    }
  }
  const yaml = path.join(root, 'training.yaml');
  await fs.writeFile(yaml, "data:\n- bg_channel: 1\n  cell_def: ''\n  cube_dir: cells\n  signal_channel: 0\n  type: cell\n- bg_channel: 1\n  cell_def: ''\n  cube_dir: non_cells\n  signal_channel: 0\n  type: no_cell\n");
  return yaml;
}

/**
 * A small fake TensorFlow wheel: two "libraries", some headers, METADATA
 * naming `distribution` (tensorflow-cpu, or tensorflow for the CUDA build).
 */
export function fakeWheel(options: { metadata?: boolean; distribution?: string } = {}): Uint8Array {
  const text = (s: string) => new TextEncoder().encode(s);
  const library = new Uint8Array(300_000).map((_, i) => (i * 7919) % 251);
  const files: Record<string, Uint8Array | [Uint8Array, { level: 0 }]> = {
    'tensorflow/libtensorflow_cc.so.2': library,
    // Stored (not deflated), to cover both methods.
    'tensorflow/libtensorflow_framework.so.2': [library.slice(0, 1000), { level: 0 }],
    'tensorflow/include/tensorflow/c/c_api.h': text('#include <stdint.h>\n#include "tensorflow/c/tf_status.h"\n  #  include "tensorflow/c/tf_tensor.h"\n'),
    'tensorflow/include/tensorflow/c/eager/c_api.h': text('#include "tensorflow/c/c_api.h"\n'),
    'tensorflow/include/tensorflow/c/tf_status.h': text('#include "xla/tsl/c/tsl_status.h"\n'),
    'tensorflow/include/tensorflow/c/tf_tensor.h': text('#include "tensorflow/c/tf_status.h"\n'),
    'tensorflow/include/xla/tsl/c/tsl_status.h': text('// leaf\n'),
    'tensorflow/include/tensorflow/core/unrelated.h': text('#include "tensorflow/c/c_api.h"\n'),
  };
  const distribution = options.distribution ?? 'tensorflow-cpu';
  if (options.metadata ?? true) files[`${distribution.replace(/-/g, '_')}-2.99.0.dist-info/METADATA`] = text(`Metadata-Version: 2.1\nName: ${distribution}\nVersion: 2.99.0\n`);
  return zipSync(files);
}

/**
 * A PATH folder holding only `commands` (symlinks to where this PATH has
 * them), for running set-up as on a machine without a compiler, make,
 * Python or npm: /usr/bin has them all next to node.
 */
export function pathWithOnly(t: { after(fn: () => void): void }, commands: string[]): string {
  const folder = scratch(t, 'cfr-path-');
  for (const command of commands) {
    const found = (process.env.PATH ?? '').split(path.delimiter).map((dir) => path.join(dir, command)).find((file) => existsSync(file));
    if (!found) throw new Error(`${command} is not on PATH`);
    symlinkSync(found, path.join(folder, command));
  }
  return folder;
}

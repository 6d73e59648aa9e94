import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { promises as fs } from 'node:fs';
import * as path from 'node:path';
import { test } from 'node:test';
import { CUBE_VOXELS, readCube } from '../src/core/cube';
import { TrainingDataset, validateTrainingYaml, summarizeTrainingYaml } from '../src/core/dataset';
import { DataFileError } from '../src/core/errors';
import { mergeTrainingYamls } from '../src/core/merge';
import { writeTrainingYaml } from '../src/core/trainingYaml';
import { SAMPLE, scratch } from './helpers';

/** A real cube pair from cellfinder's training data. */
async function realCube(): Promise<Float32Array[]> {
  const dir = path.join(SAMPLE, 'training', 'cells');
  return [(await readCube(path.join(dir, 'pCellz1132y413x1896Ch0.tif'))).data, (await readCube(path.join(dir, 'pCellz1132y413x1896Ch1.tif'))).data];
}

const P = { x: 1896, y: 413, z: 1132 };

test('create, add, relabel, remove and undo every step; the log records each decision', async (t) => {
  const root = scratch(t);
  const dataset = await TrainingDataset.create(root);
  assert.deepEqual(dataset.channels, [0, 1]);
  const channels = await realCube();

  assert.equal(await dataset.addCube({ position: P, label: 'cell', channels, source: '/data/brain1/signal', prediction: { label: 'no_cell', cellProbability: 0.2 } }), 'added');
  assert.equal(await dataset.labelOf(P), 'cell');
  // The cube on disk is the cube we gave, as float32 (cellfinder's current format).
  const saved = await readCube(path.join(root, 'cells', 'pCellz1132y413x1896Ch1.tif'));
  assert.equal(saved.storedAs, 'float32');
  assert.deepEqual(saved.data, channels[1]);
  // Adding the same cube again changes nothing.
  assert.equal(await dataset.addCube({ position: P, label: 'cell', channels }), 'already-present');

  await dataset.relabel(P, 'no_cell');
  assert.equal(await dataset.labelOf(P), 'no_cell');
  await dataset.remove(P);
  assert.equal(await dataset.labelOf(P), undefined);
  // Removed cubes go to .trash, where cellfinder does not look.
  const trashed = await fs.readdir(path.join(root, '.trash'));
  assert.equal(trashed.length, 1);

  assert.equal((await dataset.undo())?.action, 'remove');
  assert.equal(await dataset.labelOf(P), 'no_cell');
  assert.equal((await dataset.undo())?.action, 'relabel');
  assert.equal(await dataset.labelOf(P), 'cell');
  assert.equal((await dataset.undo())?.action, 'add');
  assert.equal(await dataset.labelOf(P), undefined);
  assert.equal(await dataset.undo(), undefined);

  const history = await dataset.history();
  assert.deepEqual(history.map((r) => r.action), ['add', 'relabel', 'remove', 'undo', 'undo', 'undo']);
  assert.deepEqual(history[0].prediction, { label: 'no_cell', cellProbability: 0.2 });
  assert.equal(history[0].source, '/data/brain1/signal');
  assert.equal(history[1].previousLabel, 'cell');
  // cellfinder only reads files ending Ch<n>.tif in cells/ and non_cells/: nothing else went there.
  for (const folder of ['cells', 'non_cells']) {
    for (const name of await fs.readdir(path.join(root, folder))) assert.match(name, /^pCellz\d+y\d+x\d+Ch[01]\.tif$/);
  }
});

test('a different cube at a labelled position is refused and nothing is overwritten', async (t) => {
  const root = scratch(t);
  const dataset = await TrainingDataset.create(root);
  const channels = await realCube();
  await dataset.addCube({ position: P, label: 'cell', channels });
  const other = [new Float32Array(CUBE_VOXELS).fill(7), new Float32Array(CUBE_VOXELS).fill(7)];
  await assert.rejects(dataset.addCube({ position: P, label: 'cell', channels: other }), /already exists with different content/);
  await assert.rejects(dataset.addCube({ position: P, label: 'no_cell', channels }), /is already labelled cell.*Relabel it/);
  assert.deepEqual((await readCube(path.join(root, 'cells', 'pCellz1132y413x1896Ch0.tif'))).data, channels[0]);
});

test('a crash mid-log (torn last line) loses no decision already written', async (t) => {
  const root = scratch(t);
  const dataset = await TrainingDataset.create(root);
  await dataset.addCube({ position: P, label: 'cell', channels: await realCube() });
  await fs.appendFile(dataset.logFile, '{"id":"x","action":"ad');
  const history = await dataset.history();
  assert.equal(history.length, 1);
  assert.equal((await TrainingDataset.open(root)).channels.length, 2);
});

test('a full disk: clear error, the cubes already saved are untouched, no partial cube', async (t) => {
  if (process.getuid?.() !== 0) {
    t.skip('needs root to mount a tiny tmpfs (CI runs as root)');
    return;
  }
  const mount = path.join(scratch(t, 'cfr-full-'), 'small-disk');
  await fs.mkdir(mount);
  execFileSync('mount', ['-t', 'tmpfs', '-o', 'size=400k', 'tmpfs', mount]);
  try {
    await fillTheDisk(mount);
  } finally {
    execFileSync('umount', [mount]);
  }
});

test('an unwritable output folder: clear error naming it, nothing written', async (t) => {
  if (process.getuid?.() !== 0) {
    t.skip('needs root to mount a read-only tmpfs (CI runs as root; root ignores permission bits)');
    return;
  }
  const mount = path.join(scratch(t, 'cfr-ro-'), 'read-only');
  await fs.mkdir(mount);
  execFileSync('mount', ['-t', 'tmpfs', '-o', 'ro,size=64k', 'tmpfs', mount]);
  try {
    await assert.rejects(TrainingDataset.create(path.join(mount, 'set')), (e: DataFileError) => {
      assert.equal(e.file, path.join(mount, 'set'));
      assert.match(e.message, /cannot create the dataset folders .*Choose a folder you can write to/);
      return true;
    });
    const yamlFile = path.join(mount, 'training.yaml');
    await assert.rejects(writeTrainingYaml(yamlFile, []), (e: DataFileError) => e.file === yamlFile && /the folder is not writable/.test(e.message));
    assert.deepEqual(await fs.readdir(mount), []);
  } finally {
    execFileSync('umount', [mount]);
  }
});

async function fillTheDisk(mount: string): Promise<void> {
  const dataset = await TrainingDataset.create(mount);
  const channels = await realCube();
  let added = 0;
  let failure: unknown;
  for (let z = 0; z < 10 && !failure; z++) {
    try {
      await dataset.addCube({ position: { x: 1, y: 1, z }, label: 'cell', channels });
      added++;
    } catch (error) {
      failure = error;
    }
  }
  assert.ok(failure instanceof DataFileError, 'a DataFileError was thrown');
  assert.match((failure as DataFileError).message, /the disk is full.*files already saved were not changed/);
  const files = await fs.readdir(path.join(mount, 'cells'));
  // Every saved cube is complete (both channels), nothing half-written is left.
  assert.equal(files.length, 2 * added);
  for (const file of files) assert.deepEqual((await readCube(path.join(mount, 'cells', file))).data.length, CUBE_VOXELS);
}

test('validate finds a missing channel, a wrong-size cube and a position labelled both ways', async (t) => {
  const root = scratch(t);
  const dataset = await TrainingDataset.create(root);
  const channels = await realCube();
  await dataset.addCube({ position: P, label: 'cell', channels });
  await dataset.addCube({ position: { x: 1, y: 2, z: 3 }, label: 'no_cell', channels });
  assert.deepEqual((await validateTrainingYaml(dataset.yamlFile)).problems, []);

  await fs.rm(path.join(root, 'non_cells', 'pCellz3y2x1Ch1.tif'));
  await fs.copyFile(path.join(root, 'cells', 'pCellz1132y413x1896Ch0.tif'), path.join(root, 'non_cells', 'pCellz1132y413x1896Ch0.tif'));
  await fs.copyFile(path.join(root, 'cells', 'pCellz1132y413x1896Ch1.tif'), path.join(root, 'non_cells', 'pCellz1132y413x1896Ch1.tif'));
  await fs.writeFile(path.join(root, 'cells', 'pCellz9y9x9Ch0.tif'), 'not a tiff');
  await fs.copyFile(path.join(root, 'cells', 'pCellz1132y413x1896Ch1.tif'), path.join(root, 'cells', 'pCellz9y9x9Ch1.tif'));
  const { problems } = await validateTrainingYaml(dataset.yamlFile);
  const text = problems.map((p) => `${path.basename(p.file)}: ${p.problem}`).join('\n');
  assert.match(text, /pCellz3y2x1Ch1.tif: is missing: the cube at z=3, y=2, x=1 has no background channel file/);
  assert.match(text, /pCellz9y9x9Ch0.tif: is not a TIFF file/);
  assert.match(text, /pCellz1132y413x1896Ch0.tif: is labelled no_cell but .* is labelled cell/);
});

test('merge de-duplicates by source volume and position, keeps stats with their cubes, reports conflicts', async (t) => {
  const root = scratch(t);
  const channels = await realCube();
  const roundA = await TrainingDataset.create(path.join(root, 'roundA'));
  const roundB = await TrainingDataset.create(path.join(root, 'roundB'));
  await roundA.addCube({ position: P, label: 'cell', channels, source: '/brains/b1/signal' });
  await roundA.addCube({ position: { x: 5, y: 5, z: 5 }, label: 'no_cell', channels, source: '/brains/b1/signal' });
  // Same volume + position as in round A: a duplicate (same label) and a conflict (other label).
  await roundB.addCube({ position: P, label: 'cell', channels, source: '/brains/b1/signal' });
  await roundB.addCube({ position: { x: 5, y: 5, z: 5 }, label: 'cell', channels, source: '/brains/b1/signal' });
  // Same position, another brain: a different cube, kept.
  const roundC = await TrainingDataset.create(path.join(root, 'roundC'));
  await roundC.addCube({ position: P, label: 'cell', channels, source: '/brains/b2/signal' });

  const report = await mergeTrainingYamls([roundA.yamlFile, roundB.yamlFile, roundC.yamlFile], path.join(root, 'merged'));
  assert.equal(report.copied, 3);
  assert.equal(report.duplicates, 1);
  assert.equal(report.conflicts.length, 1);
  assert.deepEqual([report.conflicts[0].kept.label, report.conflicts[0].dropped.label], ['no_cell', 'cell']);
  const summary = await summarizeTrainingYaml(report.yamlFile);
  assert.deepEqual([summary.cells, summary.nonCells], [2, 1]);
  assert.ok(summary.entries.every((e) => e.entry.resolvedAgainst === 'yaml-folder'), 'merged YAML is portable');
  assert.deepEqual((await validateTrainingYaml(report.yamlFile)).problems, []);
  // The sources are untouched and a second merge into the same folder is refused.
  assert.equal((await summarizeTrainingYaml(roundB.yamlFile)).cells, 2);
  await assert.rejects(mergeTrainingYamls([roundA.yamlFile, roundB.yamlFile], path.join(root, 'merged')), /already exists/);
});

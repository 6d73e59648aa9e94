/**
 * Continuing training the way cellfinder does, checked against Keras' own
 * training loop on cellfinder's network (test/python/keras_peer.py `train`:
 * cellfinder's build_model, started as cellfinder_train starts it, then
 * `fit`), on real cubes, augmentation off, one full batch per epoch:
 *
 * - from the same new weights, our run and Keras' take the same steps;
 * - from a Keras checkpoint (.keras, and .weights.h5 as --continue-training
 *   --model-weights) our run restores Adam's iterations, moments and learning
 *   rate, and its losses follow Keras' within float32 noise;
 * - a fresh optimiser (--fresh-optimizer) takes visibly different steps, so
 *   the comparison can tell the two apart;
 * - the .weights.h5 we write carries the optimiser state, and Keras
 *   continuing from it follows our own continuation;
 * - the first event says where the run starts from, and the split file
 *   lists every cube with its part.
 */
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { promises as fs } from 'node:fs';
import * as path from 'node:path';
import { test } from 'node:test';
import { EVENTS_FILE, SPLIT_FILE } from '../src/core/runFiles';
import type { TrainingEvent } from '../src/training/events';
import { readModelFile } from '../src/training/modelFiles';
import { peer } from './kerasPeer';
import { REPO_ROOT, SAMPLE, scratch } from './helpers';

const CLI = path.join(REPO_ROOT, 'bin', 'cellfinder-retrain.js');
/** Float32 noise of a loss over a few epochs (two engines summing in different orders). */
const LOSS_TOLERANCE = 5e-3;

interface KerasTraining {
  optimizer_before: { iterations: number; learning_rate: number };
  optimizer_after: { iterations: number; learning_rate: number; variables: number };
  loss: number[];
  saved?: { keras: string; weights_h5: string };
}

function cli(args: string[]): { code: number | null; stdout: string; stderr: string } {
  const run = spawnSync(process.execPath, [CLI, ...args], { encoding: 'utf8', maxBuffer: 64 * 2 ** 20 });
  return { code: run.status, stdout: run.stdout, stderr: run.stderr };
}

/**
 * 15 real cubes: cellfinder's 4 labelled training cubes and the 11 the
 * sample's detected candidates give, 5 of those filed as cells (the labels
 * only need to be the same on both sides).
 */
async function comparisonDataset(root: string): Promise<{ yaml: string; cubes: string[]; labels: number[] }> {
  const extracted = path.join(root, 'extracted');
  const extract = cli(['extract', '--signal', path.join(SAMPLE, 'signal'), '--background', path.join(SAMPLE, 'background'), '--points', path.join(SAMPLE, 'candidates', 'candidates.xml'), '--output-dir', extracted]);
  assert.equal(extract.code, 0, extract.stderr);
  const dataset = path.join(root, 'dataset');
  for (const folder of ['cells', 'non_cells']) {
    await fs.mkdir(path.join(dataset, folder), { recursive: true });
    for (const name of await fs.readdir(path.join(SAMPLE, 'training', folder))) await fs.copyFile(path.join(SAMPLE, 'training', folder, name), path.join(dataset, folder, name));
  }
  const candidates = (await fs.readdir(path.join(extracted, 'non_cells'))).filter((name) => name.endsWith('Ch0.tif')).sort();
  assert.equal(candidates.length, 11);
  for (const [i, name] of candidates.entries()) {
    for (const channel of [name, name.replace(/Ch0\.tif$/, 'Ch1.tif')]) await fs.copyFile(path.join(extracted, 'non_cells', channel), path.join(dataset, i < 5 ? 'cells' : 'non_cells', channel));
  }
  const yaml = path.join(dataset, 'training.yaml');
  await fs.writeFile(yaml, "data:\n- bg_channel: 1\n  cell_def: ''\n  cube_dir: cells\n  signal_channel: 0\n  type: cell\n- bg_channel: 1\n  cell_def: ''\n  cube_dir: non_cells\n  signal_channel: 0\n  type: no_cell\n");
  const cubes: string[] = [];
  const labels: number[] = [];
  for (const [folder, label] of [['cells', 1], ['non_cells', 0]] as const) {
    for (const name of (await fs.readdir(path.join(dataset, folder))).filter((n) => n.endsWith('Ch0.tif'))) {
      cubes.push(path.join(dataset, folder, name));
      labels.push(label);
    }
  }
  return { yaml, cubes, labels };
}

function kerasTrain(data: { cubes: string[]; labels: number[] }, epochs: number, extra: string[]): KerasTraining {
  return peer(['train', '--depth', '18', '--channels', '2', '--cubes', ...data.cubes, '--labels', ...data.labels.map(String), '--epochs', String(epochs), ...extra]) as unknown as KerasTraining;
}

/** Our `train` with the same batch (all cubes), no augmentation and no validation; returns its events. */
async function ourTrain(yaml: string, output: string, cubes: number, epochs: number, start: string[]): Promise<TrainingEvent[]> {
  const run = cli(['train', '-y', yaml, '-o', output, '--network-depth', '18', '--batch-size', String(cubes), '--epochs', String(epochs), '--test-fraction', '0', '--no-augment', '--no-save-checkpoints', '--learning-rate', '0.05', '--seed', '3', ...start]);
  assert.equal(run.code, 0, run.stderr);
  return (await fs.readFile(path.join(output, EVENTS_FILE), 'utf8')).trim().split('\n').map((line) => JSON.parse(line) as TrainingEvent);
}

const lossesOf = (events: TrainingEvent[]) => events.flatMap((e) => (e.type === 'epoch' ? [e.loss] : []));
const startedOf = (events: TrainingEvent[]) => events.find((e): e is Extract<TrainingEvent, { type: 'started' }> => e.type === 'started') as Extract<TrainingEvent, { type: 'started' }>;

function assertFollows(ours: number[], theirs: number[], what: string): void {
  assert.equal(ours.length, theirs.length, what);
  ours.forEach((loss, i) => assert.ok(Math.abs(loss - theirs[i]) <= LOSS_TOLERANCE, `${what}, epoch ${i + 1}: loss ${loss} here, ${theirs[i]} in Keras`));
}

test('continuing from a cellfinder checkpoint restores Adam as Keras does and follows Keras\' own training; our .weights.h5 carries the optimiser Keras continues from', { timeout: 20 * 60_000 }, async (t) => {
  const root = scratch(t);
  const data = await comparisonDataset(root);
  const cubes = data.cubes.length;

  // New seeded weights, saved by Keras before any step (compiled with cellfinder's default learning rate, 0.0005, no moments yet).
  const initial = path.join(root, 'initial');
  peer(['save', '--depth', '18', '--channels', '2', '--seed', '1', '--out-dir', initial]);
  // Keras trains 3 epochs from them (load_model: a fresh Adam at the compiled rate): the checkpoint.
  const checkpoint = kerasTrain(data, 3, ['--start', path.join(initial, 'model.keras'), '--save-dir', path.join(root, 'keras-3')]);
  assert.equal(checkpoint.optimizer_before.iterations, 0);
  assert.equal(checkpoint.optimizer_after.iterations, 3);
  const saved = checkpoint.saved as { keras: string; weights_h5: string };
  const fromNew = await ourTrain(data.yaml, path.join(root, 'ours-new'), cubes, 3, ['--trained-model', path.join(initial, 'model.keras')]);
  assert.deepEqual(startedOf(fromNew).start?.optimizer, { state: 'fresh' });
  assert.equal(Math.fround(startedOf(fromNew).start?.learningRate as number), Math.fround(0.0005));
  assertFollows(lossesOf(fromNew), checkpoint.loss, 'trained from new weights');

  // Keras continues (load_model restores the optimiser; its learning rate wins over --learning-rate).
  const kerasContinued = kerasTrain(data, 2, ['--start', saved.keras, '--learning-rate', '0.05']);
  assert.equal(kerasContinued.optimizer_before.iterations, 3);
  assert.equal(Math.fround(kerasContinued.optimizer_before.learning_rate), Math.fround(0.0005));

  const fromKeras = await ourTrain(data.yaml, path.join(root, 'ours-from-keras'), cubes, 2, ['--trained-model', saved.keras, '--save-weights']);
  assertFollows(lossesOf(fromKeras), kerasContinued.loss, 'continued from model.keras');
  const started = startedOf(fromKeras);
  assert.deepEqual(started.start?.optimizer, { state: 'restored', from: saved.keras, iterations: 3 });
  assert.equal(started.start?.learningRateFrom, 'model file');
  assert.equal(Math.fround(started.start?.learningRate as number), Math.fround(0.0005));
  assert.match((started.warnings ?? []).join('\n'), /learning rate is 0\.0005, from the optimiser saved in .*model\.keras, not --learning-rate 0\.05/);

  const fromWeights = await ourTrain(data.yaml, path.join(root, 'ours-from-weights'), cubes, 2, ['--continue-training', '--model-weights', saved.weights_h5]);
  assert.deepEqual(startedOf(fromWeights).start?.optimizer, { state: 'restored', from: saved.weights_h5, iterations: 3 });
  assertFollows(lossesOf(fromWeights), kerasContinued.loss, 'continued from model.weights.h5');

  // A fresh Adam at --learning-rate takes other steps: the comparison above can tell the two apart.
  const fresh = await ourTrain(data.yaml, path.join(root, 'ours-fresh'), cubes, 2, ['--trained-model', saved.keras, '--fresh-optimizer']);
  assert.deepEqual(startedOf(fresh).start, { modelFile: saved.keras, optimizer: { state: 'fresh' }, learningRate: 0.05, learningRateFrom: 'option' });
  assert.ok(Math.abs(lossesOf(fresh)[1] - kerasContinued.loss[1]) > 10 * LOSS_TOLERANCE, `a fresh optimiser's second epoch (${lossesOf(fresh)[1]}) should differ from the restored one's (${kerasContinued.loss[1]})`);

  // Our .weights.h5 holds the optimiser after 5 steps; Keras (as cellfinder_train --continue-training --model-weights) and we continue alike.
  const ourWeights = path.join(root, 'ours-from-keras', 'model.weights.h5');
  const loaded = await readModelFile(ourWeights);
  assert.equal(loaded.optimizer?.iterations, 5);
  assert.equal(loaded.optimizer?.slots.size, (checkpoint.optimizer_after.variables - 2) / 2);
  const kerasFromOurs = kerasTrain(data, 2, ['--start', ourWeights]);
  assert.equal(kerasFromOurs.optimizer_before.iterations, 5);
  const oursAgain = await ourTrain(data.yaml, path.join(root, 'ours-again'), cubes, 2, ['--continue-training', '--model-weights', ourWeights]);
  assertFollows(lossesOf(oursAgain), kerasFromOurs.loss, 'continued from our model.weights.h5');
  t.diagnostic(`losses from new weights: Keras ${checkpoint.loss.map((l) => l.toFixed(5)).join(', ')}; ours ${lossesOf(fromNew).map((l) => l.toFixed(5)).join(', ')}`);
  t.diagnostic(`losses continued from model.keras: Keras ${kerasContinued.loss.map((l) => l.toFixed(5)).join(', ')}; ours ${lossesOf(fromKeras).map((l) => l.toFixed(5)).join(', ')}; fresh Adam ${lossesOf(fresh).map((l) => l.toFixed(5)).join(', ')}`);
  t.diagnostic(`continued from our .weights.h5: Keras ${kerasFromOurs.loss.map((l) => l.toFixed(5)).join(', ')}; ours ${lossesOf(oursAgain).map((l) => l.toFixed(5)).join(', ')}`);
});

test('the split file lists every cube once with its part and type; the first event counts each part per class; the same seed gives the same split', { timeout: 10 * 60_000 }, async (t) => {
  const root = scratch(t);
  const { yaml, cubes } = await comparisonDataset(root);
  const output = path.join(root, 'run');
  const events = await ourTrain(yaml, output, 4, 1, []);
  // ourTrain has no validation; a run with it holds out a fifth of each class.
  const withValidation = path.join(root, 'run-validation');
  const run = cli(['train', '-y', yaml, '-o', withValidation, '--network-depth', '18', '--batch-size', '4', '--epochs', '1', '--test-fraction', '0.2', '--no-augment', '--seed', '7', '--stratified-split']);
  assert.equal(run.code, 0, run.stderr);
  for (const [folder, runEvents] of [[output, events], [withValidation, (await fs.readFile(path.join(withValidation, EVENTS_FILE), 'utf8')).trim().split('\n').map((line) => JSON.parse(line) as TrainingEvent)]] as const) {
    const rows = (await fs.readFile(path.join(folder, SPLIT_FILE), 'utf8')).trim().split('\n');
    assert.equal(rows[0], 'part,type,x,y,z,signal_file,background_file');
    const entries = rows.slice(1).map((row) => row.split(','));
    assert.deepEqual(entries.map((e) => e[5]).sort(), [...cubes].sort(), 'each cube exactly once');
    for (const e of entries) assert.equal(e[6], e[5].replace(/Ch0\.tif$/, 'Ch1.tif'));
    for (const e of entries) assert.equal(e[1], path.basename(path.dirname(e[5])) === 'cells' ? 'cell' : 'no_cell');
    const count = (part: string, type: string) => entries.filter((e) => e[0] === part && e[1] === type).length;
    const split = startedOf(runEvents).split;
    assert.deepEqual(split, { file: path.join(folder, SPLIT_FILE), training: { cells: count('training', 'cell'), nonCells: count('training', 'no_cell') }, validation: { cells: count('validation', 'cell'), nonCells: count('validation', 'no_cell') } });
  }
  const validationSplit = startedOf((await fs.readFile(path.join(withValidation, EVENTS_FILE), 'utf8')).trim().split('\n').map((line) => JSON.parse(line) as TrainingEvent)).split;
  assert.ok((validationSplit?.validation.cells ?? 0) >= 1 && (validationSplit?.validation.nonCells ?? 0) >= 1, 'stratified: both classes held out');
  assert.match(run.stdout + run.stderr, /validation \d+ \+ \d+ \(each cube's part: .*training-split\.csv\)/);
  // The same seed gives the same split.
  const again = path.join(root, 'run-again');
  assert.equal(cli(['train', '-y', yaml, '-o', again, '--network-depth', '18', '--batch-size', '4', '--epochs', '1', '--test-fraction', '0.2', '--no-augment', '--seed', '7', '--stratified-split']).code, 0);
  assert.equal(await fs.readFile(path.join(again, SPLIT_FILE), 'utf8'), await fs.readFile(path.join(withValidation, SPLIT_FILE), 'utf8'));
});

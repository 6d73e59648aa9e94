/**
 * Model cards on a real run: a short training of ResNet-18 on cellfinder's
 * labelled test cubes, labelled into a dataset of ours (provenance log,
 * candidate set with voxel sizes, channel statistics in its YAML), writes a
 * card beside its model; the card's front matter is YAML in the Hub's layout,
 * its hashes are the files', an evaluation saved in the run folder adds the
 * confusion matrix, a changed model file is caught by --check, and a model
 * without its run gets a card from the file alone.
 */
import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import { promises as fs } from 'node:fs';
import * as path from 'node:path';
import { test } from 'node:test';
import { parse as parseYaml } from 'yaml';
import { main } from '../src/cli/main';
import { pointFromCubeFileName, readCube, type Point3 } from '../src/core/cube';
import { TrainingDataset } from '../src/core/dataset';
import { saveCandidateSet } from '../src/core/labelling';
import type { TrainingEvent } from '../src/training/events';
import { checkModelCard, modelCardPath } from '../src/sharing/modelCard';
import { SAMPLE, scratch } from './helpers';

async function run(argv: string[]): Promise<{ code: number; out: string; err: string }> {
  let out = '';
  let err = '';
  const code = await main(argv, { out: (text) => (out += `${text}\n`), err: (text) => (err += `${text}\n`) });
  return { code, out, err };
}

const sha256 = async (file: string) => createHash('sha256').update(await fs.readFile(file)).digest('hex');

function frontMatter(card: string): Record<string, any> {
  const match = /^---\n([\s\S]*?)\n---\n/.exec(card);
  assert.ok(match, 'the card starts with YAML front matter');
  return parseYaml(match[1]);
}

/** cellfinder's labelled test cubes labelled into a dataset of ours, as the labelling view saves them, with channel statistics in its YAML. */
async function labelledDataset(root: string): Promise<string> {
  const dataset = await TrainingDataset.create(root);
  const volume = path.join(SAMPLE, 'signal');
  for (const [folder, label] of [['cells', 'cell'], ['non_cells', 'no_cell']] as const) {
    const folderPath = path.join(SAMPLE, 'training', folder);
    for (const name of (await fs.readdir(folderPath)).filter((n) => n.endsWith('Ch0.tif'))) {
      const channels = await Promise.all([name, name.replace(/Ch0\.tif$/, 'Ch1.tif')].map(async (file) => (await readCube(path.join(folderPath, file))).data));
      await dataset.addCube({ position: pointFromCubeFileName(name) as Point3, label, channels, source: volume, prediction: { label: 'cell', cellProbability: 0.5, model: '/lab/round1/model.keras' } });
    }
  }
  await saveCandidateSet(root, { points: path.join(SAMPLE, 'candidates', 'candidates.xml'), signal: volume, background: path.join(SAMPLE, 'background'), voxelSizes: [5, 2, 2] });
  const entry = (folder: string, type: string) =>
    `- bg_channel: 1\n  bg_mean: 300.5\n  bg_std: 80.25\n  cell_def: ''\n  cube_dir: ${folder}\n  signal_channel: 0\n  signal_mean: 500.5\n  signal_std: 200.25\n  type: ${type}\n`;
  await fs.writeFile(dataset.yamlFile, `data:\n${entry('cells', 'cell')}${entry('non_cells', 'no_cell')}`);
  return dataset.yamlFile;
}

test('a training run writes a model card beside its model; evaluate adds the confusion matrix; a changed file is named; a bare model gets a card from the file alone', { timeout: 10 * 60_000 }, async (t) => {
  const root = scratch(t);
  const yaml = await labelledDataset(path.join(root, 'labelled'));
  const runFolder = path.join(root, 'run');
  const trained = await run(['train', '-y', yaml, '-o', runFolder, '--network-depth', '18', '--epochs', '2', '--batch-size', '2', '--test-fraction', '0.5', '--seed', '3', '--no-save-checkpoints', '--normalize-channels', '--json']);
  assert.equal(trained.code, 0, trained.err);
  const events = trained.out.trim().split('\n').map((line) => JSON.parse(line) as TrainingEvent);
  const finished = events.find((e) => e.type === 'finished') as Extract<TrainingEvent, { type: 'finished' }>;
  const model = path.join(runFolder, 'model.keras');
  const cardFile = modelCardPath(model);
  assert.equal(finished.card, cardFile);
  assert.equal(finished.cardProblem, undefined);

  const card = await fs.readFile(cardFile, 'utf8');
  const meta = frontMatter(card);
  assert.equal(meta.library_name, 'keras');
  assert.equal(meta.license, 'bsd-3-clause');
  for (const tag of ['cellfinder', 'brainglobe', 'keras']) assert.ok(meta.tags.includes(tag), tag);
  const final = finished.history[finished.history.length - 1];
  assert.deepEqual(meta.metrics, ['accuracy']);
  const [result] = meta['model-index'][0].results;
  assert.equal(meta['model-index'][0].name, 'model.keras');
  assert.equal(result.task.type, 'image-classification');
  assert.equal(result.metrics[0].type, 'accuracy');
  assert.equal(result.metrics[0].value, Number((final.valAccuracy as number).toFixed(4)));
  const ours = meta.cellfinder_retrain;
  assert.equal(ours.source, 'training run');
  assert.equal(ours.run_folder, '.');
  assert.deepEqual(ours.network, { architecture: 'ResNet-18', network_depth: 18, input_shape: [50, 50, 20, 2], channels: ['signal', 'background'], output: ['non_cell', 'cell'], format: 'keras' });
  assert.deepEqual(ours.files, [{ path: 'model.keras', sha256: await sha256(model), bytes: (await fs.stat(model)).size }]);

  // The body: network, data with counts, voxel sizes and labelling record, normalisation, options, split, metrics, files.
  assert.match(card, /^# Model card for model\.keras$/m);
  assert.match(card, /ResNet-18 \(33,152,674 parameters\)/);
  assert.match(card, /\*\*Finetuned from:\*\* none: cellfinder's random initialisation/);
  assert.ok(card.includes(`| \`${yaml}\` | 2 | 2 | 5, 2, 2 (rescaled to 5, 1, 1) | 4 decisions (4 add) from `), card);
  assert.match(card, /1 source\(s\); 1 model\(s\) guided the labelling \(model\.keras\); labeller not recorded/);
  assert.match(card, /`cells` \(cell\): signal mean 500\.5, std 200\.25, background mean 300\.5, std 80\.25/);
  assert.match(card, /\*\*Trained on normalised channels\*\*/);
  assert.match(card, /\| --seed \| 3 \|/);
  assert.match(card, /\| --epochs \| 2 \|/);
  const started = events.find((e) => e.type === 'started') as Extract<TrainingEvent, { type: 'started' }>;
  const split = started.split!;
  assert.ok(card.includes(`training ${split.training.cells} cells + ${split.training.nonCells} non-cells, validation ${split.validation.cells} cells + ${split.validation.nonCells} non-cells`));
  assert.ok(card.includes(`**Final epoch (2 of 2):** training loss ${final.loss.toFixed(4)}`));
  const best = [...finished.history].reverse().reduce((a, b) => ((b.valLoss as number) < (a.valLoss as number) ? b : a));
  assert.ok(card.includes(`**Best epoch by validation loss (${best.epoch + 1}):** training loss ${best.loss.toFixed(4)}`));
  assert.match(card, /No `evaluation\.json` in the run folder/);
  assert.match(card, /^- Training engine: .+$/m);
  assert.ok(card.includes(`| \`model.keras\` | ${ours.files[0].bytes} | \`${ours.files[0].sha256}\` |`));
  assert.deepEqual((await checkModelCard(cardFile)).files.map((f) => f.status), ['matches']);

  // evaluate --json saved into the run folder: the card, written again for the same model, takes its confusion matrix.
  const evaluated = await run(['evaluate', '--trained-model', model, '-y', yaml, '--normalize-channels', '--json']);
  assert.equal(evaluated.code, 0, evaluated.err);
  await fs.writeFile(path.join(runFolder, 'evaluation.json'), evaluated.out);
  const [evaluation] = JSON.parse(evaluated.out);
  const again = await run(['model', 'card', model]);
  assert.equal(again.code, 0, again.err);
  assert.match(again.out, new RegExp(`Model card written: ${cardFile}\n`));
  const withEvaluation = await fs.readFile(cardFile, 'utf8');
  assert.ok(withEvaluation.includes(`| non-cell | ${evaluation.confusion[0][0]} | ${evaluation.confusion[0][1]} |`));
  assert.ok(withEvaluation.includes(`| cell | ${evaluation.confusion[1][0]} | ${evaluation.confusion[1][1]} |`));
  assert.equal(frontMatter(withEvaluation)['model-index'][0].results[1].metrics[0].value, Number(evaluation.accuracy.toFixed(4)));

  // A model file without its run: a card from what the file alone says, marked so.
  const bare = path.join(root, 'elsewhere', 'shared.keras');
  await fs.mkdir(path.dirname(bare));
  await fs.copyFile(model, bare);
  const alone = await run(['model', 'card', bare]);
  assert.equal(alone.code, 0, alone.err);
  assert.match(alone.out, /from the model file alone/);
  const aloneCard = await fs.readFile(modelCardPath(bare), 'utf8');
  assert.equal(frontMatter(aloneCard).cellfinder_retrain.source, 'model file alone');
  assert.equal(frontMatter(aloneCard)['model-index'], undefined);
  assert.match(aloneCard, /\*\*Written from the model file alone\*\*/);
  assert.match(aloneCard, /saved as Keras 3\.15\.1 on \d{4}-\d\d-\d\d@/);
  // ... and with --run naming its run, the full card, written where -o says.
  const named = path.join(root, 'elsewhere', 'named.md');
  assert.equal((await run(['model', 'card', bare, '--run', runFolder, '-o', named])).code, 0);
  assert.equal(frontMatter(await fs.readFile(named, 'utf8')).cellfinder_retrain.source, 'training run');
  assert.equal(frontMatter(await fs.readFile(named, 'utf8')).cellfinder_retrain.files[0].path, 'shared.keras');

  // The model changes after its card was written: --check names it, with both hashes; the card is not replaced by one for the new bytes.
  const recorded = ours.files[0].sha256;
  await fs.appendFile(model, Buffer.from([0]));
  const check = await run(['model', 'card', '--check', cardFile]);
  assert.equal(check.code, 1);
  assert.ok(check.err.includes(`error: ${model}: has SHA-256 ${await sha256(model)}, the card ${cardFile} says ${recorded}: it changed after the card was written`), check.err);
  const refused = await run(['model', 'card', model]);
  assert.equal(refused.code, 1);
  assert.match(refused.err, /already exists and describes other model bytes .*Nothing was overwritten/);
  assert.equal(await fs.readFile(cardFile, 'utf8'), withEvaluation);
  await fs.rm(model);
  assert.deepEqual((await checkModelCard(cardFile)).files.map((f) => f.status), ['missing']);
  assert.equal((await run(['model', 'card', '--check', modelCardPath(bare)])).code, 0);
});

test('model card: usage and bad input', async (t) => {
  const root = scratch(t);
  assert.equal((await run(['model'])).code, 2);
  assert.match((await run(['model', 'share'])).err, /unknown model command "share" \(card, fetch, export, publish\)/);
  assert.equal((await run(['model', 'card'])).code, 2);
  const notAModel = path.join(root, 'notes.keras');
  await fs.writeFile(notAModel, 'not a model');
  const refused = await run(['model', 'card', notAModel]);
  assert.equal(refused.code, 1);
  assert.match(refused.err, /notes\.keras: is not a Keras model or weights file/);
  const notACard = path.join(root, 'README.md');
  await fs.writeFile(notACard, '# just notes\n');
  assert.match((await run(['model', 'card', '--check', notACard])).err, /is not a model card written by cellfinder-retrain/);
  const help = await run(['help']);
  assert.match(help.out, /model card <model file>/);
  assert.match(help.out, /model fetch hf:\/\/ORG\/NAME/);
});

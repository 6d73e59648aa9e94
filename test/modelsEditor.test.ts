/**
 * The Models view's sharing commands without VS Code: the CLI requests they
 * build (export, publish, fetch, card), run as the editor runs them (runCliJson,
 * a child process of the real CLI); the publish token's one way into the
 * child (its environment); and the fetched models Retrain Network offers as
 * starting points, from the folder layout the real `model fetch --from` writes.
 */
import assert from 'node:assert/strict';
import { promises as fs } from 'node:fs';
import * as path from 'node:path';
import { test } from 'node:test';
import * as tf from '@tensorflow/tfjs';
import { runCliJson, type CliLocation } from '../src/controllers/cliProcess';
import { cellfinderModelOfFile, exportRequest, fetchRequest, modelCardRequest, publishRequest } from '../src/controllers/modelSharing';
import { listFetchedModels } from '../src/sharing/fetchedModels';
import { HubPublishError } from '../src/sharing/hubPublish';
import { cardWithoutFrontMatter, findModelCard, modelCardPath } from '../src/sharing/modelCard';
import { cellfinderModelsFolder, hubModelFolder, type FetchedFile } from '../src/sharing/modelFetch';
import { readModelFile, writeKerasModel } from '../src/training/modelFiles';
import { initialWeights, resnetSpec } from '../src/training/resnet';
import { REPO_ROOT, scratch } from './helpers';

const CLI: CliLocation = { nodePath: process.execPath, cliScript: path.join(REPO_ROOT, 'bin', 'cellfinder-retrain.js'), device: 'cpu' };
const TOKEN = 'hf_editorTestTokenThatMustNotLeak0123456789';

test('the sharing commands build the CLI requests the README documents; names Hugging Face would refuse never start a process', () => {
  assert.deepEqual(modelCardRequest('/r/model.keras').args, ['model', 'card', '/r/model.keras']);
  assert.deepEqual(exportRequest({ kind: 'hub', modelFile: '/r/model.keras', outDir: '/o', card: '/r/model.keras.card.md' }).args, ['model', 'export', '--hub', '/o', '/r/model.keras', '--card', '/r/model.keras.card.md']);
  assert.deepEqual(exportRequest({ kind: 'bioimageio', modelFile: '/r/model.keras', outDir: '/o', dataset: '/d/training.yaml', force: true }).args, ['model', 'export', '--bioimageio', '/o', '/r/model.keras', '--dataset', '/d/training.yaml', '--force']);
  assert.deepEqual(exportRequest({ kind: 'bioimageio', modelFile: '/r/model.keras', outDir: '/o' }).args, ['model', 'export', '--bioimageio', '/o', '/r/model.keras']);
  assert.deepEqual(fetchRequest({ kind: 'cellfinder', model: 'resnet50_tv' }).args, ['model', 'fetch', '--model', 'resnet50_tv']);
  assert.deepEqual(fetchRequest({ kind: 'cellfinder', model: 'resnet50_1ch', from: '/usb' }).args, ['model', 'fetch', '--model', 'resnet50_1ch', '--from', '/usb']);
  assert.deepEqual(fetchRequest({ kind: 'hub', repo: ' hf://lab/model ', from: '/copy' }).args, ['model', 'fetch', 'hf://lab/model', '--from', '/copy']);
  assert.throws(() => fetchRequest({ kind: 'hub', repo: 'hf://lab/bad--name' }), /not a Hugging Face model repository name/);
  assert.equal(cellfinderModelOfFile('/usb/resnet50_single_channel.keras'), 'resnet50_1ch');
  assert.equal(cellfinderModelOfFile('/usb/resnet50_tv.h5'), 'resnet50_tv');
  const publish = publishRequest({ modelFile: '/r/model.keras', target: 'hf://lab/cellfinder-mine', token: TOKEN, card: '/r/model.keras.card.md' });
  assert.deepEqual(publish.args, ['model', 'publish', '/r/model.keras', '--to', 'hf://lab/cellfinder-mine', '--card', '/r/model.keras.card.md']);
  assert.deepEqual(publish.environment, { HF_TOKEN: TOKEN });
  assert.throws(() => publishRequest({ modelFile: '/r/model.keras', target: 'hf://lab/name.git', token: TOKEN }), (error) => error instanceof HubPublishError && /may not end in '\.git'/.test(error.message));
});

test('publish: the token reaches the child only through its environment, never its command line, and no error message quotes it', async (t) => {
  const root = scratch(t);
  // A stand-in CLI that reports what it was started with, as runCliJson starts the real one.
  const probe = path.join(root, 'probe.js');
  await fs.writeFile(probe, "process.stdout.write(JSON.stringify({ argv: process.argv, token: process.env.HF_TOKEN ?? null }));\n");
  const request = publishRequest({ modelFile: path.join(root, 'model.keras'), target: 'hf://lab/cellfinder-mine', token: TOKEN });
  const seen = await runCliJson<{ argv: string[]; token: string | null }>({ ...CLI, cliScript: probe }, request.args, { environment: request.environment });
  assert.equal(seen.token, TOKEN);
  assert.ok(!seen.argv.some((arg) => arg.includes(TOKEN)), `the token is on the command line: ${seen.argv.join(' ')}`);
  assert.deepEqual(seen.argv.slice(2), [...request.args, '--json']);
  // Not in our own environment either: it went to that one child.
  assert.notEqual(process.env.HF_TOKEN, TOKEN);

  // The real CLI with the request as the editor sends it: a model that is not there fails before any upload, without the token in what it says.
  await assert.rejects(runCliJson(CLI, request.args, { onStderrLine: (line) => assert.ok(!line.includes(TOKEN), `stderr quotes the token: ${line}`), environment: request.environment }), (error: Error) => {
    assert.match(error.message, /model\.keras/);
    assert.ok(!error.message.includes(TOKEN));
    return true;
  });
  // Without a token the CLI says how to give one.
  const withoutToken = publishRequest({ modelFile: root, target: 'hf://lab/cellfinder-mine', token: '' });
  await assert.rejects(runCliJson(CLI, withoutToken.args, { environment: withoutToken.environment }), /no Hugging Face token: set HF_TOKEN/);
});

test('Retrain Network\'s fetched starting points: a Hub repository fetched by the real model fetch --from, and cellfinder\'s networks by their file names', { timeout: 5 * 60_000 }, async (t) => {
  const root = scratch(t);
  const home = path.join(root, 'home');
  const model = path.join(root, 'run', 'model.keras');
  await fs.mkdir(path.dirname(model), { recursive: true });
  const spec = resnetSpec(18, 2);
  await writeKerasModel(model, spec, initialWeights(tf, spec, 7));
  assert.deepEqual(await listFetchedModels(home), []);

  // The card, as "Write Model Card" runs it: from the file alone (no run folder), shown without its front matter.
  const written = await runCliJson<{ card: string; fromRun: boolean }>(CLI, modelCardRequest(model).args);
  assert.deepEqual(written, { card: modelCardPath(model), fromRun: false });
  assert.equal(await findModelCard(model), written.card);
  const shown = cardWithoutFrontMatter(await fs.readFile(written.card, 'utf8'));
  assert.match(shown, /^# Model card for model\.keras\n/);
  assert.doesNotMatch(shown, /cellfinder_retrain:|library_name:/);

  // "Export for the Hugging Face Hub…" with the card, then "Fetch a Model…" > a local copy of that folder as hf://lab/cellfinder-mine.
  const hub = path.join(root, 'hub');
  const exported = await runCliJson<{ folder: string }>(CLI, exportRequest({ kind: 'hub', modelFile: model, outDir: hub, card: written.card }).args);
  assert.equal(exported.folder, hub);
  const environment = { HOME: home };
  const fetched = await runCliJson<{ files: FetchedFile[] }>(CLI, fetchRequest({ kind: 'hub', repo: 'hf://lab/cellfinder-mine', from: hub }).args, { environment });
  const repoFolder = hubModelFolder('lab/cellfinder-mine', home);
  assert.deepEqual(fetched.files.map((file) => path.relative(repoFolder, file.file)).sort(), ['README.md', 'config.json', 'metadata.json', 'model.weights.h5']);
  assert.ok(fetched.files.every((file) => file.status === 'fetched'));
  // A fetch's leftover temporary file (hidden) is no starting point; cellfinder's signal-only network sits under cellfinder's file name.
  await fs.writeFile(path.join(repoFolder, '.model.weights.h5.123.abcdef01.tmp'), 'partial');
  await fs.mkdir(cellfinderModelsFolder(home), { recursive: true });
  await fs.copyFile(model, path.join(cellfinderModelsFolder(home), 'resnet50_single_channel.keras'));
  await fs.writeFile(path.join(cellfinderModelsFolder(home), 'notes.h5'), 'not one of cellfinder\'s names');

  const offered = await listFetchedModels(home);
  assert.deepEqual(
    offered.map((entry) => ({ ...entry, origin: entry.origin === 'hub' ? `hf://${entry.repo}` : entry.name })),
    [
      { origin: 'resnet50_1ch', name: 'resnet50_1ch', file: path.join(cellfinderModelsFolder(home), 'resnet50_single_channel.keras'), description: { format: 'keras', depth: 18, channels: 2 } },
      { origin: 'hf://lab/cellfinder-mine', repo: 'lab/cellfinder-mine', file: path.join(repoFolder, 'model.weights.h5'), description: { format: 'weights.h5', depth: 18, channels: 2 } },
    ],
  );
  // The Hub folder's weights are a starting point the trainer reads as it would read them from --model-weights; their card is the folder's README.md.
  const loaded = await readModelFile(path.join(repoFolder, 'model.weights.h5'), { depth: 18, channels: 2 });
  assert.equal(loaded.weights.size, (await readModelFile(model)).weights.size);
  assert.equal(await findModelCard(path.join(repoFolder, 'model.weights.h5')), path.join(repoFolder, 'README.md'));
});

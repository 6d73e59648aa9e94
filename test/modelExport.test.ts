/**
 * Sharing a model: a real run (ResNet-18, two epochs on cellfinder's own
 * labelled cubes, --normalize-channels so that its outputs are not saturated
 * 0/1) exported both ways through the CLI, then checked by the real consumers:
 * Keras 3's hf:// loader on the Hub folder (test/python/hub_load.py in .venv)
 * and `bioimageio test` (bioimageio.core in .venv-bioimageio, made by
 * scripts/bioimageio-env.sh) on the zoo package. Publishing is checked up to
 * the @huggingface/hub call.
 */
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { existsSync, promises as fs } from 'node:fs';
import * as path from 'node:path';
import { test } from 'node:test';
import { unzipSync } from 'fflate';
import { parse } from 'yaml';
import { main } from '../src/cli/main';
import { RDF_FILE, testWithBioimageio } from '../src/sharing/bioimageio';
import { exportForHub } from '../src/sharing/hubExport';
import { modelCardPath } from '../src/sharing/modelCard';
import { parseHubTarget, planHubUpload, publishToHub, type HubClient } from '../src/sharing/hubPublish';
import { encodeNpyFloat32 } from '../src/sharing/npy';
import { encodeGreyPng } from '../src/sharing/png';
import { REPO_ROOT, scratch, tinyDataset } from './helpers';
import { PEER_PYTHON } from './kerasPeer';

const CLI = path.join(REPO_ROOT, 'bin', 'cellfinder-retrain.js');
const BIOIMAGEIO = path.join(REPO_ROOT, '.venv-bioimageio', 'bin', 'bioimageio');
/** cellfinder's own statistics of the sample's volumes (its training_with_stats.yaml). */
const STATISTICS = ['  signal_mean: 241.31\n  signal_std: 154.92\n  bg_mean: 650.94\n  bg_std: 217.90\n', '  signal_mean: 231.28\n  signal_std: 79.60\n  bg_mean: 836.21\n  bg_std: 348.35\n'];

async function capture(argv: string[]): Promise<{ code: number; out: string; err: string }> {
  let out = '';
  let err = '';
  const code = await main(argv, { out: (text) => (out += `${text}\n`), err: (text) => (err += `${text}\n`) });
  return { code, out, err };
}

/** Reads a float32 .npy the way numpy does: header length at byte 8, data after the header. */
function readNpy(bytes: Buffer): { shape: number[]; values: Float32Array } {
  const headerLength = bytes.readUInt16LE(8);
  const header = bytes.subarray(10, 10 + headerLength).toString('latin1');
  const shape = (header.match(/'shape': \(([^)]*)\)/)?.[1] ?? '').split(',').map((s) => s.trim()).filter(Boolean).map(Number);
  const data = bytes.subarray(10 + headerLength);
  return { shape, values: new Float32Array(data.buffer.slice(data.byteOffset, data.byteOffset + data.byteLength)) };
}

test('a trained model exported for the Hub loads through Keras 3\'s hf:// loader with our predictions; its zoo package passes bioimageio test', { timeout: 20 * 60_000 }, async (t) => {
  assert.ok(existsSync(PEER_PYTHON), 'the peer venv is missing: run scripts/python-env.sh (npm test runs it)');
  const setup = spawnSync('bash', [path.join(REPO_ROOT, 'scripts', 'bioimageio-env.sh')], { encoding: 'utf8', stdio: ['ignore', 'inherit', 'inherit'] });
  assert.equal(setup.status, 0, 'scripts/bioimageio-env.sh failed');
  const root = scratch(t);
  const yaml = await tinyDataset(root);
  const entries = (await fs.readFile(yaml, 'utf8')).split('- ').slice(1);
  await fs.writeFile(yaml, `data:\n${entries.map((entry, i) => `- ${entry}${STATISTICS[i]}`).join('')}`);
  const runDir = path.join(root, 'run');
  const trained = spawnSync(process.execPath, [CLI, 'train', '-y', yaml, '-o', runDir, '--network-depth', '18', '--epochs', '2', '--batch-size', '2', '--test-fraction', '0.5', '--seed', '1', '--no-save-checkpoints', '--normalize-channels', '--device', 'cpu'], { encoding: 'utf8' });
  assert.equal(trained.status, 0, trained.stderr);
  const model = path.join(runDir, 'model.keras');

  // The zoo package, its test tensors from our own network on the run's dataset (found through the run's training-config.json).
  const zoo = path.join(root, 'zoo');
  const exported = await capture(['model', 'export', '--bioimageio', zoo, model, '--author', 'cellfinder-retrain tests']);
  assert.equal(exported.code, 0, exported.err);
  const rdf = parse(await fs.readFile(path.join(zoo, RDF_FILE), 'utf8'));
  assert.equal(rdf.format_version, '0.5.12');
  assert.deepEqual(rdf.inputs[0].axes.map((axis: { type: string; id?: string; size?: number }) => [axis.id ?? axis.type, axis.size]), [['batch', undefined], ['y', 50], ['x', 50], ['z', 20], ['channel', undefined]]);
  assert.deepEqual(rdf.inputs[0].axes[4].channel_names, ['signal', 'background']);
  assert.deepEqual(rdf.outputs[0].axes[1].channel_names, ['non_cell', 'cell']);
  assert.deepEqual([rdf.weights.keras_v3.source, rdf.weights.keras_v3.keras_version], ['model.keras', '3.15.1']);
  const testInput = readNpy(await fs.readFile(path.join(zoo, 'test_input.npy')));
  const testOutput = readNpy(await fs.readFile(path.join(zoo, 'test_output.npy')));
  assert.deepEqual([testInput.shape, testOutput.shape], [[4, 50, 50, 20, 2], [4, 2]]);
  const cell = Array.from({ length: 4 }, (_, i) => testOutput.values[2 * i + 1]);
  assert.ok(cell.every((p) => p > 1e-3 && p < 1 - 1e-3), `outputs are not saturated: ${cell}`);
  const readme = await fs.readFile(path.join(zoo, 'README.md'), 'utf8');
  assert.match(readme, /## Validation\n\nFrom the training run's log \(`training-events.jsonl`\), 2 epoch\(s\), 2 training and 2 validation cubes/);
  assert.match(readme, /\| final \| 2 \|/);
  const zipped = unzipSync(await fs.readFile(path.join(zoo, 'package.zip')));
  assert.deepEqual(Object.keys(zipped).sort(), ['README.md', 'cover.png', 'model.keras', 'rdf.yaml', 'test_input.npy', 'test_output.npy']);
  const report = await testWithBioimageio(path.join(zoo, RDF_FILE), BIOIMAGEIO, { ...process.env, KERAS_BACKEND: 'jax', JAX_PLATFORMS: 'cpu' });
  assert.match(report, /status\s+passed/);
  assert.match(report, /Reproduce test outputs from test inputs/);

  // The Hub folder, loaded the way Keras loads hf://ORG/NAME after the download, predicts what our network predicted.
  const hub = path.join(root, 'hub');
  const hubExport = await capture(['model', 'export', '--hub', hub, model]);
  assert.equal(hubExport.code, 0, hubExport.err);
  assert.deepEqual((await fs.readdir(hub)).sort(), ['README.md', 'config.json', 'metadata.json', 'model.weights.h5']);
  // The run wrote the model's card beside it: it becomes the repository's README.md, front matter and all.
  const hubReadme = await fs.readFile(path.join(hub, 'README.md'), 'utf8');
  assert.equal(hubReadme, await fs.readFile(modelCardPath(model), 'utf8'));
  assert.match(hubReadme, /^---\n(.+\n)*library_name: keras\n/);
  const loaded = spawnSync(PEER_PYTHON, [path.join(REPO_ROOT, 'test', 'python', 'hub_load.py'), hub, path.join(zoo, 'test_input.npy')], { encoding: 'utf8', maxBuffer: 16 * 2 ** 20 });
  assert.equal(loaded.status, 0, loaded.stderr.slice(-3000));
  const keras = JSON.parse(loaded.stdout) as { requested: string[]; outputs: number[][] };
  assert.equal(keras.requested.length, 1, 'Keras asked the Hub for the repository once');
  keras.outputs.flat().forEach((p, i) => assert.ok(Math.abs(p - testOutput.values[i]) < 1e-5, `output ${i}: Keras ${p}, ours ${testOutput.values[i]}`));

  // An export never lands on files already there, unless asked to replace them.
  const again = await capture(['model', 'export', '--hub', hub, model, '--card', path.join(zoo, 'README.md')]);
  assert.equal(again.code, 1);
  assert.match(again.err, /hub: already holds 4 file\(s\); nothing was changed. Choose a new or empty output folder, or add --force/);
  assert.equal((await capture(['model', 'export', '--hub', hub, model, '--card', path.join(zoo, 'README.md'), '--force'])).code, 0);
  assert.equal(await fs.readFile(path.join(hub, 'README.md'), 'utf8'), readme);
  assert.deepEqual((await fs.readdir(root)).filter((name) => name.startsWith('.')), [], 'no temporary folder left behind');

  // A package whose test output no longer matches: bioimageio's own report, unchanged, in our error.
  const broken = new Float32Array(testOutput.values).map((p) => 1 - p);
  await fs.writeFile(path.join(zoo, 'test_output.npy'), encodeNpyFloat32(broken, [4, 2]));
  await assert.rejects(testWithBioimageio(path.join(zoo, RDF_FILE), BIOIMAGEIO, { ...process.env, KERAS_BACKEND: 'jax', JAX_PLATFORMS: 'cpu' }), (error: Error) => {
    assert.match(error.message, /rdf.yaml: failed bioimageio test:\n/);
    assert.match(error.message, /sha256/i, 'bioimageio reports the changed test tensor');
    return true;
  });
});

test('a weights-only file is refused for export, naming the file and the fix', async (t) => {
  const root = scratch(t);
  const weights = path.join(root, 'model.weights.h5');
  await fs.writeFile(weights, 'not hdf5');
  await assert.rejects(exportForHub(weights, path.join(root, 'hub')), /model.weights.h5: is not a Keras model or weights file/);
  assert.equal(existsSync(path.join(root, 'hub')), false);
});

test('publish: repository names checked as Hugging Face checks them, the token required, the request built up to the library call', async (t) => {
  assert.deepEqual(parseHubTarget('hf://brainglobe/cellfinder-resnet50_lab.v2'), { namespace: 'brainglobe', name: 'cellfinder-resnet50_lab.v2' });
  const refused: Array<[string, RegExp]> = [
    ['hf://brainglobe', /must be an organisation or user name and a model name, ORG\/NAME/],
    ['hf://a/b/c', /ORG\/NAME/],
    ['hf://brainglobe/-model', /may not start or end with '-' or '.'/],
    ['hf://brainglobe/model.', /may not start or end/],
    ['hf://brain globe/model', /may use only letters, digits/],
    ['hf://brainglobe/my--model', /may not contain '--' or '..'/],
    ['hf://brainglobe/model.git', /may not end in '.git'/],
    [`hf://brainglobe/${'m'.repeat(97)}`, /97 characters long, at most 96/],
  ];
  for (const [target, problem] of refused) assert.throws(() => parseHubTarget(target), problem, target);

  const root = scratch(t);
  const folder = path.join(root, 'hub');
  await fs.mkdir(path.join(folder, 'assets'), { recursive: true });
  for (const file of ['config.json', 'metadata.json', 'model.weights.h5', 'README.md', 'assets/summary_plot.png']) await fs.writeFile(path.join(folder, file), file);
  await assert.rejects(planHubUpload(folder, 'hf://brainglobe/model', {}), /no Hugging Face token: set HF_TOKEN to an access token with write permission/);
  await assert.rejects(planHubUpload(root, 'hf://brainglobe/model', { HF_TOKEN: 'hf_x' }), /hub.*is not a Hub export \(no config.json, metadata.json, model.weights.h5\)|is not a Hub export/);
  const token = 'hf_secretsecret';
  const plan = await planHubUpload(folder, 'hf://brainglobe/cellfinder-test', { HF_TOKEN: token });
  assert.deepEqual(plan.repo, { type: 'model', name: 'brainglobe/cellfinder-test' });
  assert.deepEqual(plan.files.map((file) => file.path), ['README.md', 'assets/summary_plot.png', 'config.json', 'metadata.json', 'model.weights.h5']);
  assert.equal(plan.files[2].content.href, `file://${path.join(folder, 'config.json')}`);
  assert.match(plan.commitTitle, /^Upload cellfinder model \(hub\)/);

  // The library's calls, as made: the repository created when missing, then one commit of every file.
  const calls: string[] = [];
  const client: HubClient = {
    repoExists: async ({ repo, accessToken }) => (calls.push(`exists ${repo.name} ${accessToken === token}`), false),
    createRepo: async ({ repo }) => calls.push(`create ${repo.name}`),
    uploadFiles: async ({ repo, files, commitTitle }) => calls.push(`upload ${repo.name} ${files.length} ${commitTitle === plan.commitTitle}`),
  };
  assert.equal(await publishToHub(plan, client), 'https://huggingface.co/brainglobe/cellfinder-test');
  assert.deepEqual(calls, ['exists brainglobe/cellfinder-test true', 'create brainglobe/cellfinder-test', 'upload brainglobe/cellfinder-test 5 true']);
  // A library error keeps its message, never the token.
  const failing: HubClient = { ...client, repoExists: async () => Promise.reject(new Error(`401 for token ${token}`)) };
  await assert.rejects(publishToHub(plan, failing), (error: Error) => error.message === 'uploading to hf://brainglobe/cellfinder-test failed: 401 for token <token>');

  // The CLI: a bad name and a missing token are one-line errors, exit 1, and nothing is uploaded.
  const saved = process.env.HF_TOKEN;
  delete process.env.HF_TOKEN;
  t.after(() => (saved === undefined ? undefined : (process.env.HF_TOKEN = saved)));
  const noToken = await capture(['model', 'publish', folder, '--to', 'hf://brainglobe/cellfinder-test']);
  assert.deepEqual([noToken.code, noToken.err.split('\n')[0]], [1, 'error: no Hugging Face token: set HF_TOKEN to an access token with write permission (huggingface.co/settings/tokens); it is only passed to the upload, never saved']);
  const badName = await capture(['model', 'publish', folder, '--to', 'hf://brainglobe/my--model']);
  assert.equal(badName.code, 1);
  assert.match(badName.err, /^error: "hf:\/\/brainglobe\/my--model" is not a Hugging Face model repository/);
});

test('NPY and PNG writers: the bytes numpy and a PNG reader expect', () => {
  const npy = Buffer.from(encodeNpyFloat32(new Float32Array([1, 2, 3, 4, 5, 6]), [2, 3]));
  assert.equal(npy.subarray(0, 8).toString('latin1'), '\x93NUMPY\x01\x00');
  assert.equal((10 + npy.readUInt16LE(8)) % 64, 0, 'data starts on a 64-byte boundary');
  assert.deepEqual(readNpy(npy), { shape: [2, 3], values: new Float32Array([1, 2, 3, 4, 5, 6]) });
  assert.match(npy.toString('latin1', 10, 10 + npy.readUInt16LE(8)), /^\{'descr': '<f4', 'fortran_order': False, 'shape': \(2, 3\), \} *\n$/);
  assert.match(Buffer.from(encodeNpyFloat32(new Float32Array([7]), [1])).toString('latin1'), /'shape': \(1,\)/);
  const png = Buffer.from(encodeGreyPng(new Uint8Array([0, 255, 128, 64, 32, 16]), 3, 2));
  assert.equal(png.subarray(0, 8).toString('hex'), '89504e470d0a1a0a');
  assert.equal(png.subarray(12, 16).toString('latin1'), 'IHDR');
  assert.deepEqual([png.readUInt32BE(16), png.readUInt32BE(20), png[24], png[25]], [3, 2, 8, 0]);
  assert.equal(png.subarray(-8, -4).toString('latin1'), 'IEND');
});

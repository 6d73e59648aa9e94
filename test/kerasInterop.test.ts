/**
 * Model files against the real peer: Keras 3.15 running cellfinder 1.10.1's
 * own build_model on the JAX CPU backend (test/python/keras_peer.py in .venv).
 * (a) Keras writes -> we load -> our predictions equal Keras' on real cubes;
 * (b) we write -> Keras loads -> same predictions;
 * (c) a Keras-2-layout .h5 (cellfinder's pre-trained resnet50_tv.h5 layout) loads.
 */
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { existsSync, promises as fs } from 'node:fs';
import * as path from 'node:path';
import { test } from 'node:test';
import * as tf from '@tensorflow/tfjs';
import { writeCellCounterXml } from '../src/core/cellCounterXml';
import { channelStatistics, sampledPlanes } from '../src/core/channelStatistics';
import { openVolume } from '../src/core/volume';
import { KerasAdam } from '../src/training/adam';
import { loadNetwork } from '../src/training/inference';
import { kerasModelConfig } from '../src/training/kerasConfig';
import { readModelFile, writeKerasModel, writeKerasWeights, describeModelFile } from '../src/training/modelFiles';
import { initialWeights, resnetSpec, weightKey } from '../src/training/resnet';
import { RESCALED_FIXTURES, REPO_ROOT, SAMPLE, scratch } from './helpers';
import { kerasCellProbabilities, ourCellProbabilities, peer, PEER_CUBES, PEER_PYTHON } from './kerasPeer';

const CLI = path.join(REPO_ROOT, 'bin', 'cellfinder-retrain.js');

test('Keras 3 <-> us: .weights.h5, .keras and Keras-2 .h5 load both ways with the same predictions on real cubes', { timeout: 15 * 60_000 }, async (t) => {
  assert.ok(existsSync(PEER_PYTHON), 'the peer venv is missing: run scripts/python-env.sh (npm test runs it)');
  await tf.setBackend('cpu');
  const dir = scratch(t);
  const saved = peer(['save', '--depth', '18', '--channels', '2', '--seed', '1', '--out-dir', dir, '--cubes', ...PEER_CUBES]);
  assert.ok(saved.ok);
  const kerasProbabilities = (saved.predictions?.cubes ?? []).map((cube) => cube.probabilities[1]);
  assert.equal(kerasProbabilities.length, PEER_CUBES.length);

  // (a) + (c): the three formats Keras wrote read to identical weights ...
  const fromWeights = await readModelFile(path.join(dir, 'model.weights.h5'));
  const fromKeras = await readModelFile(path.join(dir, 'model.keras'));
  const fromLegacy = await readModelFile(path.join(dir, 'legacy_keras2.h5'));
  assert.deepEqual([fromWeights.format, fromKeras.format, fromLegacy.format], ['weights.h5', 'keras', 'legacy.h5']);
  assert.deepEqual([fromWeights.depth, fromWeights.channels], [18, 2]);
  // The Models view's quick look (no weights read) says the same of all three Keras-written files.
  for (const name of ['model.weights.h5', 'model.keras', 'legacy_keras2.h5']) {
    const described = await describeModelFile(path.join(dir, name));
    assert.deepEqual([described.depth, described.channels], [18, 2], name);
  }
  for (const [key, values] of fromWeights.weights) {
    assert.deepEqual(fromKeras.weights.get(key), values, key);
    assert.deepEqual(fromLegacy.weights.get(key), values, key);
  }
  // ... and our network predicts what Keras predicts.
  const ours = await ourCellProbabilities(path.join(dir, 'model.weights.h5'), 18, 2);
  ours.forEach((p, i) => assert.ok(Math.abs(p - kerasProbabilities[i]) < 1e-5, `cube ${i}: ours ${p}, Keras ${kerasProbabilities[i]}`));
  t.diagnostic(`Keras-written: max |ours - Keras| = ${Math.max(...ours.map((p, i) => Math.abs(p - kerasProbabilities[i]))).toExponential(2)}`);

  // (b) we write, Keras loads and predicts the same.
  const network = await loadNetwork(tf, path.join(dir, 'legacy_keras2.h5'), 18, 2);
  const optimizer = new KerasAdam(tf, 0.0003);
  optimizer.build(network.spec.layers.flatMap((l) => l.weights.filter((w) => w.trainable).map((w) => [weightKey(l.name, w.name), network.weights.get(weightKey(l.name, w.name)) as tf.Variable] as [string, tf.Variable])));
  optimizer.iterations = 5;
  await writeKerasWeights(path.join(dir, 'ours.weights.h5'), network.spec, network.weights);
  await writeKerasModel(path.join(dir, 'ours.keras'), network.spec, network.weights, optimizer);
  for (const file of ['ours.weights.h5', 'ours.keras']) {
    const probabilities = kerasCellProbabilities(path.join(dir, file), 18, 2);
    probabilities.forEach((p, i) => assert.ok(Math.abs(p - kerasProbabilities[i]) < 1e-6, `${file} cube ${i}: Keras ${p}, expected ${kerasProbabilities[i]}`));
  }
  // The Models view's quick look needs only the head of a .keras (config.json comes first), not its weights.
  const head = (await fs.readFile(path.join(dir, 'ours.keras'))).subarray(0, 256 * 1024);
  await fs.writeFile(path.join(dir, 'head-only.keras'), head);
  assert.deepEqual(await describeModelFile(path.join(dir, 'head-only.keras')), { format: 'keras', depth: 18, channels: 2 });
  await assert.rejects(readModelFile(path.join(dir, 'head-only.keras')), /head-only.keras: is a damaged zip archive/);
  // Our .keras carries the optimiser state back to us.
  const reloaded = await readModelFile(path.join(dir, 'ours.keras'));
  assert.equal(reloaded.optimizer?.iterations, 5);
  assert.ok(Math.abs((reloaded.optimizer?.learningRate ?? 0) - 0.0003) < 1e-9);
  assert.equal(reloaded.optimizer?.slots.size, network.spec.layers.flatMap((l) => l.weights.filter((w) => w.trainable)).length);
});

test('config.json equals the one Keras writes for cellfinder\'s model (ignoring object ids)', async () => {
  const layout = JSON.parse(await fs.readFile(path.join(REPO_ROOT, 'test', 'fixtures', 'keras-model', 'layout-keras-resnet18-2ch.json'), 'utf8'));
  const findConfig = (value: unknown): unknown => {
    if (value && typeof value === 'object') {
      const record = value as Record<string, unknown>;
      if (record.class_name === 'Functional' && record.compile_config) return record;
      for (const child of Object.values(record)) {
        const found = findConfig(child);
        if (found) return found;
      }
    }
    return undefined;
  };
  const strip = (value: unknown): unknown =>
    Array.isArray(value) ? value.map(strip) : value && typeof value === 'object' ? Object.fromEntries(Object.entries(value).filter(([k]) => k !== 'shared_object_id').map(([k, v]) => [k, strip(v)])) : value;
  const keras = findConfig(layout) as Record<string, { optimizer: { config: { learning_rate: number } } }>;
  assert.ok(keras, 'the fixture holds config.json');
  const ours = kerasModelConfig(resnetSpec(18, 2), keras.compile_config.optimizer.config.learning_rate);
  assert.deepEqual(strip(JSON.parse(JSON.stringify(ours))), strip(keras));
});

test('a model of the wrong depth or channels, or a file that is no model: an error naming the mismatch', async (t) => {
  const dir = scratch(t);
  const spec = resnetSpec(34, 1);
  const weights = new Map(spec.layers.flatMap((l) => l.weights.map((w) => [weightKey(l.name, w.name), tf.variable(tf.zeros(w.shape))] as const)));
  const file = path.join(dir, 'resnet34.weights.h5');
  await writeKerasWeights(file, spec, weights);
  await assert.rejects(readModelFile(file, { depth: 50 }), /resnet34.weights.h5: holds a ResNet-34, but the network depth asked for is 50. Use --network-depth 34/);
  await assert.rejects(readModelFile(file, { channels: 2 }), /takes 1 input channel\(s\), but the data has 2/);
  const loaded = await readModelFile(file);
  assert.deepEqual([loaded.depth, loaded.channels], [34, 1]);
  assert.deepEqual(await describeModelFile(file), { format: 'weights.h5', depth: 34, channels: 1 });
  const notModel = path.join(dir, 'notes.keras');
  await fs.writeFile(notModel, 'hello');
  await assert.rejects(readModelFile(notModel), /notes.keras: is not a Keras model or weights file/);
  await assert.rejects(readModelFile(path.join(SAMPLE, 'cube_extract', 'cells.xml')), /is not a Keras model or weights file/);
  await assert.rejects(describeModelFile(notModel), /notes.keras: is not a Keras model or weights file/);
  tf.dispose([...weights.values()]);
});

/** cellfinder's channel statistics, from test/python/cellfinder_normalisation.py. */
function cellfinderStatistics(volumes: string[]): Array<{ mean: number; std: number; planes: number }> {
  const run = spawnSync(PEER_PYTHON, [path.join(REPO_ROOT, 'test', 'python', 'cellfinder_normalisation.py'), 'stats', ...volumes], { encoding: 'utf8', maxBuffer: 16 * 2 ** 20 });
  assert.equal(run.status, 0, run.stderr);
  return JSON.parse(run.stdout);
}

test('classify --normalize-channels: cellfinder\'s channel statistics (sampled planes, float64 numpy) and normalisation, then Keras, give our p(cell) and log-odds', { timeout: 15 * 60_000 }, async (t) => {
  assert.ok(existsSync(PEER_PYTHON), 'the peer venv is missing: run scripts/python-env.sh (npm test runs it)');
  await tf.setBackend('cpu');
  const dir = scratch(t);
  const signal = path.join(SAMPLE, 'signal');
  const background = path.join(SAMPLE, 'background');

  // Statistics: every plane of the sample's 26; and every 2nd of a 120-plane volume (a list cycling through the sample's planes).
  const planes = (await fs.readdir(signal)).filter((name) => name.endsWith('.tif')).sort((a, b) => a.localeCompare(b, 'en', { numeric: true }));
  const longList = path.join(dir, 'long.txt');
  await fs.writeFile(longList, Array.from({ length: 120 }, (_, z) => path.join(signal, planes[(z * 7) % planes.length])).join('\n'));
  const expected = cellfinderStatistics([signal, background, longList]);
  const ours = [];
  for (const source of [signal, background, longList]) {
    const volume = await openVolume(source);
    ours.push(await channelStatistics(volume));
    await volume.close();
  }
  ours.forEach((stats, i) => {
    assert.ok(Math.abs(stats.mean - expected[i].mean) <= 1e-12 * expected[i].mean, `mean ${i}: ours ${stats.mean}, cellfinder ${expected[i].mean}`);
    assert.ok(Math.abs(stats.std - expected[i].std) <= 1e-12 * expected[i].std, `std ${i}: ours ${stats.std}, cellfinder ${expected[i].std}`);
  });
  assert.equal(sampledPlanes(120).length, 60);
  assert.notEqual(ours[2].mean, (await channelStatisticsOfAll(longList)).mean, 'the 120-plane volume is sampled, not read whole');

  // A network whose logits are far apart, so that some candidates saturate p(cell) in float32.
  const spec = resnetSpec(18, 2);
  const weights = initialWeights(tf, spec, 11);
  const kernel = weights.get(weightKey('fully_connected', 'kernel')) as tf.Variable;
  kernel.assign(tf.mul(kernel, 40));
  const model = path.join(dir, 'wide.weights.h5');
  await writeKerasWeights(model, spec, weights);
  tf.dispose([...weights.values()]);

  // cellfinder's own cubes of the same points: unscaled (5, 1, 1 µm), and rescaled from (7.25, 2, 2) µm.
  for (const [set, voxelSizes] of [['z5_y1_x1', undefined], ['z7.25_y2_x2', ['7.25', '2', '2']]] as const) {
    const fixture = JSON.parse(await fs.readFile(path.join(RESCALED_FIXTURES, set, 'points.json'), 'utf8')) as { points: Array<{ x: number; y: number; z: number; extracted: boolean; files?: string[] }> };
    const extracted = fixture.points.filter((p) => p.extracted);
    const points = path.join(dir, `${set}.xml`);
    await writeCellCounterXml(points, extracted.map(({ x, y, z }) => ({ x, y, z, type: 1 })));
    const output = path.join(dir, set);
    const args = ['classify', '--model-weights', model, '--network-depth', '18', '--signal', signal, '--background', background, '--points', points, '-o', output, '--normalize-channels', '--json'];
    const run = spawnSync(process.execPath, [CLI, ...args, ...(voxelSizes ? ['--voxel-sizes', ...voxelSizes] : [])], { encoding: 'utf8' });
    assert.equal(run.status, 0, run.stderr);
    assert.match(run.stderr, /channel statistics of .*signal \(planes\): 26\/26/);
    const report = JSON.parse(run.stdout) as { channelStatistics: Array<{ mean: number; std: number }> };
    assert.deepEqual(report.channelStatistics, ours.slice(0, 2));

    const keras = peer(['predict', '--depth', '18', '--channels', '2', '--weights', model, '--normalise-by', signal, background, '--cubes', ...extracted.map((p) => path.join(RESCALED_FIXTURES, set, (p.files as string[])[0]))]);
    const kerasCubes = keras.cubes ?? [];
    assert.equal(kerasCubes.length, extracted.length);
    const rows = (await fs.readFile(path.join(output, 'classified_points.csv'), 'utf8')).trim().split('\n');
    assert.equal(rows[0], 'x,y,z,type,cell_probability,cell_log_odds');
    assert.equal(rows.length - 1, extracted.length, `${set}: every point cellfinder extracted is classified`);
    let worst = 0;
    rows.slice(1).forEach((row, i) => {
      const [, , , type, cell, logOdds] = row.split(',').map(Number);
      const { probabilities, logits } = kerasCubes[i];
      worst = Math.max(worst, Math.abs(cell - probabilities[1]));
      assert.ok(Math.abs(cell - probabilities[1]) <= 8.5e-6, `${set} ${row}: Keras ${probabilities}`);
      assert.equal(type, probabilities[1] > probabilities[0] ? 2 : 1);
      // The log-odds keep ranking where p(cell) is 1 - 2^-24 (log-odds over 17) and p(non-cell) 0 (over 87).
      assert.ok(Math.abs(logOdds - (logits[1] - logits[0])) <= 1e-4 * Math.max(1, Math.abs(logits[1] - logits[0])), `${set} ${row}: Keras logits ${logits}`);
    });
    t.diagnostic(`${set}: ${extracted.length} candidates, max |ours - Keras| = ${worst.toExponential(2)}; log-odds ${kerasCubes.map((c) => (c.logits[1] - c.logits[0]).toFixed(1)).join(' ')}`);
  }
});

/** Mean of every plane of `source` (what sampling must differ from). */
async function channelStatisticsOfAll(source: string): Promise<{ mean: number }> {
  const volume = await openVolume(source);
  let sum = 0;
  let count = 0;
  for (let z = 0; z < volume.shape[0]; z++) {
    const plane = await volume.readPlane(z);
    for (let i = 0; i < plane.length; i++) sum += plane[i];
    count += plane.length;
  }
  await volume.close();
  return { mean: sum / count };
}

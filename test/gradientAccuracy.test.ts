/**
 * How accurate one real training step's gradients are, layer by layer, on
 * both engines: cellfinder's ResNet-18 on a batch of real cubes (with
 * cellfinder's augmentation), fresh weights, Keras' loss; our float32
 * gradients against the same step in float64 by cellfinder's own network
 * (Keras 3 on JAX, test/python/gradient_reference.py, loading the weights
 * file our trainer writes).
 *
 * The bar: cellfinder trains on PyTorch, whose float32 batch norm sums with
 * cascaded (pairwise) reductions; PyTorch itself is too heavy to install
 * here. The same script runs the step in float32 as well: XLA's float32
 * convolutions and tree reductions, with jnp.var's two-pass variance, which
 * is PyTorch's kind of float32 computation. Its error against float64 is
 * measured per layer on the same batch, and each of our layers must be
 * within ACCURACY_FACTOR of it (the target: within 10x of
 * PyTorch's). Gradient elements that are not tiny (NOT_TINY) must have
 * float64's sign: Adam moves every weight by about the learning rate in
 * the direction of its gradient's sign, however small the gradient.
 *
 * Known gap (hence `todo`): with about a million activations per layer, a
 * few lie within float32 noise of ReLU's kink, and a float32 step can take
 * the other side of it than float64 does; one such flip moves the
 * gradients of the layers before it by ~1e-3 (seen in unit 2 on the
 * native engine, after the batch-norm fix brought every other layer within
 * 3x of the bar). The careful float32 run has its own flips, elsewhere, so
 * a per-layer ratio cannot tell them from rounding error yet.
 */
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { existsSync, promises as fs } from 'node:fs';
import * as path from 'node:path';
import { test } from 'node:test';
import * as tf from '@tensorflow/tfjs';
import { seededRandom } from '../src/core/random';
import { ACTIVE_FILE, engineRoot } from '../src/engine/engineLayout';
import { fixCpuMaxPool3dGrad } from '../src/engine/cpuMaxPool3dGradFix';
import { loadNativeBackend } from '../src/engine/nativeBackend';
import { categoricalCrossEntropy } from '../src/training/adam';
import { CELLFINDER_AUGMENTATION } from '../src/training/augment';
import { writeKerasWeights } from '../src/training/modelFiles';
import { forward, initialWeights, resnetSpec, weightKey, type ResNetSpec, type Weights } from '../src/training/resnet';
import { assembleBatch, planBatch, type Batch, type Sample } from '../src/training/trainingData';
import { REPO_ROOT, SAMPLE, scratch } from './helpers';
import { PEER_PYTHON } from './kerasPeer';

const DEPTH = 18;
const CHANNELS = 2;
/** Our error may be at most this many times the careful float32 computation's, per layer. */
const ACCURACY_FACTOR = 10;
/** Elements whose float64 gradient is at least this fraction of the layer's largest must have its sign. */
const NOT_TINY = 1e-3;
const REFERENCE = path.join(REPO_ROOT, 'test', 'python', 'gradient_reference.py');
const NO_ENGINE = existsSync(path.join(engineRoot(), ACTIVE_FILE)) ? undefined : `no native engine in ${engineRoot()}; set it up with: cellfinder-retrain engine setup`;

/** Every real labelled cube pair in the fixtures: cellfinder's training cubes and the two it extracted at cell points. */
function realSamples(): Sample[] {
  const sample = (file: string, label: 0 | 1): Sample => ({ files: [file, file.replace(/Ch0\.tif$/, 'Ch1.tif')], label, position: { x: 0, y: 0, z: 0 } });
  return [
    sample(path.join(SAMPLE, 'cube_extract/cubes/pCellz10y522x392Ch0.tif'), 1),
    sample(path.join(SAMPLE, 'cube_extract/cubes/pCellz15y1004x340Ch0.tif'), 1),
    sample(path.join(SAMPLE, 'training/cells/pCellz1132y413x1896Ch0.tif'), 1),
    sample(path.join(SAMPLE, 'training/cells/pCellz1138y502x1662Ch0.tif'), 1),
    sample(path.join(SAMPLE, 'training/non_cells/pCellz1137y278x1616Ch0.tif'), 0),
    sample(path.join(SAMPLE, 'training/non_cells/pCellz1137y426x1996Ch0.tif'), 0),
  ];
}

/** A training batch of `size` as the trainer makes one: the real cubes in turn, each with its own draw of cellfinder's augmentation, channels not normalised (the default). */
async function realBatch(size: number): Promise<Batch> {
  const samples = realSamples();
  const chosen = Array.from({ length: size }, (_, i) => samples[i % samples.length]);
  return assembleBatch(planBatch(chosen, { channels: CHANNELS, normalise: false, augmentation: { options: CELLFINDER_AUGMENTATION, random: seededRandom(size) } }));
}

type Values = Map<string, Float64Array>;

/** gradient_reference.py's float64 and float32 gradients and batch statistics, keyed 'gradient:layer/variable', 'mean:layer', 'variance:layer'. */
async function reference(folder: string, spec: ResNetSpec, weights: Weights, batch: Batch): Promise<{ float64: Values; float32: Values }> {
  const weightsFile = path.join(folder, 'model.weights.h5');
  await writeKerasWeights(weightsFile, spec, weights);
  await fs.writeFile(path.join(folder, 'batch.f32'), batch.inputs);
  await fs.writeFile(path.join(folder, 'labels.f32'), batch.labels);
  const run = spawnSync(PEER_PYTHON, [REFERENCE, '--depth', String(spec.depth), '--channels', String(spec.channels), '--weights', weightsFile, '--batch', path.join(folder, 'batch.f32'), '--labels', path.join(folder, 'labels.f32'), '--out-dir', folder], {
    encoding: 'utf8',
  });
  assert.equal(run.status, 0, `gradient_reference.py failed:\n${run.stderr.slice(-3000)}`);
  const index = JSON.parse(await fs.readFile(path.join(folder, 'index.json'), 'utf8')) as Array<{ key: string; shape: number[]; offset: number }>;
  const read = async (precision: string) => {
    const bytes = await fs.readFile(path.join(folder, `${precision}.bin`));
    const all = new Float64Array(bytes.buffer, bytes.byteOffset, bytes.byteLength / 8);
    return new Map(index.map(({ key, shape, offset }) => [key, all.slice(offset, offset + shape.reduce((a, b) => a * b, 1))]));
  };
  return { float64: await read('float64'), float32: await read('float32') };
}

/** Our gradients and batch statistics of the same step on the current backend, keyed as reference(). */
function ourStep(spec: ResNetSpec, values: Map<string, { data: Float32Array; shape: number[] }>, batch: Batch): Values {
  const weights: Weights = new Map([...values].map(([key, v]) => [key, tf.variable(tf.tensor(v.data, v.shape, 'float32'))]));
  const trainable = spec.layers.flatMap((layer) => layer.weights.filter((w) => w.trainable).map((w) => weightKey(layer.name, w.name)));
  const x = tf.tensor5d(batch.inputs, [batch.size, 50, 50, 20, batch.channels]);
  const y = tf.tensor2d(batch.labels, [batch.size, 2]);
  const out: Values = new Map();
  let statistics: ReturnType<typeof forward>['statistics'] = [];
  const { value, grads } = tf.variableGrads(() => {
    const result = forward(tf, spec, weights, x, true);
    statistics = result.statistics;
    return categoricalCrossEntropy(tf, y, result.probabilities);
  }, trainable.map((key) => weights.get(key) as tf.Variable));
  trainable.forEach((key) => out.set(`gradient:${key}`, Float64Array.from(grads[(weights.get(key) as tf.Variable).name].dataSync())));
  for (const s of statistics) {
    out.set(`mean:${s.layer}`, Float64Array.from(s.mean.dataSync()));
    out.set(`variance:${s.layer}`, Float64Array.from(s.variance.dataSync()));
  }
  tf.dispose([value, x, y, ...Object.values(grads), ...weights.values(), ...statistics.flatMap((s) => [s.mean, s.variance])]);
  return out;
}

interface LayerAccuracy {
  key: string;
  /** ||ours - float64|| / ||float64||. */
  ours: number;
  /** The same for the careful float32 computation. */
  bar: number;
  /** Not-tiny elements whose sign differs from float64's: ours, the bar's. */
  wrongSigns: number;
  barWrongSigns: number;
  notTiny: number;
}

function relativeError(values: Float64Array, exact: Float64Array): number {
  let difference = 0;
  let norm = 0;
  for (let i = 0; i < exact.length; i++) {
    difference += (values[i] - exact[i]) ** 2;
    norm += exact[i] ** 2;
  }
  return Math.sqrt(difference / norm);
}

function wrongSigns(values: Float64Array, exact: Float64Array): { wrong: number; notTiny: number } {
  const largest = exact.reduce((m, v) => Math.max(m, Math.abs(v)), 0);
  let wrong = 0;
  let notTiny = 0;
  for (let i = 0; i < exact.length; i++) {
    if (Math.abs(exact[i]) < NOT_TINY * largest) continue;
    notTiny++;
    if (Math.sign(values[i]) !== Math.sign(exact[i])) wrong++;
  }
  return { wrong, notTiny };
}

function accuracy(ours: Values, float32: Values, float64: Values): LayerAccuracy[] {
  return [...ours.keys()].map((key) => {
    const exact = float64.get(key) as Float64Array;
    const mine = wrongSigns(ours.get(key) as Float64Array, exact);
    const bars = wrongSigns(float32.get(key) as Float64Array, exact);
    return { key, ours: relativeError(ours.get(key) as Float64Array, exact), bar: relativeError(float32.get(key) as Float64Array, exact), wrongSigns: mine.wrong, barWrongSigns: bars.wrong, notTiny: mine.notTiny };
  });
}

function table(rows: LayerAccuracy[]): string {
  const e = (x: number) => x.toExponential(1).padStart(8);
  return [`${'weights'.padEnd(40)} ${'ours'.padStart(8)} ${'float32'.padStart(8)}  ratio  wrong signs (ours / float32 of not tiny)`]
    .concat(rows.map((r) => `${r.key.padEnd(40)} ${e(r.ours)} ${e(r.bar)} ${(r.ours / r.bar).toFixed(1).padStart(6)}  ${r.wrongSigns} / ${r.barWrongSigns} of ${r.notTiny}`))
    .join('\n');
}

async function checkEngine(t: import('node:test').TestContext, backend: string, batchSize: number): Promise<void> {
  const spec = resnetSpec(DEPTH, CHANNELS);
  await tf.setBackend('cpu');
  const weights = initialWeights(tf, spec, 3);
  const values = new Map([...weights].map(([key, v]) => [key, { data: v.dataSync() as Float32Array, shape: v.shape }]));
  const batch = await realBatch(batchSize);
  let start = performance.now();
  const { float64, float32 } = await reference(scratch(t), spec, weights, batch);
  t.diagnostic(`reference: ${((performance.now() - start) / 1000).toFixed(1)} s`);
  tf.dispose([...weights.values()]);
  await tf.setBackend(backend);
  start = performance.now();
  const ours = ourStep(spec, values, batch);
  t.diagnostic(`ours: ${((performance.now() - start) / 1000).toFixed(1)} s`);
  const statistics = [...ours.keys()].filter((key) => !key.startsWith('gradient:'));
  const gradients = [...ours.keys()].filter((key) => key.startsWith('gradient:'));
  const pick = (v: Values, keys: string[]) => new Map(keys.map((k) => [k, v.get(k) as Float64Array]));
  t.diagnostic(`${backend}, ResNet-${DEPTH}, batch of ${batchSize} real cubes: batch statistics\n${table(accuracy(pick(ours, statistics), float32, float64))}`);
  const rows = accuracy(pick(ours, gradients), float32, float64);
  t.diagnostic(`gradients\n${table(rows)}`);
  for (const r of rows) {
    assert.ok(r.ours <= ACCURACY_FACTOR * r.bar, `${r.key}: relative error ${r.ours.toExponential(2)}, more than ${ACCURACY_FACTOR} x float32's ${r.bar.toExponential(2)}`);
    assert.equal(r.wrongSigns, 0, `${r.key}: ${r.wrongSigns} of ${r.notTiny} not-tiny gradient elements have the wrong sign`);
  }
}

const KINK_FLIPS = 'a float32 step can cross a ReLU kink float64 does not (see the top of this file)';

test('native engine: every layer\'s gradient of a real training step is as accurate as a careful float32 computation', { todo: KINK_FLIPS }, async (t) => {
  if (NO_ENGINE) return t.skip(NO_ENGINE);
  assert.ok((await loadNativeBackend(tf, { env: { ...process.env, CELLFINDER_RETRAIN_NATIVE: undefined } })).ok);
  await checkEngine(t, 'tensorflow', 16);
});

test('cpu engine: every layer\'s gradient of a real training step is as accurate as a careful float32 computation', { todo: KINK_FLIPS }, async (t) => {
  await fixCpuMaxPool3dGrad(tf);
  await checkEngine(t, 'cpu', 2);
});

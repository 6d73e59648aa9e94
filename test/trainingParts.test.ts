import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import { promises as fs, readdirSync, readFileSync, statSync } from 'node:fs';
import * as path from 'node:path';
import { test } from 'node:test';
import * as tf from '@tensorflow/tfjs';
import { readCube } from '../src/core/cube';
import { DataFileError } from '../src/core/errors';
import { categoricalCrossEntropy, KerasAdam } from '../src/training/adam';
import { applyAugmentation, drawAugmentation, CELLFINDER_AUGMENTATION } from '../src/training/augment';
import { BatchThread } from '../src/training/batchThread';
import { seededRandom, type Random } from '../src/core/random';
import { batchNormWithBatchStatistics, kerasWeightGroups, maxPool3dSeparable, parameterCount, resnetSpec } from '../src/training/resnet';
import { loadTensorFlow } from '../src/engine/backend';
import { OWN_KERNELS_ENV, ownKernels } from '../src/engine/nativeKernels';
import { writeStoredZip } from '../src/training/storedZip';
import { learningRateForEpoch, TRAIN_DEFAULTS } from '../src/training/trainConfig';
import { checkpointsToKeep } from '../src/training/trainer';
import { assembleBatch, epochOrder, inBatches, loadSamples, planBatch, splitSamples, toNetworkOrder, type Batch } from '../src/training/trainingData';
import { REPO_ROOT, SAMPLE, scratch, tinyDataset } from './helpers';

test('ResNet spec: cellfinder\'s layer counts, parameters and z-sized batch norm', () => {
  const spec = resnetSpec(50, 2);
  // cellfinder-facts.md: ResNet-50 with 2 channels has 192 layers, 107 with weights, 46,103,550 parameters.
  assert.equal(spec.layers.length, 192);
  assert.equal(spec.layers.filter((l) => l.weights.length > 0).length, 107);
  assert.equal(parameterCount(spec), 46103550);
  // Batch-norm parameters have the size of z at each depth: 12, 6, 3, 2, 1.
  const bnSizes = new Set(spec.layers.filter((l) => l.kind === 'batchNorm').map((l) => l.weights[0].shape[0]));
  assert.deepEqual([...bnSizes].sort((a, b) => a - b), [1, 2, 3, 6, 12]);
  assert.deepEqual(spec.layers.find((l) => l.name === 'conv1')?.weights[0].shape, [7, 7, 3, 2, 64]);
  assert.deepEqual(spec.layers.at(-1)?.weights.map((w) => w.shape), [[2048, 2], [2]]);
  assert.throws(() => resnetSpec(42 as 50, 2), /network depth 42 is not one of 18, 34, 50, 101, 152/);
});

test('Keras Adam: the first steps match the Keras formula computed by hand, on cpu and on the native engine', async () => {
  const { backend: loaded } = await loadTensorFlow();
  for (const backend of loaded.startsWith('native') ? ['cpu', 'tensorflow'] : ['cpu']) {
    await tf.setBackend(backend);
    const variable = tf.variable(tf.tensor1d([1, -2]));
    const adam = new KerasAdam(tf, 0.1);
    adam.build([['w', variable]]);
    const gradients = [
      [0.5, -1],
      [0.25, 2],
    ];
    let m = [0, 0];
    let v = [0, 0];
    let w = [1, -2];
    gradients.forEach((g, index) => {
      adam.apply(new Map([['w', variable]]), new Map([['w', tf.tensor1d(g)]]));
      const t = index + 1;
      const alpha = (0.1 * Math.sqrt(1 - 0.999 ** t)) / (1 - 0.9 ** t);
      m = m.map((mi, i) => mi + (g[i] - mi) * 0.1);
      v = v.map((vi, i) => vi + (g[i] ** 2 - vi) * 0.001);
      w = w.map((wi, i) => wi - (alpha * m[i]) / (Math.sqrt(v[i]) + 1e-7));
    });
    const slots = adam.slots.get('w');
    for (const [got, expected] of [
      [variable, w],
      [slots?.momentum, m],
      [slots?.velocity, v],
    ] as Array<[tf.Variable, number[]]>) {
      Array.from(got.dataSync()).forEach((value, i) => assert.ok(Math.abs(value - expected[i]) < 1e-6, `${value} vs ${expected[i]} on ${backend}`));
    }
    assert.equal(adam.iterations, 2);
  }
});

test('cross-entropy on probabilities clips like Keras', () => {
  const loss = categoricalCrossEntropy(tf, tf.tensor2d([[1, 0], [0, 1]]), tf.tensor2d([[0.8, 0.2], [1, 0]]));
  // -(log 0.8 + log 1e-7) / 2
  assert.ok(Math.abs(loss.dataSync()[0] - -(Math.log(0.8) + Math.log(1e-7)) / 2) < 1e-4);
});

test('learning-rate schedule multiplies at the listed 0-based epochs, as cellfinder\'s help says', () => {
  const config = { learningRate: 0.001, lrSchedule: [10, 25], lrMultiplier: 0.1 };
  assert.equal(learningRateForEpoch(config, 9), 0.001);
  assert.ok(Math.abs(learningRateForEpoch(config, 10) - 0.0001) < 1e-12);
  assert.ok(Math.abs(learningRateForEpoch(config, 30) - 0.00001) < 1e-12);
  assert.equal(TRAIN_DEFAULTS.networkDepth, 50);
});

test('checkpoints kept: the lowest validation losses, the later epoch on a tie; without validation the latest', () => {
  const metrics = (epoch: number, valLoss?: number) => ({ epoch, loss: 1, accuracy: 0.5, learningRate: 1e-4, seconds: 1, ...(valLoss === undefined ? {} : { valLoss, valAccuracy: 0.5 }) });
  const history = [metrics(0, 0.7), metrics(1, 0.4), metrics(2, 0.5), metrics(3, 0.4), metrics(4, 0.9)];
  assert.deepEqual([...checkpointsToKeep(history, 2)].sort(), [1, 3]);
  assert.deepEqual([...checkpointsToKeep(history, 1)], [3]);
  assert.deepEqual([...checkpointsToKeep(history, 3)].sort(), [1, 2, 3]);
  assert.deepEqual([...checkpointsToKeep(history, 10)].sort(), [0, 1, 2, 3, 4]);
  assert.deepEqual([...checkpointsToKeep([0, 1, 2, 3].map((e) => metrics(e)), 2)].sort(), [2, 3]);
});

test('augmentation: flips are exact, parity mode draws cellfinder\'s fixed pi/4 rotation, identity affine keeps the cube', () => {
  const shape: [number, number, number] = [2, 3, 4];
  const cube = Float32Array.from({ length: 24 }, (_, i) => i);
  const [flipped] = applyAugmentation([cube], shape, { flip: [false, false, true] });
  assert.deepEqual(Array.from(flipped.slice(0, 4)), [3, 2, 1, 0]);
  const parity = drawAugmentation({ ...CELLFINDER_AUGMENTATION, likelihood: 1, affine: 'cellfinder-parity' }, seededRandom(3));
  assert.deepEqual(parity.affine?.rotation, [Math.PI / 4, Math.PI / 4, Math.PI / 4]);
  assert.deepEqual(parity.affine?.shift, [0.05, 0.05, 0.05]);
  assert.ok(parity.affine?.zoom.every((z) => z >= 0.6 - 1e-9 && z <= 1.4 + 1e-9));
  const random = drawAugmentation({ ...CELLFINDER_AUGMENTATION, likelihood: 1 }, seededRandom(3));
  assert.ok(random.affine?.rotation.every((r) => Math.abs(r) <= Math.PI / 4));
  const iso = Float32Array.from({ length: 27 }, (_, i) => i);
  const [same] = applyAugmentation([iso], [3, 3, 3], { flip: [false, false, false], affine: { rotation: [0, 0, 0], shift: [0, 0, 0], zoom: [1, 1, 1] } });
  assert.deepEqual(Array.from(same), Array.from(iso));
  // A quarter turn about the first axis maps the cube onto itself exactly.
  const [turned] = applyAugmentation([iso], [3, 3, 3], { flip: [false, false, false], affine: { rotation: [Math.PI / 2, 0, 0], shift: [0, 0, 0], zoom: [1, 1, 1] } });
  assert.deepEqual(Array.from(turned).map(Math.round).sort((a, b) => a - b), Array.from(iso));
  // Same seed, same draws: reproducible runs.
  assert.deepEqual(drawAugmentation(CELLFINDER_AUGMENTATION, seededRandom(9)), drawAugmentation(CELLFINDER_AUGMENTATION, seededRandom(9)));
});

test('augmentation of real cubes gives the same bytes as the plain implementation it was optimised from', async () => {
  const cubes = await Promise.all(['cells/pCellz1132y413x1896Ch0.tif', 'non_cells/pCellz1137y278x1616Ch1.tif'].map(async (file) => toNetworkOrder((await readCube(path.join(SAMPLE, 'training', file))).data)));
  const hash = createHash('sha256');
  const random = seededRandom(21);
  for (const affine of ['random-range', 'cellfinder-parity'] as const) {
    for (const likelihood of [1, 0.5]) {
      for (let i = 0; i < 8; i++) {
        const draw = drawAugmentation({ ...CELLFINDER_AUGMENTATION, likelihood, affine }, random);
        for (const augmented of applyAugmentation(cubes, [50, 50, 20], draw)) hash.update(augmented);
      }
    }
  }
  // Recorded from the straightforward implementation it replaced (the affine as one formula per voxel, then a flip pass).
  assert.equal(hash.digest('hex'), '09918cc46d65c31c47d6969a5b1adc8ec5ede3f3101d90074b6d995fdffa418d');
});

test('training data from real cubes: split, stratification, balance and network-order batches', async (t) => {
  const root = scratch(t);
  // The real training folder holds 2 cells and 2 non-cells.
  await fs.cp(path.join(SAMPLE, 'training'), root, { recursive: true });
  await fs.writeFile(
    path.join(root, 'training.yaml'),
    "data:\n- bg_channel: 1\n  cell_def: ''\n  cube_dir: cells\n  signal_channel: 0\n  type: cell\n  signal_mean: 241.31\n  signal_std: 154.92\n  bg_mean: 650.94\n  bg_std: 217.9\n- bg_channel: 1\n  cell_def: ''\n  cube_dir: non_cells\n  signal_channel: 0\n  type: no_cell\n",
  );
  const samples = await loadSamples([path.join(root, 'training.yaml')]);
  assert.deepEqual(samples.map((s) => s.label).sort(), [0, 0, 1, 1]);
  const split = splitSamples(samples, { testFraction: 0.5, stratified: true, random: seededRandom(1) });
  assert.deepEqual(split.validation.map((s) => s.label).sort(), [0, 1]);
  assert.equal(splitSamples(samples, { testFraction: 0.1, stratified: false, random: seededRandom(1) }).validation.length, 1);
  const balanced = epochOrder([samples[0], samples[2], samples[3]], true, seededRandom(2));
  assert.equal(balanced.filter((s) => s.label === 1).length, balanced.filter((s) => s.label === 0).length);

  const batch = await assembleBatch(planBatch(samples.slice(0, 2), { channels: 2, normalise: false }));
  assert.equal(batch.inputs.length, 2 * 50 * 50 * 20 * 2);
  // Network order (y, x, z, c): value at y=1, x=2, z=3, channel 0 = cube file value at z=3, y=1, x=2.
  const cube = await readCube(samples[0].files[0]);
  assert.equal(batch.inputs[(((1 * 50 + 2) * 20 + 3) * 2 + 0)], cube.data[(3 * 50 + 1) * 50 + 2]);
  await assert.rejects(assembleBatch(planBatch(samples.filter((s) => s.label === 0), { channels: 2, normalise: true })), /has no signal_mean\/std/);
  const normalised = await assembleBatch(planBatch(samples.filter((s) => s.label === 1).slice(0, 1), { channels: 2, normalise: true }));
  const cellCube = await readCube(samples.filter((s) => s.label === 1)[0].files[1]);
  assert.ok(Math.abs(normalised.inputs[1] - (cellCube.data[0] - 650.94) / 217.9) < 1e-4);
});

test('the batch thread assembles a seeded, augmented epoch of real cubes byte for byte as this thread does, passes on its errors unchanged, and names its script when it is missing', async (t) => {
  const root = scratch(t);
  const statistics: Array<[number, number]> = [
    [241.31, 154.92],
    [650.94, 217.9],
  ];
  const samples = (await loadSamples([await tinyDataset(root)])).map((sample) => ({ ...sample, normalisation: statistics }));
  const order = epochOrder([...samples, ...samples, ...samples], false, seededRandom(11));
  const thread = new BatchThread();
  t.after(() => thread.close());
  for (const affine of ['random-range', 'cellfinder-parity'] as const) {
    const options = { ...CELLFINDER_AUGMENTATION, affine };
    const plansFrom = (random: Random) => inBatches(order, 5).map((slice) => planBatch(slice, { channels: 2, normalise: true, augmentation: { options, random } }));
    // One draw per cube, in the epoch's order, from the run's random source: the order the trainer has always drawn them in.
    const random = seededRandom(5);
    const draws = order.map(() => drawAugmentation(options, random));
    assert.deepEqual(plansFrom(seededRandom(5)).flatMap((plan) => plan.draws), draws);
    assert.ok(draws.some((draw) => draw.affine) && draws.some((draw) => draw.flip.some(Boolean)), 'the epoch is flipped and transformed');
    const here: Batch[] = [];
    for (const plan of plansFrom(seededRandom(5))) here.push(await assembleBatch(plan));
    let index = 0;
    for await (const batch of thread.inOrder(plansFrom(seededRandom(5)))) {
      const expected = here[index++];
      assert.equal(batch.size, expected.size);
      assert.ok(Buffer.from(batch.inputs.buffer).equals(Buffer.from(expected.inputs.buffer)), `${affine}: batch ${index} inputs differ`);
      assert.ok(Buffer.from(batch.labels.buffer).equals(Buffer.from(expected.labels.buffer)), `${affine}: batch ${index} labels differ`);
    }
    assert.equal(index, here.length);
  }

  // A corrupt cube file: the same DataFileError (file, problem, fix) as here.
  await fs.writeFile(samples[1].files[1], Buffer.alloc(4096, 7));
  const plan = planBatch(samples, { channels: 2, normalise: true });
  const expected = await assembleBatch(plan).then(() => assert.fail('a corrupt cube is an error'), (error: unknown) => error as DataFileError);
  assert.ok(expected instanceof DataFileError);
  assert.equal(expected.file, samples[1].files[1]);
  await assert.rejects(thread.assemble(plan), (error: unknown) => {
    assert.ok(error instanceof DataFileError);
    assert.deepEqual([error.message, error.file, error.problem, error.fix], [expected.message, expected.file, expected.problem, expected.fix]);
    return true;
  });

  // An install without the thread's script: an error naming it and the fix, not Node's "Cannot find module".
  const missing = path.join(root, 'batchThreadEntry.js');
  assert.throws(() => new BatchThread(missing), (error: unknown) => error instanceof DataFileError && error.file === missing && /Reinstall the extension/.test(error.fix));
});

test('layer order, names, shapes and .weights.h5 groups equal what Keras 3 builds with cellfinder\'s build_model', () => {
  const folder = path.join(REPO_ROOT, 'test', 'fixtures', 'keras-model');
  const files = readdirSync(folder).filter((name) => /^describe-resnet\d+-\dch\.json$/.test(name) && statSync(path.join(folder, name)).size > 0);
  assert.ok(files.length >= 4, 'Keras descriptions present');
  for (const name of files) {
    const keras = JSON.parse(readFileSync(path.join(folder, name), 'utf8'));
    const spec = resnetSpec(keras.depth, keras.channels);
    const groups = kerasWeightGroups(spec);
    assert.equal(parameterCount(spec), keras.total_params, name);
    assert.deepEqual(
      spec.layers.map((l) => [l.name, l.weights.map((w) => [w.name, w.shape]), groups.get(l.name) ?? null, l.outputShape]),
      keras.layers.map((l: { name: string; weights: Array<{ name: string; shape: number[] }>; weights_h5_group: string | null; output_shape: Array<number | null> }) => [
        l.name,
        l.weights.map((w) => [w.name, w.shape]),
        l.weights_h5_group?.replace(/^layers\//, '').replace(/\/vars$/, '') ?? null,
        l.output_shape.slice(1),
      ]),
      name,
    );
  }
});

test('separable max pool equals tf.maxPool3d in values and gradients; on ties one winner per window', async () => {
  const runtime = await loadTensorFlow();
  const t = runtime.tf;
  const input = t.randomNormal([2, 25, 25, 12, 3], 0, 1, 'float32', 3) as tf.Tensor5D;
  const upstream = t.randomNormal([2, 12, 12, 6, 3], 0, 1, 'float32', 5);
  const pool3d = (x: tf.Tensor) => t.maxPool3d(x as tf.Tensor5D, [3, 3, 2], [2, 2, 2], 'valid');
  const separable = (x: tf.Tensor) => maxPool3dSeparable(t, x as tf.Tensor5D, [3, 3, 2], [2, 2, 2]);
  assert.deepEqual(Array.from(separable(input).dataSync()), Array.from(pool3d(input).dataSync()));
  const reference = t.grad((x: tf.Tensor) => t.sum(t.mul(pool3d(x), upstream)))(input).dataSync();
  const ours = t.grad((x: tf.Tensor) => t.sum(t.mul(separable(x), upstream)))(input).dataSync();
  // Overlapping windows add up in a different order: float32 rounding only.
  reference.forEach((value, i) => assert.ok(Math.abs(value - ours[i]) < 1e-5, `voxel ${i}: ${ours[i]} vs ${value} on ${runtime.backend}`));
  // All tied: every window passes its gradient to exactly one voxel.
  const ones = t.ones([1, 5, 5, 4, 1]) as tf.Tensor5D;
  const windowGradient = t.grad((x: tf.Tensor) => t.sum(separable(x)))(ones).dataSync();
  assert.equal(Array.from(windowGradient).reduce((a, b) => a + b, 0), 2 * 2 * 2);
});

test('batch norm with the written-out gradient equals differentiating through mean and variance (native: our kernels and TensorFlow ops)', async () => {
  const { tf: t, backend } = await loadTensorFlow();
  const native = ownKernels(t);
  for (const kernels of native ? ['1', '0'] : [undefined]) {
    if (kernels) process.env[OWN_KERNELS_ENV] = kernels;
    try {
      checkBatchNorm(t, `${backend}${kernels ? ` (${OWN_KERNELS_ENV}=${kernels})` : ''}`);
    } finally {
      delete process.env[OWN_KERNELS_ENV];
    }
  }
});

function checkBatchNorm(t: typeof tf, backend: string): void {
  const x = t.randomNormal([3, 6, 5, 4, 7], 2, 3, 'float32', 11) as tf.Tensor5D;
  const gamma = t.randomNormal([4], 1, 0.2, 'float32', 12) as tf.Tensor1D;
  const beta = t.randomNormal([4], 0, 0.2, 'float32', 13) as tf.Tensor1D;
  const upstream = t.randomNormal([3, 6, 5, 4, 7], 0, 1, 'float32', 14);
  const shape = [1, 1, 1, 4, 1];
  const autodiff = (input: tf.Tensor, g: tf.Tensor, b: tf.Tensor) => {
    const { mean, variance } = t.moments(input, [0, 1, 2, 4]);
    const normalised = t.div(t.sub(input, t.reshape(mean, shape)), t.sqrt(t.add(t.reshape(variance, shape), 1e-5)));
    return t.sum(t.mul(t.add(t.mul(normalised, t.reshape(g, shape)), t.reshape(b, shape)), upstream));
  };
  const ours = (input: tf.Tensor, g: tf.Tensor, b: tf.Tensor) => t.sum(t.mul(batchNormWithBatchStatistics(t, input as tf.Tensor5D, g as tf.Tensor1D, b as tf.Tensor1D).output, upstream));
  const expected = t.grads(autodiff)([x, gamma, beta]).map((g) => g.dataSync());
  const got = t.grads(ours)([x, gamma, beta]).map((g) => g.dataSync());
  expected.forEach((values, which) => {
    const scale = Math.max(...Array.from(values, Math.abs));
    values.forEach((value, i) => assert.ok(Math.abs(value - got[which][i]) <= 1e-4 * scale, `${['x', 'gamma', 'beta'][which]}[${i}]: ${got[which][i]} vs ${value} on ${backend}`));
  });
  const { mean, variance } = batchNormWithBatchStatistics(t, x, gamma, beta);
  const moments = t.moments(x, [0, 1, 2, 4]);
  assert.ok(t.max(t.abs(t.sub(mean, moments.mean))).dataSync()[0] < 1e-5, backend);
  assert.ok(t.max(t.abs(t.sub(variance, moments.variance))).dataSync()[0] < 1e-4, backend);
}

test('a stored zip streamed to a file is a valid zip to Python\'s zipfile, with every member intact', async (t) => {
  const dir = scratch(t);
  // A member from a file larger than one 4 MiB chunk, with real cube bytes in it, between two in-memory members.
  const cubeBytes = readFileSync(path.join(SAMPLE, 'cube_extract', 'cubes', 'pCellz10y522x392Ch0.tif'));
  const big = Buffer.concat(Array.from({ length: 60 }, () => cubeBytes));
  assert.ok(big.length > 4 * 2 ** 20);
  await fs.writeFile(path.join(dir, 'weights.h5'), big);
  const archive = path.join(dir, 'model.keras');
  const handle = await fs.open(archive, 'wx');
  await writeStoredZip(handle, [
    { name: 'metadata.json', data: Buffer.from('{"keras_version": "3.15.1"}') },
    { name: 'config.json', data: Buffer.from('{"module": "keras", "µ": 1}') },
    { name: 'model.weights.h5', file: path.join(dir, 'weights.h5') },
  ], new Date(2026, 10, 26, 16, 40, 12));
  await handle.close();
  const script = [
    'import hashlib, json, sys, zipfile',
    'z = zipfile.ZipFile(sys.argv[1])',
    'print(json.dumps({"bad": z.testzip(), "members": [[i.filename, i.compress_type, i.file_size, list(i.date_time), hashlib.sha256(z.read(i)).hexdigest()] for i in z.infolist()]}))',
  ].join('\n');
  const run = spawnSync('python3', ['-c', script, archive], { encoding: 'utf8' });
  assert.equal(run.status, 0, run.stderr);
  const sha = (bytes: Buffer) => createHash('sha256').update(bytes).digest('hex');
  assert.deepEqual(JSON.parse(run.stdout), {
    bad: null,
    members: [
      ['metadata.json', 0, 27, [2026, 11, 26, 16, 40, 12], sha(Buffer.from('{"keras_version": "3.15.1"}'))],
      ['config.json', 0, 28, [2026, 11, 26, 16, 40, 12], sha(Buffer.from('{"module": "keras", "µ": 1}'))],
      ['model.weights.h5', 0, big.length, [2026, 11, 26, 16, 40, 12], sha(big)],
    ],
  });
});

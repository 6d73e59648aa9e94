/**
 * Training and inference speed of cellfinder's ResNet on one engine, for
 * `npm run bench`: random cubes (speed does not depend on the values),
 * warm-up step first, then timed steps. Run in its own process per case.
 *
 * Then the whole training pipeline as a run goes through it: the trainer
 * itself, reading real cube files from disk, normalising, augmenting and
 * packing them while it trains, so that the data's cost on the critical
 * path shows next to the step-only figure.
 */
import { promises as fs } from 'node:fs';
import * as path from 'node:path';
import { cubeFileName } from '../src/core/cube';
import { categoricalCrossEntropy, KerasAdam } from '../src/training/adam';
import { loadTensorFlow } from '../src/training/backend';
import { forward, forwardFlopsPerCube, initialWeights, resnetSpec, weightKey, type NetworkDepth } from '../src/training/resnet';
import { TRAIN_DEFAULTS } from '../src/training/trainConfig';
import { train } from '../src/training/trainer';
import { SAMPLE } from '../test/helpers';

export interface ModelBenchResult {
  backend: string;
  depth: number;
  trainBatch: number;
  trainCubesPerSecond: number;
  inferBatch: number;
  inferCubesPerSecond: number;
  forwardGflopPerCube: number;
}

export async function benchModel(depth: NetworkDepth, trainBatch: number, inferBatch: number, steps: number): Promise<ModelBenchResult> {
  const { tf, backend } = await loadTensorFlow();
  const spec = resnetSpec(depth, 2);
  const weights = initialWeights(tf, spec, 1);
  const optimizer = new KerasAdam(tf, 1e-4);
  const trainable = spec.layers.flatMap((l) => l.weights.filter((w) => w.trainable).map((w) => [weightKey(l.name, w.name), weights.get(weightKey(l.name, w.name)) as ReturnType<typeof tf.variable>] as [string, ReturnType<typeof tf.variable>]));
  optimizer.build(trainable);
  const keyOf = new Map(trainable.map(([key, variable]) => [variable.name, key]));
  const x = tf.randomNormal([trainBatch, 50, 50, 20, 2]) as import('@tensorflow/tfjs').Tensor5D;
  const y = tf.oneHot(tf.tensor1d(Array.from({ length: trainBatch }, (_, i) => i % 2), 'int32'), 2) as import('@tensorflow/tfjs').Tensor2D;
  const step = () => {
    const { value, grads } = tf.variableGrads(() => categoricalCrossEntropy(tf, y, forward(tf, spec, weights, x, true).probabilities), trainable.map(([, v]) => v));
    optimizer.apply(weights, new Map(Object.entries(grads).map(([name, gradient]) => [keyOf.get(name) as string, gradient])));
    value.dataSync();
    tf.dispose([value, ...Object.values(grads)]);
  };
  step();
  let start = performance.now();
  for (let i = 0; i < steps; i++) step();
  const trainSeconds = (performance.now() - start) / 1000;
  const xi = tf.randomNormal([inferBatch, 50, 50, 20, 2]) as import('@tensorflow/tfjs').Tensor5D;
  const infer = () => tf.tidy(() => forward(tf, spec, weights, xi, false).probabilities.dataSync());
  infer();
  start = performance.now();
  for (let i = 0; i < steps; i++) infer();
  const inferSeconds = (performance.now() - start) / 1000;
  return {
    backend,
    depth,
    trainBatch,
    trainCubesPerSecond: (steps * trainBatch) / trainSeconds,
    inferBatch,
    inferCubesPerSecond: (steps * inferBatch) / inferSeconds,
    forwardGflopPerCube: forwardFlopsPerCube(spec) / 1e9,
  };
}

export interface PipelineBenchResult {
  backend: string;
  depth: number;
  batch: number;
  /** Median time from one trained batch to the next, after the first (warm-up) batch. */
  secondsPerBatch: number;
}

/**
 * `cubes` real cubes on disk: cellfinder's labelled test cubes (2 cells, 2
 * non-cells, both channels), each copied under new positions until there are
 * enough, with the channel statistics in the training.yaml.
 */
async function pipelineDataset(folder: string, cubes: number): Promise<string> {
  await fs.rm(folder, { recursive: true, force: true });
  for (const type of ['cells', 'non_cells']) {
    const from = path.join(SAMPLE, 'training', type);
    const originals = (await fs.readdir(from)).filter((name) => name.endsWith('Ch0.tif'));
    await fs.mkdir(path.join(folder, type), { recursive: true });
    for (let copy = 0; copy < cubes / 2; copy++) {
      const original = originals[copy % originals.length];
      for (const channel of [0, 1]) {
        await fs.copyFile(path.join(from, original.replace('Ch0.tif', `Ch${channel}.tif`)), path.join(folder, type, cubeFileName({ x: copy, y: 0, z: 0 }, channel)));
      }
    }
  }
  const entry = (dir: string, type: string) => `- bg_channel: 1\n  cell_def: ''\n  cube_dir: ${dir}\n  signal_channel: 0\n  type: ${type}\n  signal_mean: 241.31\n  signal_std: 154.92\n  bg_mean: 650.94\n  bg_std: 217.9\n`;
  const yaml = path.join(folder, 'training.yaml');
  await fs.writeFile(yaml, `data:\n${entry('cells', 'cell')}${entry('non_cells', 'no_cell')}`);
  return yaml;
}

/** One epoch of `batches` batches through the trainer, with cellfinder's default augmentation and channel normalisation. */
export async function benchPipeline(depth: NetworkDepth, batch: number, batches: number, folder: string): Promise<PipelineBenchResult> {
  const { tf, backend } = await loadTensorFlow();
  const yaml = await pipelineDataset(path.join(folder, 'dataset'), batch * batches);
  const trained: number[] = [];
  const config = { ...TRAIN_DEFAULTS, yamlFiles: [yaml], outputDir: path.join(folder, 'run'), networkDepth: depth, epochs: 1, batchSize: batch, testFraction: 0, seed: 1, normalizeChannels: true, saveCheckpoints: false };
  await train(tf, backend, config, (event) => event.type === 'batch' && trained.push(performance.now()), { cancelRequested: () => false });
  await fs.rm(folder, { recursive: true, force: true });
  const intervals = trained.slice(1).map((time, i) => time - trained[i]).sort((a, b) => a - b);
  return { backend, depth, batch, secondsPerBatch: intervals[Math.floor(intervals.length / 2)] / 1000 };
}

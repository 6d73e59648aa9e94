/**
 * The whole training pipeline as a run goes through it, for `npm run bench`:
 * the trainer itself, reading real cube files from disk, normalising,
 * augmenting and packing them while it trains, so that the data's cost on
 * the critical path shows next to the step-only figure
 * (src/training/modelSpeed.ts).
 */
import { promises as fs } from 'node:fs';
import * as path from 'node:path';
import { cubeFileName } from '../src/core/cube';
import { loadTensorFlow } from '../src/engine/backend';
import type { NetworkDepth } from '../src/training/resnet';
import { CELLFINDER_AUGMENTATION } from '../src/training/augment';
import { seededRandom } from '../src/core/random';
import { TRAIN_DEFAULTS } from '../src/training/trainConfig';
import { assembleBatch, inBatches, loadSamples, planBatch } from '../src/training/trainingData';
import { train } from '../src/training/trainer';
import { SAMPLE } from '../test/helpers';

export interface PipelineBenchResult {
  backend: string;
  depth: number;
  batch: number;
  /** Median time from one trained batch to the next, after the first (warm-up) batch. */
  secondsPerBatch: number;
  /** Median time to read, normalise, augment and pack one batch on one thread with nothing else running: the CPU the data takes from the step. */
  assemblySecondsPerBatch: number;
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
  const engine = await loadTensorFlow();
  const { tf, backend } = engine;
  const yaml = await pipelineDataset(path.join(folder, 'dataset'), batch * batches);
  const samples = await loadSamples([yaml]);
  const random = seededRandom(1);
  const assembly: number[] = [];
  // Twice over the epoch, timing the second pass: the first warms the JIT.
  for (const pass of [0, 1]) {
    for (const slice of inBatches(samples, batch)) {
      const plan = planBatch(slice, { channels: 2, normalise: true, augmentation: { options: CELLFINDER_AUGMENTATION, random } });
      const start = performance.now();
      await assembleBatch(plan);
      if (pass === 1) assembly.push(performance.now() - start);
    }
  }
  const trained: number[] = [];
  const config = { ...TRAIN_DEFAULTS, yamlFiles: [yaml], outputDir: path.join(folder, 'run'), networkDepth: depth, epochs: 1, batchSize: batch, testFraction: 0, seed: 1, normalizeChannels: true, saveCheckpoints: false };
  await train(tf, engine, config, (event) => event.type === 'batch' && trained.push(performance.now()), { cancelRequested: () => false });
  await fs.rm(folder, { recursive: true, force: true });
  const intervals = trained.slice(1).map((time, i) => time - trained[i]);
  return { backend, depth, batch, secondsPerBatch: median(intervals) / 1000, assemblySecondsPerBatch: median(assembly) / 1000 };
}

function median(values: number[]): number {
  const sorted = [...values].sort((a, b) => a - b);
  return sorted[Math.floor(sorted.length / 2)];
}

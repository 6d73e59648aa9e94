/**
 * The labelled cubes of one or more training.yaml files, read as
 * cellfinder_train reads them, split into training and validation sets and
 * served as network-ready batches (batch, y, x, z, channels).
 */
import { normaliseChannel } from '../core/channelStatistics';
import { CUBE_SHAPE, readCube, type Point3 } from '../core/cube';
import { exists } from '../core/atomicFile';
import { summarizeTrainingYaml } from '../core/dataset';
import { DataFileError } from '../core/errors';
import { NO_BACKGROUND_CHANNEL } from '../core/trainingYaml';
import { applyAugmentation, drawAugmentation, type AugmentationDraw, type AugmentationOptions } from './augment';
import { shuffleInPlace, type Random } from '../core/random';

export interface Sample {
  /** One file per channel, signal first. */
  files: string[];
  /** 1 = cell, 0 = non-cell: the network's output index (cellfinder's type - 1). */
  label: 0 | 1;
  position: Point3;
  /** Per-channel (mean, std) from the YAML entry, when it has them. */
  normalisation?: Array<[number, number]>;
}

/** Every labelled cube the YAML files list (several YAML files are concatenated, as cellfinder does). */
export async function loadSamples(yamlFiles: string[], workingDirectory?: string): Promise<Sample[]> {
  const samples: Sample[] = [];
  let channels: number | undefined;
  for (const yamlFile of yamlFiles) {
    const summary = await summarizeTrainingYaml(yamlFile, workingDirectory);
    for (const { entry, cubes } of summary.entries) {
      const entryChannels = entry.bgChannel === NO_BACKGROUND_CHANNEL ? 1 : 2;
      if (cubes.length > 0 && channels !== undefined && entryChannels !== channels) {
        throw new DataFileError(yamlFile, `mixes single-channel and two-channel cube folders (${entry.cubeDirPath})`, 'Train on cubes with the same channels only (all with background, or all without)');
      }
      if (cubes.length > 0) channels = entryChannels;
      const stats =
        entry.signalMean !== undefined && entry.signalStd !== undefined
          ? entryChannels === 1
            ? [[entry.signalMean, entry.signalStd]]
            : entry.bgMean !== undefined && entry.bgStd !== undefined
              ? [
                  [entry.signalMean, entry.signalStd],
                  [entry.bgMean, entry.bgStd],
                ]
              : undefined
          : undefined;
      for (const cube of cubes) {
        samples.push({ files: cube.files, label: entry.type === 'cell' ? 1 : 0, position: cube.position, normalisation: stats as Sample['normalisation'] });
      }
    }
  }
  if (samples.length === 0) throw new DataFileError(yamlFiles.join(', '), 'lists no cubes', 'Check cube_dir and that the folders hold pCell...Ch0.tif files');
  // A missing channel file found now, not when its batch comes (minutes into the run).
  const missing = (await Promise.all(samples.flatMap((sample) => sample.files.map(async (file) => ((await exists(file)) ? undefined : file))))).filter((file) => file !== undefined);
  if (missing.length > 0) {
    throw new DataFileError(
      missing[0],
      `is missing: its cube has no file for this channel${missing.length > 1 ? ` (and ${missing.length - 1} more channel file(s) are missing)` : ''}`,
      'Re-extract those cubes with all their channels (extracting again completes them), or see the list with: cellfinder-retrain dataset validate',
    );
  }
  return samples;
}

export interface SplitOptions {
  /** Fraction held out for validation (cellfinder's --test-fraction, default 0.1); 0 = none. */
  testFraction: number;
  /** Keep the cell / non-cell ratio equal in both parts. */
  stratified: boolean;
  random: Random;
}

/**
 * Shuffled split like scikit-learn's train_test_split (which cellfinder
 * uses): ceil(fraction * n) samples go to validation.
 */
export function splitSamples(samples: readonly Sample[], options: SplitOptions): { training: Sample[]; validation: Sample[] } {
  if (options.testFraction <= 0) return { training: shuffleInPlace([...samples], options.random), validation: [] };
  if (options.testFraction >= 1) throw new Error('--test-fraction must be below 1');
  if (!options.stratified) {
    const shuffled = shuffleInPlace([...samples], options.random);
    const testCount = Math.ceil(options.testFraction * samples.length);
    return { validation: shuffled.slice(0, testCount), training: shuffled.slice(testCount) };
  }
  const training: Sample[] = [];
  const validation: Sample[] = [];
  for (const label of [0, 1] as const) {
    const group = shuffleInPlace(samples.filter((s) => s.label === label), options.random);
    const testCount = Math.ceil(options.testFraction * group.length);
    validation.push(...group.slice(0, testCount));
    training.push(...group.slice(testCount));
  }
  return { training: shuffleInPlace(training, options.random), validation: shuffleInPlace(validation, options.random) };
}

/**
 * One epoch's order of training samples: reshuffled each epoch; with
 * `balanced`, the rarer class is drawn again (with replacement) until both
 * classes appear equally often.
 */
export function epochOrder(samples: readonly Sample[], balanced: boolean, random: Random): Sample[] {
  if (!balanced) return shuffleInPlace([...samples], random);
  const groups = [samples.filter((s) => s.label === 0), samples.filter((s) => s.label === 1)];
  const target = Math.max(groups[0].length, groups[1].length);
  const order: Sample[] = [];
  for (const group of groups) {
    if (group.length === 0) continue;
    order.push(...group);
    for (let i = group.length; i < target; i++) order.push(group[Math.floor(random.next() * group.length)]);
  }
  return shuffleInPlace(order, random);
}

/** Consecutive batches of at most `size` samples, in order. */
export function inBatches(samples: readonly Sample[], size: number): Sample[][] {
  return Array.from({ length: Math.ceil(samples.length / size) }, (_, b) => samples.slice(b * size, (b + 1) * size));
}

/** A batch's arrays own their buffers, so that they can be moved between threads instead of copied. */
export interface Batch {
  /** (batch, y, x, z, channels), float32. */
  inputs: Float32Array<ArrayBuffer>;
  size: number;
  channels: number;
  /** One-hot labels (batch, 2). */
  labels: Float32Array<ArrayBuffer>;
}

export interface BatchOptions {
  channels: number;
  normalise: boolean;
  augmentation?: { options: AugmentationOptions; random: Random };
}

/**
 * What one batch is made of: its cubes and, when augmenting, each cube's
 * draw. Drawn on the thread that owns the run's random source, so that a
 * seeded run is the same wherever the batch is then assembled.
 */
export interface BatchPlan {
  samples: Sample[];
  channels: number;
  normalise: boolean;
  /** One per sample, in order; absent without augmentation. */
  draws?: AugmentationDraw[];
}

const NETWORK_CUBE: [number, number, number] = [CUBE_SHAPE.height, CUBE_SHAPE.width, CUBE_SHAPE.depth];
const VOXELS = CUBE_SHAPE.depth * CUBE_SHAPE.height * CUBE_SHAPE.width;

/** Cube file order (z, y, x) to the network's (y, x, z). */
export function toNetworkOrder(cube: Float32Array): Float32Array {
  const { depth, height, width } = CUBE_SHAPE;
  const out = new Float32Array(VOXELS);
  for (let z = 0; z < depth; z++) {
    for (let y = 0; y < height; y++) {
      const from = (z * height + y) * width;
      for (let x = 0; x < width; x++) out[(y * width + x) * depth + z] = cube[from + x];
    }
  }
  return out;
}

/** Puts one channel of one cube (network order) into a (batch, y, x, z, channels) input. */
export function packChannel(inputs: Float32Array, cubeIndex: number, channel: number, channels: number, data: Float32Array): void {
  const base = cubeIndex * VOXELS * channels;
  for (let i = 0; i < VOXELS; i++) inputs[base + i * channels + channel] = data[i];
}

/** Draws the augmentation of each sample, in order: one draw per cube, as cellfinder draws per cube. */
export function planBatch(samples: readonly Sample[], options: BatchOptions): BatchPlan {
  const { augmentation } = options;
  return {
    samples: [...samples],
    channels: options.channels,
    normalise: options.normalise,
    draws: augmentation ? samples.map(() => drawAugmentation(augmentation.options, augmentation.random)) : undefined,
  };
}

/** Reads, normalises, augments and packs a planned batch. */
export async function assembleBatch(plan: BatchPlan): Promise<Batch> {
  const { samples, channels } = plan;
  const inputs = new Float32Array(samples.length * VOXELS * channels);
  const labels = new Float32Array(samples.length * 2);
  const cubes = await Promise.all(samples.map((sample) => Promise.all(sample.files.slice(0, channels).map((file) => readCube(file)))));
  samples.forEach((sample, index) => {
    if (plan.normalise && !sample.normalisation) {
      throw new DataFileError(sample.files[0], 'has no signal_mean/std (and bg_mean/std) in its training.yaml entry', 'Add the channel statistics to the YAML or train without --normalize-channels');
    }
    const draw = plan.draws?.[index];
    labels[index * 2 + sample.label] = 1;
    const normalised = cubes[index].map((cube, channel) => {
      const data = toNetworkOrder(cube.data);
      if (plan.normalise && sample.normalisation) {
        const [mean, std] = sample.normalisation[channel];
        normaliseChannel(data, mean, std);
      }
      return data;
    });
    const augmented = draw ? applyAugmentation(normalised, NETWORK_CUBE, draw) : normalised;
    augmented.forEach((data, channel) => packChannel(inputs, index, channel, channels, data));
  });
  return { inputs, size: samples.length, channels, labels };
}

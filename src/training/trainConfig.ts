/**
 * What a training run needs, with cellfinder_train's option names, meanings
 * and defaults (`core/train/train_yaml.py`), plus our optional improvements.
 */
import { promises as fs } from 'node:fs';
import * as path from 'node:path';
import type { AffineMode } from './augment';
import type { NetworkDepth } from './resnet';

export interface TrainConfig {
  /** -y/--yaml: one or more training.yaml files. */
  yamlFiles: string[];
  /** -o/--output-dir */
  outputDir: string;
  /** --network-depth (default 50) */
  networkDepth: NetworkDepth;
  /** --batch-size (default 16) */
  batchSize: number;
  /** --epochs (default 100) */
  epochs: number;
  /** --learning-rate (default 0.0001) */
  learningRate: number;
  /** --test-fraction (default 0.1); 0 = no validation. */
  testFraction: number;
  /** --trained-model: a .keras model to start from. */
  trainedModel?: string;
  /** --model-weights: weights (.h5, .weights.h5) to start from. */
  modelWeights?: string;
  /** --continue-training: start from the given model or weights. */
  continueTraining: boolean;
  /** Ours, --fresh-optimizer: start from the model file's weights with a fresh Adam at `learningRate`, instead of the file's optimiser state. */
  freshOptimizer: boolean;
  /** --no-augment inverts this (default true). */
  augment: boolean;
  /** --augment-likelihood (default 0.9) */
  augmentLikelihood: number;
  /** How the affine augmentation draws rotation and shift (see augment.ts). */
  affineMode: AffineMode;
  /** --no-save-checkpoints inverts this (default true). */
  saveCheckpoints: boolean;
  /**
   * Ours: keep only this many of the run's checkpoints, those with the lowest
   * validation loss (the latest without validation); a checkpoint that would
   * not be kept is not written. Undefined keeps every epoch's, as cellfinder
   * does (a ResNet-50 .keras with its optimiser state is about 550 MB).
   */
  keepCheckpoints?: number;
  /** --save-weights: save .weights.h5 instead of .keras. */
  saveWeights: boolean;
  /** --save-progress: write training.csv. */
  saveProgress: boolean;
  /** --lr-schedule: 0-based epochs at which the learning rate is multiplied. */
  lrSchedule: number[];
  /** --lr-multiplier (default 0.1) */
  lrMultiplier: number;
  /**
   * --normalize-channels: (x - mean) / std per channel with the YAML's
   * statistics. A model trained so must classify with --normalize-channels
   * too (its run's TRAIN_CONFIG_FILE says so).
   */
  normalizeChannels: boolean;
  /** Ours: makes the split, the epoch order and the augmentation reproducible. */
  seed?: number;
  /** Ours: keep the class ratio the same in training and validation. */
  stratifiedSplit: boolean;
  /** Ours: draw both classes equally often per epoch. */
  balancedSampling: boolean;
  /** Ours: where relative cube_dir paths may also be found (cellfinder's working directory). */
  workingDirectory?: string;
}

export const TRAIN_DEFAULTS: Omit<TrainConfig, 'yamlFiles' | 'outputDir'> = {
  networkDepth: 50,
  batchSize: 16,
  epochs: 100,
  learningRate: 0.0001,
  testFraction: 0.1,
  continueTraining: false,
  freshOptimizer: false,
  augment: true,
  augmentLikelihood: 0.9,
  affineMode: 'random-range',
  saveCheckpoints: true,
  saveWeights: false,
  saveProgress: false,
  lrSchedule: [],
  lrMultiplier: 0.1,
  normalizeChannels: false,
  stratifiedSplit: false,
  balancedSampling: false,
};

/** cellfinder's schedule: at each listed (0-based) epoch, multiply the current rate. */
export function learningRateForEpoch(config: Pick<TrainConfig, 'learningRate' | 'lrSchedule' | 'lrMultiplier'>, epoch: number): number {
  return config.lrSchedule.filter((at) => at <= epoch).reduce((rate) => rate * config.lrMultiplier, config.learningRate);
}

/**
 * The run's settings, written into its output folder as it starts (by the
 * editor and by the CLI's train), so that what a model was trained with is
 * known when it is used: cellfinder's model files do not record it.
 */
export const TRAIN_CONFIG_FILE = 'training-config.json';

/**
 * The settings of the run that wrote `modelFile` (its model or a checkpoint,
 * in the run's folder), or undefined when that folder has none: a model from
 * cellfinder or elsewhere, or a CLI run from before the file was written.
 */
export async function runConfigOf(modelFile: string): Promise<Partial<TrainConfig> | undefined> {
  const text = await fs.readFile(path.join(path.dirname(modelFile), TRAIN_CONFIG_FILE), 'utf8').catch(() => undefined);
  if (text === undefined) return undefined;
  try {
    return JSON.parse(text) as Partial<TrainConfig>;
  } catch {
    return undefined;
  }
}

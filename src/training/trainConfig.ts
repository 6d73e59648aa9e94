/**
 * What a training run needs, with cellfinder_train's option names, meanings
 * and defaults (`core/train/train_yaml.py`), plus our optional improvements.
 */
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
  /** --normalize-channels: (x - mean) / std per channel with the YAML's statistics. */
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

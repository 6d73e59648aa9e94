/**
 * The newline-delimited JSON events a training or classification worker
 * writes to stdout, one object per line. Defined once here; the CLI, the
 * extension host and the training panel all read this type.
 */
import { shortestFloat32 } from '../core/pythonFloat';
import type { GpuUse } from '../engine/backend';
import type { EpochMetrics } from './trainer';

export type TrainingEvent =
  /** First line of every worker process: which process to watch (and signal to cancel). */
  | { type: 'launched'; pid: number; mode: 'train' | 'resume'; time: number }
  | {
      type: 'started';
      backend: string;
      /** Whether the GPU is used, and exactly why not; present when the GPU was asked for or a GPU engine is set up. */
      gpu?: GpuUse;
      model: { depth: number; channels: number; layers: number; parameters: number };
      samples: { training: number; validation: number; cells: number; nonCells: number };
      epochs: number;
      resumedAtEpoch?: number;
      /** The optimiser's step count a resumed run goes on from (its own state, from the output folder's .resume/). */
      resumedAtIteration?: number;
      /** The model file, optimiser state and learning rate the run started from, also when resumed (absent in runs logged before it was recorded). */
      start?: RunStart;
      /** The split file and each part's cubes per class. */
      split?: { file: string; training: ClassCounts; validation: ClassCounts };
      /** What the run goes ahead with but the user should know (one class only, ...). */
      warnings?: string[];
    }
  | { type: 'batch'; epoch: number; batch: number; batches: number; loss: number; accuracy: number }
  | ({ type: 'epoch'; epochs: number } & EpochMetrics)
  | { type: 'checkpoint'; file: string; epoch: number }
  /** With keepCheckpoints: the run's checkpoints after this epoch, and those it deleted (this epoch's is among neither when it was not written). */
  | { type: 'checkpoints-kept'; epoch: number; kept: string[]; removed: string[] }
  | { type: 'cancelled'; epoch: number; batch: number; resumeFrom: string }
  /** `card`: the model card written beside the model; `cardProblem`: why none could be (the model is saved either way). */
  | { type: 'finished'; modelFile: string; history: EpochMetrics[]; card?: string; cardProblem?: string }
  /** `suggestedBatchSize`: after running out of memory, a batch size that fits. */
  | { type: 'error'; message: string; file?: string; fix?: string; suggestedBatchSize?: number };

export interface ClassCounts {
  cells: number;
  nonCells: number;
}

/** Where a run's weights, optimiser state and learning rate come from: the first thing to audit. */
export interface RunStart {
  /** The model file the weights come from; undefined for cellfinder's random initialisation. */
  modelFile?: string;
  optimizer: { state: 'fresh' } | { state: 'restored'; from: string; iterations: number };
  learningRate: number;
  /** Where the learning rate comes from: --learning-rate, or the model file's optimiser (cellfinder's behaviour). */
  learningRateFrom: 'option' | 'model file';
}

/** One line for the CLI and the training panel. */
export function describeRunStart(start: RunStart): string {
  const weights = start.modelFile ? `weights of ${start.modelFile}` : 'new weights (cellfinder\'s initialisation)';
  const optimizer = start.optimizer.state === 'fresh' ? 'a fresh Adam' : `Adam restored from ${start.optimizer.from} at iteration ${start.optimizer.iterations}`;
  const rate = `learning rate ${shortestFloat32(start.learningRate)} (${start.learningRateFrom === 'option' ? '--learning-rate' : 'from the model file\'s optimiser'})`;
  return `Starts from ${weights}, ${optimizer}, ${rate}`;
}

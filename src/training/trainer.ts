/**
 * The training loop, as cellfinder_train runs it (Keras `fit`): Adam,
 * categorical cross-entropy, accuracy; training batches reshuffled every
 * epoch and augmented; validation neither shuffled nor augmented; a
 * checkpoint and a CSV row per epoch. Progress is reported as events.
 *
 * Continuing from a model file restores its Adam state (iterations, the
 * moments and the learning rate) as cellfinder does: `--trained-model` loads
 * the .keras with `keras.models.load_model`, and `--model-weights` builds the
 * optimiser before `load_weights` (cellfinder's `_set_model_weights`), so in
 * both the file's learning rate wins over `--learning-rate`. A file without
 * complete optimiser state (legacy .h5, a file saved before any step)
 * starts a fresh Adam, as Keras then does (a .keras at the learning rate it
 * was compiled with). `--fresh-optimizer` (ours)
 * starts a fresh Adam at `--learning-rate` from the file's weights.
 *
 * The split into training and validation cubes is written to the run folder
 * (SPLIT_FILE), so a run can be audited and repeated.
 *
 * It is resumable: after every epoch (and when cancelled, after the current
 * batch) the weights, the optimiser state and where the run stands are
 * written to `<output>/.resume/`, so a cancelled or killed run continues
 * with the same optimiser state and epoch count.
 *
 * When a training step runs out of memory (a GPU's, typically), smaller
 * batches are tried on the same cubes (gradients only, the weights are not
 * changed) and the run stops with an OutOfMemoryError naming the largest
 * batch size that fitted.
 */
import { promises as fs } from 'node:fs';
import { homedir } from 'node:os';
import * as path from 'node:path';
import type * as tfType from '@tensorflow/tfjs';
import { exists, removeStaleTempFiles, writeFileAtomic } from '../core/atomicFile';
import { DataFileError } from '../core/errors';
import { pythonFloatRepr, shortestFloat32 } from '../core/pythonFloat';
import { EVENTS_FILE, SPLIT_FILE } from '../core/runFiles';
import { readRunFacts, writeModelCard } from '../sharing/modelCard';
import { categoricalAccuracy, categoricalCrossEntropy, KerasAdam } from './adam';
import { CELLFINDER_AUGMENTATION } from './augment';
import type { TensorFlowRuntime } from '../engine/backend';
import { ownKernelsNote } from '../engine/nativeKernels';
import { BatchThread } from './batchThread';
import { readModelFile, removeStaleModelTempFiles, writeKerasModel, writeKerasWeights, type LoadedModel } from './modelFiles';
import { randomFor, seededRandom } from '../core/random';
import { BATCH_NORM_MOMENTUM, forward, initialWeights, parameterCount, resnetSpec, weightKey, type BatchNormStatistics, type ResNetSpec, type Weights } from './resnet';
import { outOfMemoryError, readOutOfMemory, smallerBatchSizes } from './outOfMemory';
import { learningRateForEpoch, type TrainConfig } from './trainConfig';
import { epochOrder, inBatches, loadSamples, planBatch, splitSamples, type Batch, type Sample } from './trainingData';
import type { ClassCounts, RunStart, TrainingEvent } from './events';

export const RESUME_FOLDER = '.resume';

interface ResumeState {
  config: TrainConfig;
  /** 0-based epoch the run is in (or starts next). */
  epoch: number;
  /** Batches of that epoch already trained (0 = start of the epoch). */
  batchesDone: number;
  /** The epoch's training order, as indices into `trainingIndices`, when stopped mid-epoch. */
  epochOrder?: number[];
  /** Running sums of the interrupted epoch's metrics. */
  partial?: { lossSum: number; accuracySum: number; samples: number };
  trainingIndices: number[];
  validationIndices: number[];
  history: EpochMetrics[];
  /** What the run started from, said again when it resumes. */
  start?: RunStart;
}

export interface EpochMetrics {
  epoch: number;
  loss: number;
  accuracy: number;
  valLoss?: number;
  valAccuracy?: number;
  learningRate: number;
  seconds: number;
}

export interface TrainControl {
  /** Checked between batches: true stops the run there, leaving a resumable checkpoint. */
  cancelRequested(): boolean;
}

export interface TrainResult {
  status: 'finished' | 'cancelled';
  modelFile?: string;
  history: EpochMetrics[];
}

export async function train(
  tf: typeof tfType,
  engine: Pick<TensorFlowRuntime, 'backend' | 'gpu'>,
  config: TrainConfig,
  emit: (event: TrainingEvent) => void,
  control: TrainControl,
  resume = false,
): Promise<TrainResult> {
  const output = path.resolve(config.outputDir);
  await fs.mkdir(path.join(output, RESUME_FOLDER), { recursive: true }).catch((error: Error) => {
    throw new DataFileError(output, `cannot create the output folder (${error.message})`, 'Choose an output folder you can write to');
  });
  const resumeFile = path.join(output, RESUME_FOLDER, 'state.json');
  const resumeModel = path.join(output, RESUME_FOLDER, 'state.keras');
  // A run killed while writing a checkpoint left a partial archive (hundreds of MB) here and in the temporary folder.
  await removeStaleTempFiles(output);
  await removeStaleTempFiles(path.join(output, RESUME_FOLDER));
  await removeStaleModelTempFiles();

  let state: ResumeState;
  let loaded: LoadedModel | undefined;
  if (resume) {
    state = await readResumeState(resumeFile);
    config = state.config;
    loaded = await readModelFile(resumeModel, { depth: config.networkDepth });
  } else {
    state = { config, epoch: 0, batchesDone: 0, trainingIndices: [], validationIndices: [], history: [] };
  }

  const requestedLearningRate = config.learningRate;
  const startFrom = config.trainedModel ?? config.modelWeights ?? (config.continueTraining ? await pretrainedWeights() : undefined);
  const samples = await loadSamples(config.yamlFiles, config.workingDirectory);
  const channels = samples[0].files.length;
  if (!resume) {
    const split = splitSamples(samples, { testFraction: config.testFraction, stratified: config.stratifiedSplit, random: randomFor(config.seed) });
    const indexOf = new Map(samples.map((sample, index) => [sample, index]));
    state.trainingIndices = split.training.map((s) => indexOf.get(s) as number);
    state.validationIndices = split.validation.map((s) => indexOf.get(s) as number);
  }
  const training = state.trainingIndices.map((i) => samples[i]);
  const validation = state.validationIndices.map((i) => samples[i]);
  if (training.length === 0) throw new DataFileError(config.yamlFiles.join(', '), 'leaves no cubes for training after the validation split', 'Label more cubes or lower --test-fraction');
  const splitFile = path.join(output, SPLIT_FILE);
  // Written once per run, before any training: a resumed run keeps the split it started with.
  if (!resume || !(await exists(splitFile))) await writeFileAtomic(splitFile, splitCsv(training, validation), { overwrite: true });

  const spec = resnetSpec(config.networkDepth, channels);
  const weights = initialWeights(tf, spec, config.seed ?? Math.floor(Math.random() * 2 ** 31));
  const trainable = trainableEntries(spec, weights);
  let optimizer: KerasAdam;
  if (loaded) {
    optimizer = new KerasAdam(tf, learningRateForEpoch(config, state.epoch));
    optimizer.build(trainable);
    assignLoaded(tf, spec, weights, optimizer, loaded);
  } else {
    const start = startFrom ? await readModelFile(startFrom, { depth: config.networkDepth, channels }) : undefined;
    const saved = start && !config.freshOptimizer ? savedOptimizer(start) : undefined;
    // The saved learning rate becomes the run's base rate, so the schedule and a resume build on it as cellfinder's callbacks do.
    if (saved) config = { ...config, learningRate: saved.learningRate };
    state.config = config;
    state.start = {
      modelFile: start?.file,
      optimizer: start && saved?.iterations !== undefined ? { state: 'restored', from: start.file, iterations: saved.iterations } : { state: 'fresh' },
      learningRate: config.learningRate,
      learningRateFrom: saved ? 'model file' : 'option',
    };
    optimizer = new KerasAdam(tf, learningRateForEpoch(config, state.epoch));
    optimizer.build(trainable);
    if (start) assignLoaded(tf, spec, weights, saved?.iterations !== undefined ? optimizer : undefined, start);
  }

  const allCubes = classCounts(samples);
  const started: Extract<TrainingEvent, { type: 'started' }> = {
    type: 'started',
    backend: engine.backend,
    gpu: engine.gpu,
    model: { depth: config.networkDepth, channels, layers: spec.layers.length, parameters: parameterCount(spec) },
    samples: { training: training.length, validation: validation.length, ...allCubes },
    epochs: config.epochs,
    resumedAtEpoch: resume ? state.epoch : undefined,
    resumedAtIteration: resume ? optimizer.iterations : undefined,
    start: state.start,
    split: { file: splitFile, training: classCounts(training), validation: classCounts(validation) },
    warnings: trainingWarnings(allCubes, state.start, requestedLearningRate, ownKernelsNote(tf)),
  };
  emit(started);

  const random = config.seed === undefined ? randomFor(undefined) : seededRandom(config.seed + 1000003 * (state.epoch + 1) + state.batchesDone);
  const augmentation = config.augment ? { options: { ...CELLFINDER_AUGMENTATION, likelihood: config.augmentLikelihood, affine: config.affineMode }, random } : undefined;
  const csvFile = path.join(output, 'training.csv');

  // Batches are assembled on their own thread, so that it overlaps the train step (which blocks this one).
  const batchThread = new BatchThread();
  try {
    for (let epoch = state.epoch; epoch < config.epochs; epoch++) {
      const started = Date.now();
      optimizer.learningRate = learningRateForEpoch(config, epoch);
      const resuming = epoch === state.epoch && state.batchesDone > 0 && state.epochOrder;
      const order = resuming ? (state.epochOrder as number[]).map((i) => training[i]) : epochOrder(training, config.balancedSampling, random);
      const trainingIndex = new Map(training.map((s, i) => [s, i]));
      const batches = Math.ceil(order.length / config.batchSize);
      let { lossSum, accuracySum, samples: seen } = resuming && state.partial ? state.partial : { lossSum: 0, accuracySum: 0, samples: 0 };
      let b = resuming ? state.batchesDone : 0;
      // Nothing else draws from `random` during an epoch: planning its batches up front draws what planning each in turn would.
      const plans = inBatches(order, config.batchSize).slice(b).map((slice) => planBatch(slice, { channels, normalise: config.normalizeChannels, augmentation }));
      for await (const batch of batchThread.inOrder(plans)) {
        await eventsSinceLastStep();
        if (control.cancelRequested()) {
          await saveResume(spec, weights, optimizer, resumeModel, resumeFile, {
            ...state,
            epoch,
            batchesDone: b,
            epochOrder: order.map((s) => trainingIndex.get(s) as number),
            partial: { lossSum, accuracySum, samples: seen },
          });
          emit({ type: 'cancelled', epoch, batch: b, resumeFrom: output });
          return { status: 'cancelled', history: state.history };
        }
        let step: { loss: number; accuracy: number };
        try {
          step = trainStep(tf, spec, weights, trainable, optimizer, batch);
        } catch (error) {
          const oom = readOutOfMemory(error);
          if (!oom) throw error;
          throw outOfMemoryError(oom, { batchSize: config.batchSize, networkDepth: config.networkDepth, fits: largestFittingBatch(tf, spec, weights, trainable, batch) });
        }
        const { loss, accuracy } = step;
        if (!Number.isFinite(loss)) {
          // The weights are now NaN too: stop before anything is saved from them.
          throw new DataFileError(
            output,
            `training stopped: the loss became ${loss} at epoch ${epoch + 1}, batch ${b + 1} (the network diverged); nothing was saved from this batch on`,
            `Check the cubes (cellfinder-retrain dataset validate) and lower the learning rate (now ${optimizer.learningRate}); resume from the last epoch with --resume ${output}`,
          );
        }
        lossSum += loss * batch.size;
        accuracySum += accuracy * batch.size;
        seen += batch.size;
        b++;
        emit({ type: 'batch', epoch, batch: b, batches, loss: lossSum / seen, accuracy: accuracySum / seen });
      }
      const metrics: EpochMetrics = { epoch, loss: lossSum / seen, accuracy: accuracySum / seen, learningRate: optimizer.learningRate, seconds: 0 };
      if (validation.length > 0) Object.assign(metrics, await evaluateSamples(tf, spec, weights, batchThread, validation, config.batchSize, channels, config.normalizeChannels));
      metrics.seconds = (Date.now() - started) / 1000;
      state.history.push(metrics);
      emit({ type: 'epoch', ...metrics, epochs: config.epochs });

      if (config.saveCheckpoints) {
        const kept = config.keepCheckpoints === undefined ? undefined : checkpointsToKeep(state.history, config.keepCheckpoints);
        const fileOf = (m: EpochMetrics) => path.join(output, checkpointName(m.epoch, m.valLoss, config.saveWeights));
        if (!kept || kept.has(epoch)) {
          const file = fileOf(metrics);
          if (config.saveWeights) await writeKerasWeights(file, spec, weights, optimizer);
          else await writeKerasModel(file, spec, weights, optimizer);
          emit({ type: 'checkpoint', file, epoch });
        }
        if (kept) {
          // Only files named as this run wrote them (its history), so nothing else in the folder is touched.
          const removed: string[] = [];
          for (const earlier of state.history.filter((m) => m.epoch !== epoch && !kept.has(m.epoch))) {
            const file = fileOf(earlier);
            if (await exists(file)) {
              await fs.rm(file);
              removed.push(file);
            }
          }
          emit({ type: 'checkpoints-kept', epoch, kept: state.history.filter((m) => kept.has(m.epoch)).map(fileOf), removed });
        }
      }
      if (config.saveProgress) await writeCsv(csvFile, state.history, validation.length > 0);
      await saveResume(spec, weights, optimizer, resumeModel, resumeFile, { ...state, epoch: epoch + 1, batchesDone: 0, epochOrder: undefined, partial: undefined });
    }
  } finally {
    await batchThread.close();
  }

  const modelFile = path.join(output, config.saveWeights ? 'model.weights.h5' : 'model.keras');
  if (config.saveWeights) await writeKerasWeights(modelFile, spec, weights, optimizer, { overwrite: true });
  else await writeKerasModel(modelFile, spec, weights, optimizer, { overwrite: true });
  await fs.rm(path.join(output, RESUME_FOLDER), { recursive: true, force: true });
  const card = await writeRunModelCard(modelFile, output, config, started, state.history);
  emit({ type: 'finished', modelFile, history: state.history, ...card });
  return { status: 'finished', modelFile, history: state.history };
}

/**
 * The model's card beside it (sharing/modelCard.ts), from what this process
 * knows (the settings it trained with, every epoch) and what the run's event
 * log adds (the engines of earlier starts of a resumed run). The trainer has
 * just replaced the model file, so an earlier card there, which described the
 * replaced model, is replaced too. The model is saved whatever happens here:
 * a card that cannot be written is reported, not a failed run.
 */
async function writeRunModelCard(modelFile: string, output: string, config: TrainConfig, started: Extract<TrainingEvent, { type: 'started' }>, history: EpochMetrics[]): Promise<{ card?: string; cardProblem?: string }> {
  try {
    const recorded = (await exists(path.join(output, EVENTS_FILE))) ? await readRunFacts(output, modelFile) : undefined;
    const backends = [...new Set([...(recorded?.backends ?? []), started.backend])];
    const run = { folder: output, config, started: recorded?.started ?? started, history, backends };
    return { card: (await writeModelCard(modelFile, { run, replace: 'always' })).card };
  } catch (error) {
    return { cardProblem: (error as Error).message };
  }
}

/**
 * Where cellfinder keeps its pre-trained network after downloading it, which
 * `--continue-training` starts from when no model is named. Training never
 * downloads (users are often offline; fetching is the explicit step `model
 * fetch`): a missing file is an error that says how to get it.
 */
export function pretrainedWeightsPath(home: string = homedir()): string {
  return path.join(home, '.brainglobe', 'cellfinder', 'models', 'resnet50_tv.h5');
}

async function pretrainedWeights(): Promise<string> {
  const file = pretrainedWeightsPath();
  if (!(await exists(file))) {
    throw new DataFileError(
      file,
      'is not there: --continue-training without --trained-model or --model-weights starts from cellfinder\'s pre-trained ResNet-50',
      'Fetch it with cellfinder-retrain model fetch (offline: model fetch --from a copy of resnet50_tv.h5), or name a model with --model-weights',
    );
  }
  return file;
}

/**
 * The epochs whose checkpoints to keep: the `keep` lowest validation losses
 * (the later epoch on a tie, being trained longer), or without validation
 * the `keep` latest.
 */
export function checkpointsToKeep(history: readonly EpochMetrics[], keep: number): Set<number> {
  const ranked = [...history].sort((a, b) => (a.valLoss !== undefined && b.valLoss !== undefined && a.valLoss !== b.valLoss ? a.valLoss - b.valLoss : b.epoch - a.epoch));
  return new Set(ranked.slice(0, keep).map((m) => m.epoch));
}

/** cellfinder's checkpoint names: epoch 1-based, two digits; validation loss to three decimals when there is validation. */
export function checkpointName(epoch: number, valLoss: number | undefined, weightsOnly: boolean): string {
  const stem = `${weightsOnly ? 'weight' : 'model'}-epoch.${String(epoch + 1).padStart(2, '0')}${valLoss === undefined ? '' : `-loss-${valLoss.toFixed(3)}`}`;
  return weightsOnly ? `${stem}.weights.h5` : `${stem}.keras`;
}

function trainableEntries(spec: ResNetSpec, weights: Weights): Array<[string, tfType.Variable]> {
  return spec.layers.flatMap((layer) => layer.weights.filter((w) => w.trainable).map((w) => [weightKey(layer.name, w.name), weights.get(weightKey(layer.name, w.name)) as tfType.Variable] as [string, tfType.Variable]));
}

/** The loss, accuracy, batch-norm statistics and gradients of one batch; the caller disposes them. */
function gradientsOf(tf: typeof tfType, spec: ResNetSpec, weights: Weights, trainable: Array<[string, tfType.Variable]>, batch: Batch) {
  let statistics: BatchNormStatistics[] = [];
  let accuracy: tfType.Scalar | undefined;
  const x = tf.tensor5d(batch.inputs, [batch.size, 50, 50, 20, batch.channels]);
  const y = tf.tensor2d(batch.labels, [batch.size, 2]);
  try {
    const { value, grads } = tf.variableGrads(() => {
      const result = forward(tf, spec, weights, x, true);
      statistics = result.statistics;
      accuracy = tf.keep(categoricalAccuracy(tf, y, result.probabilities));
      return categoricalCrossEntropy(tf, y, result.probabilities);
    }, trainable.map(([, variable]) => variable));
    return { value, grads, accuracy: accuracy as tfType.Scalar, statistics };
  } catch (error) {
    tf.dispose([...(accuracy ? [accuracy] : []), ...statistics.flatMap((s) => [s.mean, s.variance])]);
    throw error;
  } finally {
    tf.dispose([x, y]);
  }
}

/**
 * After a step at `batch.size` ran out of memory: the largest of half, a
 * quarter, ... of it whose gradients can be computed on the same cubes
 * (the weights stay as they are); 0 when not even one cube fits.
 */
function largestFittingBatch(tf: typeof tfType, spec: ResNetSpec, weights: Weights, trainable: Array<[string, tfType.Variable]>, batch: Batch): number {
  const cube = batch.inputs.length / batch.size;
  for (const size of smallerBatchSizes(batch.size)) {
    try {
      const tried = gradientsOf(tf, spec, weights, trainable, { ...batch, size, inputs: batch.inputs.subarray(0, size * cube), labels: batch.labels.subarray(0, size * 2) });
      tried.value.dataSync();
      tf.dispose([tried.value, tried.accuracy, ...Object.values(tried.grads), ...tried.statistics.flatMap((s) => [s.mean, s.variance])]);
      return size;
    } catch (error) {
      if (!readOutOfMemory(error)) throw error;
    }
  }
  return 0;
}

function trainStep(
  tf: typeof tfType,
  spec: ResNetSpec,
  weights: Weights,
  trainable: Array<[string, tfType.Variable]>,
  optimizer: KerasAdam,
  batch: Batch,
): { loss: number; accuracy: number } {
  const keyOf = new Map(trainable.map(([key, variable]) => [variable.name, key]));
  const { value, grads, accuracy, statistics } = gradientsOf(tf, spec, weights, trainable, batch);
  const gradients = new Map(Object.entries(grads).map(([name, gradient]) => [keyOf.get(name) as string, gradient]));
  optimizer.apply(weights, gradients);
  tf.tidy(() => {
    for (const { layer, mean, variance } of statistics) {
      const movingMean = weights.get(weightKey(layer, 'moving_mean')) as tfType.Variable;
      const movingVariance = weights.get(weightKey(layer, 'moving_variance')) as tfType.Variable;
      movingMean.assign(tf.add(tf.mul(movingMean, BATCH_NORM_MOMENTUM), tf.mul(mean, 1 - BATCH_NORM_MOMENTUM)));
      movingVariance.assign(tf.add(tf.mul(movingVariance, BATCH_NORM_MOMENTUM), tf.mul(variance, 1 - BATCH_NORM_MOMENTUM)));
    }
  });
  const loss = value.dataSync()[0];
  const acc = accuracy.dataSync()[0];
  tf.dispose([value, accuracy, ...Object.values(grads), ...statistics.flatMap((s) => [s.mean, s.variance])]);
  return { loss, accuracy: acc };
}

/** What a run goes ahead with but is likely a mistake. */
function trainingWarnings({ cells, nonCells }: ClassCounts, start: RunStart | undefined, requestedLearningRate: number, engineNote: string | undefined): string[] | undefined {
  const warnings: string[] = engineNote ? [engineNote] : [];
  if (cells === 0 || nonCells === 0) {
    const [has, lacks] = cells === 0 ? ['non-cells', 'cells'] : ['cells', 'non-cells'];
    warnings.push(`the training data holds only ${has} (${cells + nonCells}), no ${lacks}: the network will learn to call everything a ${has === 'cells' ? 'cell' : 'non-cell'}. Add a dataset with ${lacks} (training.yaml type ${lacks === 'cells' ? 'cell' : 'no_cell'})`);
  }
  if (start?.learningRateFrom === 'model file' && start.learningRate !== requestedLearningRate) {
    warnings.push(`the learning rate is ${shortestFloat32(start.learningRate)}, from the optimiser saved in ${start.modelFile}, not --learning-rate ${requestedLearningRate} (as cellfinder does). Add --fresh-optimizer to start a fresh Adam at ${requestedLearningRate}`);
  }
  return warnings.length ? warnings : undefined;
}

/**
 * What of a model file's optimiser Keras carries on: a complete state
 * (iterations, learning rate, both moments of every trainable weight) is
 * restored; from a partial one (saved before any step) Keras keeps only the
 * learning rate a .keras was compiled with, and nothing of a .weights.h5.
 * `iterations` is there when the state is restored.
 */
function savedOptimizer(loaded: LoadedModel): { learningRate: number; iterations?: number } | undefined {
  const optimizer = loaded.optimizer;
  if (!optimizer) return undefined;
  if (optimizer.slots.size > 0) return { learningRate: optimizer.learningRate, iterations: optimizer.iterations };
  return loaded.format === 'keras' ? { learningRate: optimizer.learningRate } : undefined;
}

function classCounts(samples: readonly Sample[]): ClassCounts {
  const cells = samples.filter((s) => s.label === 1).length;
  return { cells, nonCells: samples.length - cells };
}

/** A CSV field, quoted when it holds a comma, a quote or a line break (RFC 4180). */
function csvField(value: string | number): string {
  const text = String(value);
  return /[",\r\n]/.test(text) ? `"${text.replace(/"/g, '""')}"` : text;
}

/**
 * The split file: one row per cube with its part (training or validation),
 * its training.yaml type (cell / no_cell), its position and its channel
 * files (signal first), in the order the run uses them.
 */
export function splitCsv(training: readonly Sample[], validation: readonly Sample[]): string {
  const channels = Math.max(1, ...[...training, ...validation].map((s) => s.files.length));
  const header = ['part', 'type', 'x', 'y', 'z', 'signal_file', ...(channels > 1 ? ['background_file'] : [])];
  const rows = [header.join(',')];
  for (const [part, samples] of [['training', training], ['validation', validation]] as const) {
    for (const sample of samples) {
      rows.push([part, sample.label === 1 ? 'cell' : 'no_cell', sample.position.x, sample.position.y, sample.position.z, ...sample.files].map(csvField).join(','));
    }
  }
  return `${rows.join('\n')}\n`;
}

/**
 * Lets the event loop take in what arrived during the last (synchronous)
 * train step: a Ctrl-C, a SIGTERM, the editor's cancel on stdin. Without it,
 * a batch already assembled resumes the loop through promise jobs alone, and
 * a cancel could wait for the end of the epoch.
 */
function eventsSinceLastStep(): Promise<void> {
  return new Promise((resolve) => setImmediate(resolve));
}

/** Loss and accuracy over samples in inference mode (batch norm uses its moving statistics). */
export async function evaluateSamples(
  tf: typeof tfType,
  spec: ResNetSpec,
  weights: Weights,
  batchThread: BatchThread,
  samples: readonly Sample[],
  batchSize: number,
  channels: number,
  normalise: boolean,
): Promise<{ valLoss: number; valAccuracy: number }> {
  let lossSum = 0;
  let accuracySum = 0;
  for await (const batch of batchThread.inOrder(inBatches(samples, batchSize).map((slice) => planBatch(slice, { channels, normalise })))) {
    const [loss, accuracy] = tf.tidy(() => {
      const x = tf.tensor5d(batch.inputs, [batch.size, 50, 50, 20, channels]);
      const y = tf.tensor2d(batch.labels, [batch.size, 2]);
      const { probabilities } = forward(tf, spec, weights, x, false);
      return [categoricalCrossEntropy(tf, y, probabilities).dataSync()[0], categoricalAccuracy(tf, y, probabilities).dataSync()[0]];
    });
    lossSum += loss * batch.size;
    accuracySum += accuracy * batch.size;
  }
  return { valLoss: lossSum / samples.length, valAccuracy: accuracySum / samples.length };
}

function assignLoaded(tf: typeof tfType, spec: ResNetSpec, weights: Weights, optimizer: KerasAdam | undefined, loaded: LoadedModel): void {
  for (const layer of spec.layers) {
    for (const w of layer.weights) {
      const key = weightKey(layer.name, w.name);
      const value = loaded.weights.get(key);
      if (!value) throw new DataFileError(loaded.file, `has no weight ${key}`, 'Choose a model file made for cellfinder\'s network');
      (weights.get(key) as tfType.Variable).assign(tf.tensor(value, w.shape));
    }
  }
  if (optimizer && loaded.optimizer) {
    optimizer.iterations = loaded.optimizer.iterations;
    for (const [key, slot] of optimizer.slots) {
      const saved = loaded.optimizer.slots.get(key);
      if (!saved) continue;
      slot.momentum.assign(tf.tensor(saved.momentum, slot.momentum.shape));
      slot.velocity.assign(tf.tensor(saved.velocity, slot.velocity.shape));
    }
  }
}

async function readResumeState(file: string): Promise<ResumeState> {
  let text: string;
  try {
    text = await fs.readFile(file, 'utf8');
  } catch {
    throw new DataFileError(file, 'does not exist: there is no interrupted run in this folder', 'Start a new run instead of resuming');
  }
  const fix = `The run cannot be resumed: start it again (its checkpoints in ${path.dirname(path.dirname(file))} can be the starting model, --trained-model)`;
  let state: Partial<ResumeState>;
  try {
    state = JSON.parse(text) as Partial<ResumeState>;
  } catch {
    throw new DataFileError(file, 'is not valid JSON (damaged)', fix);
  }
  const valid =
    typeof state === 'object' && state !== null && typeof state.config === 'object' && state.config !== null && Array.isArray(state.config.yamlFiles) &&
    Number.isInteger(state.epoch) && Number.isInteger(state.batchesDone) && Array.isArray(state.trainingIndices) && Array.isArray(state.validationIndices) && Array.isArray(state.history);
  if (!valid) throw new DataFileError(file, 'is not a resume state written by cellfinder-retrain (fields missing or of the wrong type)', fix);
  return state as ResumeState;
}

async function saveResume(
  spec: ResNetSpec,
  weights: Weights,
  optimizer: KerasAdam,
  modelFile: string,
  stateFile: string,
  state: ResumeState,
): Promise<void> {
  // Model first, then the state that points at it: a crash between the two leaves the previous pair usable.
  await writeKerasModel(modelFile, spec, weights, optimizer, { overwrite: true });
  await writeFileAtomic(stateFile, JSON.stringify(state), { overwrite: true });
}

/** Keras' CSVLogger: sorted metric columns, epoch 0-based, Python float repr, NA where there is no validation. */
async function writeCsv(file: string, history: EpochMetrics[], hasValidation: boolean): Promise<void> {
  const rows = ['epoch,accuracy,loss,val_accuracy,val_loss'];
  for (const m of history) {
    // Keras logs float32 metrics: round before printing Python's repr.
    const value = (v: number | undefined) => (v === undefined || !hasValidation ? 'NA' : pythonFloatRepr(Math.fround(v)));
    rows.push([m.epoch, pythonFloatRepr(Math.fround(m.accuracy)), pythonFloatRepr(Math.fround(m.loss)), value(m.valAccuracy), value(m.valLoss)].join(','));
  }
  await writeFileAtomic(file, `${rows.join('\r\n')}\r\n`, { overwrite: true });
}

/**
 * `train`, `classify` and `evaluate`: cellfinder_train's flags with their
 * meanings and defaults, so a user's scripts carry over.
 */
import { existsSync } from 'node:fs';
import * as path from 'node:path';
import { loadTensorFlow } from '../training/backend';
import { EngineSetupError, setupEngine } from '../training/native/engineSetup';
import { formatGradientChecks, runGradientChecks } from '../training/native/gradientCheck';
import { engineStatus } from '../training/native/nativeBackend';
import type { TrainingEvent } from '../training/events';
import { openRunLog } from '../training/runLog';
import { classifyCandidates, evaluateModel, loadNetwork, type Evaluation } from '../training/inference';
import { readModelFile } from '../training/modelFiles';
import { isNetworkDepth, type NetworkDepth } from '../training/resnet';
import { TRAIN_DEFAULTS, type TrainConfig } from '../training/trainConfig';
import { loadSamples } from '../training/trainingData';
import { RESUME_FOLDER, train } from '../training/trainer';
import { CANDIDATE_INPUT_FLAGS, parseArgs, parseVoxelSizes, UsageError, type FlagSpec } from './args';

export interface Io {
  out: (text: string) => void;
  err: (text: string) => void;
}

const TRAIN_FLAGS: FlagSpec[] = [
  { name: 'yaml', short: 'y', values: '+' },
  { name: 'output-dir', short: 'o', values: 1 },
  { name: 'network-depth', values: 1 },
  { name: 'batch-size', values: 1 },
  { name: 'epochs', values: 1 },
  { name: 'learning-rate', values: 1 },
  { name: 'test-fraction', values: 1 },
  { name: 'trained-model', values: 1 },
  { name: 'model-weights', values: 1 },
  { name: 'continue-training', values: 0 },
  { name: 'no-augment', values: 0 },
  { name: 'augment-likelihood', values: 1 },
  { name: 'augment-parity', values: 0 },
  { name: 'no-save-checkpoints', values: 0 },
  { name: 'save-weights', values: 0 },
  { name: 'save-progress', values: 0 },
  { name: 'lr-schedule', values: '+' },
  { name: 'lr-multiplier', values: 1 },
  { name: 'normalize-channels', values: 0 },
  { name: 'seed', values: 1 },
  { name: 'stratified-split', values: 0 },
  { name: 'balanced', values: 0 },
  { name: 'resume', values: 1 },
  { name: 'json', values: 0 },
];

function number(flags: Map<string, string[]>, name: string, fallback: number, check: (n: number) => boolean, rule: string): number {
  const raw = flags.get(name)?.[0];
  if (raw === undefined) return fallback;
  const value = Number(raw);
  if (!Number.isFinite(value) || !check(value)) throw new UsageError(`--${name} must be ${rule}, got ${raw}`);
  return value;
}

export function depthFrom(flags: Map<string, string[]>, fallback: NetworkDepth): NetworkDepth {
  const depth = number(flags, 'network-depth', fallback, (n) => isNetworkDepth(n), 'one of 18, 34, 50, 101, 152');
  return depth as NetworkDepth;
}

export function trainConfigFromFlags(flags: Map<string, string[]>): TrainConfig {
  const yamlFiles = flags.get('yaml');
  const outputDir = flags.get('output-dir')?.[0];
  if (!yamlFiles?.length) throw new UsageError('-y/--yaml is required (one or more training.yaml files)');
  if (!outputDir) throw new UsageError('-o/--output-dir is required');
  const positive = (n: number) => n > 0;
  return {
    ...TRAIN_DEFAULTS,
    yamlFiles: yamlFiles.map((file) => path.resolve(file)),
    outputDir: path.resolve(outputDir),
    networkDepth: depthFrom(flags, TRAIN_DEFAULTS.networkDepth),
    batchSize: number(flags, 'batch-size', TRAIN_DEFAULTS.batchSize, (n) => Number.isInteger(n) && n > 0, 'a positive integer'),
    epochs: number(flags, 'epochs', TRAIN_DEFAULTS.epochs, (n) => Number.isInteger(n) && n > 0, 'a positive integer'),
    learningRate: number(flags, 'learning-rate', TRAIN_DEFAULTS.learningRate, positive, 'positive'),
    testFraction: number(flags, 'test-fraction', TRAIN_DEFAULTS.testFraction, (n) => n >= 0 && n < 1, 'in [0, 1)'),
    trainedModel: flags.get('trained-model')?.[0],
    modelWeights: flags.get('model-weights')?.[0],
    continueTraining: flags.has('continue-training'),
    augment: !flags.has('no-augment'),
    augmentLikelihood: number(flags, 'augment-likelihood', TRAIN_DEFAULTS.augmentLikelihood, (n) => n >= 0 && n <= 1, 'in [0, 1]'),
    affineMode: flags.has('augment-parity') ? 'cellfinder-parity' : 'random-range',
    saveCheckpoints: !flags.has('no-save-checkpoints'),
    saveWeights: flags.has('save-weights'),
    saveProgress: flags.has('save-progress'),
    lrSchedule: (flags.get('lr-schedule') ?? []).map((value) => {
      const epoch = Number(value);
      if (!Number.isInteger(epoch) || epoch < 0) throw new UsageError(`--lr-schedule takes epoch numbers, got ${value}`);
      return epoch;
    }),
    lrMultiplier: number(flags, 'lr-multiplier', TRAIN_DEFAULTS.lrMultiplier, positive, 'positive'),
    normalizeChannels: flags.has('normalize-channels'),
    seed: flags.has('seed') ? number(flags, 'seed', 0, Number.isInteger, 'an integer') : undefined,
    stratifiedSplit: flags.has('stratified-split'),
    balancedSampling: flags.has('balanced'),
  };
}

function describeEvent(event: TrainingEvent): string | undefined {
  switch (event.type) {
    case 'started':
      return `Training ResNet-${event.model.depth} (${event.model.channels} channel(s), ${event.model.parameters.toLocaleString('en')} parameters) on ${event.backend}: ${event.samples.training} training / ${event.samples.validation} validation cubes (${event.samples.cells} cells, ${event.samples.nonCells} non-cells)${event.resumedAtEpoch !== undefined ? `, resumed at epoch ${event.resumedAtEpoch + 1}` : ''}`;
    case 'epoch':
      return `epoch ${event.epoch + 1}/${event.epochs}: loss ${event.loss.toFixed(4)} accuracy ${event.accuracy.toFixed(4)}${event.valLoss === undefined ? '' : ` val_loss ${event.valLoss.toFixed(4)} val_accuracy ${(event.valAccuracy as number).toFixed(4)}`} (${event.seconds.toFixed(1)} s)`;
    case 'checkpoint':
      return `checkpoint ${event.file}`;
    case 'cancelled':
      return `Stopped at epoch ${event.epoch + 1}, batch ${event.batch + 1}. Resume with: cellfinder-retrain train --resume ${event.resumeFrom}`;
    case 'finished':
      return `Finished: ${event.modelFile}`;
    case 'error':
      return `error: ${event.message}`;
    case 'batch':
    case 'launched':
      return undefined;
  }
}

export async function trainCommand(argv: readonly string[], io: Io): Promise<number> {
  const { flags, positionals } = parseArgs(argv, TRAIN_FLAGS);
  if (positionals.length) throw new UsageError(`unexpected argument ${positionals[0]}`);
  const resumeDir = flags.get('resume')?.[0];
  const json = flags.has('json');
  const runtime = await loadTensorFlow();
  if (runtime.notNative) io.err(`note: training on ${runtime.backend}: ${runtime.notNative}`);
  let cancelled = false;
  const stop = () => {
    cancelled = true;
    io.err('Stopping after the current batch (a resumable checkpoint is written)...');
  };
  process.once('SIGINT', stop);
  process.once('SIGTERM', stop);
  try {
    let config: TrainConfig;
    if (resumeDir) {
      if (!existsSync(path.join(resumeDir, RESUME_FOLDER, 'state.json'))) throw new UsageError(`${resumeDir} holds no interrupted run to resume`);
      config = { ...TRAIN_DEFAULTS, yamlFiles: [], outputDir: path.resolve(resumeDir) };
    } else {
      config = trainConfigFromFlags(flags);
    }
    const logEvent = openRunLog(path.resolve(config.outputDir), resumeDir ? 'resume' : 'train');
    const emit = (event: TrainingEvent) => {
      logEvent(event);
      if (json) io.out(JSON.stringify(event));
      else {
        const text = describeEvent(event);
        if (text) (event.type === 'error' ? io.err : io.out)(text);
      }
    };
    try {
      const result = await train(runtime.tf, runtime.backend, config, emit, { cancelRequested: () => cancelled }, Boolean(resumeDir));
      return result.status === 'finished' ? 0 : 3;
    } catch (error) {
      // The run's log says why it ended, for the editor's Runs view; the CLI reports the error itself.
      logEvent({ type: 'error', message: (error as Error)?.message ?? String(error) });
      throw error;
    }
  } finally {
    process.removeListener('SIGINT', stop);
    process.removeListener('SIGTERM', stop);
  }
}

async function networkFor(flags: Map<string, string[]>, channels: number) {
  const file = flags.get('trained-model')?.[0] ?? flags.get('model-weights')?.[0];
  if (!file) throw new UsageError('--trained-model or --model-weights is required');
  const runtime = await loadTensorFlow();
  // The file says its own depth; --network-depth, when given, must agree.
  const depth = flags.has('network-depth') ? depthFrom(flags, 50) : (await readModelFile(file, { channels })).depth;
  return { runtime, network: await loadNetwork(runtime.tf, file, depth, channels) };
}

export async function classifyCommand(argv: readonly string[], io: Io): Promise<number> {
  const { flags, positionals } = parseArgs(argv, [
    ...CANDIDATE_INPUT_FLAGS,
    { name: 'trained-model', values: 1 },
    { name: 'model-weights', values: 1 },
    { name: 'network-depth', values: 1 },
    { name: 'batch-size', values: 1 },
  ]);
  if (positionals.length) throw new UsageError(`unexpected argument ${positionals[0]}`);
  for (const required of ['signal', 'points', 'output-dir']) if (!flags.has(required)) throw new UsageError(`--${required} is required`);
  const voxelSizes = parseVoxelSizes(flags.get('voxel-sizes'));
  const { runtime, network } = await networkFor(flags, flags.has('background') ? 2 : 1);
  const report = await classifyCandidates(runtime.tf, network, {
    signal: flags.get('signal')![0],
    background: flags.get('background')?.[0],
    points: flags.get('points')![0],
    outputDir: path.resolve(flags.get('output-dir')![0]),
    voxelSizes,
    batchSize: number(flags, 'batch-size', 64, (n) => Number.isInteger(n) && n > 0, 'a positive integer'),
    onProgress: (done, total) => io.err(`classifying: ${done}/${total}`),
  });
  if (flags.has('json')) io.out(JSON.stringify({ ...report, classified: undefined, count: report.classified.length }, null, 2));
  else {
    io.out(`Classified ${report.classified.length} candidates with ${network.file} on ${runtime.backend}: ${report.cells} cells, ${report.nonCells} non-cells`);
    io.out(`  ${report.xmlFile} (cellfinder's format)`);
    io.out(`  ${report.probabilitiesFile} (every probability)`);
    if (report.skipped.length) io.out(`  ${report.skipped.length} candidate(s) too near the edge were not classified (cellfinder drops them too)`);
  }
  return 0;
}

function formatEvaluation(e: Evaluation): string[] {
  const pct = (v: number) => `${(100 * v).toFixed(1)}%`;
  return [
    `${e.model}: accuracy ${pct(e.accuracy)} on ${e.samples} cubes`,
    `  confusion (rows = labelled, columns = predicted): non-cell [${e.confusion[0].join(', ')}], cell [${e.confusion[1].join(', ')}]`,
    `  cell: precision ${pct(e.cell.precision)}, recall ${pct(e.cell.recall)}; non-cell: precision ${pct(e.nonCell.precision)}, recall ${pct(e.nonCell.recall)}`,
  ];
}

export async function evaluateCommand(argv: readonly string[], io: Io): Promise<number> {
  const { flags, positionals } = parseArgs(argv, [
    { name: 'trained-model', values: 1 },
    { name: 'model-weights', values: 1 },
    { name: 'compare', values: 1 },
    { name: 'network-depth', values: 1 },
    { name: 'yaml', short: 'y', values: '+' },
    { name: 'batch-size', values: 1 },
    { name: 'normalize-channels', values: 0 },
    { name: 'json', values: 0 },
  ]);
  if (positionals.length) throw new UsageError(`unexpected argument ${positionals[0]}`);
  const yamlFiles = flags.get('yaml');
  if (!yamlFiles?.length) throw new UsageError('-y/--yaml is required');
  const samples = await loadSamples(yamlFiles);
  const channels = samples[0].files.length;
  const { runtime, network } = await networkFor(flags, channels);
  const options = { batchSize: number(flags, 'batch-size', 32, (n) => Number.isInteger(n) && n > 0, 'a positive integer'), normalise: flags.has('normalize-channels') };
  const results = [await evaluateModel(runtime.tf, network, samples, options)];
  const compare = flags.get('compare')?.[0];
  if (compare) {
    const other = await loadNetwork(runtime.tf, compare, (await readModelFile(compare, { channels })).depth, channels);
    results.push(await evaluateModel(runtime.tf, other, samples, options));
  }
  if (flags.has('json')) io.out(JSON.stringify(results, null, 2));
  else for (const result of results) for (const line of formatEvaluation(result)) io.out(line);
  return 0;
}

export async function engineCommand(argv: readonly string[], io: Io): Promise<number> {
  const [sub, ...rest] = argv;
  switch (sub) {
    case 'setup': {
      const { flags, positionals } = parseArgs(rest, [
        { name: 'wheel', values: 1 },
        { name: 'from-python', values: 0 },
        { name: 'json', values: 0 },
      ]);
      if (positionals.length) throw new UsageError(`unexpected argument ${positionals[0]}`);
      try {
        const result = await setupEngine({
          source: flags.has('wheel') ? 'wheel' : flags.has('from-python') ? 'python' : 'auto',
          wheel: flags.get('wheel')?.[0],
          onProgress: (progress) => io.err(progress.message),
        });
        if (flags.has('json')) io.out(JSON.stringify(result, null, 2));
        else io.out(`Native engine ready: ${result.engineDir}`);
      } catch (error) {
        if (error instanceof EngineSetupError) {
          io.err(`error: ${error.message}${error.logFile ? ` (log: ${error.logFile})` : ''}`);
          return 1;
        }
        throw error;
      }
      // Prove it: the gradient checks of every op the network uses, on the engine just built.
      const runtime = await loadTensorFlow();
      if (runtime.notNative) {
        io.err(`error: the engine was built but does not load: ${runtime.notNative}`);
        return 1;
      }
      const results = await runGradientChecks(runtime.tf, runtime.tf.getBackend());
      io.out(formatGradientChecks(results));
      return results.every((r) => r.passed) ? 0 : 1;
    }
    case 'status': {
      const { flags } = parseArgs(rest, [{ name: 'json', values: 0 }]);
      const status = engineStatus();
      if (flags.has('json')) io.out(JSON.stringify(status, null, 2));
      else io.out(status.installed ? `Native engine set up in ${status.engineDir}${status.reason ? ` (${status.reason})` : ''}` : `Native engine not in use: ${status.reason}. Training runs on the pure-JavaScript engine, about 100x slower.`);
      return 0;
    }
    default:
      throw new UsageError(`unknown engine command "${sub ?? ''}" (setup, status)`);
  }
}

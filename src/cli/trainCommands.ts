/**
 * `train`, `classify` and `evaluate`: cellfinder_train's flags with their
 * meanings and defaults, so a user's scripts carry over.
 */
import { spawn } from 'node:child_process';
import { existsSync, readFileSync } from 'node:fs';
import * as path from 'node:path';
import * as tf from '@tensorflow/tfjs';
import { writeFileAtomic } from '../core/atomicFile';
import { readBrainList, type Brain } from '../core/brainList';
import { DataFileError } from '../core/errors';
import { describeDevice, loadTensorFlow, missingRequiredEngine, REQUIRED_ENGINE_ENV, type TensorFlowRuntime } from '../engine/backend';
import { fixCpuMaxPool3dGrad } from '../engine/cpuMaxPool3dGradFix';
import { describeCudaScan } from '../engine/cudaLibraries';
import { ENGINE_DIR_ENV, type EngineVariant } from '../engine/engineLayout';
import { EngineSetupError, type EngineSetupResult, setupEngine } from '../engine/engineSetup';
import { childEnvironment, DEVICE_CHOICES, type DeviceChoice, isDeviceChoice } from '../engine/gpuEnvironment';
import { inspectGpu, type GpuInspection, readGpuLog } from '../engine/gpuProbe';
import { isHiddenTensorFlowLine, withTensorFlowLogLevel } from '../engine/tensorflowLog';
import { compareTinyFits, formatGradientChecks, runGradientChecks, tinyModelFit } from '../training/gradientCheck';
import { engineStatus, loadNativeBackend, NATIVE_BACKEND_NAME } from '../engine/nativeBackend';
import { buildShippedAddon } from '../engine/shippedAddon';
import { benchModel } from '../training/modelSpeed';
import { OutOfMemoryError } from '../training/outOfMemory';
import { describeRunStart, type TrainingEvent } from '../training/events';
import { openRunLog } from '../training/runLog';
import { classifyCandidates, evaluateModel, loadNetwork, PARTIAL_RESULTS, type Evaluation } from '../training/inference';
import { readModelFile } from '../training/modelFiles';
import { isNetworkDepth, type NetworkDepth } from '../training/resnet';
import { runConfigOf, TRAIN_CONFIG_FILE, TRAIN_DEFAULTS, type TrainConfig } from '../training/trainConfig';
import { loadSamples } from '../training/trainingData';
import { RESUME_FOLDER, train } from '../training/trainer';
import { CANDIDATE_INPUT_FLAGS, parseArgs, parseVoxelSizes, UsageError, type FlagSpec } from './args';
import { REQUEUE_ENV, requeueJob, TIME_LIMIT_SIGNAL } from '../cluster/slurm';
import { SLURM_FLAGS, slurmRequestFrom, submitClassifyJob, submitTrainJob } from './clusterCommands';
import { progressPrinter, STOP_SIGNALS, stopOnSignals } from './progress';

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
  { name: 'fresh-optimizer', values: 0 },
  { name: 'no-augment', values: 0 },
  { name: 'augment-likelihood', values: 1 },
  { name: 'augment-parity', values: 0 },
  { name: 'no-save-checkpoints', values: 0 },
  { name: 'keep-checkpoints', values: 1 },
  { name: 'save-weights', values: 0 },
  { name: 'save-progress', values: 0 },
  { name: 'lr-schedule', values: '+' },
  { name: 'lr-multiplier', values: 1 },
  { name: 'normalize-channels', values: 0 },
  { name: 'seed', values: 1 },
  { name: 'stratified-split', values: 0 },
  { name: 'balanced', values: 0 },
  { name: 'resume', values: 1 },
  { name: 'config', values: 1 },
  { name: 'device', values: 1 },
  { name: 'json', values: 0 },
];

/** `--device auto|gpu|cpu`; undefined when not given (then CELLFINDER_RETRAIN_DEVICE, else auto). */
export function deviceFrom(flags: Map<string, string[]>): DeviceChoice | undefined {
  const value = flags.get('device')?.[0];
  if (value !== undefined && !isDeviceChoice(value)) throw new UsageError(`--device must be one of ${DEVICE_CHOICES.join(', ')}, got ${value}`);
  return value;
}

/** One line on the GPU, when there is something to say about it. */
function describeGpu(runtime: Pick<TensorFlowRuntime, 'gpu'>): string | undefined {
  const gpu = runtime.gpu;
  if (!gpu || gpu.used) return undefined;
  return `${gpu.requested === 'gpu' ? 'GPU asked for but not used' : 'GPU not used'}: ${gpu.reason}`;
}

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

/** Options that go with --config: how and where to run it, not what to train. */
const BESIDE_CONFIG = new Set(['config', 'device', 'json']);

/**
 * `--config FILE`: a run's whole settings as the editor writes them (its
 * train-config.json), so the editor submits its runs to SLURM through this
 * command as a user would.
 */
function trainConfigFromFile(file: string, flags: Map<string, string[]>): TrainConfig {
  const beside = TRAIN_FLAGS.find((flag) => !BESIDE_CONFIG.has(flag.name) && flags.has(flag.name));
  if (beside) throw new UsageError(`--config holds the run's settings: put --${beside.name} in ${file}, or leave --config out`);
  let parsed: Partial<TrainConfig>;
  try {
    parsed = JSON.parse(readFileSync(file, 'utf8')) as Partial<TrainConfig>;
  } catch (error) {
    throw new DataFileError(file, `cannot be read as a run's settings (${(error as Error).message})`, 'Give the train-config.json the editor wrote, or -y and -o instead of --config');
  }
  if (!Array.isArray(parsed.yamlFiles) || parsed.yamlFiles.length === 0 || typeof parsed.outputDir !== 'string') {
    throw new DataFileError(file, 'does not name the training data (yamlFiles) and the output folder (outputDir)', 'Give the train-config.json the editor wrote, or -y and -o instead of --config');
  }
  return { ...TRAIN_DEFAULTS, ...parsed, yamlFiles: parsed.yamlFiles.map((yaml) => path.resolve(path.dirname(file), yaml)), outputDir: path.resolve(path.dirname(file), parsed.outputDir) };
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
    freshOptimizer: flags.has('fresh-optimizer'),
    augment: !flags.has('no-augment'),
    augmentLikelihood: number(flags, 'augment-likelihood', TRAIN_DEFAULTS.augmentLikelihood, (n) => n >= 0 && n <= 1, 'in [0, 1]'),
    affineMode: flags.has('augment-parity') ? 'cellfinder-parity' : 'random-range',
    saveCheckpoints: !flags.has('no-save-checkpoints'),
    keepCheckpoints: flags.has('keep-checkpoints') ? number(flags, 'keep-checkpoints', 0, (n) => Number.isInteger(n) && n > 0, 'a positive integer') : undefined,
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
    case 'started': {
      const gpu = describeGpu(event);
      const warnings = (event.warnings ?? []).map((warning) => `\nwarning: ${warning}`).join('');
      const split = event.split
        ? `training ${event.split.training.cells} cells + ${event.split.training.nonCells} non-cells, validation ${event.split.validation.cells} + ${event.split.validation.nonCells} (each cube's part: ${event.split.file})`
        : `${event.samples.training} training / ${event.samples.validation} validation cubes (${event.samples.cells} cells, ${event.samples.nonCells} non-cells)`;
      const start = event.start ? `\n  ${describeRunStart(event.start)}` : '';
      return `Training ResNet-${event.model.depth} (${event.model.channels} channel(s), ${event.model.parameters.toLocaleString('en')} parameters) on ${event.backend}: ${split}${event.resumedAtEpoch !== undefined ? `, resumed at epoch ${event.resumedAtEpoch + 1} (optimiser at iteration ${event.resumedAtIteration})` : ''}${start}${gpu ? `\n  ${gpu}` : ''}${warnings}`;
    }
    case 'epoch':
      return `epoch ${event.epoch + 1}/${event.epochs}: loss ${event.loss.toFixed(4)} accuracy ${event.accuracy.toFixed(4)}${event.valLoss === undefined ? '' : ` val_loss ${event.valLoss.toFixed(4)} val_accuracy ${(event.valAccuracy as number).toFixed(4)}`} (${event.seconds.toFixed(1)} s)`;
    case 'checkpoint':
      return `checkpoint ${event.file}`;
    case 'checkpoints-kept':
      return event.removed.length ? `removed ${event.removed.map((file) => path.basename(file)).join(', ')}; keeping ${event.kept.map((file) => path.basename(file)).join(', ')}` : undefined;
    case 'cancelled':
      return `Stopped at epoch ${event.epoch + 1}, batch ${event.batch + 1}. Resume with: cellfinder-retrain train --resume ${event.resumeFrom}`;
    case 'finished':
      return `Finished: ${event.modelFile}${event.card ? `\n  model card: ${event.card}` : ''}${event.cardProblem ? `\nwarning: no model card was written: ${event.cardProblem}` : ''}`;
    case 'error':
      return `error: ${event.message}${event.fix ? `. ${event.fix}` : ''}`;
    case 'batch':
    case 'launched':
      return undefined;
  }
}

export async function trainCommand(argv: readonly string[], io: Io): Promise<number> {
  const { flags, positionals } = parseArgs(argv, [...TRAIN_FLAGS, ...SLURM_FLAGS]);
  if (positionals.length) throw new UsageError(`unexpected argument ${positionals[0]}`);
  const json = flags.has('json');
  // Usage errors before TensorFlow loads (seconds).
  const configFile = flags.get('config')?.[0];
  const requested = flags.has('resume') ? undefined : configFile ? trainConfigFromFile(configFile, flags) : trainConfigFromFlags(flags);
  const resumeDir = flags.get('resume')?.[0] ?? (requested && requeuedRun(requested.outputDir, io));
  const config: TrainConfig = resumeDir ? { ...TRAIN_DEFAULTS, yamlFiles: [], outputDir: path.resolve(resumeDir) } : (requested as TrainConfig);
  if (resumeDir && !existsSync(path.join(resumeDir, RESUME_FOLDER, 'state.json'))) throw new UsageError(`${resumeDir} holds no interrupted run to resume`);
  const slurm = slurmRequestFrom(flags);
  if (slurm) return submitTrainJob(argv, slurm, config.outputDir, resumeDir ? 'resume' : 'train', { node: process.execPath, entry: cliEntry() }, json, io);
  let cancelled = false;
  let stoppedBy: NodeJS.Signals | undefined;
  const stop = (signal: NodeJS.Signals) => {
    cancelled = true;
    stoppedBy ??= signal;
    io.err('Stopping after the current batch (a resumable checkpoint is written)...');
  };
  // Before TensorFlow loads (seconds): SLURM's time-limit warning may come that early, and SIGUSR2's default is to end the process.
  for (const signal of STOP_SIGNALS) process.once(signal, stop);
  try {
    const runtime = await loadTensorFlow(deviceFrom(flags));
    if (runtime.notNative) io.err(`note: training on ${runtime.backend}: ${runtime.notNative}`);
    const logEvent = openRunLog(path.resolve(config.outputDir), resumeDir ? 'resume' : 'train');
    const missingEngine = missingRequiredEngine(runtime);
    if (missingEngine) {
      // A SLURM job on a node without the engine its login node has: said at once in the run's log (the editor's panel), not after hours of slow training.
      const node = process.env.SLURMD_NODENAME ? ` on node ${process.env.SLURMD_NODENAME}` : '';
      const fix = `Set the engine up on a path every node sees (${ENGINE_DIR_ENV}=<shared folder> cellfinder-retrain engine setup${process.env[REQUIRED_ENGINE_ENV] === 'gpu' ? ' --gpu' : ''} on the login node), or submit to a partition whose nodes have what it needs`;
      logEvent({ type: 'error', message: `stopped at the start${node}: ${missingEngine}`, fix });
      throw new Error(`stopped at the start${node}: ${missingEngine}. ${fix}`);
    }
    // Kept beside the run's models, as the editor keeps it: what they were trained with (e.g. --normalize-channels) is then known where they are used.
    if (!resumeDir) await writeFileAtomic(path.join(config.outputDir, TRAIN_CONFIG_FILE), `${JSON.stringify(config, null, 2)}\n`, { overwrite: true });
    const emit = (event: TrainingEvent) => {
      logEvent(event);
      if (json) io.out(JSON.stringify(event));
      else {
        const text = describeEvent(event);
        if (text) (event.type === 'error' ? io.err : io.out)(text);
      }
    };
    try {
      const result = await train(runtime.tf, runtime, config, emit, { cancelRequested: () => cancelled }, Boolean(resumeDir));
      if (result.status === 'cancelled' && stoppedBy === `SIG${TIME_LIMIT_SIGNAL}` && process.env[REQUEUE_ENV] === '1' && process.env.SLURM_JOB_ID) {
        await requeueJob(process.env.SLURM_JOB_ID);
        io.err(`Time limit near: job ${process.env.SLURM_JOB_ID} requeued; it resumes the run when it starts again`);
      }
      return result.status === 'finished' ? 0 : 3;
    } catch (error) {
      // The run's log says why it ended, for the editor's Runs view; the CLI reports the error itself.
      if (error instanceof OutOfMemoryError) logEvent({ type: 'error', message: error.problem, fix: error.fix, suggestedBatchSize: error.suggestedBatchSize });
      else logEvent({ type: 'error', message: (error as Error)?.message ?? String(error) });
      throw error;
    }
  } finally {
    for (const signal of STOP_SIGNALS) process.removeListener(signal, stop);
  }
}

/**
 * A SLURM job that SLURM requeued (preemption, node failure, scontrol
 * requeue; only with --requeue) runs its batch script again, so the same
 * `train` command: it resumes the run its first start left a checkpoint of,
 * instead of starting that run over. The output folder when it does.
 */
function requeuedRun(outputDir: string, io: Io): string | undefined {
  const restarts = Number(process.env.SLURM_RESTART_COUNT ?? 0);
  if (!(restarts > 0) || !existsSync(path.join(outputDir, RESUME_FOLDER, 'state.json'))) return undefined;
  io.err(`SLURM restarted job ${process.env.SLURM_JOB_ID ?? ''} (restart ${restarts}): resuming ${outputDir} from its last checkpoint`);
  return outputDir;
}

async function networkFor(flags: Map<string, string[]>, channels: number) {
  const file = flags.get('trained-model')?.[0] ?? flags.get('model-weights')?.[0];
  if (!file) throw new UsageError('--trained-model or --model-weights is required');
  const runtime = await loadTensorFlow(deviceFrom(flags));
  // The file says its own depth; --network-depth, when given, must agree.
  const depth = flags.has('network-depth') ? depthFrom(flags, 50) : (await readModelFile(file, { channels })).depth;
  return { runtime, network: await loadNetwork(runtime.tf, file, depth, channels) };
}

const CLASSIFY_FLAGS: FlagSpec[] = [
  ...CANDIDATE_INPUT_FLAGS,
  { name: 'trained-model', values: 1 },
  { name: 'model-weights', values: 1 },
  { name: 'network-depth', values: 1 },
  { name: 'batch-size', values: 1 },
  { name: 'device', values: 1 },
  { name: 'cache', values: 1 },
  { name: 'normalize-channels', values: 0 },
  { name: 'brains', values: 1 },
  { name: 'brain', values: 1 },
];

/**
 * `classify`: one brain (--signal, --points, -o), or each brain of a list
 * (--brains); with --slurm, submitted as a job (a list as an array job, one
 * task per brain, each task classifying the brain of its SLURM_ARRAY_TASK_ID).
 */
export async function classifyCommand(argv: readonly string[], io: Io): Promise<number> {
  const { flags, positionals } = parseArgs(argv, [...CLASSIFY_FLAGS, ...SLURM_FLAGS]);
  if (positionals.length) throw new UsageError(`unexpected argument ${positionals[0]}`);
  const slurm = slurmRequestFrom(flags);
  const listFile = flags.get('brains')?.[0];
  const cli = { node: process.execPath, entry: cliEntry() };
  if (!listFile) {
    if (flags.has('brain')) throw new UsageError('--brain picks a brain of a --brains list');
    for (const required of ['signal', 'points', 'output-dir']) if (!flags.has(required)) throw new UsageError(`--${required} is required`);
    const brain = { signal: flags.get('signal')![0], background: flags.get('background')?.[0], points: flags.get('points')![0], outputDir: path.resolve(flags.get('output-dir')![0]) };
    if (slurm) return submitClassifyJob(argv, slurm, brain.outputDir, undefined, cli, flags.has('json'), io);
    return classifyBrain(flags, brain, io);
  }
  const given = ['signal', 'background', 'points', 'cache'].find((name) => flags.has(name));
  if (given) throw new UsageError(`--${given} is not used with --brains: each brain's volumes and points come from the list`);
  const brains = await readBrainList(listFile);
  if (slurm) {
    const folder = flags.get('output-dir')?.[0];
    if (!folder) throw new UsageError('-o is required with --brains --slurm: the folder for the array job\'s record and SLURM\'s output files (each brain\'s results go to its output_dir)');
    return submitClassifyJob(argv, slurm, path.resolve(folder), brains.length, cli, flags.has('json'), io);
  }
  // An array task classifies its own brain; otherwise --brain N, or every brain in turn.
  const picked = flags.get('brain')?.[0] ?? process.env.SLURM_ARRAY_TASK_ID;
  if (picked !== undefined && !(/^\d+$/.test(picked) && Number(picked) < brains.length)) throw new UsageError(`--brain must be 0..${brains.length - 1} (the line of the brain in ${listFile}, from 0), got ${picked}`);
  const indices = picked === undefined ? brains.map((_, index) => index) : [Number(picked)];
  for (const index of indices) {
    io.err(`brain ${index} of ${listFile} (${brains.length} in all): ${brains[index].signal}`);
    const status = await classifyBrain(flags, brains[index], io);
    if (status !== 0) return status;
  }
  return 0;
}

/** Classifies one brain's candidates into its output folder (resuming what an interrupted run left). */
async function classifyBrain(flags: Map<string, string[]>, brain: Brain, io: Io): Promise<number> {
  const voxelSizes = parseVoxelSizes(flags.get('voxel-sizes'));
  // 32: at 64 ResNet-18 inference took 2.4 GB (at 4000x5000, 5,000 candidates) for 4% more speed.
  const batchSize = number(flags, 'batch-size', 32, (n) => Number.isInteger(n) && n > 0, 'a positive integer');
  const { runtime, network } = await networkFor(flags, brain.background ? 2 : 1);
  const normalizeChannels = flags.has('normalize-channels');
  // As cellfinder, normalising is what the flag says; but a model classified otherwise than it was trained gives meaningless probabilities.
  const trainedNormalised = (await runConfigOf(network.file))?.normalizeChannels;
  if (trainedNormalised !== undefined && trainedNormalised !== normalizeChannels) {
    io.err(`warning: ${network.file} was trained ${trainedNormalised ? 'with' : 'without'} --normalize-channels (its run's ${TRAIN_CONFIG_FILE}): ${trainedNormalised ? 'add' : 'leave out'} --normalize-channels to classify as it was trained`);
  }
  const outputDir = path.resolve(brain.outputDir);
  const stopping = stopOnSignals(io, 'Stopping after the current batch; what is classified is kept, and the same command continues from there...');
  let report;
  try {
    report = await classifyCandidates(runtime.tf, network, {
      signal: brain.signal,
      background: brain.background,
      points: brain.points,
      outputDir,
      voxelSizes,
      batchSize,
      onProgress: progressPrinter(io, 'classifying'),
      abortSignal: stopping.signal,
      cacheOf: flags.get('cache')?.[0],
      normalizeChannels,
      onStatisticsProgress: statisticsProgress(io),
    });
  } catch (error) {
    if (!stopping.signal.aborted) throw error;
    io.err(`Stopped. Run the same command again to classify the rest (results so far: ${path.join(outputDir, PARTIAL_RESULTS)}).`);
    return 3;
  } finally {
    stopping.release();
  }
  if (report.resumed > 0 && report.resumed === report.classified.length) io.err(`all ${report.resumed} candidate(s) were classified by an earlier run of this command (same model, points and volumes): its results written again`);
  else if (report.resumed) io.err(`continued an interrupted run: ${report.resumed} candidate(s) were already classified`);
  if (flags.has('cache')) io.err(`${report.fromCache} cube(s) read from the candidate cache of ${flags.get('cache')![0]}, the rest cut from the volumes`);
  report.channelStatistics?.forEach(({ mean, std }, channel) => io.err(`${channel === 0 ? 'signal' : 'background'} normalised with mean ${mean}, std ${std}`));
  if (flags.has('json')) io.out(JSON.stringify({ ...report, classified: undefined, count: report.classified.length }, null, 2));
  else {
    io.out(`Classified ${report.classified.length} candidates with ${network.file} on ${runtime.backend}: ${report.cells} cells, ${report.nonCells} non-cells`);
    io.out(`  ${report.xmlFile} (cellfinder's format)`);
    io.out(`  ${report.probabilitiesFile} (every probability)`);
    if (report.skipped.length) io.out(`  ${report.skipped.length} candidate(s) too near the edge were not classified (cellfinder drops them too)`);
  }
  return 0;
}

/** "channel statistics of <volume>: planes/planes", one progress line per volume and percent. */
function statisticsProgress(io: Io): (volume: string, planesDone: number, planes: number) => void {
  const printers = new Map<string, (done: number, total: number) => void>();
  return (volume, planesDone, planes) => {
    if (!printers.has(volume)) printers.set(volume, progressPrinter(io, `channel statistics of ${volume} (planes)`));
    printers.get(volume)?.(planesDone, planes);
  };
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
    { name: 'device', values: 1 },
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
    case 'setup':
      return engineSetupCommand(rest, io);
    case 'check':
      return engineCheckCommand(rest, io);
    case 'status':
      return engineStatusCommand(rest, io);
    case 'bench':
      return engineBenchCommand(rest, io);
    case 'build-addon':
      return engineBuildAddonCommand(rest, io);
    default:
      throw new UsageError(`unknown engine command "${sub ?? ''}" (setup, check, status, bench, build-addon)`);
  }
}

async function engineSetupCommand(argv: readonly string[], io: Io): Promise<number> {
  const { flags, positionals } = parseArgs(argv, [
    { name: 'gpu', values: 0 },
    { name: 'wheel', values: 1 },
    { name: 'from-python', values: 0 },
    { name: 'python', values: 1 },
    { name: 'cuda-libs', values: '+' },
    { name: 'skip-driver-check', values: 0 },
    { name: 'compile', values: 0 },
    { name: 'tfjs-node-tarball', values: 1 },
    { name: 'google-protobuf-tarball', values: 1 },
    { name: 'node-api-headers-tarball', values: 1 },
    { name: 'force', values: 0 },
    { name: 'json', values: 0 },
  ]);
  if (positionals.length) throw new UsageError(`unexpected argument ${positionals[0]}`);
  const variant: EngineVariant = flags.has('gpu') ? 'gpu' : 'cpu';
  for (const gpuOnly of ['cuda-libs', 'skip-driver-check']) if (flags.has(gpuOnly) && variant !== 'gpu') throw new UsageError(`--${gpuOnly} is for the GPU engine: add --gpu`);
  let result: EngineSetupResult;
  try {
    result = await setupEngine({
      variant,
      source: flags.has('wheel') ? 'wheel' : flags.has('from-python') ? 'python' : 'auto',
      wheel: flags.get('wheel')?.[0],
      python: flags.get('python')?.[0],
      cudaLibs: flags.get('cuda-libs'),
      skipDriverCheck: flags.has('skip-driver-check'),
      compile: flags.has('compile'),
      tfjsNodeTarball: flags.get('tfjs-node-tarball')?.[0],
      googleProtobufTarball: flags.get('google-protobuf-tarball')?.[0],
      nodeApiHeadersTarball: flags.get('node-api-headers-tarball')?.[0],
      force: flags.has('force'),
      onProgress: (progress) => io.err(progress.message),
    });
  } catch (error) {
    if (error instanceof EngineSetupError) {
      io.err(`error: ${error.message}${error.logFile ? ` (log: ${error.logFile})` : ''}`);
      return 1;
    }
    throw error;
  }
  if (flags.has('json')) io.out(JSON.stringify(result, null, 2));
  else {
    io.out(`${variant === 'gpu' ? 'GPU' : 'Native'} engine ready: ${result.engineDir}`);
    if (result.cuda) io.out(`  CUDA libraries (${result.cuda.source.kind}: ${result.cuda.source.from}): ${Object.entries(result.cuda.versions).map(([file, version]) => `${file} ${version}`).join(', ')}`);
    if (result.gpu) io.out(result.gpu.usingGpu ? `  TensorFlow uses ${result.gpu.devices.map(describeDevice).join('; ')}` : `  TensorFlow runs it on the CPU here: ${result.gpu.reason}`);
  }
  // Prove it: the gradient checks of every op the network uses and a one-batch fit, on the engine just
  // built, in a new process (only a process started with the GPU engine's library path can load it).
  return runInChild(['engine', 'check', '--engine', variant], childEnvironment(process.env, variant === 'gpu' ? 'gpu' : 'cpu'), io);
}

/** For packagers: compiles the addon shipped in prebuilds/ (see shippedAddon.ts). */
async function engineBuildAddonCommand(argv: readonly string[], io: Io): Promise<number> {
  const { flags, positionals } = parseArgs(argv, [
    { name: 'wheel', values: 1 },
    { name: 'work-dir', values: 1 },
    { name: 'force', values: 0 },
  ]);
  if (positionals.length) throw new UsageError(`unexpected argument ${positionals[0]}`);
  try {
    const built = await buildShippedAddon({ wheel: flags.get('wheel')?.[0], workDir: flags.get('work-dir')?.[0], force: flags.has('force'), onProgress: (message) => io.err(message) });
    // Versions come sorted within each family (GLIBC_2.2.5 before GLIBC_2.14): the last of a family is its newest.
    const newest = new Map(built.stamp.requires.flatMap(({ versions }) => versions.map((version) => [version.split('_')[0], version] as const)));
    io.out(`${built.alreadyBuilt ? 'Up to date' : 'Built'}: ${built.file} for N-API ${built.stamp.napiBuildVersion}, TensorFlow ${built.stamp.tensorflowVersion}'s C API; newest symbol versions it needs: ${[...newest.values()].join(', ')}`);
    return 0;
  } catch (error) {
    if (error instanceof EngineSetupError) {
      io.err(`error: ${error.message}${error.logFile ? ` (log: ${error.logFile})` : ''}`);
      return 1;
    }
    throw error;
  }
}

/**
 * Loads one engine (its GPU when TensorFlow registers one, else its CPU) and
 * checks it against the pure-JavaScript engine: the gradient checks of every
 * op the network uses, and a one-batch fit. TF32 (Ampere and newer GPUs) is
 * turned off for it: the check is of the kernels, at float32 tolerances.
 */
async function engineCheckCommand(argv: readonly string[], io: Io): Promise<number> {
  const { flags, positionals } = parseArgs(argv, [
    { name: 'engine', values: 1 },
    { name: 'json', values: 0 },
  ]);
  if (positionals.length) throw new UsageError(`unexpected argument ${positionals[0]}`);
  const variant = flags.get('engine')?.[0] ?? 'cpu';
  if (variant !== 'cpu' && variant !== 'gpu') throw new UsageError(`--engine must be cpu or gpu, got ${variant}`);
  process.env.NVIDIA_TF32_OVERRIDE ??= '0';
  await fixCpuMaxPool3dGrad(tf);
  const loaded = await loadNativeBackend(tf, { variant });
  if (!loaded.ok) {
    io.err(`error: the ${variant === 'gpu' ? 'GPU' : 'native'} engine does not load: ${loaded.reason}`);
    return 1;
  }
  const where = loaded.info.usingGpu ? 'GPU' : 'CPU';
  const whyNotGpu = variant === 'gpu' && !loaded.info.usingGpu ? (await inspectGpu({ probe: 'always' })).reason : undefined;
  const gradients = await runGradientChecks(tf, NATIVE_BACKEND_NAME);
  const cpuFit = await tinyModelFit(tf, 'cpu');
  const fit = compareTinyFits(await tinyModelFit(tf, NATIVE_BACKEND_NAME), cpuFit);
  const passed = gradients.every((r) => r.passed) && fit.passed;
  if (flags.has('json')) io.out(JSON.stringify({ engine: loaded.info, device: where, whyNotGpu, gradients, fit, passed }, null, 2));
  else {
    io.out(`Checking TensorFlow ${loaded.info.tensorflowVersion} (${variant === 'gpu' ? 'GPU engine' : 'CPU engine'}) on the ${where}${whyNotGpu ? ` (${whyNotGpu})` : ''} against the pure-JavaScript engine:`);
    io.out(formatGradientChecks(gradients));
    io.out(`one-batch fit vs the pure-JavaScript engine: loss ${fit.fitLossRel.toExponential(1)} / ${fit.lossAfterRel.toExponential(1)} relative, weights ${fit.weightMaxAbs.toExponential(1)}: ${fit.passed ? 'ok' : 'FAILED'}`);
  }
  return passed ? 0 : 1;
}

/** Training and inference cubes/s of the network on the engine `--device` picks (random cubes, Adam). */
async function engineBenchCommand(argv: readonly string[], io: Io): Promise<number> {
  const { flags, positionals } = parseArgs(argv, [
    { name: 'network-depth', values: 1 },
    { name: 'train-batch', values: 1 },
    { name: 'infer-batch', values: 1 },
    { name: 'steps', values: 1 },
    { name: 'device', values: 1 },
    { name: 'json', values: 0 },
  ]);
  if (positionals.length) throw new UsageError(`unexpected argument ${positionals[0]}`);
  const count = (name: string, fallback: number) => number(flags, name, fallback, (n) => Number.isInteger(n) && n > 0, 'a positive integer');
  const gpu = describeGpu(await loadTensorFlow(deviceFrom(flags)));
  if (gpu) io.err(gpu);
  const result = await benchModel(depthFrom(flags, 50), count('train-batch', 16), count('infer-batch', 64), count('steps', 3), deviceFrom(flags));
  if (flags.has('json')) io.out(JSON.stringify(result));
  else io.out(`ResNet-${result.depth} on ${result.backend}: training ${result.trainCubesPerSecond.toFixed(1)} cubes/s (batch ${result.trainBatch}), inference ${result.inferCubesPerSecond.toFixed(1)} cubes/s (batch ${result.inferBatch}); ${result.forwardGflopPerCube.toFixed(2)} GFLOP per cube forward`);
  return 0;
}

async function engineStatusCommand(argv: readonly string[], io: Io): Promise<number> {
  const { flags } = parseArgs(argv, [{ name: 'json', values: 0 }]);
  const cpu = engineStatus();
  const gpu = await inspectGpu({ probe: 'always' });
  if (flags.has('json')) {
    io.out(JSON.stringify({ cpu, gpu }, null, 2));
    return 0;
  }
  io.out(cpu.installed ? `CPU engine: set up in ${cpu.engineDir} (TensorFlow ${cpu.manifest?.tensorflowVersion})` : `CPU engine: not set up (${cpu.reason}). Without a native engine training runs on the pure-JavaScript engine, about 100x slower.`);
  for (const line of describeGpuInspection(gpu)) io.out(line);
  return 0;
}

/** The GPU part of `engine status`: the engine, the driver with its evidence, the CUDA libraries, TensorFlow's answer. */
export function describeGpuInspection(gpu: GpuInspection): string[] {
  const lines: string[] = [];
  const engine = gpu.engine;
  lines.push(engine ? `GPU engine: set up in ${engine.engineDir} (TensorFlow ${engine.manifest.tensorflowVersion})` : 'GPU engine: not set up (cellfinder-retrain engine setup --gpu)');
  lines.push(`NVIDIA driver: ${gpu.driver.present ? gpu.driver.version : 'none'}${gpu.driver.problem ? ` (${gpu.driver.problem.text})` : ''}`);
  for (const evidence of gpu.driver.evidence) lines.push(`  ${evidence}`);
  if (engine?.manifest.cuda && gpu.cuda) {
    const { source, libraryPath } = engine.manifest.cuda;
    lines.push(`CUDA libraries (${source.kind}: ${source.from}): ${describeCudaScan(gpu.cuda)}`);
    lines.push(`  library path for training processes: ${libraryPath.length ? libraryPath.join(':') : "none needed (the system's loader cache)"}`);
  }
  if (gpu.probe) {
    const said = gpu.devices.length ? `created ${gpu.devices.map((d) => `${d.tensorflowName}: ${describeDevice(d)}`).join('; ')}` : `no GPU device: ${readGpuLog(gpu.probe.log).reason}`;
    lines.push(`TensorFlow ${gpu.probe.tensorflowVersion ?? '(did not load)'} in a test process: ${said}`);
  }
  lines.push(gpu.usable ? `GPU: used for training (${describeDevice(gpu.devices[0])})` : `GPU: not used: ${gpu.reason}`);
  return lines;
}

/**
 * The command line's own entry script (bin/cellfinder-retrain.js), found from
 * the bundle (dist/cli.js) or the compiled sources (out/src/cli/).
 */
export function cliEntry(): string {
  const candidates = [path.resolve(__dirname, '..', 'bin', 'cellfinder-retrain.js'), path.resolve(__dirname, '..', '..', '..', 'bin', 'cellfinder-retrain.js')];
  return candidates.find((file) => existsSync(file)) ?? candidates[0];
}

/** Set in a child that runInChild started: its stderr is already relayed without TensorFlow's INFO lines. */
export const RELAYED_ENV = 'CELLFINDER_RETRAIN_RELAYED';
const FORWARDED_SIGNALS: readonly NodeJS.Signals[] = [...STOP_SIGNALS, 'SIGHUP'];

/**
 * Runs a command of this CLI in a child process with `env` (its output goes
 * to `io`, stderr without TensorFlow's INFO lines: see tensorflowLog.ts);
 * resolves with its exit code. The child has a session of its own, so a
 * terminal's Ctrl-C reaches this process only, and every SIGINT, SIGTERM,
 * SIGHUP or SLURM's time-limit warning this process gets (from a terminal,
 * `kill`, the editor, scancel, SLURM) is passed
 * on exactly once: the child stops as the command itself would. Killed
 * outright (SIGKILL), this process cannot pass anything on: the child then
 * ends itself (exitWithParent).
 */
export function runInChild(argv: readonly string[], env: NodeJS.ProcessEnv, io: Io): Promise<number> {
  const childEnv = { ...withTensorFlowLogLevel(env), [RELAYED_ENV]: '1' };
  return new Promise((resolve) => {
    const child = spawn(process.execPath, [cliEntry(), ...argv], { env: childEnv, stdio: ['inherit', 'pipe', 'pipe'], detached: true });
    const relay = (stream: NodeJS.ReadableStream, write: (text: string) => void) => {
      let pending = '';
      stream.on('data', (chunk: Buffer) => {
        const lines = (pending + chunk.toString()).split('\n');
        pending = lines.pop() ?? '';
        for (const line of lines) write(line);
      });
      stream.on('end', () => pending && write(pending));
    };
    relay(child.stdout, io.out);
    relay(child.stderr, (line) => {
      if (!isHiddenTensorFlowLine(line, childEnv)) io.err(line);
    });
    const forward = (signal: NodeJS.Signals) => child.kill(signal);
    for (const signal of FORWARDED_SIGNALS) process.on(signal, forward);
    child.on('close', (code, signal) => {
      for (const forwarded of FORWARDED_SIGNALS) process.removeListener(forwarded, forward);
      resolve(code ?? (signal ? 128 : 1));
    });
  });
}

/**
 * In a child of runInChild: when its parent is gone (killed with SIGKILL, so
 * nothing was passed on), end at once too, as the command the user killed.
 */
export function exitWithParent(): void {
  const parent = process.ppid;
  setInterval(() => {
    if (process.ppid !== parent) process.kill(process.pid, 'SIGKILL');
  }, 100).unref();
}

/**
 * `cellfinder-retrain`: the command line over the same core as the extension.
 * Results go to stdout (text, or JSON with --json); progress and warnings go
 * to stderr. Exit codes: 0 success, 1 data problem (validation failed, bad
 * file), 2 usage error.
 */
import { existsSync } from 'node:fs';
import { setPriority } from 'node:os';
import * as path from 'node:path';
import { readdir } from 'node:fs/promises';
import { CUBE_SHAPE, pointFromCubeFileName, readCube, type Point3 } from '../core/cube';
import { summarizeTrainingYaml, TrainingDataset, validateTrainingYaml, type DatasetSummary } from '../core/dataset';
import { DataFileError } from '../core/errors';
import { extractToDataset } from '../core/extractToDataset';
import { readCellCounterXml } from '../core/cellCounterXml';
import { chooseCandidates, DEFAULT_CHOSEN, readProbabilities, writeChosen } from '../core/chooseCandidates';
import { cuboidShape, planExtraction } from '../core/extraction';
import { cacheCandidates } from '../core/labelling';
import { openChannels } from '../core/volume';
import { mergeTrainingYamls } from '../core/merge';
import type { CubeLabel } from '../core/trainingYaml';
import { childEnvironment, DEVICE_ENV, isDeviceChoice } from '../engine/gpuEnvironment';
import { OutOfMemoryError } from '../training/outOfMemory';
import { CANDIDATE_INPUT_FLAGS, parseArgs, parseVoxelSizes, UsageError, type FlagSpec } from './args';
import { progressPrinter, stopOnSignals } from './progress';
import { SlurmError } from '../cluster/slurm';
import { cancelCommand, jobsCommand, runsCommand } from './clusterCommands';
import { MODEL_USAGE, modelCommand } from './modelCommands';
import { classifyCommand, engineCommand, evaluateCommand, exitWithParent, RELAYED_ENV, runInChild, trainCommand } from './trainCommands';

const USAGE = `cellfinder-retrain: build and check cellfinder training data

Commands:
  extract --signal <planes dir|tif> [--background <planes dir|tif>] --points <xml>
          --output-dir <dir> [--voxel-sizes Z Y X] [--label cell|no_cell]
          [--absolute-paths] [--json]
      Cut network cubes (20x50x50) around the points into a training dataset
      (cells/, non_cells/, training.yaml). Voxel sizes are the data's, in µm;
      without them no rescaling is done. Each point's Cell Counter type gives
      its label (2 = cell, 1 = non-cell) unless --label is given.
  dataset create <dir> [--no-background] [--absolute-paths]
  dataset info <training.yaml|dir> [--json]
  dataset validate <training.yaml|dir> [--json]
  dataset merge -y <training.yaml>... --output-dir <dir> [--absolute-paths] [--json]

training.yaml paths are written relative to the YAML's folder unless
--absolute-paths is given; cellfinder_train reads relative paths from its
working directory, so run it from the dataset folder (see README).
  train -y <training.yaml>... -o <dir> [cellfinder_train's options]
      --network-depth 18|34|50|101|152 (50)  --epochs (100)  --batch-size (16)
      --learning-rate (0.0001)  --test-fraction (0.1)  --trained-model <.keras>
      --model-weights <.h5|.weights.h5>  --continue-training  --no-augment
      --augment-likelihood (0.9)  --no-save-checkpoints  --save-weights
      --save-progress  --lr-schedule E...  --lr-multiplier (0.1)
      --normalize-channels
      ours: --seed N  --stratified-split  --balanced  --augment-parity
            --fresh-optimizer (from a model file: its weights, a new Adam at
            --learning-rate; without it the file's Adam and rate go on)
            --keep-checkpoints N (the N lowest val_loss; default: every epoch's)
            --resume <output-dir>  --device auto|gpu|cpu  --json (events as JSON lines)
            --config <train-config.json> (a run's whole settings, as the editor
            writes them, instead of -y, -o and the options above)
      --slurm [--partition P] [--gres gpu:1] [--cpus N] [--mem 32G] [--time 12:00:00]
              [--account A] [--sbatch-line --qos=long]... [--requeue]
          Submit the same command as a SLURM job (sbatch) instead of running it
          here: it prints the job id; the job writes the same events and outputs
          into -o. With --resume <dir>: resubmit an interrupted run (without SLURM
          options it asks for what its last job asked for). The job gets
          SIGUSR2 5 minutes before its time limit and stops there resumably;
          with --requeue SLURM may requeue it, and it requeues itself there:
          each start resumes the run.
  runs [folder...] [--json]
      The training runs under the folders (default: here): status, epoch, and
      for SLURM runs their job's state (pending: Resources, running on node X).
  cancel <run-dir>
      Stop a run (its SLURM job, or its process here) after the current batch,
      with a resumable checkpoint; continue it with train --resume.
  classify --trained-model|--model-weights <file> --signal <planes> [--background <planes>]
           --points <xml> -o <dir> [--voxel-sizes Z Y X] [--batch-size 32] [--device D]
           [--cache <dataset>] [--normalize-channels]
      One pass through the volume; Ctrl-C stops after the batch in progress, and
      the same command (also after a crash) classifies only what is left
      (nothing, once it has finished with the same model and points).
      --brains <list.csv> instead of --signal/--background/--points/-o: each brain
      of the list (header signal,background,points,output_dir) in turn, or the
      one of --brain N. With --slurm [SLURM options as for train]: a job; with
      --brains, an array job, one task per brain, its SLURM files in -o.
  jobs <folder> [--json]
      A classify job's tasks (from classify --slurm -o <folder>): each one's
      SLURM state and progress.
      Writes classified_points.xml (cellfinder's) and classified_points.csv
      (x,y,z,type,cell_probability,non_cell_probability).
      --normalize-channels: as cellfinder, each channel's cubes become
      (x - mean) / std, with the mean and std of every int(planes/50)-th plane
      of that volume; for models trained with --normalize-channels.
      --cache: the cubes the dataset's candidate cache holds for these
      candidates (see cache) are read from it, not cut again: re-predicting a
      labelling set after retraining takes one sequential read.
  evaluate --trained-model <file> [--compare <file>] -y <training.yaml>... [--device D]
  engine setup [--wheel <tensorflow wheel>] [--from-python] [--python <python3>] [--force]
               [--tfjs-node-tarball <tgz>] [--google-protobuf-tarball <tgz>] [--compile]
      Set up the native engine (TensorFlow's C library from PyPI's tensorflow-cpu
      wheel, a wheel you give, or your Python TensorFlow, with the TensorFlow
      addon this package ships) once, offline after that, then check its
      gradients. About 15 s and 640 MB. With the wheel and the npm tarballs
      given (npm pack @tensorflow/tfjs-node@4.22.0 google-protobuf@3.21.4) it
      needs no network. --compile builds the addon here instead (a C++
      compiler, make, python3; Node's headers, else node-api-headers from npm
      or --node-api-headers-tarball); set-up does so itself when the shipped
      addon does not fit.
  engine setup --gpu [--wheel <tensorflow wheel>] [--from-python] [--cuda-libs <dir>...]
               [--skip-driver-check] [--force]
      The GPU engine: TensorFlow's CUDA 12 build (the tensorflow wheel, 570 MB),
      and the CUDA and cuDNN libraries from --cuda-libs (folders with the
      libraries or nvidia-*.whl files), your Python's nvidia-* packages, the
      system, or PyPI (1.5 GB). Stops on a machine without an NVIDIA driver
      unless --skip-driver-check.
  engine check [--engine cpu|gpu]
      Gradient checks and a one-batch fit against the pure-JavaScript engine.
  engine build-addon [--wheel <tensorflow-cpu wheel>] [--work-dir <dir>] [--force]
      For packagers (npm run build:addon): compile the addon shipped in
      prebuilds/linux-x64 and check it needs nothing newer than manylinux_2_27.
  engine status [--json]
      Which engines are set up, the NVIDIA driver, CUDA libraries and GPU found,
      and exactly why the GPU is not used.
  engine bench [--network-depth 50] [--train-batch 16] [--infer-batch 64] [--steps 3] [--device D]
      Training and inference cubes/s of the network on the engine in use.
--device (default auto, or CELLFINDER_RETRAIN_DEVICE): auto uses the GPU when
it can and says why not; cpu never does.
  choose --points <detected.xml> -o <chosen.xml> [-n 2000] [--probabilities classified_points.csv]
         [--seed 1] [--signal <planes> [--voxel-sizes Z Y X]]
      The candidates to label out of a large detection: n spread evenly over the
      volume (seeded), or with a classify run's probabilities half predicted
      cells, half predicted non-cells, most uncertain first (then also
      <chosen>.classified_points.csv). With --signal, only candidates with a
      full cube.
  cache <dataset> [--json]
      Cuts every candidate of the set last labelled into the dataset (its
      labelling.json) into <dataset>/.candidate-cache/, in one pass through the
      volume, so labelling shows each one at once. Ctrl-C stops; run it again
      to continue. The editor starts it for sets of 500 candidates or more.
${MODEL_USAGE}
  demo [--output-dir <dir>] [--epochs 2]
      The whole loop on the bundled sample: extract cubes, build a labelled
      dataset, retrain ResNet-18 briefly, classify the candidates, evaluate.

Exit codes: 0 ok, 1 data problem, 2 usage error.`;

interface Io {
  out: (text: string) => void;
  err: (text: string) => void;
}

const defaultIo: Io = {
  out: (text) => process.stdout.write(`${text}\n`),
  err: (text) => process.stderr.write(`${text}\n`),
};

export async function main(argv: readonly string[], io: Io = defaultIo): Promise<number> {
  try {
    const [command, ...rest] = argv;
    switch (command) {
      case 'extract':
        return await extractCommand(rest, io);
      case 'dataset':
        return await datasetCommand(rest, io);
      case 'demo':
        return await demoCommand(rest, io);
      case 'cache':
        return await cacheCommand(rest, io);
      case 'choose':
        return await chooseCommand(rest, io);
      case 'train':
        return await trainCommand(rest, io);
      case 'classify':
        return await classifyCommand(rest, io);
      case 'jobs':
        return await jobsCommand(rest, io);
      case 'runs':
        return await runsCommand(rest, io);
      case 'cancel':
        return await cancelCommand(rest, io);
      case 'evaluate':
        return await evaluateCommand(rest, io);
      case 'engine':
        return await engineCommand(rest, io);
      case 'model':
        return await modelCommand(rest, io);
      case undefined:
      case 'help':
      case '--help':
      case '-h':
        io.out(USAGE);
        return command === undefined ? 2 : 0;
      default:
        throw new UsageError(`unknown command "${command}"`);
    }
  } catch (error) {
    if (error instanceof UsageError) {
      io.err(`error: ${error.message}\n\n${USAGE}`);
      return 2;
    }
    if (error instanceof DataFileError || error instanceof OutOfMemoryError || error instanceof SlurmError) {
      io.err(`error: ${error.message}`);
      return 1;
    }
    io.err(`error: ${(error as Error)?.stack ?? String(error)}`);
    return 1;
  }
}

/** Commands that load TensorFlow, and so may need the GPU engine's library path. */
const TENSORFLOW_COMMANDS = new Set(['train', 'classify', 'evaluate', 'demo', 'engine check', 'engine bench']);

/**
 * The process entry (bin/cellfinder-retrain.js). A command that loads
 * TensorFlow runs in a child process: one that may run on the GPU engine
 * needs its CUDA libraries on LD_LIBRARY_PATH, which the dynamic loader reads
 * only at start, and TensorFlow writes INFO lines at load that only a relay
 * of its stderr can hold back (engine/tensorflowLog.ts).
 */
export async function runCommandLine(argv: readonly string[]): Promise<number> {
  // Output piped into a reader that stops early (`| head -1`): the work goes on, its output is dropped.
  for (const stream of [process.stdout, process.stderr]) {
    stream.on('error', (error: NodeJS.ErrnoException) => {
      if (error.code !== 'EPIPE') throw error;
    });
  }
  const flag = argv.findIndex((arg) => arg === '--device' || arg.startsWith('--device='));
  const device = flag < 0 ? process.env[DEVICE_ENV] || 'auto' : argv[flag].includes('=') ? argv[flag].slice('--device='.length) : argv[flag + 1];
  if ((TENSORFLOW_COMMANDS.has(argv[0]) || TENSORFLOW_COMMANDS.has(`${argv[0]} ${argv[1]}`)) && isDeviceChoice(device)) {
    if (!process.env[RELAYED_ENV]) return runInChild(argv, childEnvironment(process.env, device), defaultIo);
  }
  if (process.env[RELAYED_ENV]) exitWithParent();
  return main(argv);
}

const EXTRACT_FLAGS: FlagSpec[] = [...CANDIDATE_INPUT_FLAGS, { name: 'label', values: 1 }, { name: 'absolute-paths', values: 0 }];

function one(flags: Map<string, string[]>, name: string, required: true): string;
function one(flags: Map<string, string[]>, name: string, required?: false): string | undefined;
function one(flags: Map<string, string[]>, name: string, required = false): string | undefined {
  const value = flags.get(name)?.[0];
  if (required && value === undefined) throw new UsageError(`--${name} is required`);
  return value;
}

async function extractCommand(argv: readonly string[], io: Io): Promise<number> {
  const { flags, positionals } = parseArgs(argv, EXTRACT_FLAGS);
  if (positionals.length) throw new UsageError(`unexpected argument ${positionals[0]}`);
  const label = one(flags, 'label');
  if (label !== undefined && label !== 'cell' && label !== 'no_cell') throw new UsageError('--label must be cell or no_cell');
  const voxelSizes = parseVoxelSizes(flags.get('voxel-sizes'));
  const json = flags.has('json');
  let lastPercent = -1;
  const report = await extractToDataset({
    signal: one(flags, 'signal', true),
    background: one(flags, 'background'),
    points: one(flags, 'points', true),
    outputDir: one(flags, 'output-dir', true),
    voxelSizes,
    label: label as CubeLabel | undefined,
    absolutePaths: flags.has('absolute-paths'),
    onProgress: (done, total) => {
      const percent = total === 0 ? 100 : Math.floor((100 * done) / total);
      if (percent !== lastPercent) io.err(`extracting cubes: ${done}/${total} (${percent}%)`);
      lastPercent = percent;
    },
  });
  for (const warning of report.warnings) io.err(`warning: ${warning}`);
  if (json) {
    io.out(JSON.stringify(report, null, 2));
    return 0;
  }
  const cuboid = cuboidShape(voxelSizes);
  io.out(`Cubes written to ${path.dirname(report.yamlFile)} (training.yaml: ${report.yamlFile})`);
  io.out(`  cuboid in data voxels (z, y, x): ${cuboid.join(' x ')} -> network cube ${CUBE_SHAPE.depth} x ${CUBE_SHAPE.height} x ${CUBE_SHAPE.width}${voxelSizes ? ` (rescaled from ${voxelSizes.join(', ')} µm)` : ' (no rescaling)'}`);
  io.out(`  added ${report.added}, already present ${report.alreadyPresent}${report.repaired ? `, completed ${report.repaired} (a channel file was missing)` : ''}, skipped ${report.skipped.length}${report.unlabelledTypes ? `, ${report.unlabelledTypes} point(s) of other Cell Counter types left out` : ''}`);
  for (const skipped of report.skipped) {
    io.out(`  skipped point x=${skipped.point.x} y=${skipped.point.y} z=${skipped.point.z}: ${skipped.reason}`);
  }
  io.out(`  dataset now holds ${report.cells} cell(s) and ${report.nonCells} non-cell(s)`);
  return 0;
}

async function chooseCommand(argv: readonly string[], io: Io): Promise<number> {
  const { flags, positionals } = parseArgs(argv, [
    { name: 'points', values: 1 },
    { name: 'count', short: 'n', values: 1 },
    { name: 'probabilities', values: 1 },
    { name: 'seed', values: 1 },
    { name: 'signal', short: 's', values: 1 },
    { name: 'voxel-sizes', short: 'v', values: 3 },
    { name: 'output', short: 'o', values: 1 },
    { name: 'json', values: 0 },
  ]);
  if (positionals.length) throw new UsageError(`unexpected argument ${positionals[0]}`);
  const count = Number(one(flags, 'count') ?? DEFAULT_CHOSEN);
  if (!Number.isInteger(count) || count < 1) throw new UsageError('-n needs a positive whole number of candidates');
  const seed = Number(one(flags, 'seed') ?? 1);
  if (!Number.isInteger(seed)) throw new UsageError('--seed needs a whole number');
  const output = one(flags, 'output', true);
  if (!output.toLowerCase().endsWith('.xml')) throw new UsageError('-o names the Cell Counter XML to write (ending .xml)');
  const voxelSizes = parseVoxelSizes(flags.get('voxel-sizes'));
  const { points: all } = await readCellCounterXml(one(flags, 'points', true));
  let points = all;
  const signal = one(flags, 'signal');
  if (signal) {
    // Only candidates with a full cube: every one chosen can be labelled.
    const [volume] = await openChannels(signal);
    try {
      points = planExtraction({ points: all, channels: [volume], dataVoxelSizes: voxelSizes }).extractable.sort((a, b) => a.index - b.index).map((entry) => entry.point);
    } finally {
      await volume.close();
    }
  }
  const probabilitiesFile = one(flags, 'probabilities');
  const chosen = chooseCandidates(points, { count, seed, probabilities: probabilitiesFile ? await readProbabilities(probabilitiesFile) : undefined });
  if (chosen.length === 0) throw new DataFileError(probabilitiesFile ?? one(flags, 'points', true), 'gives no candidate to choose (no probabilities for these points?)', 'Give the classified_points.csv of a classify run on these same points');
  const written = await writeChosen(path.resolve(output), chosen);
  for (const warning of written.warnings) io.err(`warning: ${warning}`);
  const cells = chosen.filter((p) => p.probabilities !== undefined && p.type === 2).length;
  const how = probabilitiesFile ? `${cells} predicted cells and ${chosen.length - cells} predicted non-cells, most uncertain first` : `spread evenly over the volume (seed ${seed})`;
  if (flags.has('json')) io.out(JSON.stringify({ ...written, chosen: chosen.length, of: points.length, predictedCells: probabilitiesFile ? cells : undefined }));
  else {
    io.out(`Chose ${chosen.length} of ${points.length} candidates: ${how}`);
    io.out(`  ${written.xmlFile} (Cell Counter XML: label it here, or open it in napari)`);
    if (written.probabilitiesFile) io.out(`  ${written.probabilitiesFile} (their probabilities, for labelling's uncertainty order)`);
  }
  return 0;
}

/** The nice value of a cache sweep (0 normal, 19 lowest). */
const BACKGROUND_PRIORITY = 10;

async function cacheCommand(argv: readonly string[], io: Io): Promise<number> {
  const { flags, positionals } = parseArgs(argv, [{ name: 'json', values: 0 }]);
  if (positionals.length !== 1) throw new UsageError('cache needs one dataset folder (one that candidates were labelled into)');
  // Background work: the expert's decisions (and the editor) come first on a workstation's few cores.
  try {
    setPriority(BACKGROUND_PRIORITY);
  } catch {
    // Not allowed here (some containers): the sweep runs at normal priority.
  }
  const stopping = stopOnSignals(io, 'Stopping; the cubes cut so far are kept, and the same command continues from there...');
  try {
    const result = await cacheCandidates(path.resolve(positionals[0]), { signal: stopping.signal, onProgress: progressPrinter(io, 'caching candidates') });
    if (flags.has('json')) io.out(JSON.stringify(result));
    else io.out(`Cached ${result.cached} of ${result.total} candidates in ${result.cacheFolder}`);
    return 0;
  } catch (error) {
    if (!stopping.signal.aborted) throw error;
    io.err('Stopped. Run the same command again to cut the rest.');
    return 3;
  } finally {
    stopping.release();
  }
}

async function datasetCommand(argv: readonly string[], io: Io): Promise<number> {
  const [sub, ...rest] = argv;
  switch (sub) {
    case 'create': {
      const { flags, positionals } = parseArgs(rest, [
        { name: 'no-background', values: 0 },
        { name: 'absolute-paths', values: 0 },
      ]);
      if (positionals.length !== 1) throw new UsageError('dataset create needs one folder');
      const dataset = await TrainingDataset.create(positionals[0], { backgroundChannel: !flags.has('no-background'), absolutePaths: flags.has('absolute-paths') });
      io.out(`Dataset ready: ${dataset.yamlFile}`);
      return 0;
    }
    case 'info': {
      const { flags, positionals } = parseArgs(rest, [{ name: 'json', values: 0 }]);
      const summary = await summarizeTrainingYaml(yamlPath(positionals));
      if (flags.has('json')) io.out(JSON.stringify(summaryJson(summary), null, 2));
      else printSummary(summary, io);
      return 0;
    }
    case 'validate': {
      const { flags, positionals } = parseArgs(rest, [{ name: 'json', values: 0 }]);
      const { summary, problems, warnings } = await validateTrainingYaml(yamlPath(positionals));
      if (flags.has('json')) {
        io.out(JSON.stringify({ ...summaryJson(summary), problems, warnings }, null, 2));
      } else {
        printSummary(summary, io);
        if (problems.length === 0) io.out('Valid: every cube has all its channels, is 20x50x50 and readable.');
        for (const problem of problems) io.out(`problem: ${problem.file}: ${problem.problem}. ${problem.fix}`);
        for (const warning of warnings) io.out(`note: ${warning.file}: ${warning.problem}. ${warning.fix}`);
      }
      return problems.length === 0 ? 0 : 1;
    }
    case 'merge': {
      const { flags, positionals } = parseArgs(rest, [
        { name: 'yaml', short: 'y', values: '+' },
        { name: 'output-dir', short: 'o', values: 1 },
        { name: 'absolute-paths', values: 0 },
        { name: 'json', values: 0 },
      ]);
      const sources = [...(flags.get('yaml') ?? []), ...positionals].map((source) => yamlPath([source]));
      if (sources.length < 2) throw new UsageError('dataset merge needs at least two training.yaml files (-y a.yaml b.yaml)');
      const report = await mergeTrainingYamls(sources, one(flags, 'output-dir', true), { absolutePaths: flags.has('absolute-paths') });
      if (flags.has('json')) {
        io.out(JSON.stringify(report, null, 2));
        return 0;
      }
      io.out(`Merged ${sources.length} datasets into ${report.yamlFile}`);
      io.out(`  copied ${report.copied} cube(s): ${report.cells} cell(s), ${report.nonCells} non-cell(s); ${report.duplicates} duplicate(s) left out`);
      for (const conflict of report.conflicts) {
        const p = conflict.position;
        io.out(`  conflict at x=${p.x} y=${p.y} z=${p.z} (${conflict.sourceVolume}): kept ${conflict.kept.label} from ${conflict.kept.yamlFile}, left out ${conflict.dropped.label} from ${conflict.dropped.yamlFile}`);
      }
      return 0;
    }
    default:
      throw new UsageError(`unknown dataset command "${sub ?? ''}" (create, info, validate, merge)`);
  }
}

function yamlPath(positionals: readonly string[]): string {
  if (positionals.length !== 1) throw new UsageError('give one training.yaml or dataset folder');
  const given = positionals[0];
  return given.endsWith('.yaml') || given.endsWith('.yml') ? given : path.join(given, 'training.yaml');
}

function summaryJson(summary: DatasetSummary) {
  return {
    yamlFile: summary.yamlFile,
    cells: summary.cells,
    nonCells: summary.nonCells,
    entries: summary.entries.map(({ entry, cubes }) => ({
      cubeDir: entry.cubeDir,
      cubeDirPath: entry.cubeDirPath,
      resolvedAgainst: entry.resolvedAgainst,
      type: entry.type,
      signalChannel: entry.signalChannel,
      bgChannel: entry.bgChannel,
      cubes: cubes.length,
    })),
  };
}

function printSummary(summary: DatasetSummary, io: Io): void {
  io.out(`Dataset ${summary.yamlFile}: ${summary.cells} cell(s), ${summary.nonCells} non-cell(s)`);
  for (const { entry, cubes } of summary.entries) {
    const where = entry.resolvedAgainst === 'absolute' ? '' : ` (relative path found from the ${entry.resolvedAgainst === 'yaml-folder' ? "YAML's folder" : 'working directory'})`;
    io.out(`  ${entry.type.padEnd(7)} ${String(cubes.length).padStart(6)} cube(s) in ${entry.cubeDirPath}${where}`);
  }
}

/** Where the bundled sample lives, found from the built CLI (dist/) or the compiled tests (out/src/cli/). */
function sampleDataFolder(): string {
  const candidates = [path.resolve(__dirname, '..', 'test', 'fixtures', 'cellfinder-data'), path.resolve(__dirname, '..', '..', '..', 'test', 'fixtures', 'cellfinder-data')];
  return candidates.find((folder) => existsSync(folder)) ?? candidates[0];
}

/**
 * The whole loop on the bundled sample: cut cubes around cellfinder's
 * candidates, build a labelled dataset from cellfinder's own labelled
 * training cubes, retrain a small network for a few epochs, classify the
 * candidates with it and evaluate it.
 */
async function demoCommand(argv: readonly string[], io: Io): Promise<number> {
  const { flags, positionals } = parseArgs(argv, [
    { name: 'output-dir', short: 'o', values: 1 },
    { name: 'epochs', values: 1 },
  ]);
  if (positionals.length) throw new UsageError(`unexpected argument ${positionals[0]}`);
  const sample = sampleDataFolder();
  const outputDir = path.resolve(one(flags, 'output-dir') ?? 'demo-output');
  const epochs = one(flags, 'epochs') ?? '2';
  const signal = path.join(sample, 'signal');
  const background = path.join(sample, 'background');
  const candidates = path.join(sample, 'candidates', 'candidates.xml');
  const step = async (title: string, run: () => Promise<number>) => {
    io.out(`\n== ${title}`);
    const code = await run();
    if (code !== 0) throw new DataFileError(outputDir, `the demo step "${title}" failed (exit code ${code})`, 'See the messages above');
  };
  io.out(`Sample: BrainGlobe cellfinder test data (${sample}): a 26 x 1116 x 627 brain region at 5, 2, 2 µm and 38 candidates cellfinder detected in it.`);
  await step('1. Cut network cubes around the candidates (unlabelled: Cell Counter type 1, so they sit in non_cells/ until labelled)', () =>
    extractCommand(['--signal', signal, '--background', background, '--points', candidates, '--output-dir', path.join(outputDir, 'candidate-cubes'), '--voxel-sizes', '5', '2', '2'], io),
  );
  // cellfinder's own labelled training cubes (2 cells, 2 non-cells), as a dataset of ours.
  const labelled = path.join(outputDir, 'labelled');
  await step('2. A labelled training dataset (cellfinder\'s labelled test cubes)', async () => {
    const dataset = await TrainingDataset.create(labelled);
    for (const [folder, label] of [['cells', 'cell'], ['non_cells', 'no_cell']] as const) {
      const folderPath = path.join(sample, 'training', folder);
      for (const name of (await readdir(folderPath)).filter((n) => n.endsWith('Ch0.tif'))) {
        const files = [path.join(folderPath, name), path.join(folderPath, name.replace(/Ch0\.tif$/, 'Ch1.tif'))];
        const channels = await Promise.all(files.map(async (file) => (await readCube(file)).data));
        await dataset.addCube({ position: pointFromCubeFileName(name) as Point3, label, channels, source: folderPath });
      }
    }
    return datasetCommand(['info', labelled], io);
  });
  const modelDir = path.join(outputDir, 'model');
  await step(`3. Retrain ResNet-18 for ${epochs} epochs`, () =>
    trainCommand(['-y', path.join(labelled, 'training.yaml'), '-o', modelDir, '--network-depth', '18', '--epochs', epochs, '--batch-size', '2', '--test-fraction', '0.25', '--seed', '1', '--no-save-checkpoints', '--save-progress'], io),
  );
  const model = path.join(modelDir, 'model.keras');
  await step('4. Classify the candidates with the new model', () =>
    classifyCommand(['--trained-model', model, '--signal', signal, '--background', background, '--points', candidates, '--voxel-sizes', '5', '2', '2', '-o', path.join(outputDir, 'classified')], io),
  );
  await step('5. Evaluate the new model on the labelled cubes', () => evaluateCommand(['--trained-model', model, '-y', path.join(labelled, 'training.yaml')], io));
  io.out(`\nEverything is in ${outputDir}. The model files load in cellfinder (Keras 3): ${model}`);
  return 0;
}

/**
 * A BioImage Model Zoo package of a cellfinder model (model description
 * format 0.5.12, bioimageio.spec's `model/v0_5.py`): rdf.yaml; the `.keras`
 * model as `keras_v3` weights; a test input and output (.npy) cut from real
 * cubes of the model's dataset with the outputs our own network gives; a
 * cover image of those cubes; README.md with a "Validation" section; and the
 * whole as a zip. `bioimageio test` loads the `.keras` with Keras 3 and
 * checks that it reproduces the test output.
 *
 * The tensors are the network's own: input (batch, y, x, z, channel) with
 * y 50, x 50, z 20 voxels of (1, 1, 5) µm and channels [signal, background]
 * (cellfinder feeds cubes in this order, see toNetworkOrder), output
 * (batch, channel) softmax [non_cell, cell].
 */
import { spawn } from 'node:child_process';
import { createHash } from 'node:crypto';
import { promises as fs } from 'node:fs';
import * as path from 'node:path';
import type * as tfType from '@tensorflow/tfjs';
import { stringify } from 'yaml';
import { parseJsonLines } from '../core/atomicFile';
import { CUBE_SHAPE, NETWORK_VOXEL_SIZES } from '../core/cube';
import { DataFileError } from '../core/errors';
import { EVENTS_FILE } from '../core/runFiles';
import type { TrainingEvent } from '../training/events';
import { loadNetwork, predict } from '../training/inference';
import { KERAS_VERSION } from '../training/kerasConfig';
import { writeStoredZip } from '../training/storedZip';
import type { EpochMetrics } from '../training/trainer';
import { assembleBatch, planBatch, type Sample } from '../training/trainingData';
import { writeExportFolder, type ExportFolderOptions } from './exportFolder';
import { describeKerasModel } from './kerasArchive';
import { encodeNpyFloat32 } from './npy';
import { encodeGreyPng } from './png';

export const BIOIMAGEIO_FORMAT_VERSION = '0.5.12';
export const RDF_FILE = 'rdf.yaml';
const WEIGHTS_FILE = 'model.keras';
const TEST_INPUT_FILE = 'test_input.npy';
const TEST_OUTPUT_FILE = 'test_output.npy';
const COVER_FILE = 'cover.png';
const DOCUMENTATION_FILE = 'README.md';
/** The zip of the package, inside the package folder (rdf.yaml does not list it, so it is not packed into itself). */
export const PACKAGE_ZIP = 'package.zip';

/** Test cubes per class: enough to show both answers, few enough to keep the package small (80 KB a cube). */
const TEST_CUBES_PER_CLASS = 2;

export interface ValidationMetrics {
  /** Where the figures come from (the run's events file). */
  source: string;
  epochs: EpochMetrics[];
  /** Cubes in the run's training and validation parts. */
  samples?: { training: number; validation: number; cells: number; nonCells: number };
}

/** The epochs a run's events file records (of its last attempt's history), or undefined without one. */
export async function validationFromRun(runDir: string): Promise<ValidationMetrics | undefined> {
  const file = path.join(runDir, EVENTS_FILE);
  const text = await fs.readFile(file, 'utf8').catch(() => undefined);
  if (text === undefined) return undefined;
  const events = parseJsonLines<TrainingEvent>(text);
  const byEpoch = new Map<number, EpochMetrics>();
  for (const event of events) if (event.type === 'epoch') byEpoch.set(event.epoch, event);
  const started = [...events].reverse().find((event): event is Extract<TrainingEvent, { type: 'started' }> => event.type === 'started');
  return { source: file, epochs: [...byEpoch.values()].sort((a, b) => a.epoch - b.epoch), samples: started?.samples };
}

export interface BioimageioExportOptions extends ExportFolderOptions {
  /** Labelled cubes of the model's own dataset; the test tensors and the cover are cut from the first cells and non-cells. */
  samples: readonly Sample[];
  /** The model was trained with --normalize-channels: the test input is normalised the same way (training.yaml's statistics). */
  normalise?: boolean;
  validation?: ValidationMetrics;
  /** The package's name (default from the model's depth and file name). */
  name?: string;
  authors?: string[];
  /** SPDX licence of the weights (default CC-BY-4.0, the zoo's usual one). */
  license?: string;
  /**
   * The Keras backend the package says its weights run on, and its version:
   * the file itself is backend-independent (we write it without any backend),
   * and the zoo's runner loads it on whichever backend KERAS_BACKEND names.
   */
  backend?: ['tensorflow' | 'jax' | 'torch', string];
}

const DEFAULT_BACKEND: NonNullable<BioimageioExportOptions['backend']> = ['jax', '0.10.2'];

function sha256(data: Uint8Array): string {
  return createHash('sha256').update(data).digest('hex');
}

/** The first TEST_CUBES_PER_CLASS cells, then as many non-cells (fewer when the dataset has fewer). */
function testSamples(samples: readonly Sample[]): Sample[] {
  const cells = samples.filter((sample) => sample.label === 1).slice(0, TEST_CUBES_PER_CLASS);
  const nonCells = samples.filter((sample) => sample.label === 0).slice(0, TEST_CUBES_PER_CLASS);
  return [...cells, ...nonCells];
}

/**
 * Each test cube's maximum projection along z, each channel beside the
 * other, contrast-stretched per channel, the cubes in rows of two, doubled in
 * size: four two-channel cubes make 400 x 200 pixels, the 2:1 the zoo asks
 * for covers.
 */
function coverImage(inputs: Float32Array, count: number, channels: number): { pixels: Uint8Array; width: number; height: number } {
  const { height: ny, width: nx, depth: nz } = CUBE_SHAPE;
  const zoom = 2;
  const columns = Math.min(2, count);
  const rows = Math.ceil(count / columns);
  const tileWidth = nx * channels * zoom;
  const width = tileWidth * columns;
  const height = ny * zoom * rows;
  const pixels = new Uint8Array(width * height);
  for (let cube = 0; cube < count; cube++) {
    for (let c = 0; c < channels; c++) {
      const projection = new Float32Array(ny * nx).fill(-Infinity);
      for (let y = 0; y < ny; y++) {
        for (let x = 0; x < nx; x++) {
          const base = (((cube * ny + y) * nx + x) * nz) * channels + c;
          for (let z = 0; z < nz; z++) projection[y * nx + x] = Math.max(projection[y * nx + x], inputs[base + z * channels]);
        }
      }
      let low = Infinity;
      let high = -Infinity;
      for (const value of projection) {
        low = Math.min(low, value);
        high = Math.max(high, value);
      }
      const range = high - low || 1;
      const left = (cube % columns) * tileWidth + c * nx * zoom;
      const top = Math.floor(cube / columns) * ny * zoom;
      for (let y = 0; y < ny * zoom; y++) {
        for (let x = 0; x < nx * zoom; x++) {
          const value = projection[Math.floor(y / zoom) * nx + Math.floor(x / zoom)];
          pixels[(top + y) * width + left + x] = Math.round((255 * (value - low)) / range);
        }
      }
    }
  }
  return { pixels, width, height };
}

const percent = (value: number | undefined) => (value === undefined ? 'n/a' : `${(100 * value).toFixed(1)}%`);
const fixed = (value: number | undefined) => (value === undefined ? 'n/a' : value.toFixed(4));

function validationSection(validation: ValidationMetrics | undefined): string[] {
  const lines = ['## Validation', ''];
  const epochs = validation?.epochs ?? [];
  if (!validation || epochs.length === 0) {
    return [...lines, 'No training run was given with this model, so no validation figures are recorded here. Measure it on labelled cubes it was not trained on with `cellfinder-retrain evaluate --trained-model model.keras -y training.yaml`.', ''];
  }
  const last = epochs[epochs.length - 1];
  const withValidation = epochs.filter((epoch) => epoch.valAccuracy !== undefined);
  const best = withValidation.reduce<EpochMetrics | undefined>((a, b) => (a === undefined || (b.valAccuracy as number) > (a.valAccuracy as number) ? b : a), undefined);
  lines.push(`From the training run's log (\`${path.basename(validation.source)}\`), ${epochs.length} epoch(s)${validation.samples ? `, ${validation.samples.training} training and ${validation.samples.validation} validation cubes (${validation.samples.cells} cells, ${validation.samples.nonCells} non-cells)` : ''}.`, '');
  if (withValidation.length === 0) lines.push('The run held out no validation cubes (--test-fraction 0): the figures below are on its training cubes only.', '');
  lines.push('| | epoch | loss | accuracy | validation loss | validation accuracy |', '| --- | --- | --- | --- | --- | --- |');
  const row = (label: string, epoch: EpochMetrics) => `| ${label} | ${epoch.epoch + 1} | ${fixed(epoch.loss)} | ${percent(epoch.accuracy)} | ${fixed(epoch.valLoss)} | ${percent(epoch.valAccuracy)} |`;
  lines.push(row('final', last));
  if (best) lines.push(row('best validation accuracy', best));
  lines.push('');
  return lines;
}

function documentation(name: string, depth: number, channels: number, normalised: boolean, validation: ValidationMetrics | undefined, testCount: number): string {
  return [
    `# ${name}`,
    '',
    `cellfinder's cube classification network (ResNet-${depth}, Keras 3), retrained with cellfinder-retrain. It tells a candidate cell from a non-cell`,
    'in a 3D cube cut around it from a whole-brain light-sheet volume.',
    '',
    '## Input and output',
    '',
    `- Input \`cubes\`: (batch, y, x, z, channel) = (B, ${CUBE_SHAPE.height}, ${CUBE_SHAPE.width}, ${CUBE_SHAPE.depth}, ${channels}), float32, voxels of (${NETWORK_VOXEL_SIZES[1]}, ${NETWORK_VOXEL_SIZES[2]}, ${NETWORK_VOXEL_SIZES[0]}) µm, channels ${channels === 2 ? '[signal, background]' : '[signal]'}, as cellfinder cuts its cubes (rescaled to these voxel sizes); ${normalised ? 'each channel normalised, (x - mean) / std with its volume\'s statistics, as the model was trained with --normalize-channels' : 'raw intensities, not normalised'}.`,
    '- Output `probabilities`: (batch, channel) softmax [non_cell, cell]; cellfinder calls a candidate a cell when p(cell) > p(non_cell).',
    '',
    `The test tensors are ${testCount} labelled cubes of the model's own training dataset; the cover shows them (maximum projection along z, signal then background).`,
    '',
    ...validationSection(validation),
    '## Use with cellfinder',
    '',
    'The weights file `model.keras` is what `cellfinder_train` writes: pass it to cellfinder as `--trained-model model.keras`.',
    '',
  ].join('\n');
}

/**
 * Writes the package for the `.keras` model `modelFile` into `outDir` (see
 * writeExportFolder) and returns the path of its rdf.yaml.
 */
export async function exportForBioimageio(tf: typeof tfType, modelFile: string, outDir: string, options: BioimageioExportOptions): Promise<string> {
  const { depth, channels } = await describeKerasModel(modelFile);
  const samples = testSamples(options.samples);
  if (samples.length === 0) throw new DataFileError(modelFile, 'has no labelled cubes to cut the test tensors from', 'Give the dataset the model was trained on (--dataset DIR or --run RUN_DIR)');
  if (samples[0].files.length < channels) {
    throw new DataFileError(samples[0].files[0], `has ${samples[0].files.length} channel(s) but the model takes ${channels}`, 'Give the dataset the model was trained on');
  }
  const network = await loadNetwork(tf, modelFile, depth, channels);
  const batch = await assembleBatch(planBatch(samples, { channels, normalise: Boolean(options.normalise) }));
  const { probabilities } = predict(tf, network, batch.inputs, batch.size, channels);
  for (const weights of network.weights.values()) weights.dispose();

  const name = options.name ?? `cellfinder ResNet-${depth} cube classifier (${path.basename(modelFile, '.keras')})`;
  const weights = await fs.readFile(modelFile);
  const testInput = encodeNpyFloat32(batch.inputs, [batch.size, CUBE_SHAPE.height, CUBE_SHAPE.width, CUBE_SHAPE.depth, channels]);
  const testOutput = encodeNpyFloat32(probabilities, [batch.size, 2]);
  const cover = coverImage(batch.inputs, batch.size, channels);
  const [yUm, xUm, zUm] = [NETWORK_VOXEL_SIZES[1], NETWORK_VOXEL_SIZES[2], NETWORK_VOXEL_SIZES[0]];
  const spaceAxis = (id: string, size: number, scale: number) => ({ type: 'space', id, size, unit: 'micrometer', scale });
  const rdf = {
    type: 'model',
    format_version: BIOIMAGEIO_FORMAT_VERSION,
    name,
    description: `cellfinder's 3D cube classifier (ResNet-${depth}): p(cell) for a candidate from a ${CUBE_SHAPE.height}x${CUBE_SHAPE.width}x${CUBE_SHAPE.depth} (y, x, z) cube of ${channels === 2 ? 'signal and background' : 'signal'}.`,
    authors: (options.authors ?? []).map((author) => ({ name: author })),
    cite: [{ text: 'Tyson, A. L., Rousseau, C. V. et al. (2021). A deep learning algorithm for 3D cell detection in whole mouse brain image datasets. PLOS Computational Biology 17(5): e1009074', doi: '10.1371/journal.pcbi.1009074' }],
    license: options.license ?? 'CC-BY-4.0',
    tags: ['cellfinder', 'brainglobe', 'cell-detection', 'classification', '3d', 'light-sheet', 'whole-brain', 'keras'],
    documentation: { source: DOCUMENTATION_FILE },
    covers: [{ source: COVER_FILE }],
    inputs: [
      {
        id: 'cubes',
        description: `Cubes around candidates, channels ${channels === 2 ? 'signal, background' : 'signal'}`,
        axes: [{ type: 'batch' }, spaceAxis('y', CUBE_SHAPE.height, yUm), spaceAxis('x', CUBE_SHAPE.width, xUm), spaceAxis('z', CUBE_SHAPE.depth, zUm), { type: 'channel', channel_names: channels === 2 ? ['signal', 'background'] : ['signal'] }],
        test_tensor: { source: TEST_INPUT_FILE, sha256: sha256(testInput) },
        data: { type: 'float32' },
      },
    ],
    outputs: [
      {
        id: 'probabilities',
        description: 'Softmax over [non_cell, cell]',
        axes: [{ type: 'batch' }, { type: 'channel', channel_names: ['non_cell', 'cell'] }],
        test_tensor: { source: TEST_OUTPUT_FILE, sha256: sha256(testOutput) },
        data: { type: 'float32', range: [0, 1] },
      },
    ],
    weights: {
      keras_v3: { source: WEIGHTS_FILE, sha256: sha256(weights), keras_version: KERAS_VERSION, backend: options.backend ?? DEFAULT_BACKEND },
    },
  };
  const files: Array<[string, Uint8Array | string]> = [
    [RDF_FILE, stringify(rdf)],
    [DOCUMENTATION_FILE, documentation(name, depth, channels, Boolean(options.normalise), options.validation, batch.size)],
    [COVER_FILE, encodeGreyPng(cover.pixels, cover.width, cover.height)],
    [TEST_INPUT_FILE, testInput],
    [TEST_OUTPUT_FILE, testOutput],
    [WEIGHTS_FILE, weights],
  ];
  const folder = await writeExportFolder(
    outDir,
    async (temp) => {
      for (const [file, data] of files) await fs.writeFile(path.join(temp, file), data);
      const zip = await fs.open(path.join(temp, PACKAGE_ZIP), 'wx');
      try {
        await writeStoredZip(zip, files.map(([file]) => ({ name: file, file: path.join(temp, file) })));
      } finally {
        await zip.close();
      }
    },
    options,
  );
  return path.join(folder, RDF_FILE);
}

/**
 * Runs the zoo's own check, `bioimageio test <rdf.yaml>` (bioimageio.core),
 * with `command` (the `bioimageio` executable, e.g. from a venv). A failure
 * is an error carrying bioimageio's report unchanged.
 */
export async function testWithBioimageio(rdfFile: string, command: string, environment: NodeJS.ProcessEnv = process.env): Promise<string> {
  const { code, output } = await new Promise<{ code: number | null; output: string }>((resolve, reject) => {
    const child = spawn(command, ['test', rdfFile], { env: environment, stdio: ['ignore', 'pipe', 'pipe'] });
    let output = '';
    child.stdout.on('data', (chunk: Buffer) => (output += chunk.toString()));
    child.stderr.on('data', (chunk: Buffer) => (output += chunk.toString()));
    child.on('error', (error) => reject(new DataFileError(command, `cannot be run (${error.message})`, 'Install bioimageio.core (pip install bioimageio.core) and give its bioimageio command')));
    child.on('close', (exitCode) => resolve({ code: exitCode, output }));
  });
  if (code !== 0) throw new DataFileError(rdfFile, `failed bioimageio test:\n${output}`, 'Fix what bioimageio reports above and export again');
  return output;
}

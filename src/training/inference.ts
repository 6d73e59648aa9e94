/**
 * Classification with a trained network: candidates + volumes -> cellfinder's
 * classified Cell Counter XML (type 2 = cell, 1 = non-cell, as cellfinder
 * writes it) plus a sidecar with each candidate's p(cell) and log-odds
 * (cellfinder discards them; users need them to find the uncertain
 * candidates), optionally with cellfinder's channel normalisation
 * (--normalize-channels, see channelStatistics.ts). And evaluation of a
 * model on a labelled dataset.
 */
import { existsSync } from 'node:fs';
import { readFile, rename, rm, stat } from 'node:fs/promises';
import * as path from 'node:path';
import type * as tfType from '@tensorflow/tfjs';
import { appendLineDurably, makeFolder, writeFileAtomic } from '../core/atomicFile';
import { readCellCounterXml, writeCellCounterXml, type CellCounterPoint } from '../core/cellCounterXml';
import { CandidateCache } from '../core/candidateCache';
import { classifiedCsv, type ClassifiedCandidate } from '../core/chooseCandidates';
import { channelStatistics, normaliseChannel, type ChannelStatistics } from '../core/channelStatistics';
import { CUBE_SHAPE } from '../core/cube';
import { DataFileError } from '../core/errors';
import { bandRows, extractCubes, planExtraction, type SkippedPoint, type VoxelSizes } from '../core/extraction';
import { bytesPerPixel } from '../core/tiff';
import { openChannels } from '../core/volume';
import { readModelFile } from './modelFiles';
import { forward, initialWeights, resnetSpec, weightKey, type NetworkDepth, type ResNetSpec, type Weights } from './resnet';
import { BatchThread } from './batchThread';
import { inBatches, packChannel, planBatch, toNetworkOrder, type Sample } from './trainingData';

export interface LoadedNetwork {
  spec: ResNetSpec;
  weights: Weights;
  file: string;
}

/** Loads a model or weights file into cellfinder's network of the given depth. */
export async function loadNetwork(tf: typeof tfType, file: string, depth: NetworkDepth, channels: number): Promise<LoadedNetwork> {
  const loaded = await readModelFile(file, { depth, channels });
  const spec = resnetSpec(loaded.depth ?? depth, channels);
  const weights = initialWeights(tf, spec, 0);
  for (const layer of spec.layers) {
    for (const w of layer.weights) {
      const key = weightKey(layer.name, w.name);
      (weights.get(key) as tfType.Variable).assign(tf.tensor(loaded.weights.get(key) as Float32Array, w.shape));
    }
  }
  return { spec, weights, file };
}

/**
 * The network's output for each cube of a (batch, y, x, z, channels) input:
 * the softmax and the logits before it, each (count, 2) flat, index 0
 * non-cell, 1 cell (cellfinder's order). The logits' difference is the
 * log-odds of cell, which the softmax's float32 rounding loses at both ends.
 */
export function predict(tf: typeof tfType, network: LoadedNetwork, inputs: Float32Array, count: number, channels: number): { probabilities: Float32Array; logits: Float32Array } {
  return tf.tidy(() => {
    const x = tf.tensor5d(inputs, [count, CUBE_SHAPE.height, CUBE_SHAPE.width, CUBE_SHAPE.depth, channels]);
    const { probabilities, logits } = forward(tf, network.spec, network.weights, x, false);
    return { probabilities: probabilities.dataSync() as Float32Array, logits: logits.dataSync() as Float32Array };
  });
}

export interface ClassifyOptions {
  signal: string;
  background?: string;
  points: string;
  outputDir: string;
  voxelSizes?: VoxelSizes;
  batchSize: number;
  /** Candidates classified so far (those of an earlier, interrupted run included) out of all. */
  onProgress?: (done: number, total: number) => void;
  /** Stops after the batch in progress; what is classified stays in the partial file for the next run. */
  abortSignal?: AbortSignal;
  /**
   * A dataset whose candidate cache (see candidateCache.ts) may hold these
   * candidates' cubes: those it holds are read from it (bit-identical to
   * cutting them, one sequential read), the rest are cut from the volumes.
   */
  cacheOf?: string;
  /**
   * cellfinder's --normalize-channels: each channel's cubes become
   * (x - mean) / std with the statistics of that volume's sampled planes.
   */
  normalizeChannels?: boolean;
  /** Planes of a volume's statistics read so far (with --normalize-channels, before any candidate). */
  onStatisticsProgress?: (volume: string, planesDone: number, planes: number) => void;
}

export interface ClassifyReport {
  xmlFile: string;
  probabilitiesFile: string;
  classified: ClassifiedCandidate[];
  skipped: SkippedPoint<CellCounterPoint>[];
  cells: number;
  nonCells: number;
  /** Candidates taken from an interrupted run's partial file instead of classified again. */
  resumed: number;
  /** Candidates whose cubes were read from the dataset's candidate cache instead of cut from the volumes. */
  fromCache: number;
  /** With --normalize-channels: each volume's statistics, signal first. */
  channelStatistics?: ChannelStatistics[];
}

/**
 * Results are appended here batch by batch (flushed), so a run that is
 * cancelled or killed continues where it stopped: its first line names what
 * the results are of (model, points, volumes, voxel sizes); a partial file of
 * anything else is started afresh.
 */
export const PARTIAL_RESULTS = 'classified_points.partial.csv';

/**
 * The partial file of a classification that finished, kept (hidden): the
 * same command again finds every candidate classified and only writes the
 * outputs again, as the finished brains of a resubmitted array job do. Its
 * first line says what it is of, the model's and the points' file versions
 * included, so a retrained model or edited points are classified afresh.
 */
export const FINISHED_RESULTS = '.classified_points.done.csv';

/** The band budget of classification (extraction's is BAND_BYTES_PER_CHANNEL). */
const CLASSIFY_BAND_BYTES_PER_CHANNEL = 32 * 2 ** 20;

/**
 * Classifies every candidate with a full cube in one pass through the volume
 * (bands of rows, z order: memory bounded by a band, not by the planes or the
 * candidates' number), writing cellfinder's classified XML and the
 * probabilities in the order of the input points.
 */
export async function classifyCandidates(tf: typeof tfType, network: LoadedNetwork, options: ClassifyOptions): Promise<ClassifyReport> {
  const { points } = await readCellCounterXml(options.points);
  const volumes = await openChannels(options.signal, options.background);
  try {
    const channels = volumes.length;
    if (channels !== network.spec.channels) {
      throw new DataFileError(
        network.file,
        `takes ${network.spec.channels} channel(s) but ${channels} volume(s) were given`,
        network.spec.channels === 2 ? 'Give the background volume too (--background)' : 'Classify with the signal volume only, or use a two-channel model',
      );
    }
    const plan = planExtraction({ points, channels: volumes, dataVoxelSizes: options.voxelSizes });
    await makeFolder(options.outputDir).catch((error: Error) => {
      throw new DataFileError(options.outputDir, `cannot be created (${error.message})`, 'Choose an output folder you can write to');
    });
    const partialFile = path.join(options.outputDir, PARTIAL_RESULTS);
    const normalizeChannels = Boolean(options.normalizeChannels);
    const finishedFile = path.join(options.outputDir, FINISHED_RESULTS);
    const version = async (file: string) => {
      const { size, mtimeMs } = await stat(file);
      return `${size}@${mtimeMs}`;
    };
    const identity = `# ${JSON.stringify({ model: path.resolve(network.file), modelVersion: await version(network.file), points: path.resolve(options.points), pointsVersion: await version(options.points), signal: path.resolve(options.signal), background: options.background && path.resolve(options.background), voxelSizes: options.voxelSizes ?? null, normalizeChannels })}`;
    const done = await readPartialResults(existsSync(partialFile) ? partialFile : finishedFile, identity);
    const resumed = done.size;
    const total = plan.extractable.length;
    const todo = { ...plan, extractable: plan.extractable.filter((entry) => !done.has(entry.index)) };
    // Read before any cube is classified (as cellfinder does), and only when there is a cube left to classify.
    const statistics: ChannelStatistics[] | undefined = normalizeChannels ? [] : undefined;
    if (statistics && todo.extractable.length > 0) {
      for (const volume of volumes) {
        statistics.push(await channelStatistics(volume, { signal: options.abortSignal, onProgress: (planesDone, planes) => options.onStatisticsProgress?.(volume.source, planesDone, planes) }));
      }
    }
    options.onProgress?.(done.size, total);
    const voxels = CUBE_SHAPE.depth * CUBE_SHAPE.height * CUBE_SHAPE.width;
    let pending: Array<{ point: CellCounterPoint; index: number; channels: Float32Array[] }> = [];
    const flush = async () => {
      const inputs = new Float32Array(pending.length * voxels * channels);
      pending.forEach((cube, index) => {
        for (let c = 0; c < channels; c++) {
          const data = toNetworkOrder(cube.channels[c]);
          if (statistics) normaliseChannel(data, statistics[c].mean, statistics[c].std);
          packChannel(inputs, index, c, channels, data);
        }
      });
      const { probabilities, logits } = predict(tf, network, inputs, pending.length, channels);
      const rows = pending.map((cube, index) => {
        const cell = probabilities[2 * index + 1];
        // The difference of two float32 logits, exact in a double.
        const logOdds = logits[2 * index + 1] - logits[2 * index];
        // Prediction type = argmax + 1 of the softmax: cell wins only when strictly larger, as argmax picks the first on a tie.
        const result: ClassifiedCandidate = { ...cube.point, type: cell > probabilities[2 * index] ? 2 : 1, probabilities: { cell, logOdds } };
        done.set(cube.index, result);
        return `${cube.index},${result.x},${result.y},${result.z},${result.type},${cell},${logOdds}`;
      });
      await appendLineDurably(partialFile, `${done.size === rows.length ? `${identity}\n` : ''}${rows.join('\n')}`);
      options.onProgress?.(done.size, total);
      pending = [];
    };
    // Classifying waits on the network, not on reading: a smaller band leaves the memory to TensorFlow.
    const rowsPerBand = bandRows(plan, bytesPerPixel(volumes[0].pixelType), CLASSIFY_BAND_BYTES_PER_CHANNEL);
    const cache = options.cacheOf ? await CandidateCache.find(options.cacheOf, options, plan, channels, volumes[0].pixelType) : undefined;
    const cached = todo.extractable.filter((entry) => cache?.has(entry.index));
    const toCut = { ...todo, extractable: todo.extractable.filter((entry) => !cache?.has(entry.index)) };
    const pointOf = new Map(cached.map((entry) => [entry.index, entry.point]));
    async function* cubes(): AsyncGenerator<{ point: CellCounterPoint; index: number; channels: Float32Array[] }> {
      if (cache) {
        for await (const { id, channels: cube } of cache.readCubes(pointOf.keys())) {
          options.abortSignal?.throwIfAborted();
          yield { point: pointOf.get(id) as CellCounterPoint, index: id, channels: cube };
        }
      }
      yield* extractCubes(toCut, volumes, options.abortSignal, rowsPerBand);
    }
    for await (const cube of cubes()) {
      pending.push({ point: cube.point, index: cube.index, channels: cube.channels });
      if (pending.length === options.batchSize) await flush();
    }
    if (pending.length) await flush();
    // In the order of the input points, as cellfinder writes them.
    const classified = [...done.entries()].sort(([a], [b]) => a - b).map(([, point]) => point);
    const xmlFile = path.join(options.outputDir, 'classified_points.xml');
    const probabilitiesFile = path.join(options.outputDir, 'classified_points.csv');
    await writeCellCounterXml(xmlFile, classified.map(({ x, y, z, type }) => ({ x, y, z, type })), { overwrite: true });
    await writeFileAtomic(probabilitiesFile, classifiedCsv(classified), { overwrite: true });
    if (existsSync(partialFile)) await rename(partialFile, finishedFile);
    return {
      xmlFile,
      probabilitiesFile,
      classified,
      skipped: plan.skipped,
      cells: classified.filter((p) => p.type === 2).length,
      nonCells: classified.filter((p) => p.type === 1).length,
      resumed,
      fromCache: cached.length,
      channelStatistics: statistics,
    };
  } finally {
    await Promise.all(volumes.map((v) => v.close()));
  }
}

/** The results of an interrupted run of the same classification, by point index; empty when there are none (or of another). */
async function readPartialResults(file: string, identity: string): Promise<Map<number, ClassifiedCandidate>> {
  const results = new Map<number, ClassifiedCandidate>();
  const text = await readFile(file, 'utf8').catch(() => '');
  const [first, ...lines] = text.split('\n');
  if (first !== identity) {
    await rm(file, { force: true });
    return results;
  }
  for (const line of lines) {
    const values = line.split(',').map(Number);
    // A line cut short by a kill is left out (and classified again).
    if (values.length !== 7 || values.some((v) => !Number.isFinite(v))) continue;
    const [index, x, y, z, type, cell, logOdds] = values;
    results.set(index, { x, y, z, type, probabilities: { cell, logOdds } });
  }
  return results;
}

export interface Evaluation {
  model: string;
  samples: number;
  accuracy: number;
  /** confusion[actual][predicted], 0 = non-cell, 1 = cell. */
  confusion: [[number, number], [number, number]];
  cell: { precision: number; recall: number };
  nonCell: { precision: number; recall: number };
}

export async function evaluateModel(
  tf: typeof tfType,
  network: LoadedNetwork,
  samples: readonly Sample[],
  options: { batchSize: number; normalise: boolean },
): Promise<Evaluation> {
  const channels = network.spec.channels;
  const confusion: [[number, number], [number, number]] = [
    [0, 0],
    [0, 0],
  ];
  const plans = inBatches(samples, options.batchSize).map((slice) => planBatch(slice, { channels, normalise: options.normalise }));
  // Read on their own thread, so that the next batch is read while this one is classified.
  const batchThread = new BatchThread();
  try {
    let planned = 0;
    for await (const batch of batchThread.inOrder(plans)) {
      const { probabilities } = predict(tf, network, batch.inputs, batch.size, channels);
      plans[planned++].samples.forEach((sample, i) => {
        confusion[sample.label][probabilities[2 * i + 1] > probabilities[2 * i] ? 1 : 0]++;
      });
    }
  } finally {
    await batchThread.close();
  }
  const ratio = (a: number, b: number) => (b === 0 ? 0 : a / b);
  return {
    model: network.file,
    samples: samples.length,
    accuracy: ratio(confusion[0][0] + confusion[1][1], samples.length),
    confusion,
    cell: { precision: ratio(confusion[1][1], confusion[0][1] + confusion[1][1]), recall: ratio(confusion[1][1], confusion[1][0] + confusion[1][1]) },
    nonCell: { precision: ratio(confusion[0][0], confusion[0][0] + confusion[1][0]), recall: ratio(confusion[0][0], confusion[0][0] + confusion[0][1]) },
  };
}

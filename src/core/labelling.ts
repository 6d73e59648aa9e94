/**
 * A labelling session: the candidates of one candidate set (Cell Counter XML +
 * signal/background volumes) shown one by one, each decision saved at once
 * into a training dataset through `TrainingDataset` (atomic cube write +
 * provenance record). The session keeps no state of its own: what was decided
 * is read back from the dataset (cube files and provenance log), so closing
 * the editor or killing the process mid-session loses nothing and a reopened
 * set continues where the user stopped.
 */
import { promises as fs } from 'node:fs';
import { writeFileAtomic } from './atomicFile';
import * as path from 'node:path';
import { readCellCounterXml, type CellCounterPoint } from './cellCounterXml';
import { NETWORK_VOXEL_SIZES, pointFromCubeFileName, type Point3 } from './cube';
import { CELLS_FOLDER, NON_CELLS_FOLDER, positionKey, TrainingDataset, type Prediction, type ProvenanceRecord } from './dataset';
import { CandidateCache } from './candidateCache';
import { logOddsOfProbability, readProbabilities } from './chooseCandidates';
import { contextWindow, cutContext, type CandidateContext } from './candidateContext';
import { DataFileError } from './errors';
import { LabelState, recordedPredictions, type BalanceCounts } from './labelState';
import { cutCube, planExtraction, type SkippedPoint, type VoxelSizes } from './extraction';
import type { CubeLabel } from './trainingYaml';
import { openChannels, RowBuffers, type Volume } from './volume';

/** What the user labels: candidate points and the volumes they sit in. */
export interface CandidateSet {
  points: string;
  signal: string;
  background?: string;
  /** Data voxel sizes (z, y, x) µm; omitted = already at the network's 5, 1, 1. */
  voxelSizes?: VoxelSizes;
  /**
   * Per-candidate cell probabilities: the `classified_points.csv` sidecar that
   * `classify` writes. Without it, a classified XML's types (2 cell, 1 non-cell)
   * still give the prediction, without a probability.
   */
  predictions?: string;
}

/** The dataset remembers the candidate set last labelled into it here, so reopening the dataset continues that set. */
export const CANDIDATE_SET_FILE = 'labelling.json';

export async function saveCandidateSet(datasetRoot: string, set: CandidateSet): Promise<void> {
  await writeFileAtomic(path.join(datasetRoot, CANDIDATE_SET_FILE), `${JSON.stringify(set, null, 2)}\n`, { overwrite: true });
}

/** The candidate set last labelled into the dataset, or undefined if none was. */
export async function loadCandidateSet(datasetRoot: string): Promise<CandidateSet | undefined> {
  const file = path.join(datasetRoot, CANDIDATE_SET_FILE);
  let text: string;
  try {
    text = await fs.readFile(file, 'utf8');
  } catch {
    return undefined;
  }
  let set: CandidateSet;
  try {
    set = JSON.parse(text) as CandidateSet;
  } catch (error) {
    throw new DataFileError(file, `is not valid JSON (${(error as Error).message})`, 'Delete it and choose the candidates again; no labels are stored in it');
  }
  if (typeof set.points !== 'string' || typeof set.signal !== 'string') {
    throw new DataFileError(file, 'does not name the candidate points and the signal volume', 'Delete it and choose the candidates again; no labels are stored in it');
  }
  return set;
}

/** Sets this large get their cache filled in the background when opened; smaller ones read their few planes at once. */
export const CACHE_SWEEP_MIN_CANDIDATES = 500;

/**
 * Fills the cache of the candidate set last labelled into the dataset (its
 * labelling.json): every candidate's cube and context, in one pass through
 * the volume. Resumes a sweep that was stopped; `signal` stops it after
 * flushing what it cut. Returns (cached, total).
 */
export async function cacheCandidates(datasetRoot: string, options: { signal?: AbortSignal; onProgress?: (cached: number, total: number) => void } = {}): Promise<{ cached: number; total: number; cacheFolder: string }> {
  const set = await loadCandidateSet(datasetRoot);
  if (!set) throw new DataFileError(path.join(datasetRoot, CANDIDATE_SET_FILE), 'does not exist: no candidate set was labelled into this dataset', 'Open the candidates for labelling first (Cellfinder: Label Candidates), or label with the CLI');
  const { points } = await readCellCounterXml(set.points);
  const volumes = await openChannels(set.signal, set.background);
  try {
    const plan = planExtraction({ points, channels: volumes, dataVoxelSizes: set.voxelSizes });
    const cache = await CandidateCache.open(datasetRoot, set, plan, volumes.length, volumes[0].pixelType);
    await cache.sweep(volumes, options);
    return { cached: cache.cached, total: cache.total, cacheFolder: cache.folder };
  } finally {
    await Promise.all(volumes.map((volume) => volume.close()));
  }
}

export type Decision = CubeLabel | 'skip';
export type CandidateStatus = Decision | 'todo';
export type CandidateOrder = 'file' | 'uncertain-first' | 'predicted-cells-first';

export interface Candidate {
  /** Index of the point in the XML file. */
  id: number;
  position: Point3;
  prediction?: Prediction;
}

export type { BalanceCounts } from './labelState';

/** A candidate's cube, as the network (and the saved training data) sees it: (z, y, x) 20x50x50 per channel. */
export interface CandidateCube {
  id: number;
  channels: Float32Array[];
}

export type { CandidateContext } from './candidateContext';

/** Cubes kept after the page asked for them (200 kB a channel), so a decision saves the cube shown without reading it again. */
const RECENT_CUBES = 16;

/** Reads `classified_points.csv` into predictions by position. */
async function readPredictionsCsv(file: string): Promise<Map<string, Prediction>> {
  const predictions = new Map<string, Prediction>();
  for (const [key, p] of await readProbabilities(file)) predictions.set(key, { label: p.cell > 0.5 ? 'cell' : 'no_cell', cellProbability: p.cell, cellLogOdds: p.logOdds, model: file });
  return predictions;
}

/**
 * cellfinder's classified XML says 2 = predicted cell, 1 = predicted non-cell
 * (without the probability). But detection writes every candidate as type 1
 * (UNKNOWN, the same number), so types count as predictions only in a file
 * that has at least one type 2.
 */
function predictionsFromTypes(points: readonly CellCounterPoint[]): boolean {
  return points.some((point) => point.type === 2);
}

function predictionFromType(point: CellCounterPoint): Prediction | undefined {
  if (point.type === 2) return { label: 'cell' };
  if (point.type === 1) return { label: 'no_cell' };
  return undefined;
}

/**
 * The prediction's log-odds of cell (see Probabilities): 0 for an even call
 * and for no prediction; a predicted type without a probability counts as
 * sure, and one without log-odds (recorded before they were kept) takes them
 * from p(cell).
 */
function logOdds(candidate: Candidate): number {
  const p = candidate.prediction;
  if (!p) return 0;
  if (p.cellProbability === undefined) return p.label === 'cell' ? Infinity : -Infinity;
  return p.cellLogOdds ?? logOddsOfProbability(p.cellProbability);
}

export function orderCandidates(candidates: readonly Candidate[], order: CandidateOrder): number[] {
  const ids = candidates.map((c) => c.id);
  const byId = new Map(candidates.map((c) => [c.id, c]));
  const get = (id: number) => byId.get(id) as Candidate;
  // Unknown probabilities count as sure: without a prediction, a candidate comes after those the model was unsure of.
  const certainty = (id: number) => (get(id).prediction?.cellProbability === undefined ? Infinity : Math.abs(logOdds(get(id))));
  if (order === 'uncertain-first') return ids.sort((a, b) => certainty(a) - certainty(b) || a - b);
  if (order === 'predicted-cells-first') return ids.sort((a, b) => logOdds(get(b)) - logOdds(get(a)) || a - b);
  return ids;
}

/** Current labels of every cube in a dataset, by position, read from its cube folders. */
async function labelsIn(datasetRoot: string): Promise<Map<string, CubeLabel>> {
  const labels = new Map<string, CubeLabel>();
  for (const [folder, label] of [[CELLS_FOLDER, 'cell'], [NON_CELLS_FOLDER, 'no_cell']] as const) {
    const names = await fs.readdir(path.join(datasetRoot, folder)).catch(() => [] as string[]);
    for (const name of names) {
      const position = pointFromCubeFileName(name);
      if (position) labels.set(positionKey(position), label);
    }
  }
  return labels;
}

export class LabellingSession {
  private constructor(
    /** The candidate set; undefined when reviewing the dataset's own cubes. */
    readonly set: CandidateSet | undefined,
    readonly dataset: TrainingDataset,
    readonly candidates: readonly Candidate[],
    /** Points too close to the volume's edge for a cube, with the reason. */
    readonly skippedAtEdge: readonly SkippedPoint<CellCounterPoint>[],
    private readonly volumes: Volume[],
    private readonly byId: ReadonlyMap<number, Candidate>,
    /** Labels, skips and balance, read from the dataset once and kept up to date by each decision. */
    private readonly state: LabelState,
    /** The set's cut cubes and contexts, as far as a sweep has filled it (none when reviewing a dataset). */
    readonly cache: CandidateCache | undefined,
  ) {}

  private readonly recentCubes = new Map<number, Promise<CandidateCube>>();
  /** Buffers the rows of cubes and contexts read from the planes are read into, again and again. */
  private readonly rowBuffers = new RowBuffers();

  /** The session over `candidates`, its state read from the dataset now. */
  private static async over(
    set: CandidateSet | undefined,
    dataset: TrainingDataset,
    candidates: Candidate[],
    skippedAtEdge: SkippedPoint<CellCounterPoint>[],
    volumes: Volume[],
    cache?: CandidateCache,
    /** The dataset's labels and log when the caller has read them already. */
    read?: { labels: Map<string, CubeLabel>; history: ProvenanceRecord[] },
  ): Promise<LabellingSession> {
    const predictions = new Map(candidates.flatMap((c) => (c.prediction ? [[positionKey(c.position), c.prediction] as const] : [])));
    const state = LabelState.build(read?.labels ?? (await labelsIn(dataset.root)), read?.history ?? (await dataset.history()), predictions, set?.signal);
    return new LabellingSession(set, dataset, candidates, skippedAtEdge, volumes, new Map(candidates.map((c) => [c.id, c])), state, cache);
  }

  /**
   * Opens the candidate set against the dataset at `datasetRoot` (created if
   * absent, with as many channels as volumes given).
   */
  static async open(set: CandidateSet, datasetRoot: string): Promise<LabellingSession> {
    const { points } = await readCellCounterXml(set.points);
    const predictions = set.predictions ? await readPredictionsCsv(set.predictions) : undefined;
    const typesArePredictions = predictionsFromTypes(points);
    const volumes = await openChannels(set.signal, set.background);
    try {
      const dataset = await TrainingDataset.create(datasetRoot, { backgroundChannel: Boolean(set.background) });
      if (dataset.channels.length !== volumes.length) {
        throw new DataFileError(
          dataset.yamlFile,
          `holds ${dataset.channels.length}-channel cubes but ${volumes.length} volume(s) were given`,
          dataset.channels.length === 2 ? 'Give the background channel too' : 'Label into a single-channel dataset, or create a new one',
        );
      }
      const plan = planExtraction({ points, channels: volumes, dataVoxelSizes: set.voxelSizes });
      const candidates: Candidate[] = plan.extractable
        .map(({ point, index }) => ({
          id: index,
          position: { x: point.x, y: point.y, z: point.z },
          prediction: predictions ? predictions.get(positionKey(point)) : typesArePredictions ? predictionFromType(point) : undefined,
        }))
        .sort((a, b) => a.id - b.id);
      const cache = await CandidateCache.open(dataset.root, set, plan, volumes.length, volumes[0].pixelType);
      return await LabellingSession.over(set, dataset, candidates, plan.skipped, volumes, cache);
    } catch (error) {
      await Promise.all(volumes.map((v) => v.close()));
      throw error;
    }
  }

  /**
   * Reviews the cubes already in the dataset (e.g. labels pooled from another
   * lab): each decision relabels a cube; there is no volume, so no context.
   */
  static async review(datasetRoot: string): Promise<LabellingSession> {
    const dataset = await TrainingDataset.open(datasetRoot);
    const history = await dataset.history();
    const predictions = recordedPredictions(history);
    const labels = await labelsIn(dataset.root);
    const positions = [...labels.entries()]
      .sort(([a, labelA], [b, labelB]) => labelA.localeCompare(labelB) || a.localeCompare(b, undefined, { numeric: true }))
      .map(([key]) => {
        const [z, y, x] = key.split(',').map(Number);
        return { x, y, z };
      });
    const candidates = positions.map((position, id) => ({ id, position, prediction: predictions.get(positionKey(position)) }));
    return LabellingSession.over(undefined, dataset, candidates, [], [], undefined, { labels, history });
  }

  async close(): Promise<void> {
    await Promise.all(this.volumes.map((v) => v.close()));
  }

  candidate(id: number): Candidate {
    const candidate = this.byId.get(id);
    if (!candidate) throw new Error(`no candidate ${id} in ${this.set?.points ?? this.dataset.root}`);
    return candidate;
  }

  /** Each candidate's status: its cube's label, else skipped (not since undone), else todo. */
  statuses(): Map<number, CandidateStatus> {
    return new Map(this.candidates.map((candidate) => [candidate.id, this.state.status(candidate.position)]));
  }

  status(id: number): CandidateStatus {
    return this.state.status(this.candidate(id).position);
  }

  balance(): BalanceCounts {
    return this.state.balance();
  }

  /** The cube the network would see for candidate `id` (and that a decision saves). */
  cube(id: number): Promise<CandidateCube> {
    let cube = this.recentCubes.get(id);
    if (!cube) {
      const candidate = this.candidate(id);
      const set = this.set;
      cube = (async () => {
        if (!set) return { id, channels: await this.dataset.readCube(candidate.position) };
        // From the cache when the sweep has cut it; else from the planes, ahead of the sweep.
        const cached = await this.cached(id, (cache) => cache.readCube(id));
        return { id, channels: cached ?? (await cutCube(candidate.position, this.volumes, set.voxelSizes, this.rowBuffers)) };
      })();
      cube.catch(() => this.recentCubes.delete(id));
    } else this.recentCubes.delete(id);
    // Most recently asked last; the page asks for the cubes ahead, then the decision saves one of them.
    this.recentCubes.set(id, cube);
    if (this.recentCubes.size > RECENT_CUBES) this.recentCubes.delete(this.recentCubes.keys().next().value as number);
    return cube;
  }

  /** The candidate's plane, a few cuboids wide around it, with the cuboid outlined (none when reviewing a dataset). */
  async context(id: number): Promise<CandidateContext | undefined> {
    const { position } = this.candidate(id);
    if (!this.set) return undefined;
    const cached = await this.cached(id, (cache) => cache.readContext(id, position));
    if (cached) return cached;
    const plan = planExtraction({ points: [position], channels: this.volumes, dataVoxelSizes: this.set.voxelSizes });
    const window = contextWindow(position, plan.cuboid, plan.volumeShape);
    const channels = await Promise.all(
      this.volumes.map(async (volume) => {
        const rows = await volume.readRows(window.z, window.y0, window.y0 + window.height, this.rowBuffers.take());
        const region = Float32Array.from(cutContext(window, rows, window.y0, plan.volumeShape[2]));
        this.rowBuffers.give(rows);
        return region;
      }),
    );
    return { id, ...window, channels };
  }

  /** What the cache holds for candidate `id`, after taking in what the sweep logged since the last look. */
  private async cached<T>(id: number, read: (cache: CandidateCache) => Promise<T | undefined>): Promise<T | undefined> {
    if (!this.cache) return undefined;
    if (!this.cache.has(id)) await this.cache.refresh();
    return read(this.cache);
  }

  /**
   * Saves the user's decision for candidate `id`: a new cube in cells/ or
   * non_cells/, a relabel when it already has the other label, or a skip.
   * Returns once the files and the provenance record are durably on disk.
   */
  async decide(id: number, decision: Decision): Promise<void> {
    const candidate = this.candidate(id);
    const current = this.state.label(candidate.position);
    if (decision === 'skip') {
      if (!current) {
        await this.dataset.skip(candidate.position, this.set?.signal, candidate.prediction);
        this.state.skippedAt(candidate.position);
      }
      return;
    }
    if (current === decision) return;
    if (current) {
      await this.dataset.relabel(candidate.position, decision);
      this.state.relabelled(candidate.position, decision);
      return;
    }
    const cube = await this.cube(id);
    await this.dataset.addCube({ position: candidate.position, label: decision, channels: cube.channels, source: this.set?.signal, prediction: candidate.prediction, voxelSizes: this.set ? (this.set.voxelSizes ?? NETWORK_VOXEL_SIZES) : undefined });
    this.state.added(candidate.position, decision, candidate.prediction);
  }

  /**
   * Undoes the dataset's most recent decision. Returns the candidate it
   * concerned when that candidate is in this set (so the view can go back to
   * it), null when the undone decision was about a cube of another set, and
   * undefined when there was nothing to undo.
   */
  async undo(): Promise<Candidate | null | undefined> {
    const history = await this.dataset.history();
    const record = await this.dataset.undo();
    if (!record) return undefined;
    this.state.undone(record, history);
    const key = positionKey(record.position);
    return this.candidates.find((c) => positionKey(c.position) === key) ?? null;
  }
}

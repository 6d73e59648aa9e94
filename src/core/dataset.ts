/**
 * A training dataset in cellfinder's layout: `cells/` and `non_cells/` cube
 * folders and a `training.yaml` naming them, plus our provenance log
 * (`provenance.jsonl`, which cellfinder ignores) recording every label
 * decision so that it can be undone and traced.
 *
 * Rules: every write is atomic; nothing that exists is overwritten; a cube
 * only leaves the dataset when the user asked for exactly that, and even then
 * it is moved to `.trash/` so undo can bring it back.
 */
import { randomUUID } from 'node:crypto';
import { promises as fs } from 'node:fs';
import * as path from 'node:path';
import { appendLineDurably, discardFile, exists, FileDiffersError, FileExistsError, holdsBytes, makeFolder, moveFileNoClobber, parseJsonLines, placeFileOnce, prepareFile, removeStaleTempFiles, writeFileOnce, type PreparedFile } from './atomicFile';
import { countNonFinite, cubeFileName, encodeCube, pointFromCubeFileName, readCube, siblingChannelFile, type Point3 } from './cube';
import { readCellCounterXml } from './cellCounterXml';
import { DataFileError } from './errors';
import { NO_BACKGROUND_CHANNEL, readTrainingYaml, writeTrainingYaml, type CubeLabel, type ResolvedTrainingDataEntry, type TrainingDataEntry } from './trainingYaml';
import type { VoxelSizes } from './extraction';

export const CELLS_FOLDER = 'cells';
export const NON_CELLS_FOLDER = 'non_cells';
export const TRAINING_YAML = 'training.yaml';
export const PROVENANCE_LOG = 'provenance.jsonl';
export const TRASH_FOLDER = '.trash';

export interface Prediction {
  label: CubeLabel;
  /** Probability the network gave the cell class (absent when only the predicted type is known, as in cellfinder's classified XML). */
  cellProbability?: number;
  /** ln(p(cell) / p(non-cell)) from the network's logits: ranks where the probabilities round to 0 or 1 (see Probabilities). */
  cellLogOdds?: number;
  model?: string;
}

/** One line of the provenance log. */
export interface ProvenanceRecord {
  id: string;
  time: string;
  /** `skip`: the user looked at a candidate and chose not to label it; no file changes. */
  action: 'add' | 'relabel' | 'remove' | 'skip' | 'undo';
  position: Point3;
  /** Label after the action (absent after a remove). */
  label?: CubeLabel;
  previousLabel?: CubeLabel;
  /** Where the cube came from: the signal volume, or the dataset it was merged from. */
  source?: string;
  prediction?: Prediction;
  /** For an undo: the id of the record it reverses. */
  undoes?: string;
  /** For a remove: where the cube files were moved. */
  trashedTo?: string;
  /** For an add: the data's voxel sizes (z, y, x) µm the cube was cut at (the network's 5, 1, 1 when not rescaled); absent in records written before they were kept. */
  voxelSizes?: VoxelSizes;
}

export interface AddCubeRequest {
  position: Point3;
  label: CubeLabel;
  /** Signal, then background when the dataset has two channels. */
  channels: Float32Array[];
  source?: string;
  prediction?: Prediction;
  /** The data's voxel sizes the cube was cut at (see ProvenanceRecord). */
  voxelSizes?: VoxelSizes;
}

/** `repaired`: the cube was there but a channel file was missing, and is now written. */
export type AddCubeResult = 'added' | 'already-present' | 'repaired';

function folderFor(label: CubeLabel): string {
  return label === 'cell' ? CELLS_FOLDER : NON_CELLS_FOLDER;
}

/** One key per voxel position, for de-duplication. */
export function positionKey(position: Point3): string {
  return `${position.z},${position.y},${position.x}`;
}

/**
 * Saves the channel files of one cube (`files` and `bytes` signal first) so
 * that no interruption (kill -9, a full disk) leaves a cube that cellfinder
 * would read without all its channels. cellfinder, and this tool, find a cube
 * by its signal file, so the other channels are placed first and the signal
 * last: an interrupted save leaves at most an other-channel file without its
 * signal, which no reader lists and the next save of that position moves to
 * `trashFolder`. Saving a cube that is there with the same bytes changes
 * nothing but a missing other channel (an older tool's interrupted save);
 * a cube with other bytes is never replaced.
 */
export async function saveCubeFiles(files: readonly string[], bytes: readonly Uint8Array[], trashFolder: string): Promise<AddCubeResult> {
  const [signalFile] = files;
  const signalPresent = await exists(signalFile);
  if (signalPresent && !(await holdsBytes(signalFile, bytes[0]))) throw new FileDiffersError(signalFile);
  // Every channel written and flushed at once (one disk wait, not one per file), then placed in order.
  const prepared = await Promise.allSettled(files.map((file, i) => prepareFile(file, bytes[i])));
  const failed = prepared.find((result): result is PromiseRejectedResult => result.status === 'rejected');
  if (failed) {
    await Promise.all(prepared.flatMap((result) => (result.status === 'fulfilled' ? [discardFile(result.value)] : [])));
    throw failed.reason;
  }
  const [signal, ...others] = prepared.map((result) => (result as PromiseFulfilledResult<PreparedFile>).value);
  const written: string[] = [];
  try {
    for (const [i, other] of others.entries()) {
      let outcome;
      try {
        outcome = await placeFileOnce(other, bytes[i + 1]);
      } catch (error) {
        if (!(error instanceof FileDiffersError) || signalPresent) throw error;
        await moveToTrash(other.file, trashFolder);
        outcome = await writeFileOnce(other.file, bytes[i + 1]);
      }
      if (outcome === 'written') written.push(other.file);
    }
    if (signalPresent) {
      await discardFile(signal);
      return written.length > 0 ? 'repaired' : 'already-present';
    }
    return (await placeFileOnce(signal, bytes[0])) === 'written' ? 'added' : 'already-present';
  } catch (error) {
    await Promise.all([signal, ...others].map((file) => discardFile(file)));
    // Only the files this call created are removed: a cube is all channels or nothing.
    if (!(await exists(signalFile))) await Promise.all(written.map((file) => fs.rm(file, { force: true })));
    throw error;
  }
}

/** Moves a channel file left by an interrupted save out of the way, into the trash (never deleted). */
async function moveToTrash(file: string, trashFolder: string): Promise<void> {
  const folder = path.join(trashFolder, `interrupted-${new Date().toISOString().replace(/[:.]/g, '-')}-${randomUUID().slice(0, 8)}`);
  await fs.mkdir(folder, { recursive: true });
  await moveFileNoClobber(file, path.join(folder, path.basename(file)));
}

/** The dataset we write into: our own `cells/` + `non_cells/` layout. */
export class TrainingDataset {
  /** Positions the provenance log records, read once when first needed, then kept up to date. */
  private loggedPositions?: Set<string>;

  private constructor(
    readonly root: string,
    /** Channel numbers of the cube files: [signal] or [signal, background]. */
    readonly channels: readonly number[],
  ) {}

  get yamlFile(): string {
    return path.join(this.root, TRAINING_YAML);
  }
  get logFile(): string {
    return path.join(this.root, PROVENANCE_LOG);
  }

  /**
   * Creates the folders and training.yaml. An existing dataset at `root` is
   * opened instead, never rewritten.
   */
  static async create(root: string, options: { backgroundChannel?: boolean; absolutePaths?: boolean } = {}): Promise<TrainingDataset> {
    const absolute = path.resolve(root);
    if (await exists(path.join(absolute, TRAINING_YAML))) return TrainingDataset.open(absolute);
    try {
      await makeFolder(path.join(absolute, CELLS_FOLDER));
      await makeFolder(path.join(absolute, NON_CELLS_FOLDER));
    } catch (error) {
      throw new DataFileError(absolute, `cannot create the dataset folders (${(error as Error).message})`, 'Choose a folder you can write to');
    }
    const bgChannel = options.backgroundChannel === false ? NO_BACKGROUND_CHANNEL : 1;
    const entry = (label: CubeLabel): TrainingDataEntry => ({ cubeDir: path.join(absolute, folderFor(label)), cellDef: '', type: label, signalChannel: 0, bgChannel });
    try {
      await writeTrainingYaml(path.join(absolute, TRAINING_YAML), [entry('cell'), entry('no_cell')], { absolutePaths: options.absolutePaths });
    } catch (error) {
      // Another process created it between our check and our write: use theirs.
      if (!(error instanceof FileExistsError)) throw error;
    }
    return TrainingDataset.open(absolute);
  }

  /** Opens the dataset in `root` (or the folder of a training.yaml given directly). */
  static async open(rootOrYaml: string): Promise<TrainingDataset> {
    const yamlFile = rootOrYaml.endsWith('.yaml') || rootOrYaml.endsWith('.yml') ? rootOrYaml : path.join(rootOrYaml, TRAINING_YAML);
    const root = path.dirname(path.resolve(yamlFile));
    const yaml = await readTrainingYaml(yamlFile, root);
    const ours = (label: CubeLabel) => yaml.entries.find((entry) => entry.type === label && path.resolve(entry.cubeDirPath) === path.join(root, folderFor(label)));
    const cells = ours('cell');
    const nonCells = ours('no_cell');
    if (!cells || !nonCells) {
      throw new DataFileError(
        yamlFile,
        `does not list ${CELLS_FOLDER}/ (type cell) and ${NON_CELLS_FOLDER}/ (type no_cell) next to it, so it cannot be labelled into`,
        'Create a new dataset for labelling, then merge the two if needed (cellfinder-retrain dataset merge)',
      );
    }
    if (cells.signalChannel !== nonCells.signalChannel || cells.bgChannel !== nonCells.bgChannel) {
      throw new DataFileError(yamlFile, 'its cell and no_cell entries use different channels', 'Make signal_channel and bg_channel the same in both entries');
    }
    const channels = cells.bgChannel === NO_BACKGROUND_CHANNEL ? [cells.signalChannel] : [cells.signalChannel, cells.bgChannel];
    // What writers killed mid-write left (their temporary files) goes; complete files stay.
    for (const folder of [root, cells.cubeDirPath, nonCells.cubeDirPath]) await removeStaleTempFiles(folder);
    return new TrainingDataset(root, channels);
  }

  private cubeFiles(label: CubeLabel, position: Point3): string[] {
    return this.channels.map((channel) => path.join(this.root, folderFor(label), cubeFileName(position, channel)));
  }

  /** The label of the cube at `position`, or undefined if it has none. */
  async labelOf(position: Point3): Promise<CubeLabel | undefined> {
    // Both folders at once: every decision asks this first.
    const [cell, nonCell] = await Promise.all((['cell', 'no_cell'] as const).map((label) => exists(this.cubeFiles(label, position)[0])));
    return cell ? 'cell' : nonCell ? 'no_cell' : undefined;
  }

  /**
   * Saves a labelled cube (all channels) and logs the decision. Saving the
   * same cube again is a no-op, and completes what an interrupted save left
   * (a missing channel file, a missing log line); a different cube at a
   * labelled position is an error (relabel or remove it first), and nothing
   * is overwritten. Cubes with NaN or infinite values are refused.
   */
  async addCube(request: AddCubeRequest): Promise<AddCubeResult> {
    if (request.channels.length !== this.channels.length) {
      throw new DataFileError(this.yamlFile, `expects ${this.channels.length} channel(s) per cube, got ${request.channels.length}`, 'Extract with the same channels as the dataset (signal and background)');
    }
    const files = this.cubeFiles(request.label, request.position);
    const nonFinite = request.channels.reduce((sum, data) => sum + countNonFinite(data), 0);
    if (nonFinite > 0) {
      throw new DataFileError(files[0], `was not saved: the cube holds ${nonFinite} NaN or infinite value(s)`, 'Check the volume has valid data at this position and the voxel sizes are in µm');
    }
    const existing = await this.labelOf(request.position);
    if (existing && existing !== request.label) {
      throw new DataFileError(
        this.cubeFiles(existing, request.position)[0],
        `is already labelled ${existing}`,
        `Relabel it instead of adding it again as ${request.label}`,
      );
    }
    const outcome = await saveCubeFiles(files, request.channels.map((data) => encodeCube(data)), path.join(this.root, TRASH_FOLDER));
    // A save killed between its files and its log line left a cube with no record: add the record now.
    if (outcome === 'added' || !(await this.isLogged(request.position))) {
      await this.log({ action: 'add', position: request.position, label: request.label, source: request.source, prediction: request.prediction, voxelSizes: request.voxelSizes });
    }
    return outcome;
  }

  private async isLogged(position: Point3): Promise<boolean> {
    const key = positionKey(position);
    // Read again on a miss: another process (a second extract) may have logged it since.
    if (!this.loggedPositions?.has(key)) this.loggedPositions = new Set((await this.history()).map((record) => positionKey(record.position)));
    return this.loggedPositions.has(key);
  }

  /** The channels of the cube at `position`, from whichever label folder holds it. */
  async readCube(position: Point3): Promise<Float32Array[]> {
    const label = await this.requireLabel(position);
    return Promise.all(this.cubeFiles(label, position).map(async (file) => (await readCube(file)).data));
  }

  /** Moves a cube to the other label's folder (bytes unchanged) and logs it. */
  async relabel(position: Point3, label: CubeLabel): Promise<void> {
    const previous = await this.requireLabel(position);
    if (previous === label) return;
    await this.moveCube(this.cubeFiles(previous, position), this.cubeFiles(label, position));
    await this.log({ action: 'relabel', position, label, previousLabel: previous });
  }

  /** Takes a cube out of the dataset, into `.trash/` (undo brings it back). */
  async remove(position: Point3): Promise<void> {
    const previous = await this.requireLabel(position);
    const trash = path.join(TRASH_FOLDER, `${new Date().toISOString().replace(/[:.]/g, '-')}-${randomUUID().slice(0, 8)}`);
    await fs.mkdir(path.join(this.root, trash), { recursive: true });
    const from = this.cubeFiles(previous, position);
    await this.moveCube(from, from.map((file) => path.join(this.root, trash, path.basename(file))));
    await this.log({ action: 'remove', position, previousLabel: previous, trashedTo: trash });
  }

  /** Records that the candidate at `position` was looked at and left unlabelled, so a resumed session moves past it. */
  async skip(position: Point3, source?: string, prediction?: Prediction): Promise<void> {
    await this.log({ action: 'skip', position, source, prediction });
  }

  /**
   * Reverses the most recent decision not yet undone. Returns the record
   * undone, or undefined when there is nothing to undo.
   */
  async undo(): Promise<ProvenanceRecord | undefined> {
    const records = await this.history();
    const undone = new Set(records.filter((r) => r.action === 'undo').map((r) => r.undoes));
    const last = [...records].reverse().find((r) => r.action !== 'undo' && !undone.has(r.id));
    if (!last) return undefined;
    const current = await this.labelOf(last.position);
    switch (last.action) {
      case 'add': {
        // Undoing an add takes the cube out, into the trash like a remove.
        const trash = path.join(TRASH_FOLDER, `undo-${last.id}`);
        await fs.mkdir(path.join(this.root, trash), { recursive: true });
        const from = this.cubeFiles(last.label as CubeLabel, last.position);
        await this.moveCube(from, from.map((file) => path.join(this.root, trash, path.basename(file))));
        await this.log({ action: 'undo', undoes: last.id, position: last.position, previousLabel: current, trashedTo: trash });
        break;
      }
      case 'relabel':
        await this.moveCube(this.cubeFiles(last.label as CubeLabel, last.position), this.cubeFiles(last.previousLabel as CubeLabel, last.position));
        await this.log({ action: 'undo', undoes: last.id, position: last.position, label: last.previousLabel, previousLabel: current });
        break;
      case 'remove': {
        const from = this.cubeFiles(last.previousLabel as CubeLabel, last.position).map((file) => path.join(this.root, last.trashedTo as string, path.basename(file)));
        await this.moveCube(from, this.cubeFiles(last.previousLabel as CubeLabel, last.position));
        await this.log({ action: 'undo', undoes: last.id, position: last.position, label: last.previousLabel });
        break;
      }
      case 'skip':
        await this.log({ action: 'undo', undoes: last.id, position: last.position, label: current });
        break;
    }
    return last;
  }

  /** Every logged decision, oldest first. A torn last line (crash mid-write) is ignored. */
  async history(): Promise<ProvenanceRecord[]> {
    let text: string;
    try {
      text = await fs.readFile(this.logFile, 'utf8');
    } catch {
      return [];
    }
    return parseJsonLines<ProvenanceRecord>(text);
  }

  private async requireLabel(position: Point3): Promise<CubeLabel> {
    const label = await this.labelOf(position);
    if (!label) throw new DataFileError(path.join(this.root, cubeFileName(position, this.channels[0])), 'is not in the dataset (neither cells/ nor non_cells/)', 'Check the position');
    return label;
  }

  /** Moves all channel files of one cube; if one move fails, the moved ones go back. */
  private async moveCube(from: string[], to: string[]): Promise<void> {
    const moved: number[] = [];
    try {
      for (const [i, source] of from.entries()) {
        await moveFileNoClobber(source, to[i]);
        moved.push(i);
      }
    } catch (error) {
      for (const i of moved.reverse()) await moveFileNoClobber(to[i], from[i]).catch(() => undefined);
      throw error;
    }
  }

  private async log(record: Omit<ProvenanceRecord, 'id' | 'time'>): Promise<void> {
    const full: ProvenanceRecord = { id: randomUUID(), time: new Date().toISOString(), ...record };
    await appendLineDurably(this.logFile, JSON.stringify(full));
    this.loggedPositions?.add(positionKey(record.position));
  }
}

/** A cube as listed in a training.yaml entry. */
export interface ListedCube {
  position: Point3;
  /** The file of each channel in the entry's channel order. */
  files: string[];
}

export interface EntrySummary {
  entry: ResolvedTrainingDataEntry;
  cubes: ListedCube[];
}

/**
 * The cubes a training.yaml entry stands for, found as cellfinder_train finds
 * them: files ending `ch{signal_channel}.tif` (any case) in cube_dir, or, when
 * cell_def names an XML file or a folder, only the files whose position it
 * lists (then the suffix match is case-sensitive, `Ch{n}.tif`, as in cellfinder).
 */
export async function listEntryCubes(entry: ResolvedTrainingDataEntry): Promise<ListedCube[]> {
  const names = await fs.readdir(entry.cubeDirPath);
  const channels = entry.bgChannel === NO_BACKGROUND_CHANNEL ? [entry.signalChannel] : [entry.signalChannel, entry.bgChannel];
  const wanted = entry.cellDefPath ? await cellDefPositions(entry.cellDefPath, entry) : undefined;
  const isSignalFile = wanted ? (name: string) => name.endsWith(`Ch${entry.signalChannel}.tif`) : (name: string) => name.toLowerCase().endsWith(`ch${entry.signalChannel}.tif`);
  const cubes: ListedCube[] = [];
  for (const name of names.filter(isSignalFile).sort()) {
    const position = pointFromCubeFileName(name);
    if (!position || (wanted && !wanted.has(positionKey(position)))) continue;
    const signalFile = path.join(entry.cubeDirPath, name);
    cubes.push({ position, files: channels.map((channel) => siblingChannelFile(signalFile, channel)) });
  }
  return cubes;
}

/** Positions a cell_def names: the points of a Cell Counter XML file, or the cube file names in a folder. */
async function cellDefPositions(cellDef: string, entry: ResolvedTrainingDataEntry): Promise<Set<string>> {
  if ((await fs.stat(cellDef)).isDirectory()) {
    const positions = (await fs.readdir(cellDef)).map((name) => pointFromCubeFileName(name)).filter((p): p is Point3 => p !== undefined);
    return new Set(positions.map(positionKey));
  }
  try {
    return new Set((await readCellCounterXml(cellDef)).points.map(positionKey));
  } catch (error) {
    if (!(error instanceof DataFileError)) throw error;
    throw new DataFileError(
      cellDef,
      `is the cell_def of the training.yaml entry for ${entry.cubeDir} (type ${entry.type}) and ${error.problem}`,
      "Make cell_def a Cell Counter XML file or a folder of cube files naming the cubes to use, or '' to use every cube in cube_dir",
    );
  }
}

export interface DatasetSummary {
  yamlFile: string;
  /** Each entry once: an entry repeating an earlier one (same folder, channels, cell_def and type) is left out and named in `repeated`. */
  entries: EntrySummary[];
  repeated: string[];
  cells: number;
  nonCells: number;
}

export async function summarizeTrainingYaml(yamlFile: string, workingDirectory?: string): Promise<DatasetSummary> {
  const yaml = await readTrainingYaml(yamlFile, workingDirectory);
  const entries: EntrySummary[] = [];
  const repeated: string[] = [];
  const seen = new Set<string>();
  for (const [index, entry] of yaml.entries.entries()) {
    // cellfinder would read the same cubes twice; counted and trained once here.
    const key = JSON.stringify([path.resolve(entry.cubeDirPath), entry.signalChannel, entry.bgChannel, entry.cellDefPath ?? '', entry.type]);
    if (seen.has(key)) {
      repeated.push(`data[${index}] repeats an earlier entry (cube_dir ${entry.cubeDir}, type ${entry.type}); its cubes are counted once`);
      continue;
    }
    seen.add(key);
    entries.push({ entry, cubes: await listEntryCubes(entry) });
  }
  const count = (type: CubeLabel) => entries.filter((e) => e.entry.type === type).reduce((sum, e) => sum + e.cubes.length, 0);
  return { yamlFile: yaml.file, entries, repeated, cells: count('cell'), nonCells: count('no_cell') };
}

export interface ValidationProblem {
  file: string;
  problem: string;
  fix: string;
}

/**
 * Checks every cube a training.yaml stands for the way cellfinder_train will
 * need it: all channels present, readable, 20x50x50, one pixel type per
 * dataset, and no position labelled both cell and non-cell.
 */
export interface ValidationResult {
  summary: DatasetSummary;
  /** What would make cellfinder_train fail or train on wrong data. */
  problems: ValidationProblem[];
  /** Worth knowing but not wrong (an empty label folder, mixed pixel types). */
  warnings: ValidationProblem[];
}

export async function validateTrainingYaml(yamlFile: string, workingDirectory?: string): Promise<ValidationResult> {
  const summary = await summarizeTrainingYaml(yamlFile, workingDirectory);
  const problems: ValidationProblem[] = [];
  const warnings: ValidationProblem[] = [];
  const labels = new Map<string, { type: CubeLabel; file: string }>();
  const pixelTypes = new Map<string, string>();
  for (const { entry, cubes } of summary.entries) {
    if (cubes.length === 0) {
      warnings.push({ file: entry.cubeDirPath, problem: `holds no cube files ending Ch${entry.signalChannel}.tif (entry type ${entry.type})`, fix: 'Fine while labelling; cellfinder_train needs examples of both labels' });
    }
    for (const cube of cubes) {
      for (const [channelIndex, file] of cube.files.entries()) {
        if (!(await exists(file))) {
          problems.push({
            file,
            problem: `is missing: the cube at z=${cube.position.z}, y=${cube.position.y}, x=${cube.position.x} has no ${channelIndex === 0 ? 'signal' : 'background'} channel file`,
            fix: 'Re-extract the cube with all its channels, or remove its other channel file(s)',
          });
          continue;
        }
        try {
          const { storedAs } = await readCube(file);
          pixelTypes.set(storedAs, file);
        } catch (error) {
          if (error instanceof DataFileError) problems.push({ file: error.file, problem: error.problem, fix: error.fix });
          else throw error;
        }
      }
      const key = positionKey(cube.position);
      const seen = labels.get(key);
      if (seen && seen.type !== entry.type) {
        problems.push({ file: cube.files[0], problem: `is labelled ${entry.type} but ${seen.file} at the same position is labelled ${seen.type}`, fix: 'Keep only one label for this position (relabel or remove one)' });
      } else if (!seen) labels.set(key, { type: entry.type, file: cube.files[0] });
    }
  }
  for (const repeat of summary.repeated) {
    warnings.push({ file: summary.yamlFile, problem: repeat, fix: 'Remove the repeated entry: cellfinder_train would train on those cubes twice as often' });
  }
  if (pixelTypes.size > 1) {
    warnings.push({
      file: summary.yamlFile,
      problem: `its cubes mix pixel types (${[...pixelTypes.entries()].map(([type, file]) => `${type}, e.g. ${file}`).join('; ')})`,
      fix: 'Allowed, as cellfinder converts all to float32, but check the cubes come from comparable data',
    });
  }
  return { summary, problems, warnings };
}

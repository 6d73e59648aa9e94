/**
 * Merging training datasets (e.g. several labelling rounds, or two labs'
 * labels) into one new dataset, de-duplicated by source volume + position.
 *
 * Each source entry gets its own cube folder in the merged dataset, so its
 * normalisation statistics stay with its cubes and no two cubes can collide
 * by name; the training.yaml lists them all. Cube files are copied byte for
 * byte; the sources are never changed.
 *
 * A merge that stops part-way (a full disk, a kill) is finished by running it
 * again into the same folder: `merge-in-progress.json` there names the
 * sources, cubes already copied are kept (compared byte for byte), the log
 * gets no line twice, and training.yaml is written last.
 */
import { promises as fs } from 'node:fs';
import * as path from 'node:path';
import { appendLineDurably, exists, makeFolder, parseJsonLines, removeStaleTempFiles, writeFileAtomic } from './atomicFile';
import { cubeFileName, type Point3 } from './cube';
import { positionKey, PROVENANCE_LOG, saveCubeFiles, TRAINING_YAML, TRASH_FOLDER, summarizeTrainingYaml, type ProvenanceRecord } from './dataset';
import { DataFileError, writeErrorFor } from './errors';
import { NO_BACKGROUND_CHANNEL, writeTrainingYaml, type CubeLabel, type TrainingDataEntry } from './trainingYaml';

export interface MergeConflict {
  position: Point3;
  sourceVolume: string;
  kept: { label: CubeLabel; yamlFile: string };
  dropped: { label: CubeLabel; yamlFile: string };
}

export interface MergeReport {
  yamlFile: string;
  copied: number;
  duplicates: number;
  conflicts: MergeConflict[];
  cells: number;
  nonCells: number;
}

/** Source volume of each labelled position, from a dataset's provenance log (latest add wins). */
async function sourceVolumes(datasetRoot: string): Promise<Map<string, string>> {
  const sources = new Map<string, string>();
  let text = '';
  try {
    text = await fs.readFile(path.join(datasetRoot, PROVENANCE_LOG), 'utf8');
  } catch {
    return sources;
  }
  for (const line of text.split('\n')) {
    try {
      const record = JSON.parse(line) as ProvenanceRecord;
      if (record.action === 'add' && record.source) sources.set(positionKey(record.position), record.source);
    } catch {
      // torn or empty line
    }
  }
  return sources;
}

function folderName(text: string): string {
  return text.replace(/[^A-Za-z0-9._-]+/g, '_').slice(0, 60) || 'dataset';
}

export interface MergeOptions {
  /** Where relative cube_dir paths of the sources may also be found (as cellfinder would). */
  workingDirectory?: string;
  /** Write absolute cube_dir paths (default: relative to the merged training.yaml). */
  absolutePaths?: boolean;
}

export const MERGE_MARKER = 'merge-in-progress.json';

/**
 * Starts a merge into `output`, or resumes the unfinished merge of the same
 * sources there. Returns the ids of the log lines already written.
 */
async function startOrResume(output: string, yamlFiles: string[]): Promise<Set<string>> {
  const marker = path.join(output, MERGE_MARKER);
  const sources = yamlFiles.map((file) => path.resolve(file));
  let unfinished: { sources: string[] } | undefined;
  try {
    unfinished = JSON.parse(await fs.readFile(marker, 'utf8')) as { sources: string[] };
  } catch (error) {
    if ((error as NodeJS.ErrnoException).code !== 'ENOENT') throw new DataFileError(marker, 'cannot be read', `Delete ${output} and merge again`);
  }
  if (unfinished && JSON.stringify(unfinished.sources) !== JSON.stringify(sources)) {
    throw new DataFileError(output, `holds an unfinished merge of other datasets (${unfinished.sources.join(', ')})`, 'Run that merge again to finish it, or merge into another folder; nothing was changed');
  }
  if (!unfinished) {
    await makeFolder(output).catch((error) => Promise.reject(writeErrorFor(output, error)));
    await writeFileAtomic(marker, `${JSON.stringify({ sources }, null, 2)}\n`);
    return new Set();
  }
  for (const folder of await subfolders(output)) await removeStaleTempFiles(folder);
  const log = await fs.readFile(path.join(output, PROVENANCE_LOG), 'utf8').catch(() => '');
  return new Set(parseJsonLines<ProvenanceRecord>(log).map((record) => record.id));
}

async function subfolders(root: string): Promise<string[]> {
  const entries = await fs.readdir(root, { withFileTypes: true, recursive: true });
  return entries.filter((entry) => entry.isDirectory()).map((entry) => path.join(entry.parentPath, entry.name));
}

export async function mergeTrainingYamls(yamlFiles: string[], outputDir: string, options: MergeOptions = {}): Promise<MergeReport> {
  const output = path.resolve(outputDir);
  const outputYaml = path.join(output, TRAINING_YAML);
  if (await exists(outputYaml)) {
    throw new DataFileError(outputYaml, 'already exists', 'Merge into a new, empty output folder; nothing was changed');
  }
  const summaries = [];
  for (const file of yamlFiles) summaries.push(await summarizeTrainingYaml(file, options.workingDirectory));
  const channelCounts = new Set(summaries.flatMap((s) => s.entries.map((e) => (e.entry.bgChannel === NO_BACKGROUND_CHANNEL ? 1 : 2))));
  if (channelCounts.size > 1) {
    throw new DataFileError(yamlFiles.join(', '), 'mix single-channel and two-channel cubes', 'Merge only datasets with the same channels (all with background, or all without)');
  }
  const twoChannels = channelCounts.has(2);
  const logged = await startOrResume(output, yamlFiles);

  const seen = new Map<string, { label: CubeLabel; yamlFile: string }>();
  const conflicts: MergeConflict[] = [];
  const entries: TrainingDataEntry[] = [];
  let copied = 0;
  let duplicates = 0;
  const counts = { cell: 0, no_cell: 0 };

  for (const [sourceIndex, summary] of summaries.entries()) {
    const sourceRoot = path.dirname(summary.yamlFile);
    const volumes = await sourceVolumes(sourceRoot);
    for (const [entryIndex, { entry, cubes }] of summary.entries.entries()) {
      const folder = path.join(output, `${sourceIndex + 1}-${folderName(path.basename(sourceRoot))}`, `${entryIndex + 1}-${entry.type === 'cell' ? 'cells' : 'non_cells'}`);
      let copiedHere = 0;
      for (const cube of cubes) {
        const key = positionKey(cube.position);
        // Without a provenance record the dataset itself stands for its volume.
        const sourceVolume = volumes.get(key) ?? `unknown volume of ${summary.yamlFile}`;
        const identity = `${sourceVolume}|${key}`;
        const earlier = seen.get(identity);
        if (earlier) {
          if (earlier.label === entry.type) duplicates++;
          else conflicts.push({ position: cube.position, sourceVolume, kept: earlier, dropped: { label: entry.type, yamlFile: summary.yamlFile } });
          continue;
        }
        seen.set(identity, { label: entry.type, yamlFile: summary.yamlFile });
        if (copiedHere === 0) await fs.mkdir(folder, { recursive: true }).catch((error) => Promise.reject(writeErrorFor(folder, error)));
        const bytes = await Promise.all(cube.files.map((file) => fs.readFile(file).catch(() => Promise.reject(new DataFileError(file, 'cannot be read', 'Check the source dataset (cellfinder-retrain dataset validate); nothing was merged from it yet')))));
        await saveCubeFiles(cube.files.map((_, channel) => path.join(folder, cubeFileName(cube.position, channel))), bytes, path.join(output, TRASH_FOLDER));
        const id = `${sourceIndex}-${entryIndex}-${key}`;
        if (!logged.has(id)) {
          await appendLineDurably(
            path.join(output, PROVENANCE_LOG),
            JSON.stringify({ id, time: new Date().toISOString(), action: 'add', position: cube.position, label: entry.type, source: sourceVolume, mergedFrom: summary.yamlFile }),
          );
        }
        copiedHere++;
        counts[entry.type]++;
      }
      if (copiedHere > 0) {
        entries.push({
          cubeDir: folder,
          cellDef: '',
          type: entry.type,
          signalChannel: 0,
          bgChannel: twoChannels ? 1 : NO_BACKGROUND_CHANNEL,
          signalMean: entry.signalMean,
          signalStd: entry.signalStd,
          bgMean: entry.bgMean,
          bgStd: entry.bgStd,
        });
        copied += copiedHere;
      }
    }
  }
  await writeTrainingYaml(outputYaml, entries, { absolutePaths: options.absolutePaths });
  await fs.rm(path.join(output, MERGE_MARKER), { force: true });
  return { yamlFile: outputYaml, copied, duplicates, conflicts, cells: counts.cell, nonCells: counts.no_cell };
}

/**
 * What a workspace holds for cellfinder: training datasets (a training.yaml,
 * or cells/ + non_cells/ folders without one), model files, and training runs
 * (output folders with a training-events.jsonl, or the record of a SLURM
 * job not started yet). Found by walking the
 * folders, for the editor's sidebar; no VS Code here.
 */
import { promises as fs } from 'node:fs';
import * as path from 'node:path';
import { EVENTS_FILE, SLURM_JOBS_FILE } from './runFiles';
import { CELLS_FOLDER, NON_CELLS_FOLDER, TRAINING_YAML, TRASH_FOLDER } from './dataset';

export interface FoundDataset {
  /** The folder. */
  root: string;
  /** Its training.yaml; undefined for bare cells/ + non_cells/ folders. */
  yamlFile?: string;
}

export interface WorkspaceContents {
  datasets: FoundDataset[];
  models: string[];
  /** Output folders of training runs. */
  runs: string[];
}

export const MODEL_EXTENSIONS = ['.keras', '.h5'];

/** Folders never worth walking into: tool caches and our own hidden state (resume checkpoints, trash). */
const SKIPPED_FOLDERS = new Set(['node_modules', '.git', '.venv', '__pycache__', TRASH_FOLDER, '.resume']);

export interface ScanOptions {
  /** How deep below each root to look. */
  maxDepth?: number;
  /** Stops after this many folders, so a huge image folder cannot stall the editor. */
  maxFolders?: number;
}

export async function scanWorkspace(roots: readonly string[], options: ScanOptions = {}): Promise<WorkspaceContents> {
  const maxDepth = options.maxDepth ?? 6;
  let budget = options.maxFolders ?? 20_000;
  const contents: WorkspaceContents = { datasets: [], models: [], runs: [] };
  const walk = async (folder: string, depth: number): Promise<void> => {
    if (budget-- <= 0) return;
    let entries;
    try {
      entries = await fs.readdir(folder, { withFileTypes: true });
    } catch {
      return;
    }
    const names = new Set(entries.map((e) => e.name));
    const subfolders = entries.filter((e) => e.isDirectory()).map((e) => e.name);
    if (names.has(TRAINING_YAML)) contents.datasets.push({ root: folder, yamlFile: path.join(folder, TRAINING_YAML) });
    else if (subfolders.includes(CELLS_FOLDER) && subfolders.includes(NON_CELLS_FOLDER)) contents.datasets.push({ root: folder });
    if (names.has(EVENTS_FILE) || names.has(SLURM_JOBS_FILE)) contents.runs.push(folder);
    for (const entry of entries) {
      if (entry.isFile() && MODEL_EXTENSIONS.some((ext) => entry.name.endsWith(ext))) contents.models.push(path.join(folder, entry.name));
    }
    if (depth >= maxDepth) return;
    for (const name of subfolders) {
      // Cube folders hold thousands of TIFFs and nothing else of interest.
      if (SKIPPED_FOLDERS.has(name) || name === CELLS_FOLDER || name === NON_CELLS_FOLDER) continue;
      await walk(path.join(folder, name), depth + 1);
    }
  };
  for (const root of roots) await walk(root, 0);
  const byPath = (a: string, b: string) => a.localeCompare(b);
  contents.datasets.sort((a, b) => byPath(a.root, b.root));
  contents.models.sort(byPath);
  contents.runs.sort(byPath);
  return contents;
}

/** The run that wrote `modelFile`: the run folder it sits in (checkpoints and final model alike). */
export function runOfModel(modelFile: string, runs: readonly string[]): string | undefined {
  const folder = path.dirname(modelFile);
  return runs.find((run) => run === folder);
}

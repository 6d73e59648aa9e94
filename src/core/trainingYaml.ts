/**
 * cellfinder's training.yaml: a `data:` list of cube folders with their label.
 *
 * cellfinder resolves a relative `cube_dir` against the working directory it
 * is run from. We read relative paths against the YAML's own folder first
 * (what upstream PR #634 proposes, and what makes a dataset folder portable),
 * then against the working directory, and say which one matched.
 */
import { promises as fs } from 'node:fs';
import * as path from 'node:path';
import { parseDocument, stringify } from 'yaml';
import { writeFileAtomic } from './atomicFile';
import { DataFileError } from './errors';
import { pythonFloatRepr } from './pythonFloat';

export type CubeLabel = 'cell' | 'no_cell';

/** One `data:` entry, with cellfinder's key names in camelCase. */
export interface TrainingDataEntry {
  /** The folder of cube files, as written in the YAML (may be relative). */
  cubeDir: string;
  /** '' = every cube in the folder; otherwise an XML file or folder naming the cubes to use. */
  cellDef: string;
  type: CubeLabel;
  signalChannel: number;
  /** -1 = no background channel. */
  bgChannel: number;
  signalMean?: number;
  signalStd?: number;
  bgMean?: number;
  bgStd?: number;
  /** Keys cellfinder does not know but a user or tool put there: kept on rewrite. */
  extra?: Record<string, unknown>;
}

export type ResolvedAgainst = 'absolute' | 'yaml-folder' | 'working-directory';

export interface ResolvedTrainingDataEntry extends TrainingDataEntry {
  /** Absolute folder the cubes are in. */
  cubeDirPath: string;
  resolvedAgainst: ResolvedAgainst;
  /** The resolved `cell_def` (XML file or folder) when it is not ''. */
  cellDefPath?: string;
}

export interface TrainingYaml {
  file: string;
  entries: ResolvedTrainingDataEntry[];
}

export const NO_BACKGROUND_CHANNEL = -1;

const KNOWN_KEYS = ['cube_dir', 'cell_def', 'type', 'signal_channel', 'bg_channel', 'signal_mean', 'signal_std', 'bg_mean', 'bg_std'];
const FIX_SYNTAX = 'Fix the YAML (see cellfinder\'s training.yaml format: a "data:" list of cube_dir, cell_def, type, signal_channel, bg_channel)';

/** Parses the text of a training.yaml (no file-system access); `file` names it in errors. */
export function parseTrainingYaml(text: string, file: string): TrainingDataEntry[] {
  const document = parseDocument(text, { prettyErrors: true });
  if (document.errors.length > 0) {
    const first = document.errors[0];
    const where = first.linePos ? ` at line ${first.linePos[0].line}, column ${first.linePos[0].col}` : '';
    throw new DataFileError(file, `is not valid YAML${where}: ${first.message.split('\n')[0]}`, FIX_SYNTAX);
  }
  const root = document.toJS() as unknown;
  if (!isRecord(root) || !('data' in root)) {
    throw new DataFileError(file, 'has no "data:" section', FIX_SYNTAX);
  }
  if (!Array.isArray(root.data)) {
    throw new DataFileError(file, '"data:" is not a list', FIX_SYNTAX);
  }
  return root.data.map((raw, index) => parseEntry(raw, index, file));
}

function parseEntry(raw: unknown, index: number, file: string): TrainingDataEntry {
  const name = `data[${index}]`;
  if (!isRecord(raw)) throw new DataFileError(file, `${name} is not a mapping of cube_dir, type, ...`, FIX_SYNTAX);
  const fail = (problem: string): never => {
    throw new DataFileError(file, `${name}: ${problem}`, FIX_SYNTAX);
  };
  const cubeDir = raw.cube_dir;
  if (typeof cubeDir !== 'string' || cubeDir === '') fail('"cube_dir" is missing or not a path');
  const type = raw.type;
  if (type !== 'cell' && type !== 'no_cell') fail(`${type === undefined ? '"type" is missing' : `"type" is ${JSON.stringify(type)}`}; it must be "cell" or "no_cell"`);
  const channel = (key: string): number => {
    const value = raw[key];
    if (value === undefined) return fail(`"${key}" is missing; it must be a channel number 0-9 (bg_channel -1 = no background)`);
    if (!Number.isInteger(value) || (value as number) < -1 || (value as number) > 9) {
      return fail(`"${key}" is ${JSON.stringify(value)}; it must be a channel number 0-9 (bg_channel -1 = no background)`);
    }
    return value as number;
  };
  const signalChannel = channel('signal_channel');
  if (signalChannel < 0) fail('"signal_channel" must be 0-9');
  const bgChannel = channel('bg_channel');
  const cellDef = raw.cell_def ?? '';
  if (typeof cellDef !== 'string') fail('"cell_def" must be a path or \'\'');
  const entry: TrainingDataEntry = { cubeDir: cubeDir as string, cellDef: cellDef as string, type: type as CubeLabel, signalChannel, bgChannel };
  for (const [key, field] of STAT_KEYS) {
    const value = raw[key];
    if (value === undefined) continue;
    if (typeof value !== 'number' || !Number.isFinite(value)) fail(`"${key}" is ${JSON.stringify(value)}; it must be a number`);
    entry[field] = value as number;
  }
  const extraKeys = Object.keys(raw).filter((key) => !KNOWN_KEYS.includes(key));
  if (extraKeys.length > 0) entry.extra = Object.fromEntries(extraKeys.map((key) => [key, raw[key]]));
  return entry;
}

/**
 * Reads a training.yaml and resolves every cube folder: absolute paths as they
 * are; relative ones against the YAML's folder, then `workingDirectory`.
 * A folder found in neither is an error naming the entry.
 */
export async function readTrainingYaml(file: string, workingDirectory: string = process.cwd()): Promise<TrainingYaml> {
  let text: string;
  try {
    text = await fs.readFile(file, 'utf8');
  } catch (error) {
    throw new DataFileError(file, (error as NodeJS.ErrnoException).code === 'ENOENT' ? 'does not exist' : `cannot be read (${(error as Error).message})`, 'Check the path');
  }
  const entries = parseTrainingYaml(text, file);
  const resolved: ResolvedTrainingDataEntry[] = [];
  for (const [index, entry] of entries.entries()) {
    resolved.push({ ...entry, ...(await resolveEntry(entry, index, file, workingDirectory)) });
  }
  return { file: path.resolve(file), entries: resolved };
}

/** Where a relative path of an entry may be: the YAML's folder first, then the working directory. */
async function resolveEntryPath(
  given: string,
  yamlFile: string,
  workingDirectory: string,
  isWanted: (candidate: string) => Promise<boolean>,
): Promise<{ resolved?: { path: string; against: ResolvedAgainst }; looked: string }> {
  const candidates: Array<{ path: string; against: ResolvedAgainst }> = path.isAbsolute(given)
    ? [{ path: given, against: 'absolute' }]
    : [
        { path: path.resolve(path.dirname(path.resolve(yamlFile)), given), against: 'yaml-folder' },
        { path: path.resolve(workingDirectory, given), against: 'working-directory' },
      ];
  for (const candidate of candidates) {
    if (await isWanted(candidate.path)) return { resolved: candidate, looked: '' };
  }
  return { looked: [...new Set(candidates.map((c) => c.path))].join(' or ') };
}

async function resolveEntry(
  entry: TrainingDataEntry,
  index: number,
  file: string,
  workingDirectory: string,
): Promise<Pick<ResolvedTrainingDataEntry, 'cubeDirPath' | 'resolvedAgainst' | 'cellDefPath'>> {
  const cubeDir = await resolveEntryPath(entry.cubeDir, file, workingDirectory, isDirectory);
  if (!cubeDir.resolved) {
    throw new DataFileError(
      file,
      `data[${index}] (type ${entry.type}): cube_dir "${entry.cubeDir}" is not a folder (looked in ${cubeDir.looked})`,
      "Fix cube_dir, or move the cubes there; relative paths are read from the YAML's folder first, then the working directory",
    );
  }
  if (entry.cellDef === '') return { cubeDirPath: cubeDir.resolved.path, resolvedAgainst: cubeDir.resolved.against };
  const cellDef = await resolveEntryPath(entry.cellDef, file, workingDirectory, pathExists);
  if (!cellDef.resolved) {
    throw new DataFileError(
      file,
      `data[${index}] (type ${entry.type}): cell_def "${entry.cellDef}" does not exist (looked in ${cellDef.looked})`,
      "Fix cell_def (a Cell Counter XML file or a folder of cube files naming the cubes to use), or set it to '' to use every cube",
    );
  }
  return { cubeDirPath: cubeDir.resolved.path, resolvedAgainst: cubeDir.resolved.against, cellDefPath: cellDef.resolved.path };
}

export interface WriteTrainingYamlOptions {
  /** Write absolute cube_dir paths instead of paths relative to the YAML's folder. */
  absolutePaths?: boolean;
  overwrite?: boolean;
}

/**
 * Formats entries byte for byte as cellfinder's napari plugin writes them
 * (brainglobe-utils `save_yaml`, i.e. PyYAML `yaml.dump`: block style, keys
 * sorted, list items not indented, floats in Python's repr). `cubeDir` must
 * be absolute or relative to the process working directory; it is written
 * relative to the YAML's folder unless `absolutePaths` is set.
 */
export function formatTrainingYaml(file: string, entries: TrainingDataEntry[], options: WriteTrainingYamlOptions = {}): string {
  const yamlFolder = path.dirname(path.resolve(file));
  const lines = ['data:'];
  for (const entry of entries) {
    const absolute = path.resolve(entry.cubeDir);
    const cubeDir = options.absolutePaths ? absolute : toPosix(path.relative(yamlFolder, absolute) || '.');
    const values = new Map<string, string>();
    for (const [key, value] of Object.entries(entry.extra ?? {})) values.set(key, yamlValue(value));
    values.set('bg_channel', String(entry.bgChannel));
    values.set('cell_def', yamlString(entry.cellDef));
    values.set('cube_dir', yamlString(cubeDir));
    values.set('signal_channel', String(entry.signalChannel));
    values.set('type', entry.type);
    for (const [key, field] of STAT_KEYS) {
      const stat = entry[field];
      if (stat !== undefined) values.set(key, pythonFloat(stat));
    }
    [...values.keys()].sort().forEach((key, i) => lines.push(`${i === 0 ? '- ' : '  '}${key}: ${values.get(key)}`));
  }
  return `${lines.join('\n')}\n`;
}

const STAT_KEYS = [
  ['signal_mean', 'signalMean'],
  ['signal_std', 'signalStd'],
  ['bg_mean', 'bgMean'],
  ['bg_std', 'bgStd'],
] as const;

/** A string scalar quoted only when PyYAML would quote it (the yaml library decides, single quotes). */
function yamlString(text: string): string {
  return stringify(text, { singleQuote: true, lineWidth: 0 }).trimEnd();
}

function yamlValue(value: unknown): string {
  if (typeof value === 'string') return yamlString(value);
  if (typeof value === 'number') return Number.isInteger(value) ? String(value) : pythonFloat(value);
  if (typeof value === 'boolean' || value === null) return String(value);
  // Nested values a user added: JSON is valid YAML flow style.
  return JSON.stringify(value);
}

/**
 * A float as PyYAML writes it: Python's repr, with ".0" forced into the
 * exponent forms ("1.0e-05") and YAML's names for the special values.
 */
export function pythonFloat(value: number): string {
  if (Number.isNaN(value)) return '.nan';
  if (!Number.isFinite(value)) return value > 0 ? '.inf' : '-.inf';
  const repr = pythonFloatRepr(value);
  return /^-?\d+e/.test(repr) ? repr.replace('e', '.0e') : repr;
}

export async function writeTrainingYaml(file: string, entries: TrainingDataEntry[], options: WriteTrainingYamlOptions = {}): Promise<void> {
  await writeFileAtomic(file, formatTrainingYaml(file, entries, options), { overwrite: options.overwrite });
}

function toPosix(relative: string): string {
  return relative.split(path.sep).join('/');
}

function isRecord(value: unknown): value is Record<string, unknown> {
  return typeof value === 'object' && value !== null && !Array.isArray(value);
}

async function pathExists(candidate: string): Promise<boolean> {
  try {
    await fs.stat(candidate);
    return true;
  } catch {
    return false;
  }
}

async function isDirectory(folder: string): Promise<boolean> {
  try {
    return (await fs.stat(folder)).isDirectory();
  } catch {
    return false;
  }
}

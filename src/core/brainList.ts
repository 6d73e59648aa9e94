/**
 * A list of brains to classify, one per line, for `classify --brains`: a CSV
 * file with the header `signal,background,points,output_dir` (background may
 * be empty for signal-only data). Relative paths are taken from the list's
 * folder, so a list can travel with the data it names. Paths may not hold
 * commas (the list is plain CSV, without quoting).
 */
import { promises as fs } from 'node:fs';
import * as path from 'node:path';
import { DataFileError } from './errors';

export interface Brain {
  signal: string;
  background?: string;
  points: string;
  outputDir: string;
}

const COLUMNS = ['signal', 'background', 'points', 'output_dir'] as const;
const FIX = `Write one brain per line under the header "${COLUMNS.join(',')}" (background may be empty)`;

export async function readBrainList(file: string): Promise<Brain[]> {
  let text: string;
  try {
    text = await fs.readFile(file, 'utf8');
  } catch {
    throw new DataFileError(file, 'cannot be read', 'Give the path of the brain list (CSV)');
  }
  const lines = text.split(/\r?\n/).map((line, index) => ({ line: line.trim(), number: index + 1 })).filter(({ line }) => line !== '' && !line.startsWith('#'));
  const header = lines.shift()?.line.split(',').map((name) => name.trim());
  if (!header || header.join(',') !== COLUMNS.join(',')) throw new DataFileError(file, `does not start with the header "${COLUMNS.join(',')}"`, FIX);
  const folder = path.dirname(path.resolve(file));
  const brains = lines.map(({ line, number }) => {
    const cells = line.split(',').map((cell) => cell.trim());
    if (cells.length !== COLUMNS.length) throw new DataFileError(file, `line ${number} has ${cells.length} fields, not ${COLUMNS.length}`, FIX);
    const [signal, background, points, outputDir] = cells;
    for (const [name, value] of [['signal', signal], ['points', points], ['output_dir', outputDir]] as const) {
      if (value === '') throw new DataFileError(file, `line ${number} has no ${name}`, FIX);
    }
    const resolve = (value: string) => path.resolve(folder, value);
    return { signal: resolve(signal), background: background ? resolve(background) : undefined, points: resolve(points), outputDir: resolve(outputDir) };
  });
  if (brains.length === 0) throw new DataFileError(file, 'lists no brains', FIX);
  const outputs = new Set<string>();
  for (const brain of brains) {
    if (outputs.has(brain.outputDir)) throw new DataFileError(file, `names the output folder ${brain.outputDir} twice`, 'Give each brain its own output_dir: a second brain would overwrite the first one\'s results');
    outputs.add(brain.outputDir);
  }
  return brains;
}

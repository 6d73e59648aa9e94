/**
 * Choosing which candidates to label. A detection gives 100,000-1,000,000
 * candidates; an expert labels 1,000-5,000 (the retraining guide). Without a
 * model the choice is spread evenly over the volume; with a model's
 * probabilities (classify's classified_points.csv) it is split evenly between
 * predicted cells and predicted non-cells (whose labels then fall into the
 * guide's four categories: right and wrong on each side), most uncertain first.
 */
import { promises as fs } from 'node:fs';
import { writeCellCounterXml, type CellCounterPoint } from './cellCounterXml';
import { positionKey } from './dataset';
import { DataFileError } from './errors';
import { writeFileAtomic } from './atomicFile';
import { seededRandom, type Random } from './random';

export const DEFAULT_CHOSEN = 2000;

export interface ChooseOptions {
  count: number;
  /** cell probability by position (x, y, z), from classify; omitted: spread over the volume. */
  probabilities?: ReadonlyMap<string, number>;
  seed?: number;
}

export interface ChosenCandidate extends CellCounterPoint {
  cellProbability?: number;
}

/** The low 10 bits of v, spread to every third bit (bit i to bit 3i). */
function spreadBits(v: number): number {
  let x = v & 0x3ff;
  x = (x | (x << 16)) & 0x030000ff;
  x = (x | (x << 8)) & 0x0300f00f;
  x = (x | (x << 4)) & 0x030c30c3;
  x = (x | (x << 2)) & 0x09249249;
  return x;
}

/**
 * Interleaves the bits of z, y and x (Morton order): points close in the
 * volume are close in this order, so every k-th point along it is a sample
 * spread over the whole volume. Two halves of 10 bits per axis in one
 * number: exact for coordinates below 2^17 (131,072; whole-brain planes are
 * ~10,000 wide), ordered by their high bits beyond.
 */
function mortonKey(point: CellCounterPoint): number {
  const [z, y, x] = [point.z, point.y, point.x].map((v) => Math.max(0, Math.trunc(v)));
  const half = (shift: number) => ((spreadBits(z >>> shift) << 2) | (spreadBits(y >>> shift) << 1) | spreadBits(x >>> shift)) >>> 0;
  return half(10) * 2 ** 30 + half(0);
}

/** Every k-th point along the Morton order, each picked at a seeded place within its stretch. */
function spreadEvenly(points: readonly CellCounterPoint[], count: number, random: Random): CellCounterPoint[] {
  const ordered = points.map((point) => ({ point, key: mortonKey(point) })).sort((a, b) => a.key - b.key);
  const stride = ordered.length / count;
  return Array.from({ length: count }, (_, i) => ordered[Math.min(ordered.length - 1, Math.floor(i * stride + random.next() * stride))].point);
}

export function chooseCandidates(points: readonly CellCounterPoint[], options: ChooseOptions): ChosenCandidate[] {
  const count = Math.min(options.count, points.length);
  const random = seededRandom(options.seed ?? 1);
  if (!options.probabilities) return spreadEvenly(points, count, random).map((point) => ({ ...point }));
  const withProbability = points.flatMap((point) => {
    const cellProbability = options.probabilities?.get(positionKey(point));
    return cellProbability === undefined ? [] : [{ ...point, type: cellProbability > 0.5 ? 2 : 1, cellProbability }];
  });
  const uncertainFirst = (list: ChosenCandidate[]) => list.sort((a, b) => Math.abs((a.cellProbability as number) - 0.5) - Math.abs((b.cellProbability as number) - 0.5));
  const cells = uncertainFirst(withProbability.filter((p) => p.type === 2));
  const nonCells = uncertainFirst(withProbability.filter((p) => p.type === 1));
  const wanted = Math.min(count, withProbability.length);
  // Half each; a side with too few gives its share to the other.
  const fromCells = Math.min(cells.length, Math.max(Math.ceil(wanted / 2), wanted - nonCells.length));
  return [...cells.slice(0, fromCells), ...nonCells.slice(0, wanted - fromCells)];
}

/** classify's classified_points.csv (x,y,z,type,cell_probability) as probabilities by position. */
export async function readProbabilities(file: string): Promise<Map<string, number>> {
  let text: string;
  try {
    text = await fs.readFile(file, 'utf8');
  } catch (error) {
    throw new DataFileError(file, `cannot be read (${(error as Error).message})`, 'Give the classified_points.csv that classify wrote');
  }
  const [header, ...rows] = text.split(/\r?\n/).filter((line) => line.trim() !== '');
  const columns = (header ?? '').split(',');
  const [xi, yi, zi, pi] = ['x', 'y', 'z', 'cell_probability'].map((name) => columns.indexOf(name));
  if ([xi, yi, zi, pi].some((i) => i < 0)) throw new DataFileError(file, 'has no x, y, z and cell_probability columns', 'Give the classified_points.csv that classify wrote');
  const probabilities = new Map<string, number>();
  for (const [line, row] of rows.entries()) {
    const cells = row.split(',').map(Number);
    if ([xi, yi, zi, pi].some((i) => !Number.isFinite(cells[i]))) throw new DataFileError(file, `line ${line + 2} is not numbers: "${row}"`, 'Re-run classify to rewrite the file');
    probabilities.set(positionKey({ x: cells[xi], y: cells[yi], z: cells[zi] }), cells[pi]);
  }
  return probabilities;
}

/**
 * Writes the chosen candidates as Cell Counter XML (napari and cellfinder
 * open it; with probabilities, type 2 = predicted cell, 1 = predicted
 * non-cell, as cellfinder's classified XML) and, with probabilities, the
 * matching classified_points.csv beside it, which labelling reads.
 */
export async function writeChosen(xmlFile: string, chosen: readonly ChosenCandidate[]): Promise<{ xmlFile: string; probabilitiesFile?: string; warnings: string[] }> {
  const warnings = await writeCellCounterXml(xmlFile, chosen.map(({ x, y, z, type }) => ({ x, y, z, type })), { overwrite: true });
  if (!chosen.some((p) => p.cellProbability !== undefined)) return { xmlFile, warnings };
  const probabilitiesFile = xmlFile.replace(/\.xml$/i, '') + '.classified_points.csv';
  const rows = ['x,y,z,type,cell_probability', ...chosen.map((p) => `${p.x},${p.y},${p.z},${p.type},${p.cellProbability}`)];
  await writeFileAtomic(probabilitiesFile, `${rows.join('\n')}\n`, { overwrite: true });
  return { xmlFile, probabilitiesFile, warnings };
}

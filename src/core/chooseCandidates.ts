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

/**
 * What classify gives a candidate: p(cell) as the network's softmax has it,
 * and the log-odds of cell, ln(p(cell) / p(non-cell)), from the network's
 * logits (their difference). The log-odds rank candidates at both ends, where
 * the probabilities cannot: p(cell) rounds to 1 - 2^-24 in float32 beyond
 * log-odds of about 17, and p(non-cell) to 0 beyond about 87 (103 with
 * subnormals, which TensorFlow flushes). |log-odds| is how sure the network
 * is; the sign is its call.
 */
export interface Probabilities {
  cell: number;
  logOdds: number;
}

/** ln(p / (1 - p)): the log-odds that a file with only p(cell) gives (exact only where p is not near 0 or 1). */
export function logOddsOfProbability(p: number): number {
  return Math.log(p) - Math.log1p(-p);
}

export interface ChooseOptions {
  count: number;
  /** Probabilities by position (x, y, z), from classify; omitted: spread over the volume. */
  probabilities?: ReadonlyMap<string, Probabilities>;
  seed?: number;
}

export interface ChosenCandidate extends CellCounterPoint {
  probabilities?: Probabilities;
}

/** A candidate as classify wrote it: type 2 = predicted cell, 1 = predicted non-cell, and its probabilities. */
export interface ClassifiedCandidate extends CellCounterPoint {
  probabilities: Probabilities;
}

/**
 * classify's classified_points.csv header. Readers find columns by name, and
 * columns are only ever added at the end, so older readers still read it.
 */
export const CLASSIFIED_CSV_HEADER = 'x,y,z,type,cell_probability,cell_log_odds';

/** The classified_points.csv of `points`, in their order. */
export function classifiedCsv(points: readonly ClassifiedCandidate[]): string {
  return `${[CLASSIFIED_CSV_HEADER, ...points.map((p) => `${p.x},${p.y},${p.z},${p.type},${p.probabilities.cell},${p.probabilities.logOdds}`)].join('\n')}\n`;
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
    const probabilities = options.probabilities?.get(positionKey(point));
    return probabilities === undefined ? [] : [{ ...point, type: probabilities.cell > 0.5 ? 2 : 1, probabilities, certainty: Math.abs(probabilities.logOdds) }];
  });
  const uncertainFirst = (list: typeof withProbability) => list.sort((a, b) => a.certainty - b.certainty);
  const cells = uncertainFirst(withProbability.filter((p) => p.type === 2));
  const nonCells = uncertainFirst(withProbability.filter((p) => p.type === 1));
  const wanted = Math.min(count, withProbability.length);
  // Half each; a side with too few gives its share to the other.
  const fromCells = Math.min(cells.length, Math.max(Math.ceil(wanted / 2), wanted - nonCells.length));
  return [...cells.slice(0, fromCells), ...nonCells.slice(0, wanted - fromCells)].map(({ certainty, ...chosen }) => chosen);
}

/**
 * classify's classified_points.csv as probabilities by position: columns
 * found by name (x, y, z, cell_probability, and cell_log_odds; a file from
 * before cell_log_odds was written gets them from p(cell), which ties the
 * candidates whose p(cell) rounded to 1).
 */
export async function readProbabilities(file: string): Promise<Map<string, Probabilities>> {
  let text: string;
  try {
    text = await fs.readFile(file, 'utf8');
  } catch (error) {
    throw new DataFileError(file, `cannot be read (${(error as Error).message})`, 'Give the classified_points.csv that classify wrote');
  }
  const [header, ...rows] = text.split(/\r?\n/).filter((line) => line.trim() !== '');
  const columns = (header ?? '').split(',');
  const [xi, yi, zi, pi, li] = ['x', 'y', 'z', 'cell_probability', 'cell_log_odds'].map((name) => columns.indexOf(name));
  if ([xi, yi, zi, pi].some((i) => i < 0)) throw new DataFileError(file, 'has no x, y, z and cell_probability columns', 'Give the classified_points.csv that classify wrote');
  const probabilities = new Map<string, Probabilities>();
  for (const [line, row] of rows.entries()) {
    const cells = row.split(',').map(Number);
    if ([xi, yi, zi, pi, li].some((i) => i >= 0 && !Number.isFinite(cells[i]))) throw new DataFileError(file, `line ${line + 2} is not numbers: "${row}"`, 'Re-run classify to rewrite the file');
    probabilities.set(positionKey({ x: cells[xi], y: cells[yi], z: cells[zi] }), { cell: cells[pi], logOdds: li < 0 ? logOddsOfProbability(cells[pi]) : cells[li] });
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
  const classified = chosen.filter((p): p is ClassifiedCandidate => p.probabilities !== undefined);
  if (classified.length === 0) return { xmlFile, warnings };
  const probabilitiesFile = xmlFile.replace(/\.xml$/i, '') + '.classified_points.csv';
  await writeFileAtomic(probabilitiesFile, classifiedCsv(classified), { overwrite: true });
  return { xmlFile, probabilitiesFile, warnings };
}

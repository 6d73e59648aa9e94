/**
 * A candidate set's cubes and context patches, cut in one pass through the
 * volume and kept beside the dataset, so that labelling shows any candidate
 * with one read of a few hundred kB instead of reading its planes (on a slow
 * shared disk, 40 plane files per candidate), and a retrained model can
 * re-predict every candidate from them in one pass.
 *
 * Layout, in `<dataset>/.candidate-cache/<16 hex>/` (the hex names what the
 * cache is of: the points file with its size and time, the volumes, the
 * voxel sizes):
 *   manifest.json  that identity, the candidate count and the record sizes
 *   cubes.f32      per candidate, in id order: each channel's 20x50x50 cube
 *                  (z, y, x), float32 little-endian: the bytes a decision saves
 *   context.bin    per candidate: each channel's context patch in the
 *                  volume's pixel type (little-endian), in records of the
 *                  largest patch's size
 *   done.log       the ids whose records are on disk, one per line, appended
 *                  only after those records were flushed
 * It is a cache: deleting it loses nothing; labelling then reads the planes.
 */
import { createHash } from 'node:crypto';
import { constants, promises as fs } from 'node:fs';
import type { FileHandle } from 'node:fs/promises';
import * as path from 'node:path';
import { appendLineDurably, makeFolder, writeFileAtomic } from './atomicFile';
import { CONTEXT_CUBOIDS, contextWindow, cutContext, type CandidateContext } from './candidateContext';
import { CUBE_VOXELS, type Point3 } from './cube';
import { networkCube, sweepBands, type ExtractionPlan, type VoxelSizes } from './extraction';
import { bytesPerPixel, type PixelArray, type PixelType } from './tiff';
import type { Volume } from './volume';

export const CACHE_FOLDER = '.candidate-cache';
const FORMAT = 1;
/** Candidates whose records are flushed and logged together (70 MB at 5, 1, 1 µm): a kill loses at most this many cut cubes. */
const FLUSH_EVERY = 128;

export interface CandidateSource {
  points: string;
  signal: string;
  background?: string;
  voxelSizes?: VoxelSizes;
}

interface Manifest {
  format: number;
  identity: Record<string, unknown>;
  candidates: number;
  channels: number;
  contextValues: number;
  pixelType: PixelType;
}

const PIXEL_ARRAYS: Record<PixelType, { new (buffer: ArrayBuffer, offset?: number, length?: number): PixelArray; readonly BYTES_PER_ELEMENT: number }> = {
  uint8: Uint8Array,
  int8: Int8Array,
  uint16: Uint16Array,
  int16: Int16Array,
  float32: Float32Array,
};

export class CandidateCache {
  private readonly done = new Set<number>();
  /** How much of done.log has been read. */
  private logBytes = 0;
  /** Slot of each candidate id, in id order. */
  private readonly slots: Map<number, number>;

  private constructor(
    readonly folder: string,
    private readonly plan: ExtractionPlan<Point3>,
    private readonly channels: number,
    /** Values of the largest context patch, all channels. */
    private readonly contextValues: number,
    /** The volume's pixel type, which context patches keep. */
    private readonly pixelType: PixelType,
  ) {
    this.slots = new Map([...plan.extractable].sort((a, b) => a.index - b.index).map((entry, slot) => [entry.index, slot]));
  }

  /**
   * The cache of this candidate set (plan: its cuttable candidates, by id =
   * index in the points file) in the dataset; created empty when there is none,
   * and any cache of other sets in the dataset is removed.
   */
  static async open(datasetRoot: string, source: CandidateSource, plan: ExtractionPlan<Point3>, channels: number, pixelType: PixelType): Promise<CandidateCache> {
    const { name, manifest } = await describe(source, plan, channels, pixelType);
    const root = path.join(datasetRoot, CACHE_FOLDER);
    for (const other of await fs.readdir(root).catch(() => [] as string[])) if (other !== name) await fs.rm(path.join(root, other), { recursive: true, force: true });
    const cache = new CandidateCache(path.join(root, name), plan, channels, manifest.contextValues, pixelType);
    const text = `${JSON.stringify(manifest, null, 2)}\n`;
    if ((await fs.readFile(cache.file('manifest.json'), 'utf8').catch(() => undefined)) !== text) {
      await fs.rm(cache.folder, { recursive: true, force: true });
      await makeFolder(cache.folder);
      await writeFileAtomic(cache.file('manifest.json'), text);
    }
    await cache.refresh();
    return cache;
  }

  /**
   * The dataset's cache of this candidate set as far as it is filled, or
   * undefined when the dataset has none of it; changes nothing (for readers
   * such as classify, which must not drop a cache of another set).
   */
  static async find(datasetRoot: string, source: CandidateSource, plan: ExtractionPlan<Point3>, channels: number, pixelType: PixelType): Promise<CandidateCache | undefined> {
    const { name, manifest } = await describe(source, plan, channels, pixelType);
    const cache = new CandidateCache(path.join(datasetRoot, CACHE_FOLDER, name), plan, channels, manifest.contextValues, pixelType);
    if ((await fs.readFile(cache.file('manifest.json'), 'utf8').catch(() => undefined)) !== `${JSON.stringify(manifest, null, 2)}\n`) return undefined;
    await cache.refresh();
    return cache;
  }

  get total(): number {
    return this.slots.size;
  }

  get cached(): number {
    return this.done.size;
  }

  has(id: number): boolean {
    return this.done.has(id);
  }

  /** Takes in what a sweep (this process's or another's) has logged since the last look. */
  async refresh(): Promise<void> {
    let handle: FileHandle;
    try {
      handle = await fs.open(this.file('done.log'), 'r');
    } catch {
      return;
    }
    try {
      const size = (await handle.stat()).size;
      if (size <= this.logBytes) return;
      const bytes = Buffer.alloc(size - this.logBytes);
      await handle.read(bytes, 0, bytes.length, this.logBytes);
      // Only whole lines: a line being written is taken next time.
      const text = bytes.toString('latin1');
      const complete = text.lastIndexOf('\n') + 1;
      for (const line of text.slice(0, complete).split('\n')) if (line !== '' && this.slots.has(Number(line))) this.done.add(Number(line));
      this.logBytes += complete;
    } finally {
      await handle.close();
    }
  }

  /** The cube of candidate `id`, one array per channel, or undefined when it is not cached yet. */
  async readCube(id: number): Promise<Float32Array[] | undefined> {
    if (!this.done.has(id)) return undefined;
    const values = fromLittleEndian(await this.readRecord('cubes.f32', this.slot(id), this.channels * CUBE_VOXELS * 4), 'float32');
    return Array.from({ length: this.channels }, (_, c) => Float32Array.from(values.subarray(c * CUBE_VOXELS, (c + 1) * CUBE_VOXELS)));
  }

  /**
   * The cubes of the cached ones among `ids`, in slot (= id) order, read in
   * runs of neighbouring records: a model re-predicts a whole set from the
   * cache in one sequential pass. Ids not cached are left out.
   */
  async *readCubes(ids: Iterable<number>, recordsPerRead = 32): AsyncGenerator<{ id: number; channels: Float32Array[] }> {
    const recordBytes = this.channels * CUBE_VOXELS * 4;
    const wanted = [...ids].filter((id) => this.done.has(id)).sort((a, b) => this.slot(a) - this.slot(b));
    // A cache no sweep has written to yet has no records file.
    if (wanted.length === 0) return;
    const handle = await fs.open(this.file('cubes.f32'), 'r');
    try {
      for (let start = 0; start < wanted.length; ) {
        // A run of consecutive slots, read at once.
        let end = start + 1;
        while (end < wanted.length && end - start < recordsPerRead && this.slot(wanted[end]) === this.slot(wanted[end - 1]) + 1) end++;
        const bytes = new Uint8Array((end - start) * recordBytes);
        const { bytesRead } = await handle.read(bytes, 0, bytes.length, this.slot(wanted[start]) * recordBytes);
        if (bytesRead !== bytes.length) throw new Error(`${this.file('cubes.f32')}: records ${this.slot(wanted[start])}..${this.slot(wanted[end - 1])} are cut short`);
        const values = fromLittleEndian(bytes, 'float32');
        for (let i = start; i < end; i++) {
          const at = (i - start) * this.channels * CUBE_VOXELS;
          yield { id: wanted[i], channels: Array.from({ length: this.channels }, (_, c) => Float32Array.from(values.subarray(at + c * CUBE_VOXELS, at + (c + 1) * CUBE_VOXELS))) };
        }
        start = end;
      }
    } finally {
      await handle.close();
    }
  }

  async readContext(id: number, position: Point3): Promise<CandidateContext | undefined> {
    if (!this.done.has(id)) return undefined;
    const window = contextWindow(position, this.plan.cuboid, this.plan.volumeShape);
    const patch = window.width * window.height;
    const values = fromLittleEndian(await this.readRecord('context.bin', this.slot(id), this.contextValues * this.pixelBytes), this.pixelType);
    return { id, ...window, channels: Array.from({ length: this.channels }, (_, c) => Float32Array.from(values.subarray(c * patch, (c + 1) * patch))) };
  }

  private get pixelBytes(): number {
    return bytesPerPixel(this.pixelType);
  }

  /**
   * Cuts every candidate not cached yet in one pass through the volume and
   * writes its records; `onProgress` gets (cached, total). Stops at `signal`
   * after flushing what it cut; the next sweep continues from there.
   */
  async sweep(volumes: readonly Volume[], options: { signal?: AbortSignal; onProgress?: (cached: number, total: number) => void } = {}): Promise<void> {
    const todo = { ...this.plan, extractable: this.plan.extractable.filter((entry) => !this.done.has(entry.index)) };
    // Read-write, created when missing, never truncated: records already there stay.
    const cubes = await fs.open(this.file('cubes.f32'), constants.O_RDWR | constants.O_CREAT);
    const contexts = await fs.open(this.file('context.bin'), constants.O_RDWR | constants.O_CREAT);
    const written: number[] = [];
    const writing: Array<Promise<unknown>> = [];
    // Records are written while the next candidates are cut, and flushed (synced, then logged) while the next are cut too:
    // the disk's write-back overlaps the reading. One flush at a time, so at most two batches of records are held.
    let flushing: Promise<void> = Promise.resolve();
    const flush = async () => {
      const previous = flushing;
      if (written.length > 0) {
        const ids = written.splice(0);
        const writes = writing.splice(0);
        flushing = (async () => {
          await Promise.all(writes);
          await previous;
          await cubes.sync();
          await contexts.sync();
          await appendLineDurably(this.file('done.log'), ids.join('\n'));
          for (const id of ids) this.done.add(id);
          options.onProgress?.(this.done.size, this.total);
        })();
        // Its failure (a full disk) is thrown by the await below or the next flush, never left unhandled.
        flushing.catch(() => undefined);
      }
      await previous;
    };
    options.onProgress?.(this.done.size, this.total);
    const [, , volumeWidth] = this.plan.volumeShape;
    // A candidate needs its cuboid's rows and its context's.
    const rowsOfPoint = (entry: ExtractionPlan<Point3>['extractable'][number]) => {
      const window = contextWindow(entry.point, this.plan.cuboid, this.plan.volumeShape);
      return [Math.min(entry.bounds.y[0], window.y0), Math.max(entry.bounds.y[1], window.y0 + window.height)] as const;
    };
    try {
      for await (const swept of sweepBands(todo, volumes, { rowsOfPoint, signal: options.signal })) {
        const slot = this.slot(swept.index);
        const cube = new Float32Array(this.channels * CUBE_VOXELS);
        const context = new (PIXEL_ARRAYS[this.pixelType] as unknown as new (length: number) => PixelArray)(this.contextValues);
        const window = contextWindow(swept.point, this.plan.cuboid, this.plan.volumeShape);
        for (let c = 0; c < this.channels; c++) {
          networkCube(this.plan, swept.bounds, (z) => swept.rowsOf(z, c), swept.firstRow, cube.subarray(c * CUBE_VOXELS, (c + 1) * CUBE_VOXELS));
          context.set(cutContext(window, swept.rowsOf(window.z, c), swept.firstRow, volumeWidth) as never, c * window.width * window.height);
        }
        writing.push(cubes.write(littleEndianBytes(cube), 0, cube.byteLength, slot * cube.byteLength), contexts.write(littleEndianBytes(context), 0, context.byteLength, slot * context.byteLength));
        written.push(swept.index);
        if (written.length === FLUSH_EVERY) await flush();
      }
    } finally {
      await Promise.allSettled(writing);
      try {
        await flush();
        await flushing;
      } finally {
        await cubes.close();
        await contexts.close();
      }
    }
  }

  private slot(id: number): number {
    const slot = this.slots.get(id);
    if (slot === undefined) throw new Error(`candidate ${id} has no full cube, so no place in the cache`);
    return slot;
  }

  private file(name: string): string {
    return path.join(this.folder, name);
  }

  private async readRecord(name: string, slot: number, byteLength: number): Promise<Uint8Array> {
    const bytes = new Uint8Array(byteLength);
    const handle = await fs.open(this.file(name), 'r');
    try {
      const { bytesRead } = await handle.read(bytes, 0, bytes.length, slot * bytes.length);
      if (bytesRead !== bytes.length) throw new Error(`${this.file(name)}: record ${slot} is cut short`);
    } finally {
      await handle.close();
    }
    return bytes;
  }
}

/** The cache's folder name and manifest for a candidate set: what it is of (the points file with its size and time, the volumes, the voxel sizes) and its record sizes. */
async function describe(source: CandidateSource, plan: ExtractionPlan<Point3>, channels: number, pixelType: PixelType): Promise<{ name: string; manifest: Manifest }> {
  const stat = await fs.stat(source.points);
  const identity = {
    points: path.resolve(source.points),
    pointsBytes: stat.size,
    pointsModified: stat.mtimeMs,
    signal: path.resolve(source.signal),
    background: source.background ? path.resolve(source.background) : null,
    voxelSizes: source.voxelSizes ?? null,
  };
  const name = createHash('sha256').update(JSON.stringify({ FORMAT, identity })).digest('hex').slice(0, 16);
  const [, cuboidHeight, cuboidWidth] = plan.cuboid;
  const contextValues = channels * cuboidHeight * CONTEXT_CUBOIDS * cuboidWidth * CONTEXT_CUBOIDS;
  return { name, manifest: { format: FORMAT, identity, candidates: plan.extractable.length, channels, contextValues, pixelType } };
}

const HOST_IS_LITTLE_ENDIAN = new Uint8Array(new Uint16Array([1]).buffer)[0] === 1;

/** The bytes of `values`, little-endian whatever the host. */
function littleEndianBytes(values: PixelArray): Uint8Array {
  const bytes = new Uint8Array(values.buffer, values.byteOffset, values.byteLength);
  return HOST_IS_LITTLE_ENDIAN ? bytes : swapped(bytes, values.BYTES_PER_ELEMENT);
}

function fromLittleEndian(bytes: Uint8Array, type: PixelType): PixelArray {
  const width = PIXEL_ARRAYS[type].BYTES_PER_ELEMENT;
  const ordered = HOST_IS_LITTLE_ENDIAN ? bytes : swapped(bytes, width);
  return new PIXEL_ARRAYS[type](ordered.buffer as ArrayBuffer, ordered.byteOffset, ordered.length / width);
}

function swapped(bytes: Uint8Array, width: number): Uint8Array {
  const out = new Uint8Array(bytes.length);
  for (let i = 0; i < bytes.length; i += width) for (let b = 0; b < width; b++) out[i + b] = bytes[i + width - 1 - b];
  return out;
}

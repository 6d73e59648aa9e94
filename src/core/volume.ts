/**
 * Whole-brain volumes, read one z-plane at a time so that memory stays bounded
 * by the planes in use, not by the volume (hundreds of GB on disk).
 *
 * Accepted as cellfinder's brainglobe-utils `read_with_dask` accepts them: a
 * folder of 2D TIFF planes (`*.tif`, else `*.tiff`, natural order), a text
 * file listing plane paths, or one multi-page TIFF z-stack.
 */
import { promises as fs } from 'node:fs';
import * as path from 'node:path';
import type { GeoTIFF } from 'geotiff';
import { DataFileError } from './errors';
import { naturalSort } from './naturalSort';
import { openTiffFile, pageCount, pageInfo, readPageRows, tiffReadError, type PixelArray, type PixelType } from './tiff';

export interface Volume {
  /** The folder, list or file the volume was opened from. */
  readonly source: string;
  /** (z, y, x) voxels. */
  readonly shape: readonly [number, number, number];
  readonly pixelType: PixelType;
  /** One z-plane, row-major (y, x), in the volume's own pixel type. */
  readPlane(z: number): Promise<PixelArray>;
  /**
   * Rows [y0, y1) of plane z, full width: what one cube or its neighbourhood
   * needs, without the rest of the plane. Read into `reuse` when it is large
   * enough (a buffer of rows done with), else into a new buffer.
   */
  readRows(z: number, y0: number, y1: number, reuse?: ArrayBuffer): Promise<PixelArray>;
  close(): Promise<void>;
}

/**
 * Row buffers handed back after use, to be read into again (`readRows`'
 * `reuse`). A labelling session reads a cube's and a context's rows for every
 * candidate, all day: fresh buffers for them (5 MB a candidate on 5000-pixel
 * rows) kept the collector in full collections, whose steps then delayed the
 * decisions saved between reads.
 */
export class RowBuffers {
  private readonly free: ArrayBuffer[] = [];

  /** At most `kept` buffers are held (a few cubes' and contexts' rows in flight at once). */
  constructor(private readonly kept = 8) {}

  /** A buffer to read into, if one was handed back; `readRows` allocates when it is too small. */
  take(): ArrayBuffer | undefined {
    return this.free.pop();
  }

  /** Hands back the buffer of rows that nothing refers to any more. */
  give(rows: PixelArray): void {
    if (this.free.length < this.kept) this.free.push(rows.buffer as ArrayBuffer);
  }
}

export async function openVolume(source: string): Promise<Volume> {
  let stat;
  try {
    stat = await fs.stat(source);
  } catch {
    throw new DataFileError(source, 'does not exist', 'Give a folder of 2D TIFF planes, a text file listing them, or a multi-page TIFF');
  }
  if (stat.isDirectory()) return PlaneListVolume.open(source, await planeFilesIn(source));
  if (source.toLowerCase().endsWith('.txt')) {
    const listed = (await fs.readFile(source, 'utf8')).split(/\r?\n/).map((line) => line.trimEnd()).filter((line) => line !== '');
    return PlaneListVolume.open(source, naturalSort(listed.map((file) => path.resolve(path.dirname(source), file))));
  }
  return StackVolume.open(source);
}

/**
 * Opens the signal and, when given, the background volume, and checks they
 * have the same shape. A stray file among the planes (a non-TIFF `.tif`, a
 * thumbnail) shifts the plane count: such files are named.
 */
export async function openChannels(signal: string, background?: string): Promise<Volume[]> {
  const volumes = [await openVolume(signal)];
  try {
    if (background === undefined) return volumes;
    volumes.push(await openVolume(background));
    const [first, second] = volumes;
    if (second.shape.some((size, axis) => size !== first.shape[axis])) {
      const strays = (await Promise.all([signal, background].map(notTiffPlanes))).flat();
      throw new DataFileError(
        background,
        `is ${second.shape.join('x')} (z, y, x) but the signal ${signal} is ${first.shape.join('x')}${strays.length ? `; among the planes, not TIFF files: ${strays.slice(0, 5).join(', ')}${strays.length > 5 ? ', ...' : ''}` : ''}`,
        strays.length ? 'Move the files that are not planes out of the folder' : 'Signal and background must have the same shape: check both are the same brain, with every plane present',
      );
    }
    return volumes;
  } catch (error) {
    await Promise.all(volumes.map((volume) => volume.close()));
    throw error;
  }
}

/** The files of a plane folder that do not start as a TIFF does (read only when the channels disagree). */
async function notTiffPlanes(source: string): Promise<string[]> {
  if (!(await fs.stat(source)).isDirectory()) return [];
  const strays: string[] = [];
  for (const file of await planeFilesIn(source)) {
    const head = Buffer.alloc(4);
    const handle = await fs.open(file, 'r');
    try {
      await handle.read(head, 0, 4, 0);
    } finally {
      await handle.close();
    }
    if (!TIFF_MAGIC.some((magic) => head.equals(magic))) strays.push(file);
  }
  return strays;
}

/** Classic and BigTIFF, both byte orders. */
const TIFF_MAGIC = [Buffer.from([0x49, 0x49, 42, 0]), Buffer.from([0x4d, 0x4d, 0, 42]), Buffer.from([0x49, 0x49, 43, 0]), Buffer.from([0x4d, 0x4d, 0, 43])];

async function planeFilesIn(folder: string): Promise<string[]> {
  const names = (await fs.readdir(folder)).filter((name) => !name.startsWith('.'));
  // Like glob("*.tif") or glob("*.tiff"): the extension match is case-sensitive.
  let planes = names.filter((name) => name.endsWith('.tif'));
  if (planes.length === 0) planes = names.filter((name) => name.endsWith('.tiff'));
  if (planes.length === 0) {
    throw new DataFileError(folder, 'contains no .tif or .tiff files', 'Choose the folder that holds the z-planes of one channel');
  }
  return naturalSort(planes.map((name) => path.join(folder, name)));
}

/** A z-stack stored as one 2D TIFF per plane. */
class PlaneListVolume implements Volume {
  private constructor(
    readonly source: string,
    private readonly planeFiles: string[],
    readonly shape: readonly [number, number, number],
    readonly pixelType: PixelType,
  ) {}

  static async open(source: string, planeFiles: string[]): Promise<PlaneListVolume> {
    const first = await openTiffFile(planeFiles[0]);
    try {
      const info = pageInfo(await first.getImage(0), planeFiles[0]);
      return new PlaneListVolume(source, planeFiles, [planeFiles.length, info.height, info.width], info.pixelType);
    } finally {
      await first.close();
    }
  }

  readPlane(z: number): Promise<PixelArray> {
    return this.readRows(z, 0, this.shape[1]);
  }

  async readRows(z: number, y0: number, y1: number, reuse?: ArrayBuffer): Promise<PixelArray> {
    const file = this.planeFiles[z];
    if (file === undefined) throw new RangeError(`plane ${z} is outside 0..${this.shape[0] - 1}`);
    const tiff = await openTiffFile(file);
    try {
      const image = await tiff.getImage(0).catch((error: unknown) => {
        throw tiffReadError(file, error);
      });
      const info = pageInfo(image, file);
      if (info.height !== this.shape[1] || info.width !== this.shape[2] || info.pixelType !== this.pixelType) {
        throw new DataFileError(
          file,
          `is ${info.width}x${info.height} ${info.pixelType}, but the first plane is ${this.shape[2]}x${this.shape[1]} ${this.pixelType}`,
          'Every plane of a volume must have the same size and pixel type; remove stray files from the folder',
        );
      }
      return await readPageRows(image, file, y0, y1, reuse);
    } finally {
      await tiff.close();
    }
  }

  async close(): Promise<void> {}
}

/** A z-stack stored as the pages of one TIFF file. */
class StackVolume implements Volume {
  private constructor(
    readonly source: string,
    private readonly tiff: GeoTIFF,
    readonly shape: readonly [number, number, number],
    readonly pixelType: PixelType,
  ) {}

  static async open(file: string): Promise<StackVolume> {
    const tiff = await openTiffFile(file);
    try {
      const depth = await pageCount(tiff, file);
      const info = pageInfo(await tiff.getImage(0), file);
      return new StackVolume(file, tiff, [depth, info.height, info.width], info.pixelType);
    } catch (error) {
      await tiff.close();
      throw error;
    }
  }

  readPlane(z: number): Promise<PixelArray> {
    return this.readRows(z, 0, this.shape[1]);
  }

  async readRows(z: number, y0: number, y1: number, reuse?: ArrayBuffer): Promise<PixelArray> {
    if (z < 0 || z >= this.shape[0]) throw new RangeError(`plane ${z} is outside 0..${this.shape[0] - 1}`);
    const image = await this.tiff.getImage(z).catch((error: unknown) => {
      throw tiffReadError(this.source, error);
    });
    const info = pageInfo(image, this.source);
    if (info.height !== this.shape[1] || info.width !== this.shape[2] || info.pixelType !== this.pixelType) {
      throw new DataFileError(this.source, `page ${z} differs in size or pixel type from page 0`, 'Give a TIFF holding a single 3D stack of one channel');
    }
    return readPageRows(image, this.source, y0, y1, reuse);
  }

  async close(): Promise<void> {
    await this.tiff.close();
  }
}

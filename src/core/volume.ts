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
import { openTiffFile, pageCount, pageInfo, readPage, tiffReadError, type PixelArray, type PixelType } from './tiff';

export interface Volume {
  /** The folder, list or file the volume was opened from. */
  readonly source: string;
  /** (z, y, x) voxels. */
  readonly shape: readonly [number, number, number];
  readonly pixelType: PixelType;
  /** One z-plane, row-major (y, x), in the volume's own pixel type. */
  readPlane(z: number): Promise<PixelArray>;
  close(): Promise<void>;
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

  async readPlane(z: number): Promise<PixelArray> {
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
      return await readPage(image, file);
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

  async readPlane(z: number): Promise<PixelArray> {
    if (z < 0 || z >= this.shape[0]) throw new RangeError(`plane ${z} is outside 0..${this.shape[0] - 1}`);
    const image = await this.tiff.getImage(z).catch((error: unknown) => {
      throw tiffReadError(this.source, error);
    });
    const info = pageInfo(image, this.source);
    if (info.height !== this.shape[1] || info.width !== this.shape[2] || info.pixelType !== this.pixelType) {
      throw new DataFileError(this.source, `page ${z} differs in size or pixel type from page 0`, 'Give a TIFF holding a single 3D stack of one channel');
    }
    return readPage(image, this.source);
  }

  async close(): Promise<void> {
    await this.tiff.close();
  }
}

/**
 * Cube files as cellfinder reads and writes them: one TIFF per channel,
 * `pCellz{z}y{y}x{x}Ch{c}.tif`, 20 pages of 50 x 50 (z, y, x).
 */
import * as path from 'node:path';
import { writeFileAtomic, type AtomicWriteOptions } from './atomicFile';
import { DataFileError } from './errors';
import { openTiffBytes, pageCount, pageInfo, readPage, type PixelType } from './tiff';
import { encodeFloat32Stack } from './tiffWriter';

/** The network's cube, (z, y, x) voxels, at the network voxel size. */
export const CUBE_SHAPE = { depth: 20, height: 50, width: 50 } as const;
export const CUBE_VOXELS = CUBE_SHAPE.depth * CUBE_SHAPE.height * CUBE_SHAPE.width;
/** The network's voxel size in µm, (z, y, x). */
export const NETWORK_VOXEL_SIZES: readonly [number, number, number] = [5, 1, 1];

export interface Point3 {
  x: number;
  y: number;
  z: number;
}

export interface Cube {
  /** Values in (z, y, x) order, as float32 (cellfinder converts every cube to float32). */
  data: Float32Array;
  /** The pixel type stored in the file (older cellfinder wrote uint16, current writes float32). */
  storedAs: PixelType;
}

/** `pCellz10y522x392Ch0.tif`: the name cellfinder gives a cube's channel file. */
export function cubeFileName(point: Point3, channel: number): string {
  return `pCellz${point.z}y${point.y}x${point.x}Ch${channel}.tif`;
}

/**
 * The position in a cube file name, read as brainglobe-utils reads it: the
 * last `x<digits>`, `y<digits>`, `z<digits>` of the lower-cased name.
 * Returns undefined for a name without a position.
 */
export function pointFromCubeFileName(fileName: string): Point3 | undefined {
  const name = path.basename(fileName).toLowerCase();
  const last = (axis: string) => {
    const found = name.match(new RegExp(`${axis}\\d+`, 'g'));
    return found ? Number(found[found.length - 1].slice(1)) : undefined;
  };
  const x = last('x');
  const y = last('y');
  const z = last('z');
  return x === undefined || y === undefined || z === undefined ? undefined : { x, y, z };
}

/**
 * The file of another channel of the same cube. cellfinder finds it by
 * replacing the last digit before `.tif`, so channel numbers are single digits.
 */
export function siblingChannelFile(file: string, channel: number): string {
  if (!Number.isInteger(channel) || channel < 0 || channel > 9) throw new Error(`channel ${channel} is not a single digit`);
  return file.replace(/\d(\.tiff?)$/i, `${channel}$1`);
}

/** Reads one channel file of a cube and checks it has the network's shape. */
export async function readCube(file: string): Promise<Cube> {
  const tiff = await openTiffBytes(file);
  const pages = await pageCount(tiff, file);
  const first = pageInfo(await tiff.getImage(0), file);
  if (pages !== CUBE_SHAPE.depth || first.height !== CUBE_SHAPE.height || first.width !== CUBE_SHAPE.width) {
    throw new DataFileError(
      file,
      `is ${pages}x${first.height}x${first.width} (z, y, x); a cube must be ${CUBE_SHAPE.depth}x${CUBE_SHAPE.height}x${CUBE_SHAPE.width}`,
      'Re-extract it at the network voxel size (5, 1, 1) µm, or give the data voxel sizes so it is rescaled',
    );
  }
  const data = new Float32Array(CUBE_VOXELS);
  const planeVoxels = CUBE_SHAPE.height * CUBE_SHAPE.width;
  for (let z = 0; z < pages; z++) {
    const image = await tiff.getImage(z);
    const info = pageInfo(image, file);
    if (info.width !== first.width || info.height !== first.height || info.pixelType !== first.pixelType) {
      throw new DataFileError(file, `page ${z} differs in size or type from page 0`, 'Re-extract the cube');
    }
    const pixels = await readPage(image, file);
    if (pixels.length !== planeVoxels) {
      throw new DataFileError(file, `page ${z} holds ${pixels.length} values, not ${planeVoxels}`, 'Re-extract the cube');
    }
    data.set(pixels, z * planeVoxels);
  }
  const nonFinite = countNonFinite(data);
  if (nonFinite > 0) {
    throw new DataFileError(
      file,
      `holds ${nonFinite} NaN or infinite value(s); training on it would make the loss NaN`,
      'Remove this cube (move it out of the folder) or re-extract it from a volume with valid data there, with voxel sizes in µm',
    );
  }
  return { data, storedAs: first.pixelType };
}

/** NaN and ±Infinity values in a cube: a cube with any cannot be trained on. */
export function countNonFinite(data: Float32Array): number {
  let count = 0;
  for (let i = 0; i < data.length; i++) if (!Number.isFinite(data[i])) count++;
  return count;
}

/** Encodes a cube as cellfinder writes it today: float32, 20 pages of 50 x 50. */
export function encodeCube(data: Float32Array): Uint8Array {
  if (data.length !== CUBE_VOXELS) throw new Error(`a cube has ${CUBE_VOXELS} values, got ${data.length}`);
  return encodeFloat32Stack(data, CUBE_SHAPE.depth, CUBE_SHAPE.height, CUBE_SHAPE.width);
}

/** Writes a cube channel file atomically; never replaces an existing file unless asked. */
export async function writeCube(file: string, data: Float32Array, options: AtomicWriteOptions = {}): Promise<void> {
  await writeFileAtomic(file, encodeCube(data), options);
}

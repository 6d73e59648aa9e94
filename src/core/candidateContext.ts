/**
 * The neighbourhood a labeller sees beside a candidate's cube: its own plane,
 * a few cuboids wide, with the cuboid's footprint outlined. Cut the same way
 * from a plane's rows read for one candidate or from a band of rows held by
 * the cache sweep.
 */
import type { Point3 } from './cube';
import { cuboidBounds } from './extraction';
import type { Shape3 } from './rescale';
import type { PixelArray } from './tiff';

/** The candidate's neighbourhood on its own plane, in data voxels, with the cube's footprint. */
export interface CandidateContext {
  id: number;
  z: number;
  /** Region origin in the volume (x, y) and size. */
  x0: number;
  y0: number;
  width: number;
  height: number;
  /** One array per channel, row-major (y, x). */
  channels: Float32Array[];
  /** The cuboid the cube is cut from, in region coordinates. */
  box: { x: number; y: number; width: number; height: number };
}

/** Cuboids the context spans in x and y. */
export const CONTEXT_CUBOIDS = 4;

export type ContextWindow = Omit<CandidateContext, 'id' | 'channels'>;

/** Where a point's context lies: a CONTEXT_CUBOIDS-cuboid square around it on its plane, clipped to the volume. */
export function contextWindow(position: Point3, cuboid: Shape3, volumeShape: Shape3): ContextWindow {
  const [, cuboidHeight, cuboidWidth] = cuboid;
  const [depth, volumeHeight, volumeWidth] = volumeShape;
  const bounds = cuboidBounds(position, cuboid);
  const clamp = (value: number, max: number) => Math.max(0, Math.min(value, max));
  const half = (size: number) => Math.floor((size * CONTEXT_CUBOIDS) / 2);
  const x0 = clamp(Math.round(position.x) - half(cuboidWidth), volumeWidth);
  const y0 = clamp(Math.round(position.y) - half(cuboidHeight), volumeHeight);
  const width = clamp(x0 + cuboidWidth * CONTEXT_CUBOIDS, volumeWidth) - x0;
  const height = clamp(y0 + cuboidHeight * CONTEXT_CUBOIDS, volumeHeight) - y0;
  const z = clamp(Math.round(position.z), depth - 1);
  return { z, x0, y0, width, height, box: { x: bounds.x[0] - x0, y: bounds.y[0] - y0, width: cuboidWidth, height: cuboidHeight } };
}

/**
 * The window's pixels from rows of plane `window.z` that start at row
 * `firstRow` (full width), in the rows' own pixel type (the cache keeps them
 * so: half the bytes of float32 for 16-bit data).
 */
export function cutContext<T extends PixelArray>(window: ContextWindow, rows: T, firstRow: number, volumeWidth: number): T {
  const region = new (rows.constructor as new (length: number) => T)(window.width * window.height);
  for (let row = 0; row < window.height; row++) {
    const from = (window.y0 - firstRow + row) * volumeWidth + window.x0;
    region.set(rows.subarray(from, from + window.width) as never, row * window.width);
  }
  return region;
}

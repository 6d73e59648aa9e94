/**
 * Cutting network cubes around candidate points, identical to current
 * cellfinder (`core/classify/cube_generator.py`): the same cuboid size and
 * start rounding, the same trilinear rescaling, the same edge rule, except
 * that points too near the edge are reported instead of silently dropped.
 */
import { CUBE_SHAPE, NETWORK_VOXEL_SIZES, type Point3 } from './cube';
import { DataFileError } from './errors';
import { resizeTrilinear, type Shape3 } from './rescale';
import { bytesPerPixel, type PixelArray } from './tiff';
import { RowBuffers, type Volume } from './volume';

export type VoxelSizes = readonly [number, number, number];

/** Python's round(): halves go to the even neighbour (cellfinder relies on it). */
export function roundHalfEven(value: number): number {
  const nearest = Math.round(value);
  return Math.abs(value % 1) === 0.5 ? 2 * Math.round(value / 2) : nearest;
}

/**
 * Data voxels covering the network cube along one axis:
 * round(network voxels * network µm / data µm), in cellfinder's operation order.
 */
export function dataCuboidVoxels(networkVoxels: number, networkMicrons: number, dataMicrons: number): number {
  return roundHalfEven((networkVoxels * networkMicrons) / dataMicrons);
}

/** The cuboid (z, y, x) in data voxels for data at `dataVoxelSizes` µm (z, y, x). */
export function cuboidShape(dataVoxelSizes: VoxelSizes = NETWORK_VOXEL_SIZES): Shape3 {
  const network = [CUBE_SHAPE.depth, CUBE_SHAPE.height, CUBE_SHAPE.width];
  return [0, 1, 2].map((axis) => dataCuboidVoxels(network[axis], NETWORK_VOXEL_SIZES[axis], dataVoxelSizes[axis])) as unknown as Shape3;
}

/**
 * [start, end) of the cuboid along one axis. cellfinder centres x and y with
 * round(pos - n/2) but z with int(pos - n//2), kept for backward compatibility.
 */
export function cuboidRange(position: number, voxels: number, axis: 'x' | 'y' | 'z'): [number, number] {
  const start = axis === 'z' ? Math.trunc(position - Math.floor(voxels / 2)) : roundHalfEven(position - voxels / 2);
  return [start, start + voxels];
}

/**
 * The fewest and most data voxels a cuboid may span along an axis. Fewer than
 * two gives a cube of one repeated value (zero: a cube of NaN); more than a
 * thousand means data voxels of under 0.05 µm in y, x. Both come from voxel
 * sizes in the wrong unit (nm for µm, mm for µm) far more often than from a
 * microscope.
 */
const CUBOID_VOXELS_RANGE = [2, 1000] as const;

/** Why voxel sizes cannot be right for cube extraction, or undefined if they can. */
export function voxelSizeProblem(dataVoxelSizes: VoxelSizes): string | undefined {
  if (dataVoxelSizes.some((size) => !Number.isFinite(size) || size <= 0)) return `voxel sizes ${dataVoxelSizes.join(', ')} µm (z, y, x) are not all positive numbers`;
  const cuboid = cuboidShape(dataVoxelSizes);
  if (cuboid.every((voxels) => voxels >= CUBOID_VOXELS_RANGE[0] && voxels <= CUBOID_VOXELS_RANGE[1])) return undefined;
  const unit = Math.max(...dataVoxelSizes) >= 100 ? ' (they look like nanometres: 5000 nm is 5 µm)' : Math.min(...dataVoxelSizes) < 0.05 ? ' (they look like millimetres: 0.005 mm is 5 µm)' : '';
  return (
    `voxel sizes ${dataVoxelSizes.join(', ')} µm (z, y, x) make the network's ${CUBE_SHAPE.depth}x${CUBE_SHAPE.height}x${CUBE_SHAPE.width} cube ` +
    `(at ${NETWORK_VOXEL_SIZES.join(', ')} µm) span ${cuboid.join('x')} data voxels, outside ${CUBOID_VOXELS_RANGE[0]}-${CUBOID_VOXELS_RANGE[1]} per axis${unit}`
  );
}

export const VOXEL_SIZE_FIX = 'Give the voxel sizes in µm, z then y then x, as cellfinder takes them (typically 2-10 µm in z and 0.5-5 µm in y and x)';

export interface CuboidBounds {
  z: [number, number];
  y: [number, number];
  x: [number, number];
}

export function cuboidBounds(point: Point3, shape: Shape3): CuboidBounds {
  return { z: cuboidRange(point.z, shape[0], 'z'), y: cuboidRange(point.y, shape[1], 'y'), x: cuboidRange(point.x, shape[2], 'x') };
}

/** Why a point gets no cube, or undefined if its cuboid lies inside the volume. */
export function edgeProblem(point: Point3, bounds: CuboidBounds, volumeShape: Shape3): string | undefined {
  const inside = point.z >= 0 && point.z < volumeShape[0] && point.y >= 0 && point.y < volumeShape[1] && point.x >= 0 && point.x < volumeShape[2];
  if (!inside) return 'outside the volume';
  const sides: string[] = [];
  const axes = [
    ['z', bounds.z, volumeShape[0]],
    ['y', bounds.y, volumeShape[1]],
    ['x', bounds.x, volumeShape[2]],
  ] as const;
  for (const [axis, [start, end], size] of axes) {
    if (start < 0) sides.push(`${axis} < 0`);
    if (end > size) sides.push(`${axis} > ${size - 1}`);
  }
  return sides.length ? `too near the edge (cuboid reaches ${sides.join(', ')})` : undefined;
}

export interface ExtractionInput<P extends Point3> {
  points: readonly P[];
  /** The channels, signal first: each a volume of the same shape. */
  channels: readonly Volume[];
  /** Data voxel sizes (z, y, x) in µm; omitted = already at the network's (5, 1, 1), no rescaling. */
  dataVoxelSizes?: VoxelSizes;
  signal?: AbortSignal;
}

export interface ExtractedCube<P extends Point3> {
  point: P;
  /** Index of the point in the input list. */
  index: number;
  /** One (20, 50, 50) float32 cube per channel. */
  channels: Float32Array[];
}

export interface SkippedPoint<P extends Point3> {
  point: P;
  index: number;
  reason: string;
}

export interface ExtractionPlan<P extends Point3> {
  cuboid: Shape3;
  volumeShape: Shape3;
  extractable: Array<{ point: P; index: number; bounds: CuboidBounds }>;
  skipped: SkippedPoint<P>[];
}

/** Decides, before reading any pixels, which points get a cube and which are reported as skipped. */
export function planExtraction<P extends Point3>(input: ExtractionInput<P>): ExtractionPlan<P> {
  const [first, ...others] = input.channels;
  if (!first) throw new Error('extraction needs at least the signal channel');
  for (const other of others) {
    if (other.shape.some((size, axis) => size !== first.shape[axis])) {
      throw new DataFileError(
        other.source,
        `is ${other.shape.join('x')} (z, y, x) but the signal ${first.source} is ${first.shape.join('x')}`,
        'Signal and background must have the same shape: check both are the same brain, with every plane present and no stray .tif files among the planes',
      );
    }
  }
  const sizesProblem = input.dataVoxelSizes && voxelSizeProblem(input.dataVoxelSizes);
  if (sizesProblem) throw new DataFileError(first.source, sizesProblem, VOXEL_SIZE_FIX);
  const cuboid = cuboidShape(input.dataVoxelSizes);
  const extractable: ExtractionPlan<P>['extractable'] = [];
  const skipped: SkippedPoint<P>[] = [];
  input.points.forEach((point, index) => {
    const bounds = cuboidBounds(point, cuboid);
    const reason = edgeProblem(point, bounds, first.shape);
    if (reason) skipped.push({ point, index, reason });
    else extractable.push({ point, index, bounds });
  });
  // In z order, so each plane is read once and only a cuboid's depth of planes is held.
  extractable.sort((a, b) => a.bounds.z[0] - b.bounds.z[0] || a.index - b.index);
  return { cuboid, volumeShape: first.shape, extractable, skipped };
}

/**
 * Bytes of plane rows a sweep holds per channel: a band is as many rows as
 * fit one cuboid depth of planes in this, so memory is bounded in bytes
 * whatever the plane size (at 4000x5000 uint16, 20 planes deep: about 670
 * rows; at 8000x10000, about 330). Freed rows are collected lazily, so a
 * sweep's resident memory runs to about twice what it holds.
 */
export const BAND_BYTES_PER_CHANNEL = 128 * 2 ** 20;

/** Rows per band for `plan` on volumes of `bytesPerPixel`: at least two cuboid heights, at most the plane. */
export function bandRows(plan: ExtractionPlan<Point3>, bytesPerPixel: number, budget = BAND_BYTES_PER_CHANNEL): number {
  const [depth, height] = plan.cuboid;
  const fit = Math.floor(budget / (depth * plan.volumeShape[2] * bytesPerPixel));
  return Math.min(plan.volumeShape[1], Math.max(2 * height, fit));
}

/**
 * A point of a sweep with the rows of its band held: `rowsOf(z, channel)`
 * starts at `firstRow`, full width. Valid until the sweep's next point is
 * taken (the rows' buffers are then read into again).
 */
export interface SweptPoint<P extends Point3> {
  point: P;
  index: number;
  bounds: CuboidBounds;
  firstRow: number;
  rowsOf(z: number, channel: number): PixelArray;
}

/**
 * One pass through the volume for the points of `plan`: band by band of rows
 * (by each cuboid's first row), in z order within a band, holding only one
 * cuboid depth of that band's rows per channel: the rows its points' cuboids
 * span, or what `rowsOfPoint` says a point needs (a cuboid and the
 * neighbourhood cut around it). Each plane is read once per band, so the
 * whole volume is read about once, whatever the plane size; the next plane
 * is read while the points of this one are cut.
 */
export async function* sweepBands<P extends Point3>(
  plan: ExtractionPlan<P>,
  channels: readonly Volume[],
  options: { rowsOfPoint?: (entry: ExtractionPlan<P>['extractable'][number]) => readonly [number, number]; rowsPerBand?: number; signal?: AbortSignal } = {},
): AsyncGenerator<SweptPoint<P>> {
  const rowsOfPoint = options.rowsOfPoint ?? ((entry) => entry.bounds.y);
  const rowsPerBand = options.rowsPerBand ?? bandRows(plan, channels[0] ? bytesPerPixel(channels[0].pixelType) : 4);
  const bands = new Map<number, ExtractionPlan<P>['extractable']>();
  // plan.extractable is in z order, so each band's list is too.
  for (const entry of plan.extractable) {
    const band = Math.floor(entry.bounds.y[0] / rowsPerBand);
    const list = bands.get(band);
    if (list) list.push(entry);
    else bands.set(band, [entry]);
  }
  for (const band of [...bands.keys()].sort((a, b) => a - b)) {
    const entries = bands.get(band) as ExtractionPlan<P>['extractable'];
    let firstRow = plan.volumeShape[1];
    let endRow = 0;
    for (const entry of entries) {
      const [start, end] = rowsOfPoint(entry);
      firstRow = Math.min(firstRow, start);
      endRow = Math.max(endRow, end);
    }
    const lastPlane = entries.reduce((last, entry) => Math.max(last, entry.bounds.z[1]), 0);
    // The buffers of planes done with are read into again: a sweep reads the whole volume, and fresh buffers for it keep the collector busy.
    const spare: ArrayBuffer[] = [];
    const read = (z: number) => {
      const rows = Promise.all(channels.map((volume) => volume.readRows(z, firstRow, endRow, spare.pop())));
      // A plane read ahead may fail (a truncated file) before it is waited for: its error is thrown where it is awaited, never left unhandled.
      rows.catch(() => undefined);
      return rows;
    };
    const planes = new Map<number, Promise<PixelArray[]>>();
    const held = new Map<number, PixelArray[]>();
    for (const { point, index, bounds } of entries) {
      options.signal?.throwIfAborted();
      for (const [z, rows] of held) {
        if (z >= bounds.z[0]) continue;
        held.delete(z);
        planes.delete(z);
        for (const channel of rows) spare.push(channel.buffer as ArrayBuffer);
      }
      // A plane read ahead that the next point skips over.
      for (const z of planes.keys()) if (z < bounds.z[0]) planes.delete(z);
      for (let z = bounds.z[0]; z < bounds.z[1]; z++) {
        if (!planes.has(z)) planes.set(z, read(z));
        if (!held.has(z)) held.set(z, await (planes.get(z) as Promise<PixelArray[]>));
      }
      // The next plane the band needs, read while this point is cut.
      const ahead = bounds.z[1];
      if (ahead < lastPlane && !planes.has(ahead)) planes.set(ahead, read(ahead));
      yield { point, index, bounds, firstRow, rowsOf: (z, channel) => (held.get(z) as PixelArray[])[channel] };
    }
  }
}

/** The cubes of `plan`, in one pass through the volume (see `sweepBands`). */
export async function* extractCubes<P extends Point3>(plan: ExtractionPlan<P>, channels: readonly Volume[], signal?: AbortSignal, rowsPerBand?: number): AsyncGenerator<ExtractedCube<P>> {
  for await (const swept of sweepBands(plan, channels, { signal, rowsPerBand })) {
    yield { point: swept.point, index: swept.index, channels: channels.map((_, channel) => networkCube(plan, swept.bounds, (z) => swept.rowsOf(z, channel), swept.firstRow)) };
  }
}

/**
 * The cube of one point, read alone: only the rows of its cuboid, from each
 * of its planes, into `buffers` (a caller that cuts cube after cube keeps its
 * own between calls). For labelling in any order, where neighbouring points
 * share no planes worth keeping; equal to what `extractCubes` gives for the
 * point.
 */
export async function cutCube(point: Point3, channels: readonly Volume[], dataVoxelSizes?: VoxelSizes, buffers = new RowBuffers(channels.length)): Promise<Float32Array[]> {
  const plan = planExtraction({ points: [point], channels, dataVoxelSizes });
  const [entry] = plan.extractable;
  if (!entry) throw new Error(`point x=${point.x} y=${point.y} z=${point.z} has no full cube inside the volume (${plan.skipped[0]?.reason})`);
  const { bounds } = entry;
  return Promise.all(
    channels.map(async (volume) => {
      const cuboid = cuboidFor(plan);
      // Each plane's rows are copied out before the next plane is read into the same buffer.
      let rows: PixelArray | undefined;
      for (let z = bounds.z[0]; z < bounds.z[1]; z++) {
        rows = await volume.readRows(z, bounds.y[0], bounds.y[1], (rows?.buffer as ArrayBuffer | undefined) ?? buffers.take());
        copyCuboidPlane(plan, bounds, cuboid, z - bounds.z[0], rows, bounds.y[0]);
      }
      if (rows) buffers.give(rows);
      return toNetworkCube(plan, cuboid);
    }),
  );
}

/**
 * One channel's cuboid, resized to the network's cube. `rowsOf(z)` gives
 * plane z from row `firstRow` on (a whole plane, or just the cuboid's rows).
 * Written into `into` when given (a cache record), else into a new array.
 */
export function networkCube(plan: ExtractionPlan<Point3>, bounds: CuboidBounds, rowsOf: (z: number) => PixelArray, firstRow: number, into?: Float32Array): Float32Array {
  const cuboid = cuboidFor(plan, into);
  for (let dz = 0; dz < plan.cuboid[0]; dz++) copyCuboidPlane(plan, bounds, cuboid, dz, rowsOf(bounds.z[0] + dz), firstRow);
  return toNetworkCube(plan, cuboid, into);
}

function resizedForNetwork(plan: ExtractionPlan<Point3>): boolean {
  const network: Shape3 = [CUBE_SHAPE.depth, CUBE_SHAPE.height, CUBE_SHAPE.width];
  return plan.cuboid.some((size, axis) => size !== network[axis]);
}

/** Where a cuboid is gathered: `into` itself when no resizing follows. */
function cuboidFor(plan: ExtractionPlan<Point3>, into?: Float32Array): Float32Array {
  return into && !resizedForNetwork(plan) ? into : new Float32Array(plan.cuboid[0] * plan.cuboid[1] * plan.cuboid[2]);
}

/** Copies the cuboid's rows of its plane `dz` out of `plane` (rows from `firstRow` on, the volume's full width). */
function copyCuboidPlane(plan: ExtractionPlan<Point3>, bounds: CuboidBounds, cuboid: Float32Array, dz: number, plane: PixelArray, firstRow: number): void {
  const [, height, width] = plan.cuboid;
  const volumeWidth = plan.volumeShape[2];
  for (let dy = 0; dy < height; dy++) {
    const from = (bounds.y[0] + dy - firstRow) * volumeWidth + bounds.x[0];
    const to = (dz * height + dy) * width;
    // A loop, not set(subarray()): a cube is 1,000 rows, and a view per row is garbage the collector then spends longer on than the copy.
    for (let x = 0; x < width; x++) cuboid[to + x] = plane[from + x];
  }
}

/** The gathered cuboid as the network's cube, resized when the voxel sizes differ from the network's (into `into` when given). */
function toNetworkCube(plan: ExtractionPlan<Point3>, cuboid: Float32Array, into?: Float32Array): Float32Array {
  if (!resizedForNetwork(plan)) return cuboid;
  const cube = resizeTrilinear(cuboid, plan.cuboid, [CUBE_SHAPE.depth, CUBE_SHAPE.height, CUBE_SHAPE.width]);
  if (!into) return cube;
  into.set(cube);
  return into;
}

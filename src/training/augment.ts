/**
 * Training-time augmentation of cubes, as cellfinder's `DataAugmentation`
 * (`core/classify/augment.py`) does it:
 *
 * - each spatial axis is flipped with probability `likelihood`;
 * - with probability `likelihood`, an affine transform: the cube is resampled
 *   to an isotropic 50^3 grid, rotated about each axis, shifted and scaled
 *   (trilinear sampling, border padding), then resampled back to 50x50x20.
 *
 * cellfinder passes its rotation and shift as single values, which its
 * sampler turns into *fixed* amounts: every affine rotates by exactly pi/4
 * about all three axes and shifts by 5% of the cube. `cellfinder-parity`
 * reproduces that; `random-range` (our default) draws the rotation uniformly
 * in [-pi/4, pi/4] and the shift in [-5%, 5%] per axis, which is what the
 * parameters were meant to do. The scale factor is drawn per axis as
 * cellfinder's sampler draws it: 1 / (1 + u), u uniform between 1/1.4 - 1 and
 * 1/0.6 - 1, so zoom lies in [0.6, 1.4].
 */
import { indicesRead, resizeTrilinear } from '../core/rescale';
import { uniform, type Random } from '../core/random';

export type AffineMode = 'random-range' | 'cellfinder-parity';

export interface AugmentationOptions {
  likelihood: number;
  affine: AffineMode;
  /** Largest rotation about each axis, radians. */
  rotation: number;
  /** Largest shift per axis as a fraction of the cube. */
  translation: number;
  scale: readonly [number, number];
}

export const CELLFINDER_AUGMENTATION: AugmentationOptions = {
  likelihood: 0.9,
  affine: 'random-range',
  rotation: Math.PI / 4,
  translation: 0.05,
  scale: [0.6, 1.4],
};

/** One cube's drawn augmentation; `undefined` fields mean "not applied". */
export interface AugmentationDraw {
  flip: [boolean, boolean, boolean];
  affine?: { rotation: [number, number, number]; shift: [number, number, number]; zoom: [number, number, number] };
}

export function drawAugmentation(options: AugmentationOptions, random: Random): AugmentationDraw {
  const doAffine = random.next() < options.likelihood;
  const flip: [boolean, boolean, boolean] = [random.next() < options.likelihood, random.next() < options.likelihood, random.next() < options.likelihood];
  if (!doAffine) return { flip };
  const parity = options.affine === 'cellfinder-parity';
  const axes = [0, 1, 2];
  const rotation = axes.map(() => (parity ? options.rotation : uniform(random, -options.rotation, options.rotation))) as [number, number, number];
  const shift = axes.map(() => (parity ? options.translation : uniform(random, -options.translation, options.translation))) as [number, number, number];
  const zoom = axes.map(() => 1 / (1 + uniform(random, 1 / options.scale[1] - 1, 1 / options.scale[0] - 1))) as [number, number, number];
  return { flip, affine: { rotation, shift, zoom } };
}

/**
 * Applies a draw to the channels of one cube, each stored (y, x, z), the
 * network's order, and returns the augmented channels (same shape). All
 * channels get the same draw, and the affine's coordinates are computed once
 * for all of them.
 */
export function applyAugmentation(channels: readonly Float32Array[], shape: readonly [number, number, number], draw: AugmentationDraw): Float32Array[] {
  if (draw.affine) {
    const side = Math.max(...shape);
    const iso: [number, number, number] = [side, side, side];
    // Resizing back reads only some planes along the last axis (40 of 50 for
    // a 50x50x20 cube): the affine computes only those.
    const planesRead = indicesRead(side, shape[2]);
    const transformed = affineResample(
      channels.map((channel) => resizeTrilinear(channel, shape, iso)),
      side,
      draw.affine,
      draw.flip,
      planesRead,
    );
    return transformed.map((channel) => resizeTrilinear(channel, iso, shape));
  }
  return channels.map((channel) => flip(channel, shape, draw.flip));
}

function flip(data: Float32Array, shape: readonly [number, number, number], axes: [boolean, boolean, boolean]): Float32Array {
  if (!axes.some(Boolean)) return data;
  const [a, b, c] = shape;
  const out = new Float32Array(data.length);
  for (let i = 0; i < a; i++) {
    const si = axes[0] ? a - 1 - i : i;
    for (let j = 0; j < b; j++) {
      const sj = axes[1] ? b - 1 - j : j;
      const from = (si * b + sj) * c;
      const to = (i * b + j) * c;
      for (let k = 0; k < c; k++) out[to + k] = data[from + (axes[2] ? c - 1 - k : k)];
    }
  }
  return out;
}

/** Rotation matrix R = Rz * Ry * Rx (about the cube's three axes). */
function rotationMatrix([rx, ry, rz]: [number, number, number]): number[][] {
  const [cx, sx, cy, sy, cz, sz] = [Math.cos(rx), Math.sin(rx), Math.cos(ry), Math.sin(ry), Math.cos(rz), Math.sin(rz)];
  const x = [
    [1, 0, 0],
    [0, cx, -sx],
    [0, sx, cx],
  ];
  const y = [
    [cy, 0, sy],
    [0, 1, 0],
    [-sy, 0, cy],
  ];
  const z = [
    [cz, -sz, 0],
    [sz, cz, 0],
    [0, 0, 1],
  ];
  const mul = (p: number[][], q: number[][]) => p.map((row) => q[0].map((_, j) => row.reduce((sum, v, k) => sum + v * q[k][j], 0)));
  return mul(z, mul(y, x));
}

/**
 * Samples the isotropic cube through the inverse transform: each output
 * voxel looks up (R^-1 (p - centre - shift)) / zoom + centre in the input,
 * trilinearly, clamping coordinates to the cube (border padding). The flips
 * that follow the transform are applied by writing each voxel to its
 * flipped place, which saves a pass over the cube.
 *
 * Only the output planes `planes` (indices along the last axis, after the
 * flip) are computed; the others stay 0 for a caller that never reads them.
 * Each channel is sampled at the same coordinates, computed once.
 *
 * Every voxel's value comes from the same operations in the same order as
 * the plain formula, so the result is the same to the bit: the per-row and
 * per-column parts of the sums are computed once, and as coordinates are
 * finite and never -0 (a sum with the centre), comparisons clamp them as
 * Math.min/max would and `| 0` truncates them as Math.floor would.
 */
function affineResample(
  channels: readonly Float32Array[],
  side: number,
  affine: NonNullable<AugmentationDraw['affine']>,
  flips: [boolean, boolean, boolean],
  planes: readonly number[],
): Float32Array[] {
  const inverse = rotationMatrix(affine.rotation).map((_, i, m) => m.map((row) => row[i])); // transpose = inverse
  const centre = (side - 1) / 2;
  const shift = affine.shift.map((s) => s * side);
  const outputs = channels.map((channel) => new Float32Array(channel.length));
  const last = side - 1;
  const plane = side * side;
  const [[m00, m01, m02], [m10, m11, m12], [m20, m21, m22]] = inverse;
  const [zoomI, zoomJ, zoomK] = affine.zoom;
  const flipped = (flip: boolean, index: number) => (flip ? last - index : index);
  // The source k of each wanted output plane (a flip is its own inverse).
  const outK = Int32Array.from(planes);
  const pk = Array.from(outK, (k) => flipped(flips[2], k) - centre - shift[2]);
  const [uk, vk, wk] = [m02, m12, m22].map((m) => Float64Array.from(pk, (p) => m * p));
  const count = outK.length;
  for (let i = 0; i < side; i++) {
    const pi = i - centre - shift[0];
    const [ui, vi, wi] = [m00 * pi, m10 * pi, m20 * pi];
    for (let j = 0; j < side; j++) {
      const pj = j - centre - shift[1];
      const uij = ui + m01 * pj;
      const vij = vi + m11 * pj;
      const wij = wi + m21 * pj;
      const outRow = flipped(flips[0], i) * plane + flipped(flips[1], j) * side;
      for (let n = 0; n < count; n++) {
        let u = (uij + uk[n]) / zoomI + centre;
        let v = (vij + vk[n]) / zoomJ + centre;
        let w = (wij + wk[n]) / zoomK + centre;
        u = u < 0 ? 0 : u > last ? last : u;
        v = v < 0 ? 0 : v > last ? last : v;
        w = w < 0 ? 0 : w > last ? last : w;
        const i0 = u | 0;
        const j0 = v | 0;
        const k0 = w | 0;
        // The next voxel along each axis, or the same one at the far edge.
        const di = i0 < last ? plane : 0;
        const dj = j0 < last ? side : 0;
        const dk = k0 < last ? 1 : 0;
        const fu = u - i0;
        const fv = v - j0;
        const fw = w - k0;
        const gu = 1 - fu;
        const gv = 1 - fv;
        const gw = 1 - fw;
        const at = i0 * plane + j0 * side + k0;
        const to = outRow + outK[n];
        for (let c = 0; c < channels.length; c++) {
          const data = channels[c];
          const c00 = data[at] * gw + data[at + dk] * fw;
          const c01 = data[at + dj] * gw + data[at + dj + dk] * fw;
          const c10 = data[at + di] * gw + data[at + di + dk] * fw;
          const c11 = data[at + di + dj] * gw + data[at + di + dj + dk] * fw;
          outputs[c][to] = (c00 * gv + c01 * fv) * gu + (c10 * gv + c11 * fv) * fu;
        }
      }
    }
  }
  return outputs;
}

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
import { resizeTrilinear } from '../core/rescale';
import { uniform, type Random } from './random';

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
 * Applies a draw to one channel of a cube stored (y, x, z), the network's
 * order, and returns the augmented cube (same shape). Channels of one cube
 * get the same draw.
 */
export function applyAugmentation(cube: Float32Array, shape: readonly [number, number, number], draw: AugmentationDraw): Float32Array {
  let data = cube;
  if (draw.affine) {
    const side = Math.max(...shape);
    const iso: [number, number, number] = [side, side, side];
    data = resizeTrilinear(data, shape, iso);
    data = affineResample(data, side, draw.affine);
    data = flip(data, iso, draw.flip);
    return resizeTrilinear(data, iso, shape);
  }
  return flip(data, shape, draw.flip);
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
 * trilinearly, clamping coordinates to the cube (border padding).
 */
function affineResample(data: Float32Array, side: number, affine: NonNullable<AugmentationDraw['affine']>): Float32Array {
  const inverse = rotationMatrix(affine.rotation).map((_, i, m) => m.map((row) => row[i])); // transpose = inverse
  const centre = (side - 1) / 2;
  const shift = affine.shift.map((s) => s * side);
  const out = new Float32Array(data.length);
  const at = (i: number, j: number, k: number) => data[(i * side + j) * side + k];
  const clamp = (v: number) => Math.min(Math.max(v, 0), side - 1);
  const [[m00, m01, m02], [m10, m11, m12], [m20, m21, m22]] = inverse;
  const [zoomI, zoomJ, zoomK] = affine.zoom;
  for (let i = 0; i < side; i++) {
    const pi = i - centre - shift[0];
    for (let j = 0; j < side; j++) {
      const pj = j - centre - shift[1];
      for (let k = 0; k < side; k++) {
        const pk = k - centre - shift[2];
        const u = clamp((m00 * pi + m01 * pj + m02 * pk) / zoomI + centre);
        const v = clamp((m10 * pi + m11 * pj + m12 * pk) / zoomJ + centre);
        const w = clamp((m20 * pi + m21 * pj + m22 * pk) / zoomK + centre);
        const i0 = Math.floor(u);
        const j0 = Math.floor(v);
        const k0 = Math.floor(w);
        const i1 = Math.min(i0 + 1, side - 1);
        const j1 = Math.min(j0 + 1, side - 1);
        const k1 = Math.min(k0 + 1, side - 1);
        const fu = u - i0;
        const fv = v - j0;
        const fw = w - k0;
        const c00 = at(i0, j0, k0) * (1 - fw) + at(i0, j0, k1) * fw;
        const c01 = at(i0, j1, k0) * (1 - fw) + at(i0, j1, k1) * fw;
        const c10 = at(i1, j0, k0) * (1 - fw) + at(i1, j0, k1) * fw;
        const c11 = at(i1, j1, k0) * (1 - fw) + at(i1, j1, k1) * fw;
        out[(i * side + j) * side + k] = (c00 * (1 - fv) + c01 * fv) * (1 - fu) + (c10 * (1 - fv) + c11 * fv) * fu;
      }
    }
  }
  return out;
}

/**
 * Turning cube voxels into pixels: plane and max projection, contrast limits,
 * greyscale RGBA. Pure functions (no DOM), shared by the webview pages and
 * tested in Node.
 */

export interface Contrast {
  min: number;
  max: number;
}

/** One z-plane of a (z, y, x) array. */
export function planeOf(volume: Float32Array, z: number, height: number, width: number): Float32Array {
  return volume.subarray(z * height * width, (z + 1) * height * width);
}

/** Maximum over z of a (z, y, x) array: what a cell looks like through the whole cube. */
export function maxProjection(volume: Float32Array, depth: number, height: number, width: number): Float32Array {
  const plane = height * width;
  const out = new Float32Array(plane).fill(-Infinity);
  for (let z = 0; z < depth; z++) {
    const offset = z * plane;
    for (let i = 0; i < plane; i++) if (volume[offset + i] > out[i]) out[i] = volume[offset + i];
  }
  return out;
}

/**
 * Auto contrast: the 0.5th and 99.8th percentiles, so a few hot pixels do not
 * wash the cube out; a flat image gets a unit range so it shows as mid grey,
 * not as noise.
 */
export function autoContrast(values: Float32Array): Contrast {
  const sorted = Float32Array.from(values).sort();
  const at = (fraction: number) => sorted[Math.min(sorted.length - 1, Math.max(0, Math.round(fraction * (sorted.length - 1))))];
  const min = at(0.005);
  const max = at(0.998);
  return max > min ? { min, max } : { min: min - 0.5, max: min + 0.5 };
}

/** Greyscale RGBA bytes of `values` between the contrast limits. */
export function toGreyRgba(values: Float32Array, contrast: Contrast, out = new Uint8ClampedArray(values.length * 4)): Uint8ClampedArray {
  const scale = 255 / (contrast.max - contrast.min);
  for (let i = 0; i < values.length; i++) {
    const grey = (values[i] - contrast.min) * scale;
    out[i * 4] = grey;
    out[i * 4 + 1] = grey;
    out[i * 4 + 2] = grey;
    out[i * 4 + 3] = 255;
  }
  return out;
}

/** Nearest-rank percentile of a sorted sample, for latency figures. */
export function percentile(sortedValues: readonly number[], fraction: number): number {
  if (sortedValues.length === 0) return Number.NaN;
  return sortedValues[Math.min(sortedValues.length - 1, Math.ceil(fraction * sortedValues.length) - 1)];
}

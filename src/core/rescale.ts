/**
 * Trilinear resizing with the semantics of PyTorch's
 * `F.interpolate(mode="trilinear", align_corners=False)`, which cellfinder uses
 * to bring a cuboid cut at the data's voxel size to the network's cube.
 *
 * Along each axis, output voxel i samples the input at
 * `(i + 0.5) * in/out - 0.5`, clamped below at 0, between the voxel below and
 * the one above (the last voxel repeats at the far edge). torch computes the
 * source position and weights in float32, so we do too (Math.fround); the
 * interpolation runs axis by axis (x, y, then z) in float64, which differs from
 * torch's one-step sum by float32 rounding only.
 */

export type Shape3 = readonly [number, number, number];

interface AxisWeights {
  lower: Int32Array;
  upper: Int32Array;
  lowerWeight: Float32Array;
  upperWeight: Float32Array;
}

function axisWeights(inSize: number, outSize: number): AxisWeights {
  const lower = new Int32Array(outSize);
  const upper = new Int32Array(outSize);
  const lowerWeight = new Float32Array(outSize).fill(1);
  const upperWeight = new Float32Array(outSize);
  const f = Math.fround;
  const scale = f(inSize / outSize);
  for (let i = 0; i < outSize; i++) {
    if (inSize === outSize) {
      lower[i] = i;
      upper[i] = i;
      continue;
    }
    const source = Math.max(f(f(scale * f(i + 0.5)) - 0.5), 0);
    const index = Math.min(Math.floor(source), inSize - 1);
    lower[i] = index;
    upper[i] = index < inSize - 1 ? index + 1 : index;
    upperWeight[i] = Math.min(Math.max(f(source - index), 0), 1);
    lowerWeight[i] = f(1 - upperWeight[i]);
  }
  return { lower, upper, lowerWeight, upperWeight };
}

/**
 * What a pass along an axis whose size does not change does. Its weights are
 * 1 and 0 on the voxel itself, so the blend is `v * 1 + f(v * 0)`: `v` for
 * every finite value, NaN for an infinite one, as torch gives. That is the
 * same whether it happens before or after the other axes' passes (a blend
 * that reads an infinity is never finite) and twice is once, so
 * `resizeTrilinear` does it once, in place, at the end, when any axis keeps
 * its size: the same bits as a blend per kept axis, in one pass.
 */
function infinityToNaNInPlace(values: Float32Array): Float32Array {
  for (let i = 0; i < values.length; i++) values[i] += Math.fround(values[i] * 0);
  return values;
}

/**
 * The input indices along one axis that resizing from `inSize` to `outSize`
 * reads (every voxel when the size is kept), ascending. Lets a caller that
 * computes the input on the fly compute only these.
 */
export function indicesRead(inSize: number, outSize: number): number[] {
  const { lower, upper } = axisWeights(inSize, outSize);
  return [...new Set([...lower, ...upper])].sort((a, b) => a - b);
}

/** Resizes a (z, y, x) float32 volume to `outShape`. Returns the input itself when the shapes match. */
export function resizeTrilinear(input: Float32Array, inShape: Shape3, outShape: Shape3): Float32Array {
  const [inZ, inY, inX] = inShape;
  const [outZ, outY, outX] = outShape;
  if (inZ === outZ && inY === outY && inX === outX) return input;
  const wx = axisWeights(inX, outX);
  const wy = axisWeights(inY, outY);
  const wz = axisWeights(inZ, outZ);

  const f = Math.fround;
  // Pass 1: x, for every input row. Float32Array stores round each blend to float32.
  let alongX = input;
  if (inX !== outX) {
    alongX = new Float32Array(inZ * inY * outX);
    for (let row = 0; row < inZ * inY; row++) {
      const from = row * inX;
      const to = row * outX;
      for (let i = 0; i < outX; i++) {
        alongX[to + i] = input[from + wx.lower[i]] * wx.lowerWeight[i] + f(input[from + wx.upper[i]] * wx.upperWeight[i]);
      }
    }
  }
  // Pass 2: y, for every input plane.
  let alongY = alongX;
  if (inY !== outY) {
    alongY = new Float32Array(inZ * outY * outX);
    for (let z = 0; z < inZ; z++) {
      for (let j = 0; j < outY; j++) {
        const w0 = wy.lowerWeight[j];
        const w1 = wy.upperWeight[j];
        const lowRow = (z * inY + wy.lower[j]) * outX;
        const highRow = (z * inY + wy.upper[j]) * outX;
        const to = (z * outY + j) * outX;
        for (let i = 0; i < outX; i++) alongY[to + i] = alongX[lowRow + i] * w0 + f(alongX[highRow + i] * w1);
      }
    }
  }
  // Pass 3: z.
  let output = alongY;
  if (inZ !== outZ) {
    const planeSize = outY * outX;
    output = new Float32Array(outZ * planeSize);
    for (let k = 0; k < outZ; k++) {
      const w0 = wz.lowerWeight[k];
      const w1 = wz.upperWeight[k];
      const low = wz.lower[k] * planeSize;
      const high = wz.upper[k] * planeSize;
      const to = k * planeSize;
      for (let i = 0; i < planeSize; i++) output[to + i] = alongY[low + i] * w0 + f(alongY[high + i] * w1);
    }
  }
  // At least one axis changed size above, so `output` is a new array, never the input.
  const anAxisKept = inX === outX || inY === outY || inZ === outZ;
  return anAxisKept ? infinityToNaNInPlace(output) : output;
}

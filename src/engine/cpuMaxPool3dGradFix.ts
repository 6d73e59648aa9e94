/**
 * A corrected MaxPool3DGrad kernel for the pure-JS 'cpu' backend.
 *
 * tfjs-backend-cpu 4.22's `maxPool3dPositions` (utils/pool_utils) records
 * each window's maximum at `wDepth * fh * fw + wRow * fh + wCol`, i.e. it
 * steps rows by the filter HEIGHT instead of its WIDTH, while the backward
 * pass decodes with the width. Whenever a window's height and width differ
 * (filterSize [d, h, w] with h != w and h > 1) the gradient lands on the
 * wrong voxel or nowhere. cellfinder's stem pool is (3, 3, 2) over
 * (y, x, z), so h = 3, w = 2: training on the JS engine got wrong gradients
 * for everything before that pool. Found by the gradient checks in
 * gradientCheck.ts (finite differences and the native TensorFlow backend
 * agree; the cpu backend is off by 100%).
 *
 * The replacement scatters each output gradient to its window's maximum
 * (the last one on ties, as tfjs' forward pass picks it). It is installed
 * only when a tiny probe shows the bug, so a fixed tfjs keeps its own kernel.
 */
import type * as tfType from '@tensorflow/tfjs';

type Tf = typeof tfType;

interface CpuBackendInternals {
  data: { get(dataId: object): { values: ArrayLike<number> } };
  makeTensorInfo(shape: number[], dtype: 'float32', values: Float32Array): tfType.TensorInfo;
}

interface MaxPool3DGradAttrs {
  filterSize: [number, number, number] | number;
  strides: [number, number, number] | number;
  pad: 'valid' | 'same' | number;
  dimRoundingMode?: 'floor' | 'round' | 'ceil';
}

/** dx for max pooling: every output gradient goes to the input voxel that was its window's maximum. */
function maxPool3dGrad(tf: Tf, { inputs, backend, attrs }: { inputs: tfType.NamedTensorInfoMap; backend: unknown; attrs?: tfType.NamedAttrMap }): tfType.TensorInfo {
  const { dy, input } = inputs as { dy: tfType.TensorInfo; input: tfType.TensorInfo };
  const { filterSize, strides, pad, dimRoundingMode } = attrs as unknown as MaxPool3DGradAttrs;
  const cpu = backend as CpuBackendInternals;
  const info = tf.backend_util.computePool3DInfo(input.shape as [number, number, number, number, number], filterSize, strides, 1, pad, dimRoundingMode);
  const x = cpu.data.get(input.dataId).values;
  const dyValues = cpu.data.get(dy.dataId).values;
  const dx = new Float32Array(input.shape.reduce((a, b) => a * b, 1));
  const { inDepth, inHeight, inWidth, inChannels, outDepth, outHeight, outWidth } = info;
  const { front, top, left } = info.padInfo;
  const xIndex = (b: number, d: number, r: number, c: number, ch: number) => (((b * inDepth + d) * inHeight + r) * inWidth + c) * inChannels + ch;
  let o = 0;
  for (let b = 0; b < info.batchSize; b++) {
    for (let d = 0; d < outDepth; d++) {
      for (let r = 0; r < outHeight; r++) {
        for (let c = 0; c < outWidth; c++) {
          for (let ch = 0; ch < inChannels; ch++, o++) {
            let best = Number.NEGATIVE_INFINITY;
            let at = -1;
            for (let wd = 0; wd < info.effectiveFilterDepth; wd += info.dilationDepth) {
              const xd = d * info.strideDepth - front + wd;
              if (xd < 0 || xd >= inDepth) continue;
              for (let wr = 0; wr < info.effectiveFilterHeight; wr += info.dilationHeight) {
                const xr = r * info.strideHeight - top + wr;
                if (xr < 0 || xr >= inHeight) continue;
                for (let wc = 0; wc < info.effectiveFilterWidth; wc += info.dilationWidth) {
                  const xc = c * info.strideWidth - left + wc;
                  if (xc < 0 || xc >= inWidth) continue;
                  const i = xIndex(b, xd, xr, xc, ch);
                  if (x[i] >= best) {
                    best = x[i];
                    at = i;
                  }
                }
              }
            }
            if (at >= 0) dx[at] += dyValues[o];
          }
        }
      }
    }
  }
  return cpu.makeTensorInfo(input.shape, 'float32', dx);
}

/**
 * True when the cpu backend's max-pool-3D gradient is wrong: a (1, 2, 1)
 * window over a 2x2 plane must send the gradient to the larger value of
 * each column.
 */
export async function cpuMaxPool3dGradIsBroken(tf: Tf): Promise<boolean> {
  const previous = tf.getBackend();
  await tf.setBackend('cpu');
  try {
    const gradient = tf.tidy(() => {
      const x = tf.tensor5d([0, 1, 2, 3], [1, 1, 2, 2, 1]);
      return tf.grad((t: tfType.Tensor) => tf.sum(tf.maxPool3d(t as tfType.Tensor5D, [1, 2, 1], 1, 'valid')))(x).dataSync();
    });
    return Array.from(gradient).join(',') !== '0,0,1,1';
  } finally {
    if (previous && previous !== 'cpu') await tf.setBackend(previous);
  }
}

/**
 * Installs the corrected kernel for 'cpu' if (and only if) the installed one
 * is broken. Returns whether it was installed. Safe to call more than once.
 */
export async function fixCpuMaxPool3dGrad(tf: Tf): Promise<boolean> {
  if (!tf.getKernel('MaxPool3DGrad', 'cpu')) return false;
  if (!(await cpuMaxPool3dGradIsBroken(tf))) return false;
  tf.unregisterKernel('MaxPool3DGrad', 'cpu');
  tf.registerKernel({ kernelName: 'MaxPool3DGrad', backendName: 'cpu', kernelFunc: (args) => maxPool3dGrad(tf, args) });
  return true;
}

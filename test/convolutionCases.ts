/**
 * Our convolution kernel (native/cellfinder_kernels.cc) against TensorFlow's
 * Conv3D on the zero-padded input, for test/native.test.ts, which runs it in
 * its own process and in children that pick a narrower instruction set's
 * variant (the choice is made once per process).
 */
import type * as tfType from '@tensorflow/tfjs';
import { nativeConvolution } from '../src/engine/nativeKernels';

type Shape5 = [number, number, number, number, number];

/**
 * [input (y, x, z, channels), kernel (y, x, z), filters, strides, padding]:
 * conv1; the strided unit entries; units 4's and 5's few positions; uneven
 * kernels, strides and padding; one input channel.
 */
const CASES: Array<[number[], number[], number, [number, number, number], number]> = [
  [[50, 50, 20, 2], [7, 7, 3], 64, [2, 2, 2], 3],
  [[12, 12, 6, 64], [3, 3, 3], 128, [2, 2, 2], 1],
  [[6, 6, 3, 128], [3, 3, 3], 256, [2, 2, 2], 1],
  [[3, 3, 2, 256], [3, 3, 3], 256, [1, 1, 1], 1],
  [[2, 2, 1, 512], [3, 3, 3], 512, [1, 1, 1], 1],
  [[9, 8, 7, 3], [3, 2, 3], 128, [1, 2, 3], 2],
  [[5, 4, 3, 1], [5, 4, 3], 64, [1, 1, 1], 0],
];

/** One line per case where ours differs from Conv3D by more than float32 noise (1e-5 of the largest output); none when all agree. Batches of 1 and 13 (not a multiple of the cubes a register block holds). */
export function ownConvolutionDifferences(tf: typeof tfType): string[] {
  const problems: string[] = [];
  for (const batch of [1, 13]) {
    for (const [shape, kernelShape, filters, strides, padding] of CASES) {
      tf.tidy(() => {
        const x = tf.randomNormal([batch, ...shape] as Shape5) as tfType.Tensor5D;
        const kernel = tf.randomNormal([...kernelShape, shape[3], filters] as Shape5) as tfType.Tensor5D;
        const ours = nativeConvolution(tf, x, kernel, strides, padding);
        const pad: Array<[number, number]> = [[0, 0], [padding, padding], [padding, padding], [padding, padding], [0, 0]];
        const reference = tf.conv3d(tf.pad(x, pad) as tfType.Tensor5D, kernel, strides, 'valid');
        const label = `batch ${batch}, ${JSON.stringify([shape, kernelShape, filters, strides, padding])}`;
        if (ours.shape.join() !== reference.shape.join()) {
          problems.push(`${label}: shape ${ours.shape} where Conv3D gives ${reference.shape}`);
          return;
        }
        const worst = tf.max(tf.abs(tf.sub(ours, reference))).dataSync()[0];
        const scale = tf.max(tf.abs(reference)).dataSync()[0];
        if (!(worst <= 1e-5 * scale)) problems.push(`${label}: differs from Conv3D by ${worst} (largest output ${scale})`);
      });
    }
  }
  return problems;
}

/**
 * cellfinder's classification network (`core/classify/resnet.py`
 * `build_model`), described layer by layer with Keras' names, shapes and
 * weight order, and run with plain TensorFlow.js ops.
 *
 * Why not tfjs-layers: it has no 3D zero padding, no 3D global average
 * pooling, and its batch normalisation rejects rank-5 inputs; cellfinder
 * normalises over axis 3 of (batch, y, x, z, channels), i.e. over z, so the
 * batch-norm parameters have the size of z at each depth. Weight files only
 * load if we do exactly the same, so the model is written out here once.
 */
import type * as tfType from '@tensorflow/tfjs';
import { type AfterBatchNorm, type BatchNormParameters, nativeBatchNormInference, nativeBatchNormTraining, nativeConvolution, nativeKernelsActive, nativeRelu, ownKernels } from '../engine/nativeKernels';

export const NETWORK_DEPTHS = [18, 34, 50, 101, 152] as const;
export type NetworkDepth = (typeof NETWORK_DEPTHS)[number];

/** Blocks per residual unit (units 2-5) and whether they are bottleneck blocks. */
const ARCHITECTURES: Record<NetworkDepth, { blocks: number[]; bottleneck: boolean }> = {
  18: { blocks: [2, 2, 2, 2], bottleneck: false },
  34: { blocks: [3, 4, 6, 3], bottleneck: false },
  50: { blocks: [3, 4, 6, 3], bottleneck: true },
  101: { blocks: [3, 4, 23, 3], bottleneck: true },
  152: { blocks: [3, 6, 36, 3], bottleneck: true },
};

/** Network input (y, x, z) in voxels; channels come last. */
export const INPUT_SPATIAL_SHAPE = [50, 50, 20] as const;
export const BATCH_NORM_EPSILON = 1e-5;
export const BATCH_NORM_MOMENTUM = 0.99;
/** Batch normalisation axis of (batch, y, x, z, channels): z, as cellfinder has it. */
export const BATCH_NORM_AXIS = 3;
const STARTING_FEATURES = 64;
const NUMBER_OF_CLASSES = 2;

export type Shape3 = [number, number, number];
/** Spatial size plus channels: (y, x, z, channels), without the batch axis. */
export type FeatureShape = [number, number, number, number];

export interface WeightSpec {
  /** Keras' variable name within its layer (kernel, gamma, moving_mean, ...). */
  name: string;
  shape: number[];
  /** Updated by the optimiser (false for batch-norm moving statistics). */
  trainable: boolean;
  initializer: 'glorot_uniform' | 'he_normal' | 'zeros' | 'ones';
}

interface LayerBase {
  name: string;
  /** Names of the layers whose outputs feed this one. */
  inputs: string[];
  outputShape: FeatureShape | [number];
  weights: WeightSpec[];
}

export type LayerSpec = LayerBase &
  (
    | { kind: 'input' }
    | { kind: 'zeroPadding'; padding: number }
    | { kind: 'conv'; filters: number; kernel: Shape3; strides: Shape3 }
    | { kind: 'batchNorm' }
    | { kind: 'relu' }
    | { kind: 'maxPool'; poolSize: Shape3; strides: Shape3 }
    | { kind: 'add' }
    | { kind: 'globalAveragePool' }
    | { kind: 'dense'; units: number }
  );

export interface ResNetSpec {
  depth: NetworkDepth;
  channels: number;
  layers: LayerSpec[];
}

export function isNetworkDepth(value: number): value is NetworkDepth {
  return (NETWORK_DEPTHS as readonly number[]).includes(value);
}

function convOutput(size: number, kernel: number, stride: number): number {
  return Math.floor((size - kernel) / stride) + 1;
}

/** The layers of cellfinder's ResNet in Keras' order, with names, shapes and weights. */
export function resnetSpec(depth: NetworkDepth, channels: number): ResNetSpec {
  if (!isNetworkDepth(depth)) throw new Error(`network depth ${depth} is not one of ${NETWORK_DEPTHS.join(', ')}`);
  if (!Number.isInteger(channels) || channels < 1) throw new Error(`channels must be a positive integer, got ${channels}`);
  const layers: LayerSpec[] = [];
  const shapes = new Map<string, FeatureShape>();
  const add = <L extends LayerSpec>(layer: L): string => {
    layers.push(layer);
    if (layer.outputShape.length === 4) shapes.set(layer.name, layer.outputShape as FeatureShape);
    return layer.name;
  };
  const shapeOf = (name: string) => shapes.get(name) as FeatureShape;

  const zeroPadding = (name: string, input: string, padding: number) => {
    const [y, x, z, c] = shapeOf(input);
    return add({ kind: 'zeroPadding', name, inputs: [input], padding, outputShape: [y + 2 * padding, x + 2 * padding, z + 2 * padding, c], weights: [] });
  };
  const conv = (name: string, input: string, filters: number, kernel: Shape3, strides: Shape3, initializer: WeightSpec['initializer']) => {
    const [y, x, z, c] = shapeOf(input);
    return add({
      kind: 'conv',
      name,
      inputs: [input],
      filters,
      kernel,
      strides,
      outputShape: [convOutput(y, kernel[0], strides[0]), convOutput(x, kernel[1], strides[1]), convOutput(z, kernel[2], strides[2]), filters],
      weights: [{ name: 'kernel', shape: [...kernel, c, filters], trainable: true, initializer }],
    });
  };
  const batchNorm = (name: string, input: string) => {
    const shape = shapeOf(input);
    const size = shape[BATCH_NORM_AXIS - 1];
    return add({
      kind: 'batchNorm',
      name,
      inputs: [input],
      outputShape: shape,
      weights: [
        { name: 'gamma', shape: [size], trainable: true, initializer: 'ones' },
        { name: 'beta', shape: [size], trainable: true, initializer: 'zeros' },
        { name: 'moving_mean', shape: [size], trainable: false, initializer: 'zeros' },
        { name: 'moving_variance', shape: [size], trainable: false, initializer: 'ones' },
      ],
    });
  };
  const relu = (name: string, input: string) => add({ kind: 'relu', name, inputs: [input], outputShape: shapeOf(input), weights: [] });

  // Stem: cellfinder's "conv1" and max pool.
  let x = add({ kind: 'input', name: 'input_layer', inputs: [], outputShape: [...INPUT_SPATIAL_SHAPE, channels], weights: [] });
  x = zeroPadding('conv1_padding', x, 3);
  x = conv('conv1', x, STARTING_FEATURES, [7, 7, 3], [2, 2, 2], 'glorot_uniform');
  x = batchNorm('conv1_bn', x);
  x = relu('conv1_activation', x);
  {
    const [y, xx, z, c] = shapeOf(x);
    x = add({ kind: 'maxPool', name: 'max_pool', inputs: [x], poolSize: [3, 3, 2], strides: [2, 2, 2], outputShape: [convOutput(y, 3, 2), convOutput(xx, 3, 2), convOutput(z, 2, 2), c], weights: [] });
  }

  const { blocks, bottleneck } = ARCHITECTURES[depth];
  let features = STARTING_FEATURES;
  blocks.forEach((count, unitIndex) => {
    const unit = unitIndex + 2;
    for (let block = 0; block < count; block++) {
      const stride = unitIndex === 0 || block !== 0 ? 1 : 2;
      const strides: Shape3 = [stride, stride, stride];
      const prefix = `resunit${unit}_block${block}`;
      const blockInput = x;
      // Keras lists layers by graph depth: the projection shortcut's conv and
      // batch norm sit next to the main path's last conv and batch norm. The
      // order matters: legacy .h5 weights load by order, and Keras 3's
      // .weights.h5 names its groups by class and position (conv3d_3, ...).
      const outFeatures = bottleneck ? features * 4 : features;
      const projection = block === 0;
      let shortcut = blockInput;
      let y: string;
      if (bottleneck) {
        y = conv(`${prefix}_conv_a`, blockInput, features, [1, 1, 1], strides, 'he_normal');
      } else {
        y = zeroPadding(`${prefix}_pad_a`, blockInput, 1);
        y = conv(`${prefix}_conv_a`, y, features, [3, 3, 3], strides, 'he_normal');
      }
      y = batchNorm(`${prefix}_bn_a`, y);
      y = relu(`${prefix}_activation_a`, y);
      y = zeroPadding(`${prefix}_pad_b`, y, 1);
      y = conv(`${prefix}_conv_b`, y, features, [3, 3, 3], [1, 1, 1], 'he_normal');
      if (bottleneck) {
        y = batchNorm(`${prefix}_bn_b`, y);
        y = relu(`${prefix}_activation_b`, y);
        y = conv(`${prefix}_conv_c`, y, outFeatures, [1, 1, 1], [1, 1, 1], 'he_normal');
      }
      if (projection) shortcut = conv(`${prefix}_shortcut_conv`, blockInput, outFeatures, [1, 1, 1], strides, 'he_normal');
      y = batchNorm(`${prefix}_bn_${bottleneck ? 'c' : 'b'}`, y);
      if (projection) shortcut = batchNorm(`${prefix}_shortcut_bn`, shortcut);
      y = add({ kind: 'add', name: `${prefix}_add`, inputs: [y, shortcut], outputShape: shapeOf(y), weights: [] });
      x = relu(`${prefix}_activation_c`, y);
    }
    features *= 2;
  });
  const finalFeatures = shapeOf(x)[3];
  add({ kind: 'globalAveragePool', name: 'final_average_pool', inputs: [x], outputShape: [finalFeatures], weights: [] });
  add({
    kind: 'dense',
    name: 'fully_connected',
    inputs: ['final_average_pool'],
    units: NUMBER_OF_CLASSES,
    outputShape: [NUMBER_OF_CLASSES],
    weights: [
      { name: 'kernel', shape: [finalFeatures, NUMBER_OF_CLASSES], trainable: true, initializer: 'glorot_uniform' },
      { name: 'bias', shape: [NUMBER_OF_CLASSES], trainable: true, initializer: 'zeros' },
    ],
  });
  return { depth, channels, layers };
}

/**
 * The group each layer has in a Keras 3 `.weights.h5` file: Keras names
 * them by class in layer order (conv3d, conv3d_1, ..., batch_normalization,
 * activation_7, ...), not by the layer's own name, and matches them by that
 * path when loading.
 */
export function kerasWeightGroups(spec: ResNetSpec): Map<string, string> {
  const classNames: Record<LayerSpec['kind'], string> = {
    input: 'input_layer',
    zeroPadding: 'zero_padding3d',
    conv: 'conv3d',
    batchNorm: 'batch_normalization',
    relu: 'activation',
    maxPool: 'max_pooling3d',
    add: 'add',
    globalAveragePool: 'global_average_pooling3d',
    dense: 'dense',
  };
  const counters = new Map<string, number>();
  const groups = new Map<string, string>();
  for (const layer of spec.layers) {
    const className = classNames[layer.kind];
    const count = counters.get(className) ?? 0;
    counters.set(className, count + 1);
    groups.set(layer.name, count === 0 ? className : `${className}_${count}`);
  }
  return groups;
}

export function parameterCount(spec: ResNetSpec): number {
  return spec.layers.reduce((sum, layer) => sum + layer.weights.reduce((s, w) => s + w.shape.reduce((a, b) => a * b, 1), 0), 0);
}

/** `layer/variable`: how we key weights (Keras 3 names variables per layer). */
export function weightKey(layer: string, variable: string): string {
  return `${layer}/${variable}`;
}

export type Weights = Map<string, tfType.Variable>;

/** Batch statistics a training-mode forward pass computed, for the moving-average update. */
export interface BatchNormStatistics {
  layer: string;
  mean: tfType.Tensor1D;
  variance: tfType.Tensor1D;
}

/**
 * Runs the network on `input` (batch, y, x, z, channels) and returns the
 * softmax probabilities (batch, 2): index 0 non-cell, 1 cell. In training
 * mode batch normalisation uses the batch's statistics (biased variance, as
 * Keras) and returns them for the moving-average update. `observe`, if
 * given, sees every layer's output as it is made (the tensor is freed with
 * the rest of the pass: read it there).
 */
export function forward(
  tf: typeof tfType,
  spec: ResNetSpec,
  weights: Weights,
  input: tfType.Tensor5D,
  training: boolean,
  observe?: (layer: LayerSpec, output: tfType.Tensor) => void,
): { probabilities: tfType.Tensor2D; logits: tfType.Tensor2D; statistics: BatchNormStatistics[] } {
  const outputs = new Map<string, tfType.Tensor>();
  const statistics: BatchNormStatistics[] = [];
  const weight = (layer: string, name: string) => {
    const value = weights.get(weightKey(layer, name));
    if (!value) throw new Error(`missing weight ${weightKey(layer, name)}`);
    return value;
  };
  let logits: tfType.Tensor2D | undefined;
  const deferredPadding = new Map<string, number>();
  // Inference on the native engine: a batch norm followed by ReLU, or by the
  // residual add and ReLU, is left pending until that ReLU, which runs the
  // three as one pass (nativeBatchNormInference); a ReLU followed by the max
  // pool is left pending in turn until that pool. Not while `observe` wants
  // every layer's output.
  const fusable = !training && !observe && nativeKernelsActive(tf) ? fusableLayers(spec) : undefined;
  const pendingBatchNorms = new Map<string, { input: tfType.Tensor5D; parameters: BatchNormParameters }>();
  const pendingAdds = new Map<string, { batchNorm: string; shortcut: string }>();
  const pendingRelus = new Map<string, string>();
  const valueOf = (name: string): tfType.Tensor => {
    const batchNorm = pendingBatchNorms.get(name);
    if (batchNorm) {
      pendingBatchNorms.delete(name);
      outputs.set(name, nativeBatchNormInference(tf, batchNorm.input, batchNorm.parameters, BATCH_NORM_EPSILON));
    }
    const add = pendingAdds.get(name);
    if (add) {
      pendingAdds.delete(name);
      outputs.set(name, tf.add(valueOf(add.batchNorm), valueOf(add.shortcut)));
    }
    const reluOf = pendingRelus.get(name);
    if (reluOf) {
      pendingRelus.delete(name);
      outputs.set(name, runPendingBatchNorm(reluOf, { relu: true }));
    }
    return outputs.get(name) as tfType.Tensor;
  };
  const runPendingBatchNorm = (name: string, then: AfterBatchNorm): tfType.Tensor5D => {
    const batchNorm = pendingBatchNorms.get(name) as { input: tfType.Tensor5D; parameters: BatchNormParameters };
    pendingBatchNorms.delete(name);
    return nativeBatchNormInference(tf, batchNorm.input, batchNorm.parameters, BATCH_NORM_EPSILON, then);
  };
  const movingParameters = (layer: string): BatchNormParameters => ({
    gamma: weight(layer, 'gamma') as tfType.Tensor1D,
    beta: weight(layer, 'beta') as tfType.Tensor1D,
    movingMean: weight(layer, 'moving_mean') as tfType.Tensor1D,
    movingVariance: weight(layer, 'moving_variance') as tfType.Tensor1D,
  });
  for (const layer of spec.layers) {
    if (fusable?.has(layer.name)) {
      if (layer.kind === 'batchNorm') {
        pendingBatchNorms.set(layer.name, { input: valueOf(layer.inputs[0]) as tfType.Tensor5D, parameters: movingParameters(layer.name) });
        continue;
      }
      if (layer.kind === 'add') {
        const batchNorm = layer.inputs.find((name) => pendingBatchNorms.has(name));
        if (batchNorm) {
          pendingAdds.set(layer.name, { batchNorm, shortcut: layer.inputs.find((name) => name !== batchNorm) as string });
          continue;
        }
      }
    }
    if (layer.kind === 'relu' && pendingBatchNorms.has(layer.inputs[0]) && fusable?.has(layer.name)) {
      pendingRelus.set(layer.name, layer.inputs[0]);
      continue;
    }
    if (layer.kind === 'relu' && (pendingBatchNorms.has(layer.inputs[0]) || pendingAdds.has(layer.inputs[0]))) {
      const add = pendingAdds.get(layer.inputs[0]);
      pendingAdds.delete(layer.inputs[0]);
      outputs.set(layer.name, add ? runPendingBatchNorm(add.batchNorm, { shortcut: valueOf(add.shortcut) as tfType.Tensor5D }) : runPendingBatchNorm(layer.inputs[0], { relu: true }));
      continue;
    }
    if (layer.kind === 'maxPool' && pendingRelus.has(layer.inputs[0])) {
      const batchNorm = pendingRelus.get(layer.inputs[0]) as string;
      pendingRelus.delete(layer.inputs[0]);
      outputs.set(layer.name, runPendingBatchNorm(batchNorm, { maxPool: { poolSize: layer.poolSize, strides: layer.strides } }));
      continue;
    }
    const inputs = layer.inputs.map(valueOf);
    let output: tfType.Tensor;
    switch (layer.kind) {
      case 'input':
        output = input;
        break;
      case 'zeroPadding':
        // Every zero padding in this network feeds one convolution, which
        // applies it as part of its own op (see convolution()).
        output = inputs[0];
        deferredPadding.set(layer.name, layer.padding);
        break;
      case 'conv':
        output = convolution(tf, inputs[0] as tfType.Tensor5D, weight(layer.name, 'kernel') as tfType.Tensor5D, layer.strides, deferredPadding.get(layer.inputs[0]) ?? 0, !training);
        break;
      case 'batchNorm': {
        const gamma = weight(layer.name, 'gamma') as tfType.Tensor1D;
        const beta = weight(layer.name, 'beta') as tfType.Tensor1D;
        if (training) {
          const result = batchNormWithBatchStatistics(tf, inputs[0] as tfType.Tensor5D, gamma, beta);
          statistics.push({ layer: layer.name, mean: result.mean, variance: result.variance });
          output = result.output;
        } else {
          output = batchNormWithMovingStatistics(tf, inputs[0] as tfType.Tensor5D, movingParameters(layer.name));
        }
        break;
      }
      case 'relu':
        output = relu(tf, inputs[0]);
        break;
      case 'maxPool':
        output = maxPool3dSeparable(tf, inputs[0] as tfType.Tensor5D, layer.poolSize, layer.strides);
        break;
      case 'add':
        output = tf.add(inputs[0], inputs[1]);
        break;
      case 'globalAveragePool':
        output = tf.mean(inputs[0], [1, 2, 3]);
        break;
      case 'dense':
        logits = tf.add(tf.matMul(inputs[0] as tfType.Tensor2D, weight(layer.name, 'kernel') as tfType.Tensor2D), weight(layer.name, 'bias')) as tfType.Tensor2D;
        output = tf.softmax(logits);
        break;
    }
    outputs.set(layer.name, output);
    observe?.(layer, output);
  }
  const probabilities = outputs.get('fully_connected') as tfType.Tensor2D;
  return { probabilities, logits: logits as tfType.Tensor2D, statistics };
}

/**
 * The layers inference can leave to the layer after them (see forward): an
 * add whose one consumer is a ReLU; a ReLU whose one consumer is a max pool;
 * a batch norm whose one consumer is a ReLU or such an add.
 */
const fusableBySpec = new WeakMap<ResNetSpec, Set<string>>();
function fusableLayers(spec: ResNetSpec): Set<string> {
  let fusable = fusableBySpec.get(spec);
  if (fusable) return fusable;
  const consumers = new Map<string, LayerSpec[]>();
  for (const layer of spec.layers) for (const input of layer.inputs) consumers.set(input, [...(consumers.get(input) ?? []), layer]);
  const onlyConsumer = (name: string) => {
    const list = consumers.get(name) ?? [];
    return list.length === 1 ? list[0] : undefined;
  };
  const feedsRelu = (name: string) => onlyConsumer(name)?.kind === 'relu';
  fusable = new Set<string>();
  for (const layer of spec.layers) {
    if (layer.kind === 'add' && feedsRelu(layer.name)) fusable.add(layer.name);
    if (layer.kind === 'relu' && onlyConsumer(layer.name)?.kind === 'maxPool') fusable.add(layer.name);
  }
  for (const layer of spec.layers) {
    const consumer = onlyConsumer(layer.name);
    if (layer.kind === 'batchNorm' && consumer && (consumer.kind === 'relu' || fusable.has(consumer.name))) fusable.add(layer.name);
  }
  fusableBySpec.set(spec, fusable);
  return fusable;
}

/**
 * Keras' ZeroPadding3D(padding) followed by a 'valid' Conv3D, computed
 * without materialising the padded tensor where possible:
 * - in inference on the CPU, with our kernels (../engine/nativeKernels.ts),
 *   the layers where oneDNN's Conv3D is slow run as our own direct
 *   convolution, which skips the zero padding's taps and blocks over the
 *   batch's cubes instead of a cube's positions: conv1 (two input channels),
 *   the strided ones and those with at most OWN_CONVOLUTION_MAX_POSITIONS
 *   output positions per cube (units 4 and 5), not 1x1x1 ones (a matrix
 *   product, which oneDNN does well), in batches of OWN_CONVOLUTION_MIN_BATCH
 *   or more. At batch 64 on a 2-core AVX-512 machine: conv1 82 -> 52 ms,
 *   the strided 3x3x3 unit entries 16 -> 8, 15 -> 5 and 42 -> 4 ms, unit 4's
 *   3x3x2 layers 17 -> 7 ms, unit 5's 2x2x1 42 -> 5 ms; the stride-1 layers
 *   of many positions stay oneDNN's (as fast or faster there);
 * - stride 1 with a kernel of 2 * padding + 1 is exactly 'same' padding,
 *   which saves the pad (and its gradient's slice) and runs faster in
 *   oneDNN: f+b of (16, 12, 12, 6, 64) 3x3x3 74 -> 35 ms;
 * - on the native engine, when that convolution has at most
 *   MATMUL_MAX_POSITIONS output positions per cube (ResNet unit 5: 2x2x1),
 *   as one matrix product of the input patches (im2col): oneDNN's Conv3D
 *   cannot block over so few positions and runs at a tenth of its speed
 *   there (f+b of (16, 2, 2, 1, 512) 512 filters: 136 ms 'same', 23 ms as
 *   below). Unit 4 (3x3x2 positions) is already as fast as the matmul.
 */
export function convolution(tf: typeof tfType, input: tfType.Tensor5D, kernel: tfType.Tensor5D, strides: Shape3, padding: number, inference = false): tfType.Tensor5D {
  const [ky, kx, kz, channels, filters] = kernel.shape;
  const outputPositions = [ky, kx, kz].reduce((product, k, axis) => product * (Math.floor((input.shape[axis + 1] + 2 * padding - k) / strides[axis]) + 1), 1);
  const fewPositions = outputPositions <= MATMUL_MAX_POSITIONS && nativeKernelsActive(tf);
  const oneDnnSlow = ky * kx * kz > 1 && (channels <= OWN_CONVOLUTION_MAX_CHANNELS || strides.some((s) => s > 1) || outputPositions <= OWN_CONVOLUTION_MAX_POSITIONS);
  const ownFits = input.shape[0] >= OWN_CONVOLUTION_MIN_BATCH && filters % OWN_CONVOLUTION_FILTER_MULTIPLE === 0;
  if (inference && oneDnnSlow && ownFits && ownKernels(tf)) return nativeConvolution(tf, input, kernel, strides, padding);
  if (padding > 0 && strides.every((s) => s === 1) && [ky, kx, kz].every((k) => k === 2 * padding + 1)) {
    if (padding === 1 && fewPositions) return conv3dSameAsMatMul(tf, input, kernel);
    return tf.conv3d(input, kernel, 1, 'same');
  }
  const padded = (padding > 0 ? tf.pad(input, [[0, 0], [padding, padding], [padding, padding], [padding, padding], [0, 0]]) : input) as tfType.Tensor5D;
  if (fewPositions) return convValidAsMatMul(tf, padded, kernel, strides);
  return tf.conv3d(padded, kernel, strides, 'valid');
}

/** Input channels up to which oneDNN's Conv3D is slow (its inner product that short): cellfinder's conv1 has 2. */
const OWN_CONVOLUTION_MAX_CHANNELS = 4;
/** Output positions per cube up to which oneDNN's Conv3D is slower than ours (unit 4: 3x3x2); unit 3's 6x6x3 is faster in oneDNN. */
const OWN_CONVOLUTION_MAX_POSITIONS = 18;
/** Our convolution kernel's filters per register block (native/cellfinder_kernels.cc): every ResNet layer's count is a multiple. */
const OWN_CONVOLUTION_FILTER_MULTIPLE = 64;
/**
 * Cubes from which our kernel is used: it sums 6 cubes at a time (a smaller
 * batch repeats one to fill the registers), and on conv1 it is as fast as
 * oneDNN at 8 cubes and slower at 4 (13 vs 10 ms).
 */
const OWN_CONVOLUTION_MIN_BATCH = 12;

/**
 * A 'valid' convolution with few output positions per cube as windows x
 * kernel: each output position's input window is one slice, so the patches
 * cost as many slices as there are positions. For ResNet unit 5's entry
 * (stride 2 onto 2x2x1), where oneDNN's Conv3D runs at a fifth of its speed:
 * the 3x3x3 256 -> 512 convolution of a batch of 64, 34 -> 9 ms.
 */
function convValidAsMatMul(tf: typeof tfType, input: tfType.Tensor5D, kernel: tfType.Tensor5D, strides: Shape3): tfType.Tensor5D {
  const [batch, , , , channels] = input.shape;
  const [ky, kx, kz, , filters] = kernel.shape;
  const outputs = [ky, kx, kz].map((k, axis) => Math.floor((input.shape[axis + 1] - k) / strides[axis]) + 1);
  const windowSize = ky * kx * kz * channels;
  const windows: tfType.Tensor[] = [];
  for (let i = 0; i < outputs[0]; i++) {
    for (let j = 0; j < outputs[1]; j++) {
      for (let l = 0; l < outputs[2]; l++) {
        const window = tf.slice(input, [0, i * strides[0], j * strides[1], l * strides[2], 0], [batch, ky, kx, kz, channels]);
        windows.push(tf.reshape(window, [batch, 1, windowSize]));
      }
    }
  }
  const columns = tf.reshape(windows.length === 1 ? windows[0] : tf.concat(windows, 1), [batch * windows.length, windowSize]);
  const product = tf.matMul(columns as tfType.Tensor2D, tf.reshape(kernel, [windowSize, filters]) as tfType.Tensor2D);
  return tf.reshape(product, [batch, outputs[0], outputs[1], outputs[2], filters]);
}

const MATMUL_MAX_POSITIONS = 8;

/**
 * A 3x3x3 'same' stride-1 convolution as patches x kernel. Kernel taps that
 * would only ever read zero padding are left out, so along an axis of size
 * 1 only the centre tap is used (unit 5's z: 9 of 27 taps); the taps used
 * form a box, so the kernel is one slice of the weights.
 */
function conv3dSameAsMatMul(tf: typeof tfType, input: tfType.Tensor5D, kernel: tfType.Tensor5D): tfType.Tensor5D {
  const [batch, height, width, depth, channels] = input.shape;
  const filters = kernel.shape[4];
  const sizes = [height, width, depth];
  // Per axis longer than 1: padding 1 and all three taps; per axis of size 1: no padding, the centre tap.
  const pads = sizes.map((size) => (size > 1 ? 1 : 0));
  const taps = sizes.map((size) => (size > 1 ? 3 : 1));
  const padded = tf.pad(input, [[0, 0], ...pads.map((p) => [p, p] as [number, number]), [0, 0]]);
  const patches: tfType.Tensor[] = [];
  for (let a = 0; a < taps[0]; a++) {
    for (let b = 0; b < taps[1]; b++) {
      for (let c = 0; c < taps[2]; c++) patches.push(tf.slice(padded, [0, a, b, c, 0], [batch, height, width, depth, channels]));
    }
  }
  const columns = tf.reshape(tf.concat(patches, 4), [batch * height * width * depth, patches.length * channels]);
  const used = tf.slice(kernel, pads.map((p) => 1 - p).concat([0, 0]), [...taps, channels, filters]);
  const product = tf.matMul(columns as tfType.Tensor2D, tf.reshape(used, [patches.length * channels, filters]) as tfType.Tensor2D);
  return tf.reshape(product, [batch, height, width, depth, filters]);
}

/** ReLU; on the native engine its gradient is TensorFlow's ReluGrad (one pass) instead of tfjs' dy * step(x) (seven). */
export function relu<T extends tfType.Tensor>(tf: typeof tfType, x: T): T {
  return nativeKernelsActive(tf) ? nativeRelu(tf, x) : tf.relu(x);
}

const BATCH_NORM_REDUCTION_AXES = [0, 1, 2, 4];

/**
 * Training-mode batch normalisation over z (axis 3) with the batch's
 * statistics: the native engine's fused kernel where it is active, else
 * tfjs ops with the gradient written out. Returns the batch mean and
 * (biased, as Keras) variance, kept for the moving-average update; the
 * caller disposes them.
 */
export function batchNormWithBatchStatistics(
  tf: typeof tfType,
  input: tfType.Tensor5D,
  gamma: tfType.Tensor1D,
  beta: tfType.Tensor1D,
): { output: tfType.Tensor5D; mean: tfType.Tensor1D; variance: tfType.Tensor1D } {
  if (nativeKernelsActive(tf)) return nativeBatchNormTraining(tf, input, gamma, beta, BATCH_NORM_EPSILON);
  return batchNormTfjs(tf, input, gamma, beta);
}

/**
 * Inference-mode batch normalisation over z (axis 3) with the moving
 * statistics: the native engine's one-pass kernel where it is active, else
 * a tfjs multiply and add.
 */
export function batchNormWithMovingStatistics(tf: typeof tfType, input: tfType.Tensor5D, parameters: BatchNormParameters): tfType.Tensor5D {
  if (nativeKernelsActive(tf)) return nativeBatchNormInference(tf, input, parameters, BATCH_NORM_EPSILON);
  const broadcast = [1, 1, 1, input.shape[3], 1];
  const scale = tf.mul(parameters.gamma, tf.rsqrt(tf.add(parameters.movingVariance, BATCH_NORM_EPSILON)));
  const shift = tf.sub(parameters.beta, tf.mul(parameters.movingMean, scale));
  return tf.add(tf.mul(input, scale.reshape(broadcast)), shift.reshape(broadcast));
}

/**
 * Batch normalisation as tfjs ops, with its gradient written out (the
 * textbook form: dx = gamma * rstd / N * (N dy - sum dy - xhat sum(dy
 * xhat))), instead of differentiating through mean and variance op by op:
 * the same numbers with about half the passes over the activations.
 */
function batchNormTfjs(
  tf: typeof tfType,
  input: tfType.Tensor5D,
  gamma: tfType.Tensor1D,
  beta: tfType.Tensor1D,
): { output: tfType.Tensor5D; mean: tfType.Tensor1D; variance: tfType.Tensor1D } {
  const size = input.shape[3];
  const broadcast = [1, 1, 1, size, 1];
  const count = input.size / size;
  let mean: tfType.Tensor1D | undefined;
  let variance: tfType.Tensor1D | undefined;
  const normalise = tf.customGrad(((x: tfType.Tensor, scale: tfType.Tensor, offset: tfType.Tensor, save: tfType.GradSaveFunc) => {
    mean = tf.keep(tf.mean(x, BATCH_NORM_REDUCTION_AXES)) as tfType.Tensor1D;
    const centred = tf.sub(x, tf.reshape(mean, broadcast));
    variance = tf.keep(tf.mean(tf.square(centred), BATCH_NORM_REDUCTION_AXES)) as tfType.Tensor1D;
    const rstd = tf.rsqrt(tf.add(variance, BATCH_NORM_EPSILON));
    const normalised = tf.mul(centred, tf.reshape(rstd, broadcast));
    save([normalised, rstd, scale]);
    return {
      value: tf.add(tf.mul(normalised, tf.reshape(scale, broadcast)), tf.reshape(offset, broadcast)),
      gradFunc: (dy: tfType.Tensor, saved: tfType.Tensor[]) => {
        const [xhat, savedRstd, savedScale] = saved;
        const dOffset = tf.sum(dy, BATCH_NORM_REDUCTION_AXES);
        const dScale = tf.sum(tf.mul(dy, xhat), BATCH_NORM_REDUCTION_AXES);
        const factor = tf.reshape(tf.div(tf.mul(savedScale, savedRstd), count), broadcast);
        const inner = tf.sub(tf.sub(tf.mul(dy, count), tf.reshape(dOffset, broadcast)), tf.mul(xhat, tf.reshape(dScale, broadcast)));
        return [tf.mul(factor, inner), dScale, dOffset];
      },
    };
  }) as unknown as Parameters<typeof tf.customGrad>[0]);
  const output = normalise(input, gamma, beta) as tfType.Tensor5D;
  return { output, mean: mean as tfType.Tensor1D, variance: variance as tfType.Tensor1D };
}

/**
 * 3D max pooling as a z max followed by a 2D (y, x) max pool: the same values
 * as tf.maxPool3d and the same gradient wherever a window has one maximum.
 * On exact ties each window's gradient goes to one winner (the first in
 * (y, x, z) order), as PyTorch's max pool (cellfinder's backend) does;
 * TensorFlow's MaxPool3DGrad gives it to every tied voxel instead, and tfjs'
 * cpu kernel to the last. Why: TensorFlow's CPU MaxPool3DGrad is a slow
 * reference kernel (a sixth of a ResNet-18 training step), while the 2D
 * MaxPoolGrad is optimised. Needs non-overlapping z windows (pool = stride in
 * z), as cellfinder's (3, 3, 2) stride-2 pool has; other cases use
 * tf.maxPool3d.
 */
export function maxPool3dSeparable(tf: typeof tfType, input: tfType.Tensor5D, poolSize: Shape3, strides: Shape3): tfType.Tensor5D {
  const [batch, height, width, depth, channels] = input.shape;
  if (poolSize[2] !== strides[2]) return tf.maxPool3d(input, poolSize, strides, 'valid');
  const depthOut = Math.floor((depth - poolSize[2]) / strides[2]) + 1;
  const windows = tf.reshape(tf.slice(input, [0, 0, 0, 0, 0], [batch, height, width, depthOut * poolSize[2], channels]), [batch, height, width, depthOut, poolSize[2], channels]);
  const [first, ...rest] = tf.unstack(windows, 4);
  const zMax = rest.reduce((max, part) => tf.maximum(max, part), first);
  const pooled = tf.maxPool(tf.reshape(zMax, [batch, height, width, depthOut * channels]) as tfType.Tensor4D, [poolSize[0], poolSize[1]], [strides[0], strides[1]], 'valid');
  return tf.reshape(pooled, [batch, pooled.shape[1], pooled.shape[2], depthOut, channels]);
}

/**
 * Fresh weights as Keras initialises cellfinder's model: glorot-uniform for
 * conv1 and the classifier, he-normal (truncated at two standard deviations)
 * for the residual convolutions, batch norm at identity.
 */
export function initialWeights(tf: typeof tfType, spec: ResNetSpec, seed: number): Weights {
  const weights: Weights = new Map();
  let counter = 0;
  for (const layer of spec.layers) {
    for (const w of layer.weights) {
      const size = w.shape.reduce((a, b) => a * b, 1);
      const receptive = w.shape.slice(0, -2).reduce((a, b) => a * b, 1);
      const fanIn = w.shape.length >= 2 ? receptive * w.shape[w.shape.length - 2] : size;
      const fanOut = w.shape.length >= 2 ? receptive * w.shape[w.shape.length - 1] : size;
      const layerSeed = seed + 7919 * ++counter;
      let value: tfType.Tensor;
      switch (w.initializer) {
        case 'zeros':
          value = tf.zeros(w.shape);
          break;
        case 'ones':
          value = tf.ones(w.shape);
          break;
        case 'glorot_uniform': {
          const limit = Math.sqrt(6 / (fanIn + fanOut));
          value = tf.randomUniform(w.shape, -limit, limit, 'float32', layerSeed);
          break;
        }
        case 'he_normal':
          // Keras: truncated normal with stddev sqrt(2 / fan_in) / .87962566 (the truncation's correction).
          value = tf.truncatedNormal(w.shape, 0, Math.sqrt(2 / fanIn) / 0.87962566103423978, 'float32', layerSeed);
          break;
      }
      weights.set(weightKey(layer.name, w.name), tf.variable(value, w.trainable));
    }
  }
  return weights;
}

/** Multiply-add FLOPs (2 per MAC) of one forward pass for one cube: convolutions and the classifier. */
export function forwardFlopsPerCube(spec: ResNetSpec): number {
  let flops = 0;
  const shapes = new Map(spec.layers.map((layer) => [layer.name, layer.outputShape]));
  for (const layer of spec.layers) {
    if (layer.kind === 'conv') {
      const [y, x, z] = layer.outputShape as FeatureShape;
      const inChannels = (shapes.get(layer.inputs[0]) as FeatureShape)[3];
      flops += 2 * y * x * z * layer.kernel[0] * layer.kernel[1] * layer.kernel[2] * inChannels * layer.filters;
    } else if (layer.kind === 'dense') {
      flops += 2 * layer.weights[0].shape[0] * layer.units;
    }
  }
  return flops;
}

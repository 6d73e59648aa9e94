/**
 * TensorFlow ops that tfjs-node has no kernel for, registered as extra
 * kernels of the native ('tensorflow') backend: the network's batch
 * normalisation, ReLU gradient and Keras' Adam update as one TensorFlow op
 * each, where tfjs spells them as chains of elementwise ops.
 *
 * Why: on the native engine each tfjs op is one full pass over the tensor,
 * and at cellfinder's sizes (conv1's activation is 30 MB for a batch of 16)
 * those passes, not the convolutions, were half of a ResNet-50 training step.
 * Measured on (16, 12, 12, 6, 256): batch norm forward + gradient 166 ms as
 * tfjs ops vs 57 ms fused; ReLU gradient 93 ms (tfjs' Step is six ops) vs
 * 9 ms for TensorFlow's ReluGrad.
 *
 * Batch normalisation over z of (batch, y, x, z, channels), where our own
 * kernels (below) are missing, applies each z's scale and shift with
 * TensorFlow's FusedBatchNormV3 in inference form (NHWC on the free reshape
 * (batch, y, x, z*channels), each z's values repeated over the channels):
 * one pass instead of tfjs' multiply and add: 64 -> 15 ms on (64, 25, 25,
 * 12, 64), side by side in one process.
 *
 * In training, the batch statistics and the gradient's sums must not be
 * FusedBatchNormV3's and FusedBatchNormGradV3's own: those sum the up to
 * 640,000 values per z (conv1, batch 16) one after another in float32, and
 * were off by up to 2e-4 (variance) and 1e-4 (gamma's gradient), relative,
 * which made the gradients of the layers before them 1000x less accurate
 * than a careful float32 computation (test/gradientAccuracy.test.ts).
 *
 * Batch norm therefore runs as our own TensorFlow kernels
 * (native/cellfinder_kernels.cc, compiled into the addon): the training
 * forward pass and its gradient one op each, summing in double, and in
 * inference batch norm + ReLU, batch norm + the residual add + ReLU, or
 * batch norm + ReLU + conv1's max pool, as one pass. On conv1's (16, 25, 25, 12, 64): training forward + gradient 14
 * ms where TensorFlow ops took 80 (and FusedBatchNormV3/GradV3 with their
 * NCHW transposes about 90); inference batch norm + add + ReLU 10 ms where
 * FusedBatchNormV3 inference, Add and Relu took 23.
 *
 * In inference, the convolutions oneDNN runs slowly (conv1 with its two
 * input channels, strided ones, and those with a few output positions per
 * cube) are our own kernel too; see ../training/resnet.ts' convolution().
 *
 * Those kernels are CPU kernels. On a GPU, and with an engine set up before
 * they existed (an addon without them), batch norm runs as TensorFlow ops
 * with the same accuracy: every sum is a matrix product with a row of ones
 * (oneDNN and cuBLAS accumulate in blocks, as accurate as a pairwise sum)
 * over (batch*y*x, z*channels), then a sum over the channels; the variance
 * is two-pass. That is about sixty small ops per layer.
 *
 * The callers (../training/resnet.ts) use these kernels when the active backend has
 * them and the plain tfjs ops otherwise; the gradient checks and the
 * inference check compare both.
 */
import type * as tfType from '@tensorflow/tfjs';

type Tf = typeof tfType;

const NATIVE_RELU = 'CellfinderNativeRelu';
const NATIVE_RELU_GRAD = 'CellfinderNativeReluGrad';
const NATIVE_BATCH_NORM_INFERENCE = 'CellfinderNativeBatchNormInference';
const NATIVE_ADAM = 'CellfinderNativeKerasAdam';
/** Our own ops (native/cellfinder_kernels.cc), each also registered as the tfjs kernel of the same name. */
const BATCH_NORM_TRAINING = 'CellfinderBatchNormTraining';
const BATCH_NORM_TRAINING_GRAD = 'CellfinderBatchNormTrainingGrad';
const BATCH_NORM_INFERENCE = 'CellfinderBatchNormInference';
const BATCH_NORM_ADD_RELU = 'CellfinderBatchNormAddRelu';
const BATCH_NORM_RELU_MAX_POOL = 'CellfinderBatchNormReluMaxPool';
const CONVOLUTION = 'CellfinderConvolution';

interface OpAttr {
  name: string;
  type: number;
  value: unknown;
}

/** The parts of tfjs-node's NodeJSKernelBackend used here. */
interface NodeBackend {
  binding: { TF_ATTR_TYPE: number; TF_ATTR_INT: number; TF_ATTR_FLOAT: number; TF_ATTR_STRING: number; TF_ATTR_BOOL: number; TF_ATTR_SHAPE: number; TF_FLOAT: number; isUsingGpuDevice(): boolean };
  executeSingleOutput(name: string, attrs: OpAttr[], inputs: tfType.TensorInfo[]): tfType.TensorInfo;
  executeMultipleOutputs(name: string, attrs: OpAttr[], inputs: tfType.TensorInfo[], outputs: number): tfType.TensorInfo[];
}

type KernelArgs = { inputs: Record<string, tfType.TensorInfo>; backend: unknown; attrs?: Record<string, unknown> };

function float32Attrs(binding: NodeBackend['binding'], names: string[]): OpAttr[] {
  return names.map((name) => ({ name, type: binding.TF_ATTR_TYPE, value: binding.TF_FLOAT }));
}

function batchNormInferenceAttrs(binding: NodeBackend['binding'], epsilon: number): OpAttr[] {
  return [
    ...float32Attrs(binding, ['T', 'U']),
    { name: 'epsilon', type: binding.TF_ATTR_FLOAT, value: epsilon },
    { name: 'data_format', type: binding.TF_ATTR_STRING, value: 'NHWC' },
    { name: 'is_training', type: binding.TF_ATTR_BOOL, value: false },
  ];
}

/** Registers the kernels for `backendName` (the native backend), once per tfjs instance. */
export function registerNativeKernels(tf: Tf, backendName: string): void {
  if (tf.getKernel(NATIVE_RELU, backendName)) return;
  const register = (kernelName: string, run: (backend: NodeBackend, inputs: Record<string, tfType.TensorInfo>, attrs: Record<string, unknown>) => tfType.TensorInfo | tfType.TensorInfo[]) =>
    tf.registerKernel({ kernelName, backendName, kernelFunc: ((args: KernelArgs) => run(args.backend as NodeBackend, args.inputs, args.attrs ?? {})) as unknown as tfType.KernelFunc });

  register(NATIVE_RELU, (backend, { x }) => backend.executeSingleOutput('Relu', float32Attrs(backend.binding, ['T']), [x]));
  // ReluGrad(dy, features) passes dy where features > 0: the relu output serves as well as its input.
  register(NATIVE_RELU_GRAD, (backend, { dy, y }) => backend.executeSingleOutput('ReluGrad', float32Attrs(backend.binding, ['T']), [dy, y]));
  tf.registerGradient({
    kernelName: NATIVE_RELU,
    outputsToSave: [true],
    gradFunc: (dy, saved) => ({ x: () => tf.engine().runKernel(NATIVE_RELU_GRAD, { dy: dy as tfType.Tensor, y: saved[0] }) as tfType.Tensor }),
  });

  // y = (x - mean) * rsqrt(variance + epsilon) * scale + offset, per channel.
  register(NATIVE_BATCH_NORM_INFERENCE, (backend, { x, scale, offset, mean, variance }, { epsilon }) =>
    firstOutputs(tf, backend.executeMultipleOutputs('FusedBatchNormV3', batchNormInferenceAttrs(backend.binding, epsilon as number), [x, scale, offset, mean, variance], 6), 1)[0],
  );
  register(NATIVE_ADAM, (backend, inputs) => kerasAdam(tf, backend, inputs));

  const epsilonAttr = (backend: NodeBackend, epsilon: unknown): OpAttr => ({ name: 'epsilon', type: backend.binding.TF_ATTR_FLOAT, value: epsilon as number });
  register(BATCH_NORM_TRAINING, (backend, { x, gamma, beta }, { epsilon }) => backend.executeMultipleOutputs(BATCH_NORM_TRAINING, [epsilonAttr(backend, epsilon)], [x, gamma, beta], 3));
  register(BATCH_NORM_TRAINING_GRAD, (backend, { dy, x, mean, variance, gamma }, { epsilon }) =>
    backend.executeMultipleOutputs(BATCH_NORM_TRAINING_GRAD, [epsilonAttr(backend, epsilon)], [dy, x, mean, variance, gamma], 3),
  );
  register(BATCH_NORM_INFERENCE, (backend, { x, gamma, beta, mean, variance }, { epsilon, relu }) =>
    backend.executeSingleOutput(BATCH_NORM_INFERENCE, [epsilonAttr(backend, epsilon), { name: 'relu', type: backend.binding.TF_ATTR_BOOL, value: relu as boolean }], [x, gamma, beta, mean, variance]),
  );
  register(BATCH_NORM_RELU_MAX_POOL, (backend, { x, gamma, beta, mean, variance }, { epsilon, pool, strides }) =>
    backend.executeSingleOutput(
      BATCH_NORM_RELU_MAX_POOL,
      [epsilonAttr(backend, epsilon), { name: 'pool', type: backend.binding.TF_ATTR_INT, value: pool as number[] }, { name: 'strides', type: backend.binding.TF_ATTR_INT, value: strides as number[] }],
      [x, gamma, beta, mean, variance],
    ),
  );
  register(BATCH_NORM_ADD_RELU, (backend, { x, gamma, beta, mean, variance, shortcut }, { epsilon }) =>
    backend.executeSingleOutput(BATCH_NORM_ADD_RELU, [epsilonAttr(backend, epsilon)], [x, gamma, beta, mean, variance, shortcut]),
  );
  register(CONVOLUTION, (backend, { x, kernel }, { strides, padding }) =>
    backend.executeSingleOutput(
      CONVOLUTION,
      [{ name: 'strides', type: backend.binding.TF_ATTR_INT, value: strides as number[] }, { name: 'padding', type: backend.binding.TF_ATTR_INT, value: padding as number[] }],
      [x, kernel],
    ),
  );
}

/** Set to 0 to run batch norm and every convolution as TensorFlow ops on the CPU too (to compare the two; the tests do). */
export const OWN_KERNELS_ENV = 'CELLFINDER_RETRAIN_OWN_KERNELS';
const ownKernelsByBackend = new WeakMap<object, boolean>();

/**
 * Whether the active backend runs our own kernels: the native engine on the
 * CPU, with an addon that has them all (one compiled before they, or the
 * newest of them, existed does not: TensorFlow then says the op is not
 * registered). Asked once per backend by running three of the ops on one
 * value.
 */
export function ownKernels(tf: Tf): boolean {
  if (!nativeKernelsActive(tf) || process.env[OWN_KERNELS_ENV] === '0') return false;
  const backend = tf.backend() as unknown as NodeBackend;
  let known = ownKernelsByBackend.get(backend);
  if (known === undefined) {
    known = !backend.binding.isUsingGpuDevice() && probeOwnKernels(tf);
    ownKernelsByBackend.set(backend, known);
  }
  return known;
}

function probeOwnKernels(tf: Tf): boolean {
  try {
    tf.tidy(() => {
      const one = tf.ones([1]) as tfType.Tensor1D;
      const parameters = { gamma: one, beta: one, mean: one, variance: one };
      tf.engine().runKernel(BATCH_NORM_INFERENCE, { x: tf.ones([1, 1, 1, 1, 1]), ...parameters }, { epsilon: 1e-3, relu: false });
      tf.engine().runKernel(BATCH_NORM_RELU_MAX_POOL, { x: tf.ones([1, 1, 1, 1, 1]), ...parameters }, { epsilon: 1e-3, pool: [1, 1, 1], strides: [1, 1, 1] });
      tf.engine().runKernel(CONVOLUTION, { x: tf.ones([1, 1, 1, 1, 1]), kernel: tf.ones([1, 1, 1, 1, 64]) }, { strides: [1, 1, 1], padding: [0, 0, 0] });
    });
    return true;
  } catch {
    return false;
  }
}

/** Why batch norm and the inference convolutions run as TensorFlow ops on the native engine's CPU when nobody asked for that (for the run's first event). */
export function ownKernelsNote(tf: Tf): string | undefined {
  if (!nativeKernelsActive(tf) || ownKernels(tf) || process.env[OWN_KERNELS_ENV] === '0') return undefined;
  const backend = tf.backend() as unknown as NodeBackend;
  if (backend.binding.isUsingGpuDevice()) return undefined;
  return "this engine's addon predates cellfinder-retrain's own batch-norm and convolution kernels, so these run as TensorFlow ops (slower); run: cellfinder-retrain engine setup --force";
}

/**
 * One Adam step of one variable as TensorFlow's ResourceApplyAdam, whose CPU
 * kernel is Keras' update in one pass (m += (g - m)(1 - beta1); v += (g^2 -
 * v)(1 - beta2); w -= alpha m / (sqrt(v) + epsilon), alpha from the float32
 * beta powers as Keras computes it) where tfjs ops take twelve. It updates
 * resource variables in place, so w, m and v are put in temporary ones
 * (TensorFlow copies them there, as the tfjs tensors still hold their
 * buffers) and read back. About 2.5 times less memory traffic: 40 -> 15 ms
 * for a 3x3x3x512x512 kernel.
 */
let adamResources = 0;
function kerasAdam(tf: Tf, backend: NodeBackend, inputs: Record<string, tfType.TensorInfo>): tfType.TensorInfo[] {
  const { binding } = backend;
  const dtype = { name: 'dtype', type: binding.TF_ATTR_TYPE, value: binding.TF_FLOAT };
  const state = [inputs.variable, inputs.momentum, inputs.velocity];
  const handles: tfType.TensorInfo[] = [];
  try {
    for (const value of state) {
      const handle = backend.executeSingleOutput(
        'VarHandleOp',
        [dtype, { name: 'shape', type: binding.TF_ATTR_SHAPE, value: value.shape }, { name: 'container', type: binding.TF_ATTR_STRING, value: '' }, { name: 'shared_name', type: binding.TF_ATTR_STRING, value: `cellfinder_adam_${adamResources++}` }],
        [],
      );
      handles.push(handle);
      backend.executeMultipleOutputs('AssignVariableOp', [dtype], [handle, value], 0);
    }
    const { beta1Power, beta2Power, learningRate, beta1, beta2, epsilon, gradient } = inputs;
    backend.executeMultipleOutputs(
      'ResourceApplyAdam',
      [...float32Attrs(binding, ['T']), { name: 'use_locking', type: binding.TF_ATTR_BOOL, value: false }, { name: 'use_nesterov', type: binding.TF_ATTR_BOOL, value: false }],
      [...handles, beta1Power, beta2Power, learningRate, beta1, beta2, epsilon, gradient],
      0,
    );
    return handles.map((handle) => backend.executeSingleOutput('ReadVariableOp', [dtype], [handle]));
  } finally {
    for (const handle of handles) backend.executeMultipleOutputs('DestroyResourceOp', [{ name: 'ignore_lookup_error', type: binding.TF_ATTR_BOOL, value: true }], [handle], 0);
    tf.dispose(handles as tfType.Tensor[]);
  }
}

/** The first `count` outputs of an op; the others (unused reserve spaces) are freed at once. */
function firstOutputs(tf: Tf, outputs: tfType.TensorInfo[], count: number): tfType.TensorInfo[] {
  tf.dispose(outputs.slice(count) as tfType.Tensor[]);
  return outputs.slice(0, count);
}

/** Whether the active backend has the kernels registered here. */
export function nativeKernelsActive(tf: Tf): boolean {
  return tf.getKernel(NATIVE_RELU, tf.getBackend()) !== undefined;
}

export function nativeRelu<T extends tfType.Tensor>(tf: Tf, x: T): T {
  return tf.engine().runKernel(NATIVE_RELU, { x }) as T;
}

/** Batch norm's parameters and moving statistics, one value per z each. */
export interface BatchNormParameters {
  gamma: tfType.Tensor1D;
  beta: tfType.Tensor1D;
  movingMean: tfType.Tensor1D;
  movingVariance: tfType.Tensor1D;
}

/** What inference applies after batch norm in the same pass: ReLU; the shortcut added, then ReLU; or ReLU, then a 'valid' max pool. */
export interface AfterBatchNorm {
  relu?: boolean;
  shortcut?: tfType.Tensor5D;
  maxPool?: { poolSize: [number, number, number]; strides: [number, number, number] };
}

/**
 * Inference-mode batch normalisation over z (axis 3) with the moving
 * statistics, as Keras computes it, then what `then` asks for: one pass with
 * our kernels, else FusedBatchNormV3 in inference form, Add, Relu and the
 * max pool as TensorFlow ops. Forward only (inference never differentiates).
 */
export function nativeBatchNormInference(tf: Tf, input: tfType.Tensor5D, parameters: BatchNormParameters, epsilon: number, then: AfterBatchNorm = {}): tfType.Tensor5D {
  const { gamma, beta, movingMean: mean, movingVariance: variance } = parameters;
  if (ownKernels(tf)) {
    if (then.maxPool) return tf.engine().runKernel(BATCH_NORM_RELU_MAX_POOL, { x: input, gamma, beta, mean, variance }, { epsilon, pool: then.maxPool.poolSize, strides: then.maxPool.strides }) as tfType.Tensor5D;
    if (then.shortcut) return tf.engine().runKernel(BATCH_NORM_ADD_RELU, { x: input, gamma, beta, mean, variance, shortcut: then.shortcut }, { epsilon }) as tfType.Tensor5D;
    return tf.engine().runKernel(BATCH_NORM_INFERENCE, { x: input, gamma, beta, mean, variance }, { epsilon, relu: then.relu ?? false }) as tfType.Tensor5D;
  }
  const [batch, height, width, depth, channels] = input.shape;
  return tf.tidy(() => {
    const [scale, offset, meanColumn, varianceColumn] = perColumn(tf, [gamma, beta, mean, variance], channels);
    const x = tf.reshape(input, [batch, height, width, depth * channels]);
    const y = tf.engine().runKernel(NATIVE_BATCH_NORM_INFERENCE, { x, scale, offset, mean: meanColumn, variance: varianceColumn }, { epsilon }) as tfType.Tensor4D;
    let output = tf.reshape(y, input.shape) as tfType.Tensor5D;
    if (then.shortcut) output = tf.add(output, then.shortcut);
    if (then.relu || then.shortcut || then.maxPool) output = nativeRelu(tf, output);
    return then.maxPool ? tf.maxPool3d(output, then.maxPool.poolSize, then.maxPool.strides, 'valid') : output;
  });
}

/**
 * Keras' ZeroPadding3D(padding) then a 'valid' Conv3D, as our kernel: for
 * the inference convolutions oneDNN runs slowly (see ../training/resnet.ts'
 * convolution()); filters a multiple of 64. Forward only.
 */
export function nativeConvolution(tf: Tf, input: tfType.Tensor5D, kernel: tfType.Tensor5D, strides: [number, number, number], padding: number): tfType.Tensor5D {
  return tf.engine().runKernel(CONVOLUTION, { x: input, kernel }, { strides, padding: [padding, padding, padding] }) as tfType.Tensor5D;
}

/** Scalars of one Adam step, float32 as Keras has them (see kerasAdam). */
export interface AdamScalars {
  beta1Power: tfType.Scalar;
  beta2Power: tfType.Scalar;
  learningRate: tfType.Scalar;
  beta1: tfType.Scalar;
  beta2: tfType.Scalar;
  epsilon: tfType.Scalar;
}

/** Keras' Adam update of one variable; returns the new variable, momentum and velocity values. */
export function nativeKerasAdam(tf: Tf, variable: tfType.Tensor, momentum: tfType.Tensor, velocity: tfType.Tensor, gradient: tfType.Tensor, scalars: AdamScalars): [tfType.Tensor, tfType.Tensor, tfType.Tensor] {
  return tf.engine().runKernel(NATIVE_ADAM, { variable, momentum, velocity, gradient, ...scalars }) as [tfType.Tensor, tfType.Tensor, tfType.Tensor];
}

/** Each z's value of each of `values` repeated over the channels, as (z * channels) rows in (z, channel) memory order; one tile for all (each op has a fixed cost). */
function perColumn(tf: Tf, values: tfType.Tensor1D[], channels: number): tfType.Tensor1D[] {
  const depth = values[0].shape[0];
  return tf.unstack(tf.reshape(tf.tile(tf.reshape(tf.stack(values), [values.length, depth, 1]), [1, 1, channels]), [values.length, depth * channels])) as tfType.Tensor1D[];
}

/** Sums over (batch, y, x, channels) per z of a (rows, z * channels) matrix: the column sums as ones x matrix, then the channels. */
function sumPerZ(tf: Tf, ones: tfType.Tensor2D, matrix: tfType.Tensor2D, depth: number): tfType.Tensor1D {
  return tf.sum(tf.reshape(tf.matMul(ones, matrix), [depth, matrix.shape[1] / depth]), 1);
}

/**
 * Training-mode batch normalisation over z (axis 3) with the batch's
 * statistics, with its gradient written out (dx = gamma rstd (dy - mean dy -
 * xhat mean(dy xhat))), every sum over a z slice accurate (see the top of
 * this file). Returns the batch mean and biased variance (Keras' moving
 * averages use the biased one), which the caller disposes.
 */
export function nativeBatchNormTraining(tf: Tf, input: tfType.Tensor5D, gamma: tfType.Tensor1D, beta: tfType.Tensor1D, epsilon: number): { output: tfType.Tensor5D; mean: tfType.Tensor1D; variance: tfType.Tensor1D } {
  return ownKernels(tf) ? batchNormTrainingKernels(tf, input, gamma, beta, epsilon) : batchNormTrainingOps(tf, input, gamma, beta, epsilon);
}

/** Training batch norm as our two kernels: the forward pass, and its gradient from dy, x and the batch statistics. */
function batchNormTrainingKernels(tf: Tf, input: tfType.Tensor5D, gamma: tfType.Tensor1D, beta: tfType.Tensor1D, epsilon: number): { output: tfType.Tensor5D; mean: tfType.Tensor1D; variance: tfType.Tensor1D } {
  let mean: tfType.Tensor1D | undefined;
  let variance: tfType.Tensor1D | undefined;
  const normalise = tf.customGrad(((x: tfType.Tensor5D, scale: tfType.Tensor1D, offset: tfType.Tensor1D, save: tfType.GradSaveFunc) => {
    const [y, batchMean, batchVariance] = tf.engine().runKernel(BATCH_NORM_TRAINING, { x, gamma: scale, beta: offset }, { epsilon }) as [tfType.Tensor5D, tfType.Tensor1D, tfType.Tensor1D];
    mean = tf.keep(batchMean);
    variance = tf.keep(batchVariance);
    save([x, batchMean, batchVariance, scale]);
    return {
      value: y,
      gradFunc: (dy: tfType.Tensor, saved: tfType.Tensor[]) => {
        const [savedX, savedMean, savedVariance, savedScale] = saved;
        return tf.engine().runKernel(BATCH_NORM_TRAINING_GRAD, { dy, x: savedX, mean: savedMean, variance: savedVariance, gamma: savedScale }, { epsilon }) as tfType.Tensor[];
      },
    };
  }) as unknown as Parameters<typeof tf.customGrad>[0]);
  const output = normalise(input, gamma, beta) as tfType.Tensor5D;
  return { output, mean: mean as tfType.Tensor1D, variance: variance as tfType.Tensor1D };
}

/** Training batch norm as TensorFlow ops (GPU, or an addon without our kernels); see the top of this file. */
function batchNormTrainingOps(tf: Tf, input: tfType.Tensor5D, gamma: tfType.Tensor1D, beta: tfType.Tensor1D, epsilon: number): { output: tfType.Tensor5D; mean: tfType.Tensor1D; variance: tfType.Tensor1D } {
  const [batch, height, width, depth, channels] = input.shape;
  const rows = batch * height * width;
  const count = rows * channels;
  let mean: tfType.Tensor1D | undefined;
  let variance: tfType.Tensor1D | undefined;
  const normalise = tf.customGrad(((x: tfType.Tensor5D, scale: tfType.Tensor1D, offset: tfType.Tensor1D, save: tfType.GradSaveFunc) => {
    const ones = tf.ones([1, rows]) as tfType.Tensor2D;
    const matrix = tf.reshape(x, [rows, depth * channels]) as tfType.Tensor2D;
    mean = tf.keep(tf.div(sumPerZ(tf, ones, matrix, depth), count)) as tfType.Tensor1D;
    const centred = tf.sub(matrix, perColumn(tf, [mean], channels)[0]) as tfType.Tensor2D;
    variance = tf.keep(tf.div(sumPerZ(tf, ones, tf.square(centred), depth), count)) as tfType.Tensor1D;
    // The centred values are kept for the gradient instead of x (the same memory): it needs them, not x.
    save([centred, scale, variance, ones]);
    const [scaleColumn, offsetColumn, varianceColumn] = perColumn(tf, [scale, offset, variance as tfType.Tensor1D], channels);
    const y = tf.engine().runKernel(
      NATIVE_BATCH_NORM_INFERENCE,
      { x: tf.reshape(centred, [batch, height, width, depth * channels]), scale: scaleColumn, offset: offsetColumn, mean: tf.zeros([depth * channels]), variance: varianceColumn },
      { epsilon },
    ) as tfType.Tensor;
    return {
      value: tf.reshape(y, x.shape),
      gradFunc: (dy: tfType.Tensor, saved: tfType.Tensor[]) => {
        const [savedCentred, savedScale, savedVariance, savedOnes] = saved as [tfType.Tensor2D, tfType.Tensor1D, tfType.Tensor1D, tfType.Tensor2D];
        const dyMatrix = tf.reshape(dy, savedCentred.shape) as tfType.Tensor2D;
        const rstd = tf.rsqrt(tf.add(savedVariance, epsilon));
        const sumDy = sumPerZ(tf, savedOnes, dyMatrix, depth);
        const sumDyCentred = sumPerZ(tf, savedOnes, tf.mul(dyMatrix, savedCentred), depth);
        const a = tf.mul(savedScale, rstd) as tfType.Tensor1D;
        // dx = a dy + b centred + k per z, with a = gamma rstd, b = -a rstd^2 mean(dy centred), k = -a mean(dy).
        const b = tf.neg(tf.div(tf.mul(tf.mul(a, tf.square(rstd)), sumDyCentred), count)) as tfType.Tensor1D;
        const k = tf.neg(tf.div(tf.mul(a, sumDy), count)) as tfType.Tensor1D;
        const [aColumn, bColumn, kColumn] = perColumn(tf, [a, b, k], channels);
        // b centred + k in one pass, as the inference kernel with mean 0 and
        // variance 1 - epsilon (rsqrt(variance + epsilon) is then 1 to a
        // float32 rounding) instead of a multiply and an add.
        const shifted = tf.engine().runKernel(
          NATIVE_BATCH_NORM_INFERENCE,
          { x: tf.reshape(savedCentred, [batch, height, width, depth * channels]), scale: bColumn, offset: kColumn, mean: tf.zeros([depth * channels]), variance: tf.fill([depth * channels], 1 - epsilon) },
          { epsilon },
        ) as tfType.Tensor;
        const dx = tf.add(tf.mul(dyMatrix, aColumn), tf.reshape(shifted, dyMatrix.shape));
        return [tf.reshape(dx, dy.shape), tf.mul(sumDyCentred, rstd), sumDy];
      },
    };
  }) as unknown as Parameters<typeof tf.customGrad>[0]);
  const output = normalise(input, gamma, beta) as tfType.Tensor5D;
  return { output, mean: mean as tfType.Tensor1D, variance: variance as tfType.Tensor1D };
}

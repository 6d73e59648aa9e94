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
 * Batch normalisation over z of (batch, y, x, z, channels) is TensorFlow's
 * FusedBatchNormV3 on the free reshape (batch*y*x, z, channels, 1) in NCHW
 * order: "C" is then z, the axis cellfinder normalises over.
 *
 * In inference, the same op in NHWC on the free reshape (batch, y, x,
 * z*channels), with each z's scale and shift repeated over the channels:
 * one pass instead of tfjs' multiply and add: 64 -> 15 ms on (64, 25, 25,
 * 12, 64), side by side in one process (NCHW would be slower than the
 * multiply and add there).
 *
 * The callers (../training/resnet.ts) use these kernels when the active backend has
 * them and the plain tfjs ops otherwise; the gradient checks and the
 * inference check compare both.
 */
import type * as tfType from '@tensorflow/tfjs';

type Tf = typeof tfType;

const NATIVE_RELU = 'CellfinderNativeRelu';
const NATIVE_RELU_GRAD = 'CellfinderNativeReluGrad';
const NATIVE_BATCH_NORM_TRAINING = 'CellfinderNativeBatchNormTraining';
const NATIVE_BATCH_NORM_GRAD = 'CellfinderNativeBatchNormGrad';
const NATIVE_BATCH_NORM_INFERENCE = 'CellfinderNativeBatchNormInference';
const NATIVE_ADAM = 'CellfinderNativeKerasAdam';

interface OpAttr {
  name: string;
  type: number;
  value: unknown;
}

/** The parts of tfjs-node's NodeJSKernelBackend used here. */
interface NodeBackend {
  binding: { TF_ATTR_TYPE: number; TF_ATTR_FLOAT: number; TF_ATTR_STRING: number; TF_ATTR_BOOL: number; TF_ATTR_SHAPE: number; TF_FLOAT: number };
  executeSingleOutput(name: string, attrs: OpAttr[], inputs: tfType.TensorInfo[]): tfType.TensorInfo;
  executeMultipleOutputs(name: string, attrs: OpAttr[], inputs: tfType.TensorInfo[], outputs: number): tfType.TensorInfo[];
}

type KernelArgs = { inputs: Record<string, tfType.TensorInfo>; backend: unknown; attrs?: Record<string, unknown> };

function float32Attrs(binding: NodeBackend['binding'], names: string[]): OpAttr[] {
  return names.map((name) => ({ name, type: binding.TF_ATTR_TYPE, value: binding.TF_FLOAT }));
}

function batchNormAttrs(binding: NodeBackend['binding'], epsilon: number, layout: 'training' | 'inference' = 'training'): OpAttr[] {
  return [
    ...float32Attrs(binding, ['T', 'U']),
    { name: 'epsilon', type: binding.TF_ATTR_FLOAT, value: epsilon },
    { name: 'data_format', type: binding.TF_ATTR_STRING, value: layout === 'training' ? 'NCHW' : 'NHWC' },
    { name: 'is_training', type: binding.TF_ATTR_BOOL, value: layout === 'training' },
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

  // Outputs: y, batch mean, batch variance (Bessel-corrected, as TensorFlow
  // defines it), and three reserve spaces the gradient op takes back. With
  // is_training and exponential_avg_factor 1 the estimated mean and variance
  // inputs are unused and may be empty.
  register(NATIVE_BATCH_NORM_TRAINING, (backend, { x, scale, offset }, { epsilon }) => {
    const empty = tf.tensor1d([], 'float32');
    try {
      const attrs = [...batchNormAttrs(backend.binding, epsilon as number), { name: 'exponential_avg_factor', type: backend.binding.TF_ATTR_FLOAT, value: 1 }];
      return backend.executeMultipleOutputs('FusedBatchNormV3', attrs, [x, scale, offset, empty, empty], 6);
    } finally {
      empty.dispose();
    }
  });
  register(NATIVE_BATCH_NORM_GRAD, (backend, { dy, x, scale, reserve1, reserve2, reserve3 }, { epsilon }) =>
    firstOutputs(tf, backend.executeMultipleOutputs('FusedBatchNormGradV3', batchNormAttrs(backend.binding, epsilon as number), [dy, x, scale, reserve1, reserve2, reserve3], 5), 3),
  );
  // y = (x - mean) * rsqrt(variance + epsilon) * scale + offset, per channel.
  register(NATIVE_BATCH_NORM_INFERENCE, (backend, { x, scale, offset, mean, variance }, { epsilon }) =>
    firstOutputs(tf, backend.executeMultipleOutputs('FusedBatchNormV3', batchNormAttrs(backend.binding, epsilon as number, 'inference'), [x, scale, offset, mean, variance], 6), 1)[0],
  );
  register(NATIVE_ADAM, (backend, inputs) => kerasAdam(tf, backend, inputs));
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

/** (batch, y, x, z, channels) viewed as FusedBatchNorm's NCHW with z as "C". */
function asNchw(tf: Tf, x: tfType.Tensor5D): tfType.Tensor4D {
  const [batch, height, width, depth, channels] = x.shape;
  return tf.reshape(x, [batch * height * width, depth, channels, 1]);
}

/**
 * Training-mode batch normalisation over z (axis 3) with the batch's
 * statistics, differentiated by FusedBatchNormGradV3. Returns the batch mean
 * and biased variance (Keras' moving averages use the biased one), which the
 * caller disposes.
 */
export function nativeBatchNormTraining(tf: Tf, input: tfType.Tensor5D, gamma: tfType.Tensor1D, beta: tfType.Tensor1D, epsilon: number): { output: tfType.Tensor5D; mean: tfType.Tensor1D; variance: tfType.Tensor1D } {
  const count = input.size / input.shape[3];
  let mean: tfType.Tensor1D | undefined;
  let variance: tfType.Tensor1D | undefined;
  const normalise = tf.customGrad(((x: tfType.Tensor5D, scale: tfType.Tensor1D, offset: tfType.Tensor1D, save: tfType.GradSaveFunc) => {
    const x4 = asNchw(tf, x);
    const [y, batchMean, unbiased, ...reserve] = tf.engine().runKernel(NATIVE_BATCH_NORM_TRAINING, { x: x4, scale, offset }, { epsilon }) as tfType.Tensor[];
    mean = tf.keep(batchMean) as tfType.Tensor1D;
    variance = tf.keep(tf.mul(unbiased, (count - 1) / count)) as tfType.Tensor1D;
    save([x4, scale, ...reserve]);
    return {
      value: tf.reshape(y, x.shape),
      gradFunc: (dy: tfType.Tensor, saved: tfType.Tensor[]) => {
        const [savedX, savedScale, reserve1, reserve2, reserve3] = saved;
        const [dx, dScale, dOffset] = tf.engine().runKernel(NATIVE_BATCH_NORM_GRAD, { dy: tf.reshape(dy, savedX.shape), x: savedX, scale: savedScale, reserve1, reserve2, reserve3 }, { epsilon }) as tfType.Tensor[];
        return [tf.reshape(dx, dy.shape), dScale, dOffset];
      },
    };
  }) as unknown as Parameters<typeof tf.customGrad>[0]);
  const output = normalise(input, gamma, beta) as tfType.Tensor5D;
  return { output, mean: mean as tfType.Tensor1D, variance: variance as tfType.Tensor1D };
}

/**
 * Inference-mode batch normalisation over z (axis 3) with the moving
 * statistics, as Keras computes it; forward only (inference never
 * differentiates).
 */
export function nativeBatchNormInference(
  tf: Tf,
  input: tfType.Tensor5D,
  parameters: { gamma: tfType.Tensor1D; beta: tfType.Tensor1D; movingMean: tfType.Tensor1D; movingVariance: tfType.Tensor1D },
  epsilon: number,
): tfType.Tensor5D {
  const [batch, height, width, depth, channels] = input.shape;
  return tf.tidy(() => {
    // Each z's value once per channel, in the order (z, channel) has in
    // memory; the four parameters in one tile (each op has a fixed cost).
    const stacked = tf.stack([parameters.gamma, parameters.beta, parameters.movingMean, parameters.movingVariance]);
    const [scale, offset, mean, variance] = tf.unstack(tf.reshape(tf.tile(tf.reshape(stacked, [4, depth, 1]), [1, 1, channels]), [4, depth * channels]));
    const x = tf.reshape(input, [batch, height, width, depth * channels]);
    const y = tf.engine().runKernel(NATIVE_BATCH_NORM_INFERENCE, { x, scale, offset, mean, variance }, { epsilon }) as tfType.Tensor4D;
    return tf.reshape(y, input.shape);
  });
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

/**
 * Adam exactly as Keras 3 applies it (cellfinder trains with Keras' Adam),
 * so that a run continued from a Keras checkpoint, or by Keras from ours,
 * takes the same steps:
 *
 *   alpha = lr * sqrt(1 - beta2^t) / (1 - beta1^t)
 *   m += (g - m) * (1 - beta1);  v += (g^2 - v) * (1 - beta2)
 *   w -= alpha * m / (sqrt(v) + epsilon)
 *
 * (tfjs' own Adam puts epsilon inside the bias correction, which differs.)
 * The state (iterations, m, v) is what a `.keras` file stores as the
 * optimiser's variables, so resuming continues where training stopped.
 */
import type * as tfType from '@tensorflow/tfjs';
import { nativeKerasAdam, nativeKernelsActive } from '../engine/nativeKernels';

export const ADAM_DEFAULTS = { beta1: 0.9, beta2: 0.999, epsilon: 1e-7 } as const;

export interface AdamSlots {
  momentum: tfType.Variable;
  velocity: tfType.Variable;
}

export class KerasAdam {
  /** Steps taken so far (Keras' `iterations`). */
  iterations = 0;
  readonly slots = new Map<string, AdamSlots>();

  constructor(
    private readonly tf: typeof tfType,
    public learningRate: number,
    private readonly beta1: number = ADAM_DEFAULTS.beta1,
    private readonly beta2: number = ADAM_DEFAULTS.beta2,
    private readonly epsilon: number = ADAM_DEFAULTS.epsilon,
  ) {}

  /** Creates zeroed slots for each trainable variable, in the given order (Keras' variable order). */
  build(variables: Array<[string, tfType.Variable]>): void {
    for (const [key, variable] of variables) {
      if (this.slots.has(key)) continue;
      this.slots.set(key, {
        momentum: this.tf.variable(this.tf.zerosLike(variable), false),
        velocity: this.tf.variable(this.tf.zerosLike(variable), false),
      });
    }
  }

  /** One update of every variable that has a gradient. */
  apply(variables: Map<string, tfType.Variable>, gradients: Map<string, tfType.Tensor>): void {
    const tf = this.tf;
    const step = this.iterations + 1;
    const alpha = (this.learningRate * Math.sqrt(1 - this.beta2 ** step)) / (1 - this.beta1 ** step);
    const native = nativeKernelsActive(tf);
    tf.tidy(() => {
      // The native engine's one-op update takes the scalars as float32 tensors, as Keras computes them.
      const scalars = native
        ? {
            beta1Power: tf.pow(tf.scalar(this.beta1), step) as tfType.Scalar,
            beta2Power: tf.pow(tf.scalar(this.beta2), step) as tfType.Scalar,
            learningRate: tf.scalar(this.learningRate),
            beta1: tf.scalar(this.beta1),
            beta2: tf.scalar(this.beta2),
            epsilon: tf.scalar(this.epsilon),
          }
        : undefined;
      for (const [key, gradient] of gradients) {
        const variable = variables.get(key);
        const slots = this.slots.get(key);
        if (!variable || !slots) throw new Error(`no optimiser state for ${key}`);
        if (scalars) {
          const [updated, momentum, velocity] = nativeKerasAdam(tf, variable, slots.momentum, slots.velocity, gradient, scalars);
          variable.assign(updated);
          slots.momentum.assign(momentum);
          slots.velocity.assign(velocity);
          continue;
        }
        const momentum = tf.add(slots.momentum, tf.mul(tf.sub(gradient, slots.momentum), 1 - this.beta1));
        const velocity = tf.add(slots.velocity, tf.mul(tf.sub(tf.square(gradient), slots.velocity), 1 - this.beta2));
        slots.momentum.assign(momentum);
        slots.velocity.assign(velocity);
        variable.assign(tf.sub(variable, tf.div(tf.mul(momentum, alpha), tf.add(tf.sqrt(velocity), this.epsilon))));
      }
    });
    this.iterations = step;
  }
}

/**
 * Keras' categorical cross-entropy on probabilities (from_logits=False):
 * renormalise, clip to [1e-7, 1 - 1e-7], then -sum(y * log(p)), averaged over the batch.
 */
export function categoricalCrossEntropy(tf: typeof tfType, labels: tfType.Tensor2D, probabilities: tfType.Tensor2D): tfType.Scalar {
  return tf.tidy(() => {
    const normalised = tf.div(probabilities, tf.sum(probabilities, -1, true));
    const clipped = tf.clipByValue(normalised, 1e-7, 1 - 1e-7);
    return tf.mean(tf.neg(tf.sum(tf.mul(labels, tf.log(clipped)), -1))) as tfType.Scalar;
  });
}

/** Fraction of the batch whose arg-max prediction is the label's class. */
export function categoricalAccuracy(tf: typeof tfType, labels: tfType.Tensor2D, probabilities: tfType.Tensor2D): tfType.Scalar {
  return tf.tidy(() => tf.mean(tf.cast(tf.equal(tf.argMax(labels, -1), tf.argMax(probabilities, -1)), 'float32')) as tfType.Scalar);
}

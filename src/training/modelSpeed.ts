/**
 * Training and inference speed of cellfinder's ResNet on one engine, for
 * `npm run bench` and `cellfinder-retrain engine bench`: random cubes (speed
 * does not depend on the values), warm-up step first (on a GPU it also
 * picks the convolution algorithms), then timed steps, of which the median
 * counts. One engine per
 * process, so each case runs in its own.
 */
import { categoricalCrossEntropy, KerasAdam } from './adam';
import { loadTensorFlow } from '../engine/backend';
import type { DeviceChoice } from '../engine/gpuEnvironment';
import { forward, forwardFlopsPerCube, initialWeights, resnetSpec, weightKey, type NetworkDepth } from './resnet';

export interface ModelBenchResult {
  backend: string;
  depth: number;
  trainBatch: number;
  trainCubesPerSecond: number;
  inferBatch: number;
  inferCubesPerSecond: number;
  forwardGflopPerCube: number;
}

export async function benchModel(depth: NetworkDepth, trainBatch: number, inferBatch: number, steps: number, device?: DeviceChoice): Promise<ModelBenchResult> {
  const { tf, backend } = await loadTensorFlow(device);
  const spec = resnetSpec(depth, 2);
  const weights = initialWeights(tf, spec, 1);
  const optimizer = new KerasAdam(tf, 1e-4);
  const trainable = spec.layers.flatMap((l) => l.weights.filter((w) => w.trainable).map((w) => [weightKey(l.name, w.name), weights.get(weightKey(l.name, w.name)) as ReturnType<typeof tf.variable>] as [string, ReturnType<typeof tf.variable>]));
  optimizer.build(trainable);
  const keyOf = new Map(trainable.map(([key, variable]) => [variable.name, key]));
  const x = tf.randomNormal([trainBatch, 50, 50, 20, 2]) as import('@tensorflow/tfjs').Tensor5D;
  const y = tf.oneHot(tf.tensor1d(Array.from({ length: trainBatch }, (_, i) => i % 2), 'int32'), 2) as import('@tensorflow/tfjs').Tensor2D;
  const step = () => {
    const { value, grads } = tf.variableGrads(() => categoricalCrossEntropy(tf, y, forward(tf, spec, weights, x, true).probabilities), trainable.map(([, v]) => v));
    optimizer.apply(weights, new Map(Object.entries(grads).map(([name, gradient]) => [keyOf.get(name) as string, gradient])));
    value.dataSync();
    tf.dispose([value, ...Object.values(grads)]);
  };
  const xi = tf.randomNormal([inferBatch, 50, 50, 20, 2]) as import('@tensorflow/tfjs').Tensor5D;
  const infer = () => tf.tidy(() => forward(tf, spec, weights, xi, false).probabilities.dataSync());
  const trainSeconds = medianSeconds(step, steps);
  const inferSeconds = medianSeconds(infer, steps);
  return {
    backend,
    depth,
    trainBatch,
    trainCubesPerSecond: trainBatch / trainSeconds,
    inferBatch,
    inferCubesPerSecond: inferBatch / inferSeconds,
    forwardGflopPerCube: forwardFlopsPerCube(spec) / 1e9,
  };
}

/**
 * The median time of `steps` calls after one untimed warm-up call: on a
 * shared machine one slow call moves a mean a lot, a median little.
 */
function medianSeconds(run: () => void, steps: number): number {
  run();
  const seconds: number[] = [];
  for (let i = 0; i < steps; i++) {
    const start = performance.now();
    run();
    seconds.push((performance.now() - start) / 1000);
  }
  seconds.sort((a, b) => a - b);
  return seconds[Math.floor(seconds.length / 2)];
}

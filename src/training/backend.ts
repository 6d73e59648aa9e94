/**
 * Which TensorFlow.js engine runs the maths, in this order: the native
 * engine (TensorFlow's C library, built once by `cellfinder-retrain engine
 * setup`) when it is set up, else the pure-JavaScript `cpu` backend, which
 * always works but is two orders of magnitude slower. Never a silent
 * fallback: the runtime says which engine runs and why a faster one does not.
 * (tfjs' wasm backend is not used: it was seen returning wrong Conv3D and
 * MaxPool3D gradients, and runs single-threaded under Node.)
 */
import * as tf from '@tensorflow/tfjs';
import { fixCpuMaxPool3dGrad } from './cpuMaxPool3dGradFix';
import { loadNativeBackend } from './native/nativeBackend';

export interface TensorFlowRuntime {
  tf: typeof tf;
  /** A user-facing name of the engine in use. */
  backend: string;
  /** Why the native engine is not in use, when it is not. */
  notNative?: string;
}

let runtime: Promise<TensorFlowRuntime> | undefined;

async function load(): Promise<TensorFlowRuntime> {
  // tfjs-backend-cpu 4.22 computes MaxPool3D gradients wrongly for windows
  // whose height and width differ, as cellfinder's (3, 3, 2) pool does. The
  // cpu backend is the fallback and the reference of the gradient checks.
  await fixCpuMaxPool3dGrad(tf);
  const native = await loadNativeBackend(tf);
  if (native.ok) {
    await tf.ready();
    return { tf, backend: `native TensorFlow ${native.info.tensorflowVersion} (CPU)` };
  }
  await tf.setBackend('cpu');
  await tf.ready();
  return { tf, backend: 'cpu (pure JavaScript)', notNative: native.reason };
}

/** Loads the fastest engine available, once per process. */
export function loadTensorFlow(): Promise<TensorFlowRuntime> {
  runtime ??= load();
  return runtime;
}

/**
 * Which TensorFlow.js engine runs the maths, in this order: the GPU engine
 * (TensorFlow's CUDA build, set up by `cellfinder-retrain engine setup
 * --gpu`) when a GPU can be used, the native CPU engine (TensorFlow's C
 * library, `engine setup`), the GPU engine with its GPUs hidden when it is
 * the only native one, else the pure-JavaScript `cpu` backend, which always works but
 * is two orders of magnitude slower. Never a silent fallback: the runtime
 * says which engine runs and, when the GPU engine is set up or the GPU was
 * asked for, exactly why the GPU is not used.
 * (tfjs' wasm backend is not used: it was seen returning wrong Conv3D and
 * MaxPool3D gradients, and runs single-threaded under Node.)
 */
import * as tf from '@tensorflow/tfjs';
import { fixCpuMaxPool3dGrad } from './cpuMaxPool3dGradFix';
import { engineRoot, readActiveEngine } from './engineLayout';
import { type DeviceChoice, deviceChoice } from './gpuEnvironment';
import { type GpuDevice, inspectGpu } from './gpuProbe';
import { loadNativeBackend, type NativeBackendInfo } from './nativeBackend';

/** Whether the GPU is used, and why not when it is not. */
export interface GpuUse {
  requested: DeviceChoice;
  used: boolean;
  device?: GpuDevice;
  reason?: string;
}

export interface TensorFlowRuntime {
  tf: typeof tf;
  /** A user-facing name of the engine in use. */
  backend: string;
  /** Why the native engine is not in use, when it is not. */
  notNative?: string;
  /** Present when the GPU was asked for or a GPU engine is set up. */
  gpu?: GpuUse;
}

/**
 * Set in a SLURM job's environment when the login node that submitted it had
 * the native engine set up ('native'), and had the GPU engine for a job given
 * GPUs ('gpu'): a job on a node where that engine does not load then fails at
 * its start, saying why, instead of training for hours on the pure-JavaScript
 * engine or on the CPU.
 */
export const REQUIRED_ENGINE_ENV = 'CELLFINDER_RETRAIN_REQUIRED_ENGINE';
export type RequiredEngine = 'native' | 'gpu';

/** Why `runtime` is not the engine the environment requires; undefined when it is (or none is required). */
export function missingRequiredEngine(runtime: Omit<TensorFlowRuntime, 'tf'>, env: NodeJS.ProcessEnv = process.env): string | undefined {
  const required = env[REQUIRED_ENGINE_ENV] as RequiredEngine | undefined;
  if (required === 'native' && runtime.notNative) return `the native engine does not load here (${runtime.notNative}), so training would run on the pure-JavaScript engine, many times slower`;
  if (required === 'gpu' && !runtime.gpu?.used) return `the GPU engine does not use a GPU here (${runtime.gpu?.reason ?? runtime.notNative ?? 'no GPU engine'}), so training would run on the CPU`;
  return undefined;
}

// tfjs prints "install our node backend" at the first tensor on its
// JavaScript backend (which every engine uses for small constants), also when
// the native engine runs; the engine in use is reported by each command.
// 'PROD' silences only tfjs' console warnings and logs.
tf.env().set('PROD', true);

let runtime: Promise<TensorFlowRuntime> | undefined;

async function load(device: DeviceChoice): Promise<TensorFlowRuntime> {
  // tfjs-backend-cpu 4.22 computes MaxPool3D gradients wrongly for windows
  // whose height and width differ, as cellfinder's (3, 3, 2) pool does. The
  // cpu backend is the fallback and the reference of the gradient checks.
  await fixCpuMaxPool3dGrad(tf);
  let gpu: GpuUse | undefined;
  let gpuEngineSetUp = false;
  if (device !== 'cpu') {
    // A driver-less machine answers at once; otherwise a short test process asks TensorFlow (1-3 s).
    const inspection = await inspectGpu({ probe: 'when-driver' });
    gpuEngineSetUp = inspection.engine !== undefined;
    let reason = inspection.reason;
    if (inspection.usable) {
      const native = await loadNativeBackend(tf, { variant: 'gpu' });
      if (native.ok && native.info.usingGpu) {
        await tf.ready();
        const used = inspection.devices[0];
        return { tf, backend: `native TensorFlow ${native.info.tensorflowVersion} (GPU: ${describeDevice(used)})`, gpu: { requested: device, used: true, device: used } };
      }
      if (native.ok) {
        // Loaded, and one engine per process: it runs on the CPU.
        await tf.ready();
        return { tf, backend: cpuName(native.info), gpu: { requested: device, used: false, reason: 'TensorFlow registered no GPU in this process, although it did in the test process just before (is another process holding the GPU?)' } };
      }
      reason = native.reason;
    }
    if (device === 'gpu' || gpuEngineSetUp) gpu = { requested: device, used: false, reason };
  }
  let native = await loadNativeBackend(tf);
  if (!native.ok && (gpuEngineSetUp || (device === 'cpu' && readActiveEngine(engineRoot(), 'gpu').ok))) {
    // TensorFlow's CUDA build is a complete CPU build too; with the GPU hidden it is one.
    const onCpu = await loadNativeBackend(tf, { variant: 'gpu', hideGpu: true });
    if (onCpu.ok) native = onCpu;
  }
  if (native.ok) {
    await tf.ready();
    return { tf, backend: cpuName(native.info), gpu };
  }
  await tf.setBackend('cpu');
  await tf.ready();
  return { tf, backend: 'cpu (pure JavaScript)', notNative: native.reason, gpu };
}

function cpuName(info: NativeBackendInfo): string {
  return `native TensorFlow ${info.tensorflowVersion} (CPU${info.variant === 'gpu' ? ', GPU engine' : ''})`;
}

/** "NVIDIA H100 80GB HBM3, 77.6 GiB, compute capability 9.0" */
export function describeDevice(device: GpuDevice | undefined): string {
  if (!device) return 'unnamed device';
  return `${device.name}, ${(device.memoryMiB / 1024).toFixed(1)} GiB${device.computeCapability ? `, compute capability ${device.computeCapability}` : ''}`;
}

/**
 * Loads the fastest engine available for `device` (default: what
 * CELLFINDER_RETRAIN_DEVICE says, else auto), once per process.
 */
export function loadTensorFlow(device: DeviceChoice = deviceChoice()): Promise<TensorFlowRuntime> {
  runtime ??= load(device);
  return runtime;
}

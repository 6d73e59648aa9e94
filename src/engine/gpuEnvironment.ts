/**
 * Which device the user wants (`--device`, the `cellfinder.training.device`
 * setting, CELLFINDER_RETRAIN_DEVICE for processes we start), and the
 * environment a process needs to use the GPU engine.
 *
 * The dynamic loader reads LD_LIBRARY_PATH once, when a process starts, so
 * the CUDA library folders cannot be added by the process that needs them:
 * the process that starts it (the editor starting the training worker, the
 * command line re-starting itself) puts them into the child's environment
 * only. The editor's own process never gets them.
 */
import * as path from 'node:path';
import { type EngineManifest, engineRoot, readActiveEngine } from './engineLayout';
import { withTensorFlowLogLevel } from './tensorflowLog';

/** `auto`: the GPU when it can be used, else the CPU, saying why; `gpu`: the same, but not being able to is reported as a problem; `cpu`: never the GPU. */
export type DeviceChoice = 'auto' | 'gpu' | 'cpu';
export const DEVICE_CHOICES: readonly DeviceChoice[] = ['auto', 'gpu', 'cpu'];
export const DEVICE_ENV = 'CELLFINDER_RETRAIN_DEVICE';

export function isDeviceChoice(value: unknown): value is DeviceChoice {
  return DEVICE_CHOICES.includes(value as DeviceChoice);
}

/** The device asked for in `env` (auto when unset); an unknown value is an error that names the variable. */
export function deviceChoice(env: NodeJS.ProcessEnv = process.env): DeviceChoice {
  const value = env[DEVICE_ENV] || 'auto';
  if (!isDeviceChoice(value)) throw new Error(`${DEVICE_ENV}=${value} is not a device; use one of ${DEVICE_CHOICES.join(', ')}`);
  return value;
}

/** The GPU engine's CUDA library folders that `env`'s LD_LIBRARY_PATH lacks. */
export function missingLibraryPath(manifest: EngineManifest, env: NodeJS.ProcessEnv): string[] {
  const present = new Set((env.LD_LIBRARY_PATH ?? '').split(path.delimiter).filter(Boolean));
  return (manifest.cuda?.libraryPath ?? []).filter((folder) => !present.has(folder));
}

/**
 * The environment for a child process that may train or classify: `device`
 * recorded for it, TensorFlow's INFO lines hidden from its start (unless the
 * user set TF_CPP_MIN_LOG_LEVEL), and, when a GPU engine is set up and the device may be the
 * GPU, its CUDA library folders in front of LD_LIBRARY_PATH. `env` itself is
 * not changed.
 */
export function childEnvironment(env: NodeJS.ProcessEnv, device: DeviceChoice, root: string = engineRoot(env)): NodeJS.ProcessEnv {
  const child: NodeJS.ProcessEnv = { ...withTensorFlowLogLevel(env), [DEVICE_ENV]: device };
  if (device === 'cpu') return child;
  const gpu = readActiveEngine(root, 'gpu');
  if (!gpu.ok) return child;
  const missing = missingLibraryPath(gpu.manifest, env);
  if (missing.length > 0) child.LD_LIBRARY_PATH = [...missing, ...(env.LD_LIBRARY_PATH ?? '').split(path.delimiter).filter(Boolean)].join(path.delimiter);
  return child;
}

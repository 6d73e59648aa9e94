/**
 * Loads the native TensorFlow engine that `setupEngine` built and registers
 * it as TensorFlow.js's 'tensorflow' backend, on the caller's own
 * @tensorflow/tfjs instance.
 *
 * How it differs from `require('@tensorflow/tfjs-node')`:
 * - Only the parts that make the backend are loaded: the compiled addon,
 *   tfjs-node's kernel registrations and its NodeJSKernelBackend class. Its
 *   index.js (node-pre-gyp lookup, file:// IO handlers, progress-bar
 *   callback) is skipped.
 * - One tfjs-core: tfjs-node's JS does `require('@tensorflow/tfjs')`. The
 *   engine folder has no copy of it, and while its files load, that request
 *   is answered with the `tf` object passed in, so the kernels register with
 *   and the backend extends the same tfjs-core that runs the model. This holds
 *   even when the caller is an esbuild bundle with tfjs inlined (dist/cli.js),
 *   where no node_modules copy would be the right one.
 * - Finding libtensorflow: the addon is linked with RUNPATH
 *   $ORIGIN/../../deps/lib, and the libraries sit exactly there, so no
 *   LD_LIBRARY_PATH is needed (it could not be changed after start anyway).
 *
 * TensorFlow runs in this process once loaded (about 850 MB of library
 * mapped, its own thread pools); the VS Code extension should therefore load
 * it in the training worker process, not in the extension host.
 *
 * One engine per process: the CPU and GPU engines' libraries have the same
 * sonames, so whichever loads first is the one. The GPU engine's CUDA
 * libraries are found through LD_LIBRARY_PATH, which only the process that
 * starts this one can set (gpuEnvironment.ts).
 */
import Module, { createRequire } from 'node:module';
import * as path from 'node:path';
import type * as tfType from '@tensorflow/tfjs';
import { type EngineManifest, engineRoot, type EngineVariant, readActiveEngine, TFJS_NODE_VERSION } from './engineLayout';
import { missingLibraryPath } from './gpuEnvironment';
import { registerNativeKernels } from './nativeKernels';
import { TF_LOG_LEVEL, TF_LOG_LEVEL_ENV } from './tensorflowLog';

export const NATIVE_BACKEND_NAME = 'tensorflow';
/** Set to 0 to keep the native engine from loading (e.g. to compare numbers with the JS engine). */
export const DISABLE_ENV = 'CELLFINDER_RETRAIN_NATIVE';

export interface NativeBackendInfo {
  backend: typeof NATIVE_BACKEND_NAME;
  variant: EngineVariant;
  /** Whether TensorFlow registered a GPU, on which the addon then runs every op. */
  usingGpu: boolean;
  /** TF_Version() of the loaded C library. */
  tensorflowVersion: string;
  tfjsNodeVersion: string;
  engineDir: string;
  addonPath: string;
  libraryDir: string;
  /** The library's origin (downloaded wheel, user's wheel, Python install). */
  source: EngineManifest['source'];
  /** Milliseconds to load the addon and libtensorflow. */
  loadMs: number;
  /** Set when something works but deserves a look (e.g. a tfjs version other than tfjs-node's). */
  warning?: string;
}

export type NativeLoadResult = { ok: true; info: NativeBackendInfo } | { ok: false; reason: string };

export interface LoadOptions {
  /** Engine cache root (default: engineRoot()). */
  root?: string;
  /** Which engine (default: the CPU one). */
  variant?: EngineVariant;
  /**
   * GPU engine on the CPU: the GPUs are hidden from it (CUDA_VISIBLE_DEVICES,
   * read when it starts), so its CUDA libraries are not needed either.
   */
  hideGpu?: boolean;
  /** Make 'tensorflow' the active backend (default true). */
  activate?: boolean;
  env?: NodeJS.ProcessEnv;
}

interface TfjsBinding {
  TF_Version: string;
  isUsingGpuDevice(): boolean;
}

type BackendClass = new (binding: TfjsBinding, packageName: string) => tfType.KernelBackend;

/** What this process loaded (a native library cannot be unloaded, so it is loaded at most once). */
let loaded: { info: NativeBackendInfo; binding: TfjsBinding; Backend: BackendClass } | undefined;
let lastFailure: string | undefined;

/**
 * Loads the cached engine and registers the 'tensorflow' backend with `tf`.
 * Never throws: when native is not available the result says exactly why.
 */
export async function loadNativeBackend(tf: typeof tfType, options: LoadOptions = {}): Promise<NativeLoadResult> {
  const env = options.env ?? process.env;
  if (env[DISABLE_ENV] === '0') return fail(`the native engine is turned off (${DISABLE_ENV}=0)`);
  const variant = options.variant ?? 'cpu';
  if (loaded && loaded.info.variant !== variant) return fail(`the ${loaded.info.variant.toUpperCase()} engine is already loaded in this process; only one can be`);
  if (!loaded) {
    const root = options.root || engineRoot(env);
    const check = readActiveEngine(root, variant);
    if (!check.ok) return fail(`${check.reason}; set it up with: cellfinder-retrain engine setup${variant === 'gpu' ? ' --gpu' : ''}`);
    const { engineDir, manifest } = check;
    const unreachable = options.hideGpu ? [] : missingLibraryPath(manifest, env);
    if (unreachable.length > 0) return fail(`this process was started without the GPU engine's CUDA libraries on LD_LIBRARY_PATH (${unreachable.join(', ')}); run it through cellfinder-retrain or the editor, which set it`);
    const packageDir = path.join(engineDir, manifest.packageDir);
    const addonPath = path.join(engineDir, manifest.addon);
    // TensorFlow's INFO lines (CPU features) unless the user asked for them; warnings and errors stay (see tensorflowLog.ts).
    process.env[TF_LOG_LEVEL_ENV] ??= TF_LOG_LEVEL;
    // TensorFlow otherwise takes nearly all GPU memory at start: a second process (classifying during a
    // run, a benchmark beside it) could not start, and running out would not tell what the model needs.
    if (variant === 'gpu') process.env.TF_FORCE_GPU_ALLOW_GROWTH ??= 'true';
    if (options.hideGpu) process.env.CUDA_VISIBLE_DEVICES = '';
    const requireFromEngine = createRequire(path.join(packageDir, 'package.json'));
    const start = performance.now();
    let binding: TfjsBinding;
    try {
      binding = requireFromEngine(addonPath) as TfjsBinding;
    } catch (error) {
      return fail(`the native engine in ${engineDir} does not load (${firstLine(error)}); run: cellfinder-retrain engine setup --force`);
    }
    const loadMs = performance.now() - start;
    let Backend: BackendClass;
    try {
      Backend = withTfjsAs(tf, packageDir, () => {
        // Registers tfjs-node's ~150 kernels for the 'tensorflow' backend name.
        requireFromEngine(path.join(packageDir, 'dist', 'register_all_kernels.js'));
        return (requireFromEngine(path.join(packageDir, 'dist', 'nodejs_kernel_backend.js')) as { NodeJSKernelBackend: BackendClass }).NodeJSKernelBackend;
      });
    } catch (error) {
      return fail(`tfjs-node's JavaScript in ${packageDir} does not load (${firstLine(error)}); run: cellfinder-retrain engine setup --force`);
    }
    const coreVersion = tf.version?.['tfjs-core'];
    loaded = {
      binding,
      Backend,
      info: {
        backend: NATIVE_BACKEND_NAME,
        variant,
        usingGpu: binding.isUsingGpuDevice(),
        tensorflowVersion: binding.TF_Version,
        tfjsNodeVersion: manifest.tfjsNodeVersion,
        engineDir,
        addonPath,
        libraryDir: path.join(engineDir, manifest.libraryDir),
        source: manifest.source,
        loadMs: Math.round(loadMs),
        warning: coreVersion && coreVersion !== TFJS_NODE_VERSION ? `@tensorflow/tfjs-core is ${coreVersion}, tfjs-node's kernels were written for ${TFJS_NODE_VERSION}` : undefined,
      },
    };
  }
  const { Backend, binding, info } = loaded;
  if (!tf.findBackendFactory(NATIVE_BACKEND_NAME)) {
    // Priority 3 as tfjs-node gives it: above cpu (1), so it is the default once registered.
    tf.registerBackend(NATIVE_BACKEND_NAME, () => new Backend(binding, '@tensorflow/tfjs-node'), 3);
  }
  registerNativeKernels(tf, NATIVE_BACKEND_NAME);
  // The kernel registry is global (shared by any tfjs-core copies); the backend class is not.
  if (!(Backend.prototype instanceof tf.KernelBackend) || !tf.getKernel('Conv3D', NATIVE_BACKEND_NAME)) {
    return fail('the native engine was loaded with another copy of @tensorflow/tfjs than the one given; load it with the tf object that runs the model');
  }
  if (options.activate ?? true) {
    const ok = await tf.setBackend(NATIVE_BACKEND_NAME);
    if (!ok) return fail('TensorFlow.js could not start the native backend (see the console for its error)');
  }
  lastFailure = undefined;
  return { ok: true, info };
}

function fail(reason: string): NativeLoadResult {
  lastFailure = reason;
  return { ok: false, reason };
}

/**
 * Runs `load` with `require('@tensorflow/tfjs')` and `require('@tensorflow/tfjs-core')`
 * from files under `packageDir` answered with `tf`; every other request resolves normally.
 */
function withTfjsAs<T>(tf: typeof tfType, packageDir: string, load: () => T): T {
  const moduleInternals = Module as unknown as { _load: (request: string, parent: { filename?: string } | undefined, isMain: boolean) => unknown };
  const original = moduleInternals._load;
  const prefix = packageDir + path.sep;
  moduleInternals._load = function (request, parent, isMain) {
    if ((request === '@tensorflow/tfjs' || request === '@tensorflow/tfjs-core') && parent?.filename?.startsWith(prefix)) return tf;
    return original.call(this, request, parent, isMain);
  };
  try {
    return load();
  } finally {
    moduleInternals._load = original;
  }
}

function firstLine(error: unknown): string {
  return String((error as Error)?.message ?? error).split('\n')[0];
}

export interface EngineStatus {
  /** The cache root searched. */
  root: string;
  /** Whether a complete engine is set up there. */
  installed: boolean;
  engineDir?: string;
  manifest?: EngineManifest;
  /** Whether this process has loaded it. */
  loaded: boolean;
  info?: NativeBackendInfo;
  /** The backend `tf` is using now, when a tf object is given. */
  activeBackend?: string;
  /** Why the native engine is not in use (absent when it is). */
  reason?: string;
}

/**
 * What is installed, where, and why native is (not) in use. Reads only small
 * files and never loads the library, so the extension host can call it.
 */
export function engineStatus(options: { root?: string; env?: NodeJS.ProcessEnv; tf?: typeof tfType } = {}): EngineStatus {
  const env = options.env ?? process.env;
  const root = options.root || engineRoot(env);
  const check = readActiveEngine(root);
  const activeBackend = options.tf?.getBackend();
  const status: EngineStatus = {
    root,
    installed: check.ok,
    engineDir: check.engineDir,
    manifest: check.ok ? check.manifest : undefined,
    loaded: loaded !== undefined,
    info: loaded?.info,
    activeBackend,
  };
  if (env[DISABLE_ENV] === '0') status.reason = `turned off by ${DISABLE_ENV}=0`;
  else if (!check.ok) status.reason = `${check.reason}; set it up with: cellfinder-retrain engine setup`;
  else if (!loaded) status.reason = lastFailure ?? 'set up but not loaded in this process yet';
  else if (activeBackend !== undefined && activeBackend !== NATIVE_BACKEND_NAME) status.reason = `loaded, but the active backend is '${activeBackend}'`;
  return status;
}

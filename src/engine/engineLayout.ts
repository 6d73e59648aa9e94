/**
 * Where the native TensorFlow engine lives on disk, which versions it is
 * built from, and the manifest that says a build is complete.
 *
 * The engine is `@tensorflow/tfjs-node`'s native addon on the TensorFlow C
 * library shipped inside PyPI's `tensorflow-cpu` wheel (tfjs-node's own
 * installer downloads libtensorflow from storage.googleapis.com, which many
 * sites cannot reach). The addon is the one this package ships
 * (prebuilds/<platform>-<arch>/, compiled in our build), or compiled on the
 * user's machine when that does not fit. It is cached outside the repository
 * and outside node_modules, so `npm ci` never removes it:
 *
 *   <root>/                                  CELLFINDER_RETRAIN_ENGINE_DIR, else
 *                                            $XDG_CACHE_HOME/cellfinder-retrain/engine,
 *                                            else ~/.cache/cellfinder-retrain/engine
 *     active.json                            which engine folder to load
 *     logs/setup-<time>.log                  full output of the last setups
 *     tfjs-node-4.22.0-tf-2.21.0-linux-x64/  one complete engine:
 *       engine.json                          manifest, written last
 *       tfjs-node/                           the npm tarball, unpacked
 *         dist/                              tfjs-node's JS (backend + kernels)
 *         deps/lib/                          libtensorflow_cc.so.2, libtensorflow_framework.so.2 + link names
 *         deps/include/                      the C API headers the addon needs
 *         lib/napi-v8/tfjs_binding.node      the addon, shipped or compiled (RUNPATH $ORIGIN/../../deps/lib)
 *         node_modules/google-protobuf/      the one runtime dependency its JS needs
 *
 * The GPU engine (`cellfinder-retrain engine setup --gpu`) is the same addon
 * (`@tensorflow/tfjs-node-gpu` ships the very same sources) built against the
 * `tensorflow` wheel's libraries, which are compiled with CUDA 12. It lives in
 * its own folder beside the CPU engine, tfjs-node-gpu-4.22.0-tf-2.21.0-linux-x64/,
 * with the same layout; the CUDA libraries it needs (CUDA runtime, cuBLAS,
 * cuFFT, cuSOLVER, cuSPARSE, cuDNN) are either extracted into its cuda/ folder
 * or used where the user has them, and its manifest lists their folders: only
 * a process started with them on LD_LIBRARY_PATH can use the GPU (see
 * gpuEnvironment.ts). active.json names both: { folder, gpuFolder }.
 *
 * This module is shared by the setup and the loader and does no I/O beyond
 * reading small JSON files.
 */
import { existsSync, readFileSync } from 'node:fs';
import { homedir } from 'node:os';
import * as path from 'node:path';

/** The tfjs-node release whose addon sources and kernels we use; it must match @tensorflow/tfjs in package.json. */
export const TFJS_NODE_VERSION = '4.22.0';
/** The CPU build or the CUDA build of the engine. */
export type EngineVariant = 'cpu' | 'gpu';

/**
 * The npm package whose sources each variant is built from, with npm's
 * integrity string (`npm view <package>@4.22.0 dist.integrity`). The two
 * tarballs hold the same binding sources, binding.gyp and dist/ JavaScript;
 * only the package name and the (unused) install script differ.
 */
export const TFJS_NODE_PACKAGES: Record<EngineVariant, { name: string; integrity: string }> = {
  cpu: { name: '@tensorflow/tfjs-node', integrity: 'sha512-uHrXeUlfgkMxTZqHkESSV7zSdKdV0LlsBeblqkuKU9nnfxB1pC6DtoyYVaLxznzZy7WQSegjcohxxCjAf6Dc7w==' },
  gpu: { name: '@tensorflow/tfjs-node-gpu', integrity: 'sha512-p//NN6DGiN4hInUmIkRffaFVMcdTREUMjPyjW04J7OXvB2zBlQimj61eFKSgRrH3f5TnOfKzb0n56he/B6a4bw==' },
};
/**
 * tfjs-node's JS needs google-protobuf at load time (its TensorBoard summary
 * writer); its package.json asks for ^3.9.2. Pure JS, no dependencies.
 */
export const GOOGLE_PROTOBUF_VERSION = '3.21.4';
export const GOOGLE_PROTOBUF_INTEGRITY = 'sha512-MnG7N936zcKTco4Jd2PX2U96Kf9PxygAPKBug+74LHzmHXmceN16MmRcdgZv+DGef/S9YvQAfRsNCn4cjf9yyQ==';

/**
 * The TensorFlow wheel we download when the user has none: always this exact
 * file, whatever the user's own Python version, so its hash can be pinned
 * (pip is told the target platform and Python tag; the C library inside does
 * not use Python). tfjs-node 4.22 was written against libtensorflow 2.9.1;
 * TensorFlow's C API is stable and 2.21's passes our gradient checks.
 */
export const PINNED_TENSORFLOW = {
  pipName: 'tensorflow-cpu',
  version: '2.21.0',
  pythonVersion: '3.11',
  abi: 'cp311',
  platform: 'manylinux_2_27_x86_64',
  fileName: 'tensorflow_cpu-2.21.0-cp311-cp311-manylinux_2_27_x86_64.whl',
  sha256: '2b847d217b02ee7731ed91431daf3250daa0196c3c94614d23be27232e6e5b6c',
  bytes: 273_829_956,
} as const;

/**
 * The GPU engine's wheel: PyPI's `tensorflow` for Linux x86-64 is built with
 * CUDA 12.5 and cuDNN 9.3 (its libtensorflow_cc.so.2 is 1.1 GB, the CPU
 * wheel's 0.8 GB). It finds the CUDA libraries at run time (dlopen); without
 * them, or without a driver, it runs on the CPU.
 */
export const PINNED_TENSORFLOW_GPU = {
  ...PINNED_TENSORFLOW,
  pipName: 'tensorflow',
  fileName: 'tensorflow-2.21.0-cp311-cp311-manylinux_2_27_x86_64.whl',
  sha256: '9056fbc9ba04235810b71ae6cbd958a196e8804fb53bbcffbf3e23b56155f124',
  bytes: 572_440_367,
} as const;

export const PINNED_WHEELS: Record<EngineVariant, typeof PINNED_TENSORFLOW | typeof PINNED_TENSORFLOW_GPU> = { cpu: PINNED_TENSORFLOW, gpu: PINNED_TENSORFLOW_GPU };

/** N-API version the addon is compiled for: the highest tfjs-node's package.json lists. */
export const NAPI_BUILD_VERSION = 8;

/**
 * The addon we compile in our own build and ship (VSIX and npm package), so
 * that set-up needs no compiler: prebuilds/<platform>-<arch>/ in the package,
 * beside tfjs_binding.json, which says what it was built from. N-API keeps it
 * valid for every Node.js and Electron with N-API 8; it links TensorFlow's
 * two libraries by soname only, so it serves the CPU and the GPU engine alike
 * (tfjs-node and tfjs-node-gpu 4.22 ship identical binding sources), and
 * needs no glibc or libstdc++ newer than TensorFlow's wheel does
 * (manylinux_2_27, checked when it is built: elfVersions.ts).
 */
export const SHIPPED_ADDON_FOLDER = 'prebuilds';
export const SHIPPED_ADDON_FILE = 'tfjs_binding.node';
export const SHIPPED_ADDON_STAMP = 'tfjs_binding.json';

/** Our own TensorFlow kernels, compiled into the addon (see native/cellfinder_kernels.cc), in the package's native/. */
export const KERNELS_SOURCE_NAME = 'cellfinder_kernels.cc';
export function kernelsSourceFile(): string {
  return path.join(packageRoot(), 'native', KERNELS_SOURCE_NAME);
}

/** tfjs_binding.json: what the shipped addon is, to tell whether it fits this version. */
export interface ShippedAddonStamp {
  tfjsNodeVersion: string;
  napiBuildVersion: number;
  /** The TensorFlow whose C API headers it was compiled with. */
  tensorflowVersion: string;
  sha256: string;
  /** SHA-256 of native/cellfinder_kernels.cc as compiled in: an addon without this package's kernels does not fit. */
  kernelsSha256: string;
  /** The build machine's compiler and glibc, and the symbol versions the addon requires of each library. */
  compiler: string;
  glibc: string;
  requires: Array<{ file: string; versions: string[] }>;
  builtAt: string;
}

/**
 * The package's own folder (the one with its package.json), from the bundle
 * (dist/) or the compiled sources (out/src/engine/).
 */
export function packageRoot(): string {
  for (let folder = __dirname; ; folder = path.dirname(folder)) {
    try {
      if ((JSON.parse(readFileSync(path.join(folder, 'package.json'), 'utf8')) as { name?: string }).name === 'cellfinder-retrain') return folder;
    } catch {
      // no package.json here
    }
    if (path.dirname(folder) === folder) return path.resolve(__dirname, '..');
  }
}

/** Where this platform's shipped addon is (whether or not the package has one). */
export function shippedAddonFolder(platform = process.platform, arch = process.arch): string {
  return path.join(packageRoot(), SHIPPED_ADDON_FOLDER, `${platform}-${arch}`);
}

/** The two shared libraries the addon links, as named inside the wheel (tensorflow/<name>). */
export const TF_LIBRARIES = ['libtensorflow_cc.so.2', 'libtensorflow_framework.so.2'] as const;

/** The folder holding all engines (see the module comment). */
/** Where the engines are, when not in the user's cache: e.g. a shared filesystem every cluster node sees. */
export const ENGINE_DIR_ENV = 'CELLFINDER_RETRAIN_ENGINE_DIR';

export function engineRoot(env: NodeJS.ProcessEnv = process.env): string {
  const override = env[ENGINE_DIR_ENV];
  if (override) return path.resolve(override);
  const cache = env.XDG_CACHE_HOME && path.isAbsolute(env.XDG_CACHE_HOME) ? env.XDG_CACHE_HOME : path.join(homedir(), '.cache');
  return path.join(cache, 'cellfinder-retrain', 'engine');
}

/** Engine folder name: every version that makes a build different, so several can coexist. */
export function engineFolderName(tfVersion: string, variant: EngineVariant = 'cpu', platform = process.platform, arch = process.arch): string {
  return `tfjs-node${variant === 'gpu' ? '-gpu' : ''}-${TFJS_NODE_VERSION}-tf-${tfVersion}-${platform}-${arch}`;
}

/** Where the GPU engine's CUDA libraries are, and which versions were found there at setup. */
export interface CudaLibrarySet {
  /** How they were found: extracted from downloaded nvidia-* wheels or the user's wheels, a folder the user named, a Python environment's nvidia-* packages, or the system's loader cache. */
  source: { kind: 'download' | 'wheels' | 'folder' | 'python' | 'system'; from: string };
  /** Absolute folders to put on LD_LIBRARY_PATH (empty when the system's loader finds them). */
  libraryPath: string[];
  /** Library file name -> version found, e.g. libcudart.so.12 -> 12.5.82, libcudnn.so.9 -> 9.3.0.75. */
  versions: Record<string, string>;
}

/** Written as the last step of a successful setup; its presence (with the files it names) means "installed". */
export interface EngineManifest {
  formatVersion: 1;
  /** Absent in manifests written before GPU engines existed: those are CPU engines. */
  variant?: EngineVariant;
  tfjsNodeVersion: string;
  /** TensorFlow version reported by the built addon (TF_Version()). */
  tensorflowVersion: string;
  /** Where the C library came from: a downloaded or user-given wheel, or a Python install. */
  source: { kind: 'download' | 'wheel' | 'python'; from: string };
  platform: string;
  arch: string;
  napiBuildVersion: number;
  /** Relative to the engine folder. */
  addon: string;
  /** Relative to the engine folder. */
  packageDir: string;
  /** Relative to the engine folder. */
  libraryDir: string;
  /** GPU engines only. */
  cuda?: CudaLibrarySet;
  /** Whether the addon is the shipped one or was compiled here (absent in manifests of engines that were all compiled). */
  addonBuild?: { kind: 'shipped' | 'compiled'; from: string };
  builtAt: string;
  /** Seconds per setup step and bytes on disk, for the record. */
  timings: Record<string, number>;
  diskBytes: number;
}

export const MANIFEST_FILE = 'engine.json';
export const ACTIVE_FILE = 'active.json';

export type ManifestCheck =
  | { ok: true; engineDir: string; manifest: EngineManifest }
  | { ok: false; engineDir?: string; reason: string };

/** active.json: the engine folder of each variant that is set up. */
export interface ActiveEngines {
  folder?: string;
  gpuFolder?: string;
}

export const ACTIVE_KEY: Record<EngineVariant, keyof ActiveEngines> = { cpu: 'folder', gpu: 'gpuFolder' };

/** What active.json says; an absent file names nothing. Throws on a file that is not JSON. */
export function readActiveFile(root: string): ActiveEngines {
  const activeFile = path.join(root, ACTIVE_FILE);
  return existsSync(activeFile) ? (JSON.parse(readFileSync(activeFile, 'utf8')) as ActiveEngines) : {};
}

/**
 * Finds the active engine of a variant under `root` and checks that it is
 * complete and usable by this process (platform, architecture, N-API).
 * Never throws.
 */
export function readActiveEngine(root: string = engineRoot(), variant: EngineVariant = 'cpu'): ManifestCheck {
  const activeFile = path.join(root, ACTIVE_FILE);
  const none = variant === 'gpu' ? `no GPU engine is set up in ${root}` : `no native engine is set up in ${root}`;
  if (!existsSync(activeFile)) return { ok: false, reason: none };
  let folder: string;
  try {
    folder = String(readActiveFile(root)[ACTIVE_KEY[variant]] ?? '');
  } catch (error) {
    return { ok: false, reason: `${activeFile} is unreadable (${(error as Error).message}); run the engine setup again` };
  }
  if (!folder) return { ok: false, reason: none };
  if (folder.includes('/') || folder.includes('\\')) return { ok: false, reason: `${activeFile} names no engine folder; run the engine setup again` };
  return readEngine(path.join(root, folder));
}

/** Checks one engine folder's manifest and files. Never throws. */
export function readEngine(engineDir: string): ManifestCheck {
  const manifestFile = path.join(engineDir, MANIFEST_FILE);
  if (!existsSync(manifestFile)) return { ok: false, engineDir, reason: `${engineDir} has no ${MANIFEST_FILE} (setup did not finish); run the engine setup again` };
  let manifest: EngineManifest;
  try {
    manifest = JSON.parse(readFileSync(manifestFile, 'utf8')) as EngineManifest;
  } catch (error) {
    return { ok: false, engineDir, reason: `${manifestFile} is unreadable (${(error as Error).message}); run the engine setup again` };
  }
  if (manifest.formatVersion !== 1 || manifest.tfjsNodeVersion !== TFJS_NODE_VERSION) {
    return { ok: false, engineDir, reason: `the engine in ${engineDir} was built for tfjs-node ${manifest.tfjsNodeVersion}, this version needs ${TFJS_NODE_VERSION}; run the engine setup again` };
  }
  if (manifest.platform !== process.platform || manifest.arch !== process.arch) {
    return { ok: false, engineDir, reason: `the engine in ${engineDir} was built for ${manifest.platform}-${manifest.arch}, this is ${process.platform}-${process.arch}` };
  }
  const napi = Number(process.versions.napi ?? 0);
  if (napi < manifest.napiBuildVersion) {
    return { ok: false, engineDir, reason: `this Node.js supports N-API ${napi}, the engine needs ${manifest.napiBuildVersion}; use Node.js 20 or newer` };
  }
  const required = [manifest.addon, ...TF_LIBRARIES.map((name) => path.join(manifest.libraryDir, name)), path.join(manifest.packageDir, 'dist', 'nodejs_kernel_backend.js')];
  const missing = required.filter((file) => !existsSync(path.join(engineDir, file)));
  if (missing.length > 0) return { ok: false, engineDir, reason: `the engine in ${engineDir} is incomplete (missing ${missing.join(', ')}); run the engine setup with --force` };
  // The CUDA libraries may live in a Python environment or folder the user has since removed.
  const gone = (manifest.cuda?.libraryPath ?? []).filter((folder) => !existsSync(folder));
  if (gone.length > 0) return { ok: false, engineDir, reason: `the GPU engine's CUDA library folders are gone (${gone.join(', ')}); run the engine setup with --gpu --force` };
  return { ok: true, engineDir, manifest };
}

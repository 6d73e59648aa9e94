/**
 * Where the native TensorFlow engine lives on disk, which versions it is
 * built from, and the manifest that says a build is complete.
 *
 * The engine is `@tensorflow/tfjs-node`'s native addon, compiled on the
 * user's machine against the TensorFlow C library shipped inside PyPI's
 * `tensorflow-cpu` wheel (tfjs-node's own installer downloads libtensorflow
 * from storage.googleapis.com, which many sites cannot reach). It is cached
 * outside the repository and outside node_modules, so `npm ci` never removes
 * it:
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
 *         lib/napi-v8/tfjs_binding.node      the addon (RUNPATH $ORIGIN/../../deps/lib)
 *         node_modules/google-protobuf/      the one runtime dependency its JS needs
 *
 * This module is shared by the setup and the loader and does no I/O beyond
 * reading small JSON files.
 */
import { existsSync, readFileSync } from 'node:fs';
import { homedir } from 'node:os';
import * as path from 'node:path';

/** The tfjs-node release whose addon sources and kernels we use; it must match @tensorflow/tfjs in package.json. */
export const TFJS_NODE_VERSION = '4.22.0';
/** npm's integrity string for @tensorflow/tfjs-node@4.22.0 (from `npm view ... dist.integrity`). */
export const TFJS_NODE_INTEGRITY = 'sha512-uHrXeUlfgkMxTZqHkESSV7zSdKdV0LlsBeblqkuKU9nnfxB1pC6DtoyYVaLxznzZy7WQSegjcohxxCjAf6Dc7w==';
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

/** N-API version the addon is compiled for: the highest tfjs-node's package.json lists. */
export const NAPI_BUILD_VERSION = 8;

/** The two shared libraries the addon links, as named inside the wheel (tensorflow/<name>). */
export const TF_LIBRARIES = ['libtensorflow_cc.so.2', 'libtensorflow_framework.so.2'] as const;

/** The folder holding all engines (see the module comment). */
export function engineRoot(env: NodeJS.ProcessEnv = process.env): string {
  const override = env.CELLFINDER_RETRAIN_ENGINE_DIR;
  if (override) return path.resolve(override);
  const cache = env.XDG_CACHE_HOME && path.isAbsolute(env.XDG_CACHE_HOME) ? env.XDG_CACHE_HOME : path.join(homedir(), '.cache');
  return path.join(cache, 'cellfinder-retrain', 'engine');
}

/** Engine folder name: every version that makes a build different, so several can coexist. */
export function engineFolderName(tfVersion: string, platform = process.platform, arch = process.arch): string {
  return `tfjs-node-${TFJS_NODE_VERSION}-tf-${tfVersion}-${platform}-${arch}`;
}

/** Written as the last step of a successful setup; its presence (with the files it names) means "installed". */
export interface EngineManifest {
  formatVersion: 1;
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

/**
 * Finds the active engine under `root` and checks that it is complete and
 * usable by this process (platform, architecture, N-API). Never throws.
 */
export function readActiveEngine(root: string = engineRoot()): ManifestCheck {
  const activeFile = path.join(root, ACTIVE_FILE);
  if (!existsSync(activeFile)) return { ok: false, reason: `no native engine is set up in ${root}` };
  let folder: string;
  try {
    folder = String(JSON.parse(readFileSync(activeFile, 'utf8')).folder ?? '');
  } catch (error) {
    return { ok: false, reason: `${activeFile} is unreadable (${(error as Error).message}); run the engine setup again` };
  }
  if (!folder || folder.includes('/') || folder.includes('\\')) return { ok: false, reason: `${activeFile} names no engine folder; run the engine setup again` };
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
  return { ok: true, engineDir, manifest };
}

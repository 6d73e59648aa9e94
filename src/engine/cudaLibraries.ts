/**
 * The CUDA libraries the GPU engine's TensorFlow (2.21, built with CUDA 12.5
 * and cuDNN 9.3) opens at run time, where to find them, and the nvidia-*
 * wheels that carry them.
 *
 * TensorFlow registers a GPU only when it can dlopen all of the CUDA
 * runtime, cuBLAS(Lt), cuFFT, cuSOLVER, cuSPARSE and cuDNN (otherwise it logs
 * "Cannot dlopen some GPU libraries" and runs on the CPU); cuSOLVER and
 * cuSPARSE in turn need nvJitLink. The file names are the sonames it asks
 * for, so the major versions must match: CUDA 11 or cuDNN 8 libraries do not
 * do. Where they come from, in the setup's order:
 *   - folders the user names (`--cuda-libs`): a CUDA toolkit's lib64, a conda
 *     environment's lib, a site-packages or `nvidia` folder of nvidia-*
 *     packages, or a folder of nvidia-*.whl files (downloaded elsewhere);
 *   - a Python environment's nvidia-* packages (installed with
 *     `tensorflow[and-cuda]`, or with PyTorch, which uses the same ones);
 *   - the system's loader cache (`ldconfig -p`): a system-wide CUDA install;
 *   - else the pinned wheels below, from the Python package index.
 * The folders that hold them go on LD_LIBRARY_PATH of the process that loads
 * the engine; the wheels' own RUNPATHs do not suffice (cuDNN's points at
 * ../../nvrtc/lib, but nvidia-cuda-nvrtc installs into cuda_nvrtc/lib).
 *
 * Measured: the eight pinned wheels are 1.53 GB to download and 2.3 GB
 * unpacked (cuDNN 0.9 GB, cuBLAS 0.55 GB).
 */
import { spawnSync } from 'node:child_process';
import { existsSync, readdirSync, readFileSync, realpathSync } from 'node:fs';
import * as path from 'node:path';

export interface CudaLibrary {
  /** The file name TensorFlow asks the loader for. */
  file: string;
  /** What it is, for messages. */
  name: string;
  /** The nvidia-* package and its folder under site-packages/nvidia/. */
  pipName: string;
  folder: string;
}

export const REQUIRED_CUDA_LIBRARIES: readonly CudaLibrary[] = [
  { file: 'libcudart.so.12', name: 'CUDA runtime', pipName: 'nvidia-cuda-runtime-cu12', folder: 'cuda_runtime' },
  { file: 'libcublas.so.12', name: 'cuBLAS', pipName: 'nvidia-cublas-cu12', folder: 'cublas' },
  { file: 'libcublasLt.so.12', name: 'cuBLASLt', pipName: 'nvidia-cublas-cu12', folder: 'cublas' },
  { file: 'libcufft.so.11', name: 'cuFFT', pipName: 'nvidia-cufft-cu12', folder: 'cufft' },
  { file: 'libcusolver.so.11', name: 'cuSOLVER', pipName: 'nvidia-cusolver-cu12', folder: 'cusolver' },
  { file: 'libcusparse.so.12', name: 'cuSPARSE', pipName: 'nvidia-cusparse-cu12', folder: 'cusparse' },
  { file: 'libcudnn.so.9', name: 'cuDNN', pipName: 'nvidia-cudnn-cu12', folder: 'cudnn' },
  { file: 'libnvJitLink.so.12', name: 'nvJitLink', pipName: 'nvidia-nvjitlink-cu12', folder: 'nvjitlink' },
];

/** A wheel we download from the package index: always exactly this file, checked against its published SHA-256. */
export interface PinnedWheel {
  pipName: string;
  version: string;
  /** pip's --platform for this file. */
  platform: string;
  fileName: string;
  sha256: string;
  bytes: number;
}

/**
 * The nvidia-* wheels for the libraries above, at the versions TensorFlow
 * 2.21 was built and tested with (the lower bounds of its `and-cuda` extra:
 * CUDA 12.5, cuDNN 9.3), plus NVRTC, which cuDNN 9 loads for its
 * runtime-compiled kernels. TensorFlow's extra also names cupti (profiler),
 * nvcc (XLA's ptxas), curand and nccl (multi-GPU), which this engine does not
 * use: 0.6 GB less to download.
 */
export const PINNED_CUDA_WHEELS: readonly PinnedWheel[] = [
  wheel('nvidia-cuda-runtime-cu12', '12.5.82', '3e79a060e126df40fd3a068f3f787eb000fa51b251ec6cd97d09579632687115', 895_707),
  wheel('nvidia-cublas-cu12', '12.5.3.2', 'ca070ad70e9fa6654084575d01bd001f30cc4665e33d4bb9fc8e0f321caa034b', 363_313_169),
  wheel('nvidia-cufft-cu12', '11.2.3.61', '9a6e8df162585750f61983a638104a48c756aa13f9f48e19ab079b38e3c828b8', 192_524_114),
  wheel('nvidia-cusolver-cu12', '11.6.3.83', '93cfafacde4428b71778eeb092ec615a02a3d05404da1bcf91c53e3fa1bce42b', 130_341_232),
  wheel('nvidia-cusparse-cu12', '12.5.1.3', '016df8e993c437e8301e62739f01775cba988fd5253cd4c64173f8e8d2f8e752', 217_558_979),
  wheel('nvidia-cudnn-cu12', '9.3.0.75', '9ad9c6929ebb5295eb4a1728024666d1c88283373e265a0c5c883e6f9d5cd76d', 577_163_502),
  wheel('nvidia-nvjitlink-cu12', '12.5.82', 'f9b37bc5c8cf7509665cb6ada5aaa0ce65618f2332b7d3e78e9790511f111212', 21_298_879),
  wheel('nvidia-cuda-nvrtc-cu12', '12.5.82', '3dbd97b0104b4bfbc3c4f8c79cd2496307c89c43c29a9f83125f1d76296ff3fd', 24_873_108),
];

function wheel(pipName: string, version: string, sha256: string, bytes: number): PinnedWheel {
  return { pipName, version, platform: 'manylinux2014_x86_64', fileName: `${pipName.replace(/-/g, '_')}-${version}-py3-none-manylinux2014_x86_64.whl`, sha256, bytes };
}

/** The oldest driver CUDA 12 runs on (its minor-version compatibility floor). */
export const MINIMUM_DRIVER_MAJOR = 525;

/** CUDA's and NVIDIA's math libraries: libcudart, libcublas, libcudnn, libnvJitLink, libnvrtc, ... */
const CUDA_LIBRARY_FILE = /^lib(cu|nv)\w*\.so/;

/**
 * The folders in or under `folder` that hold CUDA libraries: the folder
 * itself, its lib64/ and lib/, and, for a site-packages or `nvidia` folder,
 * every nvidia/<package>/lib. Each once; only folders with a CUDA library in
 * them, so nothing else (a site-packages' own .so files) lands on the
 * library path.
 */
export function cudaFoldersIn(folder: string): string[] {
  const candidates = [folder, path.join(folder, 'lib64'), path.join(folder, 'lib')];
  for (const nvidia of [path.join(folder, 'nvidia'), folder]) {
    for (const name of listDir(nvidia)) candidates.push(path.join(nvidia, name, 'lib'));
  }
  return [...new Set(candidates.map((candidate) => path.resolve(candidate)))].filter((candidate) => listDir(candidate).some((name) => CUDA_LIBRARY_FILE.test(name)));
}

/** nvidia-*.whl files directly in `folder`. */
export function cudaWheelsIn(folder: string): string[] {
  return listDir(folder)
    .filter((name) => /^nvidia_.*\.whl$/.test(name))
    .map((name) => path.join(folder, name));
}

export interface CudaScan {
  /** Library file name -> the folder it was found in ('' when the loader cache has it). */
  found: Map<string, string>;
  missing: CudaLibrary[];
  /** For a missing library, the other major versions that are there (libcudart.so.11.0 where .so.12 is needed). */
  otherVersions: Map<string, string[]>;
  /** Library file name -> version, where it can be told (see versionOf). */
  versions: Record<string, string>;
}

/**
 * Looks for every required library in `folders`, in order, then (when
 * `loaderCache` is given) in the system's loader cache.
 */
export function scanCudaLibraries(folders: readonly string[], loaderCache?: ReadonlyMap<string, string>): CudaScan {
  const scan: CudaScan = { found: new Map(), missing: [], otherVersions: new Map(), versions: {} };
  for (const library of REQUIRED_CUDA_LIBRARIES) {
    const candidates = folders.filter((candidate) => existsSync(path.join(candidate, library.file)));
    const foreign = candidates.map((candidate) => otherCudaPackage(candidate, library)).filter((name): name is string => Boolean(name));
    const folder = candidates.find((candidate) => !otherCudaPackage(candidate, library));
    const cached = loaderCache?.get(library.file);
    if (folder !== undefined) scan.found.set(library.file, folder);
    else if (cached) scan.found.set(library.file, '');
    else {
      scan.missing.push(library);
      const stem = library.file.replace(/\.so\.\d+$/, '.so.');
      const others = new Set<string>(foreign);
      for (const candidate of folders) for (const name of listDir(candidate)) if (name.startsWith(stem) && name !== library.file) others.add(name);
      for (const name of loaderCache?.keys() ?? []) if (name.startsWith(stem)) others.add(name);
      if (others.size > 0) scan.otherVersions.set(library.file, [...others].sort());
      continue;
    }
    const version = versionOf(folder !== undefined ? path.join(folder, library.file) : (cached as string), library);
    if (version) scan.versions[library.file] = version;
  }
  return scan;
}

/**
 * For a library in a Python environment's nvidia/<package>/lib: the package
 * that put it there when that package is built for another CUDA than 12
 * (nvidia-cudnn-cu13, or the unsuffixed names NVIDIA uses since CUDA 13,
 * such as nvidia-cusparse 12.7), e.g. "nvidia-cudnn-cu13 9.26.0.51 (for
 * another CUDA)". Some keep the CUDA 12 file name (libcudnn.so.9,
 * libcusparse.so.12) but not its ABI. Undefined otherwise.
 */
function otherCudaPackage(folder: string, library: CudaLibrary): string | undefined {
  if (path.basename(folder) !== 'lib' || path.basename(path.dirname(path.dirname(folder))) !== 'nvidia') return undefined;
  const base = library.pipName.replace(/-cu12$/, '').replace(/-/g, '_');
  const distInfos = listDir(path.resolve(folder, '..', '..', '..')).filter((name) => name.endsWith('.dist-info') && (name.startsWith(`${base}-`) || name.startsWith(`${base}_cu`)));
  if (distInfos.length === 0 || distInfos.some((name) => name.startsWith(`${base}_cu12-`))) return undefined;
  return `${distInfos[0].replace(/\.dist-info$/, '').replace(/_/g, '-').replace(/-(\d[^-]*)$/, ' $1')} (for another CUDA)`;
}

/**
 * The version of one library file, from (in order) the name of the file its
 * soname link points to (libcudart.so.12 -> libcudart.so.12.5.82, as CUDA
 * toolkits install them), the nvidia-* package's dist-info next to its
 * `nvidia` folder (the wheels ship bare sonames), or cudnn_version.h.
 */
export function versionOf(file: string, library: CudaLibrary): string | undefined {
  let real: string;
  try {
    real = realpathSync(file);
  } catch {
    return undefined;
  }
  const realName = path.basename(real);
  const suffix = realName.slice(library.file.length);
  if (realName.startsWith(library.file) && /^(\.\d+)+$/.test(suffix)) return `${/\.so\.(\d+)$/.exec(library.file)?.[1]}${suffix}`;
  // site-packages/nvidia/<folder>/lib/<file>: the package's dist-info is in site-packages.
  const sitePackages = path.resolve(path.dirname(real), '..', '..', '..');
  const prefix = `${library.pipName.replace(/-/g, '_')}-`;
  const distInfo = listDir(sitePackages).find((name) => name.startsWith(prefix) && name.endsWith('.dist-info'));
  if (distInfo) return distInfo.slice(prefix.length, -'.dist-info'.length);
  if (library.folder === 'cudnn') {
    for (const header of [path.resolve(path.dirname(real), '..', 'include', 'cudnn_version.h'), '/usr/include/cudnn_version.h', '/usr/include/x86_64-linux-gnu/cudnn_version.h']) {
      const text = readText(header);
      const part = (name: string) => new RegExp(`#define CUDNN_${name}\\s+(\\d+)`).exec(text ?? '')?.[1];
      if (part('MAJOR')) return `${part('MAJOR')}.${part('MINOR')}.${part('PATCHLEVEL')}`;
    }
  }
  return undefined;
}

/** What the system's dynamic loader finds without any path: `ldconfig -p`, file name -> path (x86-64 entries). */
export function readLoaderCache(): Map<string, string> {
  const cache = new Map<string, string>();
  for (const ldconfig of ['ldconfig', '/sbin/ldconfig', '/usr/sbin/ldconfig']) {
    const result = spawnSync(ldconfig, ['-p'], { encoding: 'utf8' });
    if (result.status !== 0) continue;
    for (const line of result.stdout.split('\n')) {
      const match = /^\s*(\S+)\s+\(([^)]*)\)\s+=>\s+(\S+)/.exec(line);
      if (match && match[2].includes('x86-64') && !cache.has(match[1])) cache.set(match[1], match[3]);
    }
    break;
  }
  return cache;
}

/** A one-line account of a scan: what is there (with versions), what is missing and why. */
export function describeCudaScan(scan: CudaScan): string {
  const found = REQUIRED_CUDA_LIBRARIES.filter((library) => scan.found.has(library.file)).map((library) => `${library.name} ${scan.versions[library.file] ?? '(version unknown)'}`);
  const missing = scan.missing.map((library) => {
    const others = scan.otherVersions.get(library.file);
    return others ? `${library.file} (${library.name}; found only ${others.join(', ')})` : `${library.file} (${library.name})`;
  });
  return [
    found.length ? `found ${found.join(', ')}` : '',
    missing.length ? `missing ${missing.join(', ')}` : '',
    scan.otherVersions.size ? 'TensorFlow 2.21 needs CUDA 12 and cuDNN 9 for CUDA 12' : '',
  ]
    .filter(Boolean)
    .join('; ');
}

function listDir(folder: string): string[] {
  try {
    return readdirSync(folder);
  } catch {
    return [];
  }
}

function readText(file: string): string | undefined {
  try {
    return readFileSync(file, 'utf8');
  } catch {
    return undefined;
  }
}

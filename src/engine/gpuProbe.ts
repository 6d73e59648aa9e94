/**
 * Whether the GPU can be used, and if not, exactly why: the NVIDIA driver
 * (kernel module and libcuda.so.1), the CUDA libraries the GPU engine was set
 * up with, and what TensorFlow itself says when it starts.
 *
 * TensorFlow explains why it registers no GPU only in its log, on stderr of
 * the process that loads it (at TF_CPP_MIN_LOG_LEVEL=0, some of it only at
 * verbosity 1). So the engine is
 * loaded once in a short child process (`probeEngine`), whose log is read
 * here: the device it created (name, memory, compute capability) or the
 * reason (no driver, libraries missing, wrong cuDNN, driver too old, out of
 * memory). The process that trains then loads the engine knowing the answer.
 */
import { spawn, spawnSync } from 'node:child_process';
import { existsSync, readFileSync } from 'node:fs';
import * as path from 'node:path';
import { describeCudaScan, MINIMUM_DRIVER_MAJOR, readLoaderCache, scanCudaLibraries, type CudaScan } from './cudaLibraries';
import { type EngineManifest, engineRoot, readActiveEngine } from './engineLayout';
import { childEnvironment } from './gpuEnvironment';

/** Where the NVIDIA kernel module reports its version. */
export const DRIVER_VERSION_FILE = '/proc/driver/nvidia/version';
/** The driver's user-space library, which CUDA opens first. */
const LIBCUDA = 'libcuda.so.1';
/** Folders the dynamic loader searches even when they are not in its cache. */
const DEFAULT_LIBRARY_FOLDERS = ['/lib/x86_64-linux-gnu', '/usr/lib/x86_64-linux-gnu', '/lib64', '/usr/lib64', '/lib', '/usr/lib'];

export interface DriverCheck {
  /** Kernel module loaded and libcuda.so.1 where the loader finds it. */
  present: boolean;
  /** The kernel module's version, e.g. 550.54.15. */
  version?: string;
  libcuda?: string;
  /** GPUs as nvidia-smi lists them, when it is installed. */
  smi?: Array<{ name: string; memoryMiB: number }>;
  /** One line per thing looked at, with what was found. */
  evidence: string[];
  /** Why the driver cannot run CUDA 12, when it cannot. */
  problem?: { kind: 'no-driver' | 'driver-too-old'; text: string };
}

/** Reads what the system says about an NVIDIA driver. Never throws. */
export function checkNvidiaDriver(env: NodeJS.ProcessEnv = process.env, loaderCache: ReadonlyMap<string, string> = readLoaderCache(), versionFile = DRIVER_VERSION_FILE): DriverCheck {
  const evidence: string[] = [];
  let version: string | undefined;
  if (existsSync(versionFile)) {
    const text = readFileSync(versionFile, 'utf8');
    version = /Kernel Module(?: for \w+)?\s+(\d+(?:\.\d+)+)/.exec(text)?.[1] ?? /\b(\d{3}\.\d+(?:\.\d+)?)\b/.exec(text)?.[1];
    evidence.push(`${versionFile}: ${text.split('\n')[0].trim()}`);
  } else {
    evidence.push(`${versionFile} does not exist (no NVIDIA kernel module is loaded)`);
  }
  const searchPath = (env.LD_LIBRARY_PATH ?? '').split(path.delimiter).filter(Boolean);
  const libcuda = searchPath.map((folder) => path.join(folder, LIBCUDA)).find(existsSync) ?? loaderCache.get(LIBCUDA) ?? DEFAULT_LIBRARY_FOLDERS.map((folder) => path.join(folder, LIBCUDA)).find(existsSync);
  evidence.push(libcuda ? `${LIBCUDA}: ${libcuda}` : `${LIBCUDA} is not in the loader cache (ldconfig -p), LD_LIBRARY_PATH or ${DEFAULT_LIBRARY_FOLDERS.join(', ')}`);
  const smi = nvidiaSmi();
  if (smi) evidence.push(`nvidia-smi: ${smi.map((gpu) => `${gpu.name} (${gpu.memoryMiB} MiB)`).join(', ') || 'no GPU listed'}`);
  let problem: DriverCheck['problem'];
  if (!version && !libcuda) problem = { kind: 'no-driver', text: 'no NVIDIA driver' };
  else if (!version) problem = { kind: 'no-driver', text: `${LIBCUDA} is installed but the NVIDIA kernel module is not loaded` };
  else if (!libcuda) problem = { kind: 'no-driver', text: `the NVIDIA kernel module ${version} is loaded but the driver's ${LIBCUDA} is not where the loader looks` };
  else if (Number(version.split('.')[0]) < MINIMUM_DRIVER_MAJOR) problem = { kind: 'driver-too-old', text: `NVIDIA driver ${version} is older than CUDA 12 needs (${MINIMUM_DRIVER_MAJOR} or newer)` };
  return { present: Boolean(version && libcuda), version, libcuda, smi, evidence, problem };
}

/** `nvidia-smi`'s GPU list, or undefined when it is not installed or fails. */
function nvidiaSmi(): DriverCheck['smi'] {
  const result = spawnSync('nvidia-smi', ['--query-gpu=name,memory.total', '--format=csv,noheader,nounits'], { encoding: 'utf8', timeout: 20_000 });
  if (result.status !== 0 || result.error) return undefined;
  return result.stdout
    .split('\n')
    .filter((line) => line.trim())
    .map((line) => {
      const [name, memory] = line.split(',').map((part) => part.trim());
      return { name, memoryMiB: Number(memory) };
    });
}

export interface GpuDevice {
  /** TensorFlow's device name, e.g. /job:localhost/replica:0/task:0/device:GPU:0. */
  tensorflowName: string;
  name: string;
  /** The memory TensorFlow may use on it. */
  memoryMiB: number;
  computeCapability?: string;
}

export type GpuProblem = 'no-driver' | 'driver-too-old' | 'libraries-missing' | 'cudnn-version' | 'no-device' | 'gpu-too-old' | 'out-of-memory' | 'cuda-error' | 'no-gpu-engine' | 'not-registered';

export interface GpuLogReading {
  devices: GpuDevice[];
  /** Why no device was created (absent when one was). */
  problem?: GpuProblem;
  reason?: string;
}

const CREATED_DEVICE = /Created device (\S+) with (\d+) MB memory:\s*->\s*device: \d+, name: (.+?), pci bus id: [^,\n]+(?:, compute capability: (\S+))?/g;
const COULD_NOT_LOAD = /Could not load dynamic library '([^']+)'; dlerror: ([^;\n]+)/g;

/**
 * Reads TensorFlow's start-up log (TF_CPP_MIN_LOG_LEVEL=0): the GPU devices
 * it created, or the most specific reason it gives for creating none.
 */
export function readGpuLog(log: string): GpuLogReading {
  const devices = [...log.matchAll(CREATED_DEVICE)].map((match) => ({ tensorflowName: match[1], memoryMiB: Number(match[2]), name: match[3].trim(), computeCapability: match[4] }));
  if (devices.length > 0) return { devices };
  const quote = (pattern: RegExp) => pattern.exec(log)?.[0].trim();
  const unloadable = [...log.matchAll(COULD_NOT_LOAD)].filter((match) => match[1] !== LIBCUDA).map((match) => `${match[1]} (${match[2].trim()})`);
  const driverMissing = quote(/kernel driver does not appear to be running on this host[^\n]*/);
  if (driverMissing) return { devices, problem: 'no-driver', reason: `no NVIDIA driver (TensorFlow: "${driverMissing}")` };
  const cuInit = quote(/failed call to cuInit:[^\n]*/);
  if (cuInit && /CUDA_ERROR_NO_DEVICE/.test(cuInit)) return { devices, problem: 'no-device', reason: `CUDA sees no GPU (TensorFlow: "${cuInit}"); check CUDA_VISIBLE_DEVICES and that the GPU is not reserved for another container` };
  if (cuInit && /CUDA_ERROR_OUT_OF_MEMORY/.test(cuInit)) return { devices, problem: 'out-of-memory', reason: `the GPU has no memory left to start CUDA (TensorFlow: "${cuInit}"); other processes hold it (see nvidia-smi)` };
  if (cuInit && /SYSTEM_DRIVER_MISMATCH|COMPAT_NOT_SUPPORTED|INSUFFICIENT_DRIVER|driver version is insufficient/i.test(cuInit)) {
    return { devices, problem: 'driver-too-old', reason: `the NVIDIA driver cannot run CUDA 12 (TensorFlow: "${cuInit}"); install driver ${MINIMUM_DRIVER_MAJOR} or newer` };
  }
  if (unloadable.length > 0 || /Could not find cuda drivers on your machine/.test(log)) {
    const named = unloadable.length > 0 ? unloadable.join(', ') : 'libcudart.so.12 (the CUDA runtime; TensorFlow words this "Could not find cuda drivers on your machine")';
    return { devices, problem: 'libraries-missing', reason: `TensorFlow could not load CUDA libraries: ${named}` };
  }
  const cudnn = /Loaded runtime CuDNN library: (\S+) but source was compiled with: ([\d.]+)/.exec(log);
  if (cudnn) return { devices, problem: 'cudnn-version', reason: `cuDNN ${cudnn[1]} is older than the ${cudnn[2]} TensorFlow was built with; use cuDNN 9.3 or a newer 9.x` };
  const tooOld = quote(/Ignoring visible gpu device[^\n]*/);
  if (tooOld) return { devices, problem: 'gpu-too-old', reason: `TensorFlow does not support this GPU ("${tooOld}")` };
  if (/out of memory|CUDA_ERROR_OUT_OF_MEMORY/i.test(log)) return { devices, problem: 'out-of-memory', reason: `the GPU ran out of memory while TensorFlow started (${quote(/[^\n]*(out of memory|CUDA_ERROR_OUT_OF_MEMORY)[^\n]*/i)}); other processes hold it (see nvidia-smi)` };
  if (cuInit) return { devices, problem: 'cuda-error', reason: `CUDA could not start (TensorFlow: "${cuInit}")` };
  const lastProblem = log.split('\n').filter((line) => /^[EW]\d{4}/.test(line)).pop();
  return { devices, problem: 'not-registered', reason: `TensorFlow registered no GPU${lastProblem ? ` (last warning: "${lastProblem.replace(/^\S+\s+\S+\s+\d+\s+/, '')}")` : ''}` };
}

export interface EngineProbe {
  /** TF_Version() of the loaded library, when the addon loaded. */
  tensorflowVersion?: string;
  /** What the addon itself reports: it runs every op on the first GPU when TensorFlow registered one. */
  usingGpu: boolean;
  /** TensorFlow's own log, and anything else the process printed. */
  log: string;
  exitCode: number | null;
}

/**
 * Loads an engine's addon in a separate Node process, with every symbol bound
 * at once (LD_BIND_NOW: a missing C API function fails here, not mid-training)
 * and TensorFlow's full log, and reports what it found.
 */
export function probeEngine(addon: string, env: NodeJS.ProcessEnv, node: { command: string; env: NodeJS.ProcessEnv } = { command: process.execPath, env: {} }): Promise<EngineProbe> {
  const script = `const b = require(${JSON.stringify(addon)}); process.stdout.write('PROBE ' + JSON.stringify({ tf: b.TF_Version, gpu: b.isUsingGpuDevice() }) + '\\n');`;
  return new Promise((resolve) => {
    // The libraries TensorFlow fails to open, and its driver diagnosis, are logged at verbosity 1 of these two files only.
    const logging = { TF_CPP_MIN_LOG_LEVEL: '0', TF_CPP_VMODULE: 'dso_loader=1,cuda_diagnostics=1' };
    const child = spawn(node.command, ['-e', script], { env: { ...env, ...node.env, ...logging, LD_BIND_NOW: '1' }, stdio: ['ignore', 'pipe', 'pipe'] });
    let log = '';
    let stdout = '';
    child.stdout.on('data', (chunk: Buffer) => (stdout += chunk.toString()));
    child.stderr.on('data', (chunk: Buffer) => (log += chunk.toString()));
    child.on('error', (error) => resolve({ usingGpu: false, log: `${log}${error.message}`, exitCode: null }));
    child.on('close', (code) => {
      const line = stdout.split('\n').find((text) => text.startsWith('PROBE '));
      const result = line ? (JSON.parse(line.slice(6)) as { tf: string; gpu: boolean }) : undefined;
      resolve({ tensorflowVersion: result?.tf, usingGpu: result?.gpu ?? false, log: `${log}${stdout.replace(/^PROBE .*\n?/m, '')}`, exitCode: code });
    });
  });
}

export interface GpuInspection {
  /** Whether training and classification would run on the GPU. */
  usable: boolean;
  driver: DriverCheck;
  /** The GPU engine, when one is set up. */
  engine?: { engineDir: string; manifest: EngineManifest };
  /** Its CUDA libraries, looked for again now. */
  cuda?: CudaScan;
  /** TensorFlow's own answer, when the engine was loaded to ask it. */
  probe?: EngineProbe;
  devices: GpuDevice[];
  problem?: GpuProblem;
  /** Exactly why the GPU is not used (absent when it is). */
  reason?: string;
}

/**
 * Everything that decides whether the GPU is used, in the order that
 * decides it: a GPU engine set up, a driver, the CUDA libraries, and
 * TensorFlow's own start-up. `probe: 'always'` loads the engine in a child
 * process even without a driver, to show TensorFlow's own words (status);
 * `'when-driver'` only when a driver is there (training start).
 */
export async function inspectGpu(options: { root?: string; env?: NodeJS.ProcessEnv; probe: 'always' | 'when-driver'; loaderCache?: ReadonlyMap<string, string>; driverVersionFile?: string }): Promise<GpuInspection> {
  const env = options.env ?? process.env;
  const root = options.root || engineRoot(env);
  const loaderCache = options.loaderCache ?? readLoaderCache();
  const driver = checkNvidiaDriver(env, loaderCache, options.driverVersionFile);
  const gpu = readActiveEngine(root, 'gpu');
  const inspection: GpuInspection = { usable: false, driver, devices: [] };
  const why = (problem: GpuProblem, reason: string) => Object.assign(inspection, { problem: inspection.problem ?? problem, reason: inspection.reason ?? reason });
  if (driver.problem) why(driver.problem.kind, `${driver.problem.text}: ${driver.evidence.join('; ')}`);
  if (!gpu.ok) why('no-gpu-engine', `${gpu.reason}; set it up with: cellfinder-retrain engine setup --gpu`);
  if (!gpu.ok) return inspection;
  inspection.engine = { engineDir: gpu.engineDir, manifest: gpu.manifest };
  const cuda = gpu.manifest.cuda;
  inspection.cuda = scanCudaLibraries(cuda?.libraryPath ?? [], loaderCache);
  if (inspection.cuda.missing.length > 0) why('libraries-missing', `the GPU engine's CUDA libraries are incomplete (${describeCudaScan(inspection.cuda)}); set it up again with: cellfinder-retrain engine setup --gpu --force`);
  if (options.probe === 'always' || !inspection.reason) {
    const probeEnv = childEnvironment(env, 'gpu', root);
    probeEnv.TF_FORCE_GPU_ALLOW_GROWTH ??= 'true';
    inspection.probe = await probeEngine(path.join(gpu.engineDir, gpu.manifest.addon), probeEnv);
    const reading = readGpuLog(inspection.probe.log);
    inspection.devices = reading.devices;
    if (inspection.probe.tensorflowVersion === undefined) why('cuda-error', `the GPU engine in ${gpu.engineDir} does not load: ${lastLines(inspection.probe.log)}; set it up again with: cellfinder-retrain engine setup --gpu --force`);
    else if (!inspection.probe.usingGpu) why(reading.problem ?? 'not-registered', reading.reason ?? 'TensorFlow registered no GPU');
  }
  inspection.usable = !inspection.reason && inspection.probe?.usingGpu === true;
  return inspection;
}

function lastLines(text: string): string {
  return text
    .split('\n')
    .map((line) => line.trim())
    .filter(Boolean)
    .slice(-2)
    .join(' | ');
}

/**
 * `cellfinder-retrain engine setup`: puts the native TensorFlow engine
 * (tfjs-node 4.22's N-API addon on TensorFlow's C library) into a cache
 * folder, without ever contacting storage.googleapis.com or nodejs.org. Only
 * the npm registry (for tfjs-node's JavaScript, unless its tarballs are
 * given) and the Python package index (for the TensorFlow wheel, unless one
 * is given or installed) are used; with the wheel and tarballs given it runs
 * offline.
 *
 * Steps, each reported through `onProgress`:
 *   1. check:      the addon the package ships (prebuilds/linux-x64, see shippedAddon.ts)
 *                  fits this version; if not (or `compile`), python3, a C++ compiler, make
 *                  and node-gyp are there. Python and pip only when downloading.
 *   2. tfjs-node:  `npm pack @tensorflow/tfjs-node@4.22.0` (+ google-protobuf) or the given
 *                  tarballs, integrity-checked, unpacked; our batch-norm kernels
 *                  (native/cellfinder_kernels.cc) added to its binding's sources
 *   3. tensorflow: the wheel (given, or `pip download`ed, hash-pinned) or an installed
 *                  Python TensorFlow; its two shared libraries (stripped of their static
 *                  symbol tables when `strip` is there: 850 -> 635 MB) and the ~16 C API
 *                  headers the addon includes go to tfjs-node/deps/, where its binding.gyp looks
 *   4. build:      the shipped addon is copied in; otherwise, or when it does not load
 *                  with this TensorFlow, node-gyp compiles it (N-API 8, offline) against
 *                  the local Node headers, or node-api-headers from npm where there are
 *                  none (VS Code's Electron, distributions' node packages)
 *   5. verify:     a separate Node process loads the addon with all symbols bound
 *                  (LD_BIND_NOW) and reports TensorFlow's version
 * The build happens in a temporary folder that is renamed into place at the end
 * (and removed on failure or cancellation), so an interrupted setup never leaves
 * a half engine; a lock file keeps two setups from racing. A second run finds the
 * manifest and returns at once. The downloaded wheel (274 MB) is deleted after a
 * successful build unless keepDownloads; the npm tarballs (0.3 MB) are kept.
 *
 * Disk: 635 MB for the engine (855 MB without `strip`); 1.3 GB free needed while
 * the wheel is unpacked. Time on 2 cores with the shipped addon: 3-9 s after the
 * download (pip 3-4 s at 70 MB/s), nearly all of it unpacking the libraries;
 * compiling adds 8-20 s and peaks at about 0.9 GB of memory while linking.
 *
 * `variant: 'gpu'` builds the GPU engine the same way from the `tensorflow`
 * wheel (CUDA 12 build) and @tensorflow/tfjs-node-gpu's tarball, with the same
 * shipped addon (the two tarballs' binding sources and the two wheels' C API
 * headers are identical, and the addon finds either wheel's libraries by
 * their common sonames), and first
 * finds the CUDA libraries it needs (see cudaLibraries.ts): named folders or
 * wheels, a Python environment's nvidia-* packages, the system's, or the
 * pinned nvidia-* wheels (1.5 GB download, 2.3 GB unpacked into
 * <root>/cuda/, shared by rebuilds). On a machine without an NVIDIA driver it
 * stops before doing anything unless `skipDriverCheck`: such an engine runs,
 * on the CPU, until a driver is installed.
 *
 * No `vscode` import: the CLI and the extension both call `setupEngine`.
 */
import { spawn } from 'node:child_process';
import { createHash } from 'node:crypto';
import { createReadStream, existsSync, promises as fs, realpathSync, statSync } from 'node:fs';
import { homedir } from 'node:os';
import * as path from 'node:path';
import { cudaFoldersIn, cudaWheelsIn, describeCudaScan, PINNED_CUDA_WHEELS, type PinnedWheel, readLoaderCache, REQUIRED_CUDA_LIBRARIES, scanCudaLibraries } from './cudaLibraries';
import {
  ACTIVE_FILE,
  ACTIVE_KEY,
  type CudaLibrarySet,
  type EngineManifest,
  engineFolderName,
  engineRoot,
  type EngineVariant,
  GOOGLE_PROTOBUF_INTEGRITY,
  GOOGLE_PROTOBUF_VERSION,
  KERNELS_SOURCE_NAME,
  kernelsSourceFile,
  MANIFEST_FILE,
  NAPI_BUILD_VERSION,
  PINNED_WHEELS,
  readActiveEngine,
  readActiveFile,
  readEngine,
  SHIPPED_ADDON_FILE,
  SHIPPED_ADDON_STAMP,
  shippedAddonFolder,
  type ShippedAddonStamp,
  TF_LIBRARIES,
  TFJS_NODE_PACKAGES,
  TFJS_NODE_VERSION,
} from './engineLayout';
import { checkNvidiaDriver, type GpuLogReading, probeEngine, readGpuLog } from './gpuProbe';
import { copyHeaders, extractCudaWheel, headerClosure, includesOf, openInstalledPackage, openWheel, type TensorFlowPackage, wheelMetadata } from './wheel';

/** Where TensorFlow's C library comes from. `auto`: a suitable installed Python TensorFlow, else download. */
export type EngineSource = 'auto' | 'download' | 'python' | 'wheel';

export type SetupStep = 'check' | 'tfjs-node' | 'tensorflow' | 'build' | 'verify' | 'done';

export interface SetupProgress {
  step: SetupStep;
  message: string;
  /** Overall completion, 0..1, never decreasing. */
  fraction: number;
}

export interface EngineSetupOptions {
  /** The CPU engine (default) or the GPU engine. */
  variant?: EngineVariant;
  source?: EngineSource;
  /** A tensorflow / tensorflow-cpu wheel file (implies source 'wheel'); for the GPU engine, a tensorflow wheel. */
  wheel?: string;
  /** GPU engine: folders with the CUDA 12 and cuDNN 9 libraries, or with nvidia-*.whl files; instead of looking for them. */
  cudaLibs?: string[];
  /** GPU engine: build it even without an NVIDIA driver (it runs on the CPU until one is installed). */
  skipDriverCheck?: boolean;
  /** The Python interpreter for pip, the TensorFlow lookup and node-gyp (default `python3`). */
  python?: string;
  /** Default: engineRoot() (CELLFINDER_RETRAIN_ENGINE_DIR or ~/.cache/cellfinder-retrain/engine). */
  root?: string;
  /** Pre-fetched npm tarballs, for machines without the npm registry. */
  tfjsNodeTarball?: string;
  googleProtobufTarball?: string;
  /** node-api-headers' tarball, for compiling without Node.js's headers and without the npm registry. */
  nodeApiHeadersTarball?: string;
  /** Compile the addon here (node-gyp and a C++ compiler) even when the package ships one that fits. */
  compile?: boolean;
  /** Rebuild even when a complete engine exists. */
  force?: boolean;
  /** Keep the downloaded wheels (270 MB; for the GPU engine 570 MB + 1.5 GB) after a successful setup. */
  keepDownloads?: boolean;
  onProgress?: (progress: SetupProgress) => void;
  /** Every line of the tools' output (pip, npm, node-gyp), for a log view. Always also written to the log file. */
  onLog?: (line: string) => void;
  signal?: AbortSignal;
  env?: NodeJS.ProcessEnv;
}

export interface EngineSetupResult {
  variant: EngineVariant;
  engineDir: string;
  alreadyInstalled: boolean;
  tensorflowVersion: string;
  source: EngineManifest['source'];
  /** GPU engine: its CUDA libraries. */
  cuda?: CudaLibrarySet;
  /** GPU engine, when built in this run: the GPU TensorFlow created, or why none. */
  gpu?: GpuLogReading & { usingGpu: boolean };
  /** Seconds per step (empty when already installed). */
  timings: Record<string, number>;
  /** Bytes downloaded in this run (wheel + npm tarballs). */
  downloadedBytes: number;
  /** Bytes the engine folder takes (hard links from a Python install counted in full). */
  diskBytes: number;
  /** The shipped addon, or one compiled in this set-up. */
  addonBuild?: EngineManifest['addonBuild'];
  logFile?: string;
}

export type SetupErrorCode =
  | 'UNSUPPORTED_PLATFORM'
  | 'NO_PYTHON'
  | 'NO_PIP'
  | 'PIP_UNREACHABLE'
  | 'PIP_FAILED'
  | 'NO_TENSORFLOW'
  | 'BAD_WHEEL'
  | 'NO_COMPILER'
  | 'NO_MAKE'
  | 'NO_NODE_GYP'
  | 'NO_NPM'
  | 'NPM_FAILED'
  | 'BUILD_FAILED'
  | 'VERIFY_FAILED'
  | 'DISK_FULL'
  | 'BUSY'
  | 'CANCELLED'
  | 'NO_GPU_DRIVER'
  | 'NO_CUDA_LIBRARIES';

/** A setup failure told as what went wrong and what the user can do; `logFile` has the tools' full output. */
export class EngineSetupError extends Error {
  constructor(
    readonly code: SetupErrorCode,
    readonly problem: string,
    readonly fix: string,
    public logFile?: string,
  ) {
    super(`${problem}. ${fix}`);
    this.name = 'EngineSetupError';
  }
}

/** Step weights for the overall progress fraction. */
const STEP_SPAN: Record<Exclude<SetupStep, 'done'>, [number, number]> = {
  check: [0, 0.02],
  'tfjs-node': [0.02, 0.06],
  tensorflow: [0.06, 0.7],
  build: [0.7, 0.95],
  verify: [0.95, 1],
};

/** Free space the setup needs on the cache's disk: wheel (274 MB) + libraries (853 MB) + margin; for the GPU engine 572 MB + 1.26 GB + margin. */
const REQUIRED_FREE_BYTES: Record<EngineVariant, number> = { cpu: 1.3e9, gpu: 2.1e9 };
/** And for the CUDA libraries when they are downloaded: 1.53 GB of wheels + 2.3 GB unpacked + margin. */
const CUDA_DOWNLOAD_FREE_BYTES = 4.2e9;

/** Sets the engine up (or finds it set up) and makes it the active one. */
export async function setupEngine(options: EngineSetupOptions = {}): Promise<EngineSetupResult> {
  const env = options.env ?? process.env;
  const root = path.resolve(options.root || engineRoot(env));
  const variant = options.variant ?? 'cpu';
  const source: EngineSource = options.wheel ? 'wheel' : (options.source ?? 'auto');
  if (source === 'wheel' && !options.wheel) throw new EngineSetupError('BAD_WHEEL', 'source "wheel" needs a wheel file', 'Pass the path of a tensorflow or tensorflow-cpu .whl file');
  const setup = new Setup(root, options, env, variant);

  if (process.platform !== 'linux' || process.arch !== 'x64') {
    throw new EngineSetupError(
      'UNSUPPORTED_PLATFORM',
      `the native engine is built for Linux x86-64 only; this is ${process.platform}-${process.arch}`,
      'Training still works with the built-in JavaScript engine, only slower',
    );
  }
  if (variant === 'gpu' && !options.skipDriverCheck) {
    const driver = checkNvidiaDriver(env);
    if (driver.problem) {
      throw new EngineSetupError(
        'NO_GPU_DRIVER',
        `${driver.problem.text}, so the GPU engine could not use a GPU here (${driver.evidence.join('; ')})`,
        driver.problem.kind === 'driver-too-old'
          ? 'Update the NVIDIA driver, then run the setup again; or add --skip-driver-check to build it now'
          : 'Install the NVIDIA driver (525 or newer), then run the setup again; or add --skip-driver-check to build the GPU engine now (it runs on the CPU until a driver is present)',
      );
    }
  }
  // Nothing to do when the wanted engine is already complete.
  if (!options.force) {
    const active = readActiveEngine(root, variant);
    if (active.ok && (source === 'auto' || (source === 'download' && active.manifest.tensorflowVersion === PINNED_WHEELS[variant].version))) {
      return setup.installedResult(active.engineDir, active.manifest);
    }
  }
  await fs.mkdir(root, { recursive: true });
  await setup.openLog();
  const release = await acquireLock(root);
  try {
    return await setup.run(source);
  } catch (error) {
    // A failed or cancelled build leaves no half engine (up to 600 MB) behind; downloads stay for the next run.
    if (setup.workDir) await fs.rm(setup.workDir, { recursive: true, force: true }).catch(() => undefined);
    if (error instanceof EngineSetupError) {
      error.logFile ??= setup.logFile;
      throw error;
    }
    if (options.signal?.aborted) throw new EngineSetupError('CANCELLED', 'the engine setup was cancelled', 'Run it again to continue; finished downloads are reused', setup.logFile);
    const code = (error as NodeJS.ErrnoException)?.code;
    if (code === 'ENOSPC' || code === 'EDQUOT') throw new EngineSetupError('DISK_FULL', `the disk holding ${root} is full`, 'Free about 1.3 GB there, or set CELLFINDER_RETRAIN_ENGINE_DIR to a folder on a larger disk', setup.logFile);
    throw error;
  } finally {
    await release();
    await setup.closeLog();
  }
}

/** Where a tool's output goes and how far along we are. */
class Setup {
  logFile?: string;
  /** The temporary build folder while it exists. */
  workDir?: string;
  private log?: fs.FileHandle;
  private fraction = 0;
  private readonly timings: Record<string, number> = {};
  private downloadedBytes = 0;

  constructor(
    readonly root: string,
    readonly options: EngineSetupOptions,
    readonly env: NodeJS.ProcessEnv,
    readonly variant: EngineVariant,
  ) {}

  async openLog(): Promise<void> {
    const logs = path.join(this.root, 'logs');
    await fs.mkdir(logs, { recursive: true });
    // Keep the last few setups' logs.
    const old = (await fs.readdir(logs)).filter((name) => /^setup-.*\.log$/.test(name)).sort();
    for (const name of old.slice(0, Math.max(0, old.length - 4))) await fs.rm(path.join(logs, name), { force: true });
    this.logFile = path.join(logs, `setup-${new Date().toISOString().replace(/[:.]/g, '-')}.log`);
    this.log = await fs.open(this.logFile, 'a');
  }

  async closeLog(): Promise<void> {
    await this.log?.close();
    this.log = undefined;
  }

  line(text: string): void {
    this.options.onLog?.(text);
    void this.log?.write(`${text}\n`);
  }

  progress(step: SetupStep, message: string, within = 0): void {
    const [start, end] = step === 'done' ? [1, 1] : STEP_SPAN[step];
    this.fraction = Math.max(this.fraction, start + (end - start) * Math.min(1, Math.max(0, within)));
    this.line(`[${step}] ${message}`);
    this.options.onProgress?.({ step, message, fraction: this.fraction });
  }

  checkCancelled(): void {
    if (this.options.signal?.aborted) throw new EngineSetupError('CANCELLED', 'the engine setup was cancelled', 'Run it again to continue; finished downloads are reused');
  }

  async time<T>(name: string, work: () => Promise<T>): Promise<T> {
    const start = performance.now();
    try {
      return await work();
    } finally {
      this.timings[name] = Math.round((performance.now() - start) / 10) / 100;
    }
  }

  installedResult(engineDir: string, manifest: EngineManifest): EngineSetupResult {
    this.options.onProgress?.({ step: 'done', message: `${this.variant === 'gpu' ? 'GPU' : 'native'} engine already set up (TensorFlow ${manifest.tensorflowVersion})`, fraction: 1 });
    return { variant: this.variant, engineDir, alreadyInstalled: true, tensorflowVersion: manifest.tensorflowVersion, source: manifest.source, cuda: manifest.cuda, timings: {}, downloadedBytes: 0, diskBytes: manifest.diskBytes, addonBuild: manifest.addonBuild };
  }

  /** Runs a tool, streaming its output lines to the log; never rejects on a non-zero exit. */
  exec(command: string, args: string[], opts: { cwd?: string; env?: NodeJS.ProcessEnv; onLine?: (line: string) => void } = {}): Promise<{ code: number; output: string; missing: boolean }> {
    this.line(`$ ${command} ${args.join(' ')}`);
    return new Promise((resolve, reject) => {
      const child = spawn(command, args, { cwd: opts.cwd, env: opts.env ?? this.env, stdio: ['ignore', 'pipe', 'pipe'], signal: this.options.signal });
      let output = '';
      let pending = '';
      const take = (chunk: Buffer) => {
        const text = chunk.toString('utf8');
        output += text;
        pending += text;
        const lines = pending.split(/\r?\n|\r/);
        pending = lines.pop() ?? '';
        for (const line of lines) {
          this.line(line);
          opts.onLine?.(line);
        }
      };
      child.stdout.on('data', take);
      child.stderr.on('data', take);
      child.on('error', (error: NodeJS.ErrnoException) => {
        if (error.code === 'ENOENT') resolve({ code: -1, output: '', missing: true });
        else if (error.name === 'AbortError') reject(new EngineSetupError('CANCELLED', 'the engine setup was cancelled', 'Run it again to continue; finished downloads are reused'));
        else reject(error);
      });
      child.on('close', (code) => {
        if (pending) this.line(pending);
        resolve({ code: code ?? -1, output, missing: false });
      });
    });
  }

  async run(requested: EngineSource): Promise<EngineSetupResult> {
    const started = performance.now();
    const gpu = this.variant === 'gpu';
    const pinned = PINNED_WHEELS[this.variant];
    const python = this.options.python ?? 'python3';
    // A given wheel is checked first: a wrong path should not wait for the tool checks.
    const givenWheel = requested === 'wheel' ? path.resolve(this.options.wheel as string) : undefined;
    const givenVersion = givenWheel ? (await this.inspectWheel(givenWheel)).version : undefined;
    this.progress('check', 'looking for the shipped TensorFlow addon');
    const shipped = this.options.compile ? undefined : await this.findShippedAddon();
    // Without a shipped addon the build tools are needed: checked before any download.
    let tools = shipped ? undefined : await this.time('check', () => this.checkBuildTools(python));
    this.checkCancelled();

    // Decide the source and learn the TensorFlow version (it names the engine folder).
    let source = requested;
    let installed: PythonTensorFlow | undefined;
    let pythonEnvironment: PythonTensorFlow | undefined;
    if (source === 'auto' || source === 'python' || gpu) {
      pythonEnvironment = await this.findPythonTensorFlow(python);
      // The GPU engine needs TensorFlow's CUDA build: `tensorflow`, not `tensorflow-cpu`.
      installed = pythonEnvironment?.version && (!gpu || pythonEnvironment.cudaBuild) ? pythonEnvironment : undefined;
    }
    if (source === 'python' && !installed) {
      throw new EngineSetupError(
        'NO_TENSORFLOW',
        pythonEnvironment?.version && gpu
          ? `${python}'s TensorFlow ${pythonEnvironment.version} (${pythonEnvironment.sitePackages}) is a CPU-only build (${pythonEnvironment.distribution})`
          : `${python} has no TensorFlow with its C library (tensorflow/libtensorflow_cc.so.2)`,
        gpu ? 'Install the CUDA build (pip install "tensorflow[and-cuda]"), pass --python for another interpreter, or use the default download' : 'Install it (pip install tensorflow-cpu), pass --python for another interpreter, or use the default download',
      );
    }
    if (source === 'auto') source = installed?.version && isTestedVersion(installed.version) ? 'python' : 'download';
    if (source === 'download') await this.checkPip(python, [pinned], path.join(this.root, 'downloads'));
    let wheelFile: string | undefined;
    let tfVersion: string;
    if (source === 'wheel') {
      wheelFile = givenWheel;
      tfVersion = givenVersion as string;
    } else if (source === 'python') {
      tfVersion = (installed as PythonTensorFlow).version as string;
    } else {
      tfVersion = pinned.version;
    }
    const folder = engineFolderName(tfVersion, this.variant);
    const engineDir = path.join(this.root, folder);
    const existing = readEngine(engineDir);
    if (existing.ok && !this.options.force) {
      await writeActive(this.root, this.variant, folder);
      return this.installedResult(engineDir, existing.manifest);
    }
    // Where the CUDA libraries come from is settled before any large download.
    const cudaPlan = gpu ? this.planCudaLibraries(pythonEnvironment) : undefined;
    // A Python install is hard-linked (no space); a given wheel needs no download space.
    const required = REQUIRED_FREE_BYTES[this.variant];
    await this.checkDiskSpace((source === 'python' ? 0.1e9 : source === 'wheel' ? required - pinned.bytes : required) + (cudaPlan?.download ? CUDA_DOWNLOAD_FREE_BYTES : 0));

    // Build in a private folder, renamed into place when complete.
    const work = path.join(this.root, `.partial-${folder}`);
    this.workDir = work;
    await fs.rm(work, { recursive: true, force: true });
    await fs.mkdir(work, { recursive: true });
    const packageDir = path.join(work, 'tfjs-node');
    const downloads = path.join(this.root, 'downloads');
    await fs.mkdir(downloads, { recursive: true });

    await this.time('tfjsNode', () => this.fetchTfjsNode(downloads, packageDir));
    await addOwnKernels(packageDir);
    this.checkCancelled();

    let sourceInfo: EngineManifest['source'];
    let pkg: TensorFlowPackage;
    if (source === 'python') {
      const sitePackages = (installed as PythonTensorFlow).sitePackages;
      pkg = await openInstalledPackage(sitePackages);
      sourceInfo = { kind: 'python', from: path.join(sitePackages, 'tensorflow') };
    } else {
      if (source === 'download') wheelFile = (await this.time('download', () => this.downloadPinned([pinned], downloads)))[0];
      pkg = await openWheel(wheelFile as string);
      sourceInfo = { kind: source === 'download' ? 'download' : 'wheel', from: wheelFile as string };
    }
    await this.time('extract', () => this.installLibraries(pkg, packageDir));
    this.checkCancelled();
    const cuda = cudaPlan ? await this.time('cuda', () => this.installCudaLibraries(cudaPlan, downloads)) : undefined;
    this.checkCancelled();

    const addon = path.join(packageDir, 'lib', `napi-v${NAPI_BUILD_VERSION}`, SHIPPED_ADDON_FILE);
    let verified: Awaited<ReturnType<Setup['verify']>> | undefined;
    let addonBuild: EngineManifest['addonBuild'];
    if (shipped) {
      this.progress('build', `using the shipped TensorFlow addon (${shipped.file}, compiled for N-API ${NAPI_BUILD_VERSION} with TensorFlow ${shipped.stamp.tensorflowVersion}'s C API)`);
      await fs.mkdir(path.dirname(addon), { recursive: true });
      await fs.copyFile(shipped.file, addon);
      this.progress('build', 'shipped addon in place', 1);
      try {
        verified = await this.time('verify', () => this.verify(addon, cuda));
        addonBuild = { kind: 'shipped', from: shipped.file };
      } catch (error) {
        if (!(error instanceof EngineSetupError) || error.code !== 'VERIFY_FAILED') throw error;
        // E.g. a Python TensorFlow whose C API lacks a function the addon binds: one compiled against its own headers may load.
        this.line(`the shipped addon does not load with TensorFlow ${tfVersion} (${error.problem}); compiling one instead`);
        tools = await this.checkBuildTools(python).catch((missing: unknown) => {
          throw missing instanceof EngineSetupError ? new EngineSetupError(missing.code, `the shipped TensorFlow addon does not load here (${error.problem}), and compiling one needs what is missing: ${missing.problem}`, missing.fix) : missing;
        });
      }
    }
    if (!verified) {
      await this.time('build', () => this.build(packageDir, tools as BuildTools, python, downloads));
      this.checkCancelled();
      verified = await this.time('verify', () => this.verify(addon, cuda));
      addonBuild = { kind: 'compiled', from: (tools as BuildTools).compiler };
    }

    const manifest: EngineManifest = {
      formatVersion: 1,
      variant: this.variant,
      tfjsNodeVersion: TFJS_NODE_VERSION,
      tensorflowVersion: verified.version,
      source: sourceInfo,
      platform: process.platform,
      arch: process.arch,
      napiBuildVersion: NAPI_BUILD_VERSION,
      addon: path.posix.join('tfjs-node', 'lib', `napi-v${NAPI_BUILD_VERSION}`, 'tfjs_binding.node'),
      packageDir: 'tfjs-node',
      libraryDir: path.posix.join('tfjs-node', 'deps', 'lib'),
      cuda,
      addonBuild,
      builtAt: new Date().toISOString(),
      timings: { ...this.timings, total: Math.round((performance.now() - started) / 10) / 100 },
      diskBytes: await diskUsage(work),
    };
    await fs.writeFile(path.join(work, MANIFEST_FILE), `${JSON.stringify(manifest, null, 2)}\n`);
    // Move into place: an older build of the same versions (--force) goes first.
    if (existsSync(engineDir)) {
      const old = path.join(this.root, `.old-${folder}-${process.pid}`);
      await fs.rename(engineDir, old);
      await fs.rm(old, { recursive: true, force: true });
    }
    await fs.rename(work, engineDir);
    this.workDir = undefined;
    await writeActive(this.root, this.variant, folder);
    if (!this.options.keepDownloads) {
      for (const file of [...(source === 'download' ? [wheelFile as string] : []), ...(cudaPlan?.download ? PINNED_CUDA_WHEELS.map((w) => path.join(downloads, w.fileName)) : [])]) await fs.rm(file, { force: true });
    }
    this.progress('done', `${gpu ? 'GPU' : 'native'} engine ready: TensorFlow ${verified.version} in ${engineDir}`, 1);
    return {
      variant: this.variant,
      engineDir,
      alreadyInstalled: false,
      tensorflowVersion: verified.version,
      source: sourceInfo,
      cuda,
      gpu: gpu ? verified.gpu : undefined,
      timings: manifest.timings,
      downloadedBytes: this.downloadedBytes,
      diskBytes: manifest.diskBytes,
      addonBuild,
      logFile: this.logFile,
    };
  }

  /**
   * Where the GPU engine's CUDA libraries will come from, decided without
   * downloading: the folders (or wheels) the user named, else the Python
   * environment's nvidia-* packages or the system's loader cache when they
   * hold them all, else the pinned wheels.
   */
  private planCudaLibraries(pythonEnvironment: PythonTensorFlow | undefined): CudaPlan {
    const loaderCache = readLoaderCache();
    const given = this.options.cudaLibs?.map((folder) => path.resolve(folder));
    if (given?.length) {
      for (const folder of given) if (!existsSync(folder)) throw new EngineSetupError('NO_CUDA_LIBRARIES', `the CUDA library folder ${folder} does not exist`, 'Check the path given with --cuda-libs');
      const wheels = given.flatMap(cudaWheelsIn);
      const folders = given.flatMap(cudaFoldersIn);
      this.line(`CUDA libraries: looking in ${[...folders, ...wheels].join(', ')}`);
      if (wheels.length > 0) return { source: { kind: 'wheels', from: given.join(path.delimiter) }, wheels, folders };
      const scan = scanCudaLibraries(folders, loaderCache);
      if (scan.missing.length > 0) {
        throw new EngineSetupError(
          'NO_CUDA_LIBRARIES',
          `${given.join(', ')} lack${given.length === 1 ? 's' : ''} CUDA libraries TensorFlow needs: ${describeCudaScan(scan)}`,
          `Name the folders that hold ${REQUIRED_CUDA_LIBRARIES.map((library) => library.file).join(', ')} (a CUDA 12 toolkit's lib64, a conda environment's lib, or site-packages with nvidia-* packages), or leave --cuda-libs out to download them (1.5 GB)`,
        );
      }
      return { source: { kind: 'folder', from: given.join(path.delimiter) }, folders };
    }
    const pythonFolders = (pythonEnvironment?.nvidia ?? []).flatMap(cudaFoldersIn);
    const fromPython = scanCudaLibraries(pythonFolders, loaderCache);
    if (pythonFolders.length > 0 && fromPython.missing.length === 0) {
      this.line(`CUDA libraries from ${pythonEnvironment?.nvidia.join(', ')}: ${describeCudaScan(fromPython)}`);
      return { source: { kind: 'python', from: (pythonEnvironment?.nvidia ?? []).join(path.delimiter) }, folders: pythonFolders };
    }
    const fromSystem = scanCudaLibraries([], loaderCache);
    if (fromSystem.missing.length === 0) {
      this.line(`CUDA libraries from the system's loader cache: ${describeCudaScan(fromSystem)}`);
      return { source: { kind: 'system', from: 'ldconfig -p' }, folders: [] };
    }
    this.line(`CUDA libraries: none complete in ${pythonFolders.join(', ') || 'the Python environment'} or the loader cache (${describeCudaScan(fromSystem)}); downloading the pinned nvidia-* wheels`);
    return { source: { kind: 'download', from: 'https://pypi.org' }, download: true, folders: [] };
  }

  /** Downloads and unpacks the CUDA wheels the plan needs (into <root>/cuda/, shared by rebuilds) and checks the result. */
  private async installCudaLibraries(plan: CudaPlan, downloads: string): Promise<CudaLibrarySet> {
    let folders = plan.folders;
    const wheels = plan.download ? await this.downloadPinned(PINNED_CUDA_WHEELS, downloads) : (plan.wheels ?? []);
    if (wheels.length > 0) {
      const names = await Promise.all(wheels.map(async (file) => (await wheelMetadata(await openWheel(file)))?.version ?? path.basename(file)));
      const target = path.join(this.root, 'cuda', `nvidia-${createHash('sha256').update(wheels.map((file) => path.basename(file)).sort().join('\n')).digest('hex').slice(0, 12)}`);
      if (!existsSync(path.join(target, 'complete'))) {
        const partial = `${target}.partial`;
        await fs.rm(partial, { recursive: true, force: true });
        for (const [index, file] of wheels.entries()) {
          this.checkCancelled();
          this.progress('tensorflow', `unpacking ${path.basename(file)} (${names[index]})`, index / wheels.length);
          await extractCudaWheel(file, partial, this.options.signal);
        }
        await fs.writeFile(path.join(partial, 'complete'), `${wheels.map((file) => path.basename(file)).join('\n')}\n`);
        await fs.rm(target, { recursive: true, force: true });
        await fs.rename(partial, target);
      }
      folders = [...cudaFoldersIn(target), ...folders];
    }
    const scan = scanCudaLibraries(folders, readLoaderCache());
    if (scan.missing.length > 0) {
      throw new EngineSetupError('NO_CUDA_LIBRARIES', `the CUDA libraries are incomplete: ${describeCudaScan(scan)}`, 'Add the missing nvidia-* wheels or folders with --cuda-libs, or leave --cuda-libs out to download them');
    }
    this.line(`CUDA libraries: ${describeCudaScan(scan)}`);
    return { source: plan.source, libraryPath: folders, versions: scan.versions };
  }

  /**
   * The addon this package ships for this platform, when it fits this version
   * (tfjs-node and N-API version) and is intact; otherwise why not, in the log.
   */
  private async findShippedAddon(): Promise<{ file: string; stamp: ShippedAddonStamp } | undefined> {
    const folder = shippedAddonFolder();
    const file = path.join(folder, SHIPPED_ADDON_FILE);
    let stamp: ShippedAddonStamp;
    try {
      stamp = JSON.parse(await fs.readFile(path.join(folder, SHIPPED_ADDON_STAMP), 'utf8')) as ShippedAddonStamp;
    } catch {
      this.line(`no shipped addon for ${process.platform}-${process.arch} in ${folder}; compiling one`);
      return undefined;
    }
    if (stamp.tfjsNodeVersion !== TFJS_NODE_VERSION || stamp.napiBuildVersion !== NAPI_BUILD_VERSION) {
      this.line(`the shipped addon in ${folder} is tfjs-node ${stamp.tfjsNodeVersion} for N-API ${stamp.napiBuildVersion}, this version needs ${TFJS_NODE_VERSION} for N-API ${NAPI_BUILD_VERSION}; compiling one`);
      return undefined;
    }
    if (stamp.kernelsSha256 !== (await sha256Of(kernelsSourceFile()))) {
      this.line(`the shipped addon in ${folder} was compiled with other batch-norm kernels than this package's ${kernelsSourceFile()}; compiling one`);
      return undefined;
    }
    if (!existsSync(file) || (await sha256Of(file)) !== stamp.sha256) {
      this.line(`the shipped addon ${file} is missing or damaged (not the SHA-256 its stamp names); compiling one`);
      return undefined;
    }
    this.line(`shipped addon: ${file} (compiled with ${stamp.compiler}, glibc ${stamp.glibc}, against TensorFlow ${stamp.tensorflowVersion}'s headers)`);
    return { file, stamp };
  }

  /** Before a download: Python with pip, unless the wheels are already there. */
  private async checkPip(python: string, wheels: readonly PinnedWheel[], downloads: string): Promise<void> {
    if (wheels.every((w) => existsSync(path.join(downloads, w.fileName)) && statSync(path.join(downloads, w.fileName)).size === w.bytes)) return;
    const elsewhere = `download ${wheels.map((w) => w.fileName).join(', ')} from PyPI on another machine and pass ${wheels[0].pipName.startsWith('nvidia') ? 'their folder with --cuda-libs' : 'it with --wheel'}`;
    const py = await this.exec(python, ['--version']);
    if (py.missing || py.code !== 0) {
      throw new EngineSetupError('NO_PYTHON', `Python 3 was not found (${python}); set-up downloads TensorFlow with its pip`, `Install python3 and pip (Debian/Ubuntu: sudo apt install python3 python3-pip) or pass --python /path/to/python3; or ${elsewhere}`);
    }
    const pip = await this.exec(python, ['-m', 'pip', '--version']);
    if (pip.code !== 0) throw new EngineSetupError('NO_PIP', `pip is not available for ${python}`, `Install it (Debian/Ubuntu: sudo apt install python3-pip), or ${elsewhere}`);
  }

  /** Compiling the addon: checked before any download when there is no shipped one, else only when it does not load. */
  private async checkBuildTools(python: string): Promise<BuildTools> {
    const py = await this.exec(python, ['--version']);
    if (py.missing || py.code !== 0) {
      throw new EngineSetupError('NO_PYTHON', `Python 3 was not found (${python})`, 'Compiling the addon needs it (node-gyp runs on Python). Install python3 (Debian/Ubuntu: sudo apt install python3) or pass --python /path/to/python3');
    }
    const cxx = this.env.CXX || 'g++';
    const compiler = await this.exec(cxx, ['--version']);
    if (compiler.missing || compiler.code !== 0) {
      throw new EngineSetupError('NO_COMPILER', `no C++ compiler was found (${cxx}) to compile the TensorFlow addon`, 'Install one: Debian/Ubuntu: sudo apt install build-essential; Fedora: sudo dnf install gcc-c++ make; or set CXX');
    }
    const make = await this.exec('make', ['--version']);
    if (make.missing || make.code !== 0) {
      throw new EngineSetupError('NO_MAKE', '`make` was not found', 'Install it: Debian/Ubuntu: sudo apt install build-essential (or make); Fedora: sudo dnf install make');
    }
    const nodeGyp = await this.findNodeGyp();
    return { nodeGyp, node: nodeCommand(this.env), compiler: compiler.output.split('\n')[0].trim() };
  }

  /** node-gyp: npm ships one (npm config get node-gyp); an explicit npm_config_node_gyp wins. */
  private async findNodeGyp(): Promise<string> {
    const candidates = [this.env.npm_config_node_gyp];
    const fromNpm = await this.exec('npm', ['config', 'get', 'node-gyp']);
    if (!fromNpm.missing && fromNpm.code === 0) candidates.push(fromNpm.output.trim().split('\n').pop());
    const npmBin = which('npm', this.env);
    if (npmBin) candidates.push(path.join(path.dirname(realpathSync(npmBin)), '..', 'node_modules', 'node-gyp', 'bin', 'node-gyp.js'));
    const found = candidates.find((file) => file && file !== 'undefined' && existsSync(file));
    if (!found) {
      throw new EngineSetupError('NO_NODE_GYP', 'node-gyp was not found (npm normally ships it)', 'Install npm 7 or newer with Node.js, or set npm_config_node_gyp to node-gyp\'s bin/node-gyp.js');
    }
    return found;
  }

  private async checkDiskSpace(bytes: number): Promise<void> {
    try {
      const stats = await fs.statfs(this.root);
      const free = stats.bavail * stats.bsize;
      if (free < bytes) {
        throw new EngineSetupError(
          'DISK_FULL',
          `the engine setup needs about ${(bytes / 1e9).toFixed(1)} GB free in ${this.root}, there are ${(free / 1e9).toFixed(1)} GB`,
          'Free some space, or set CELLFINDER_RETRAIN_ENGINE_DIR to a folder on a larger disk',
        );
      }
    } catch (error) {
      if (error instanceof EngineSetupError) throw error;
      // statfs unsupported: the copy itself will tell.
    }
  }

  /**
   * An installed Python TensorFlow with its C library, and the Python
   * environment's nvidia-* packages (CUDA libraries, installed by
   * `tensorflow[and-cuda]` or by PyTorch). Looked up without importing
   * TensorFlow (slow, noisy, and it may fail on unrelated NumPy problems):
   * find_spec gives the folders, the distribution metadata the version.
   */
  private async findPythonTensorFlow(python: string): Promise<PythonTensorFlow | undefined> {
    const script = [
      'import importlib.util, importlib.metadata as m, json, os',
      'spec = importlib.util.find_spec("tensorflow")',
      'folder = os.path.dirname(spec.origin) if spec and spec.origin else None',
      'version = name = None',
      'for d in m.distributions():',
      '    try:',
      '        if "tensorflow" in (d.read_text("top_level.txt") or "").split() and str(d.metadata["Name"]).lower().startswith(("tensorflow", "tf-nightly", "tf_nightly")):',
      '            version = d.version; name = d.metadata["Name"]; break',
      '    except Exception:',
      '        pass',
      'try:',
      '    nvidia = importlib.util.find_spec("nvidia")',
      '    nvidia = list(nvidia.submodule_search_locations or []) if nvidia else []',
      'except Exception:',
      '    nvidia = []',
      'print(json.dumps({"folder": folder, "version": version, "name": name, "nvidia": nvidia}))',
    ].join('\n');
    const result = await this.exec(python, ['-c', script]);
    if (result.code !== 0) return undefined;
    try {
      const found = JSON.parse(result.output.trim().split('\n').pop() as string) as { folder: string | null; version: string | null; name: string | null; nvidia: string[] };
      const usable = found.folder && found.version && existsSync(path.join(found.folder, 'libtensorflow_cc.so.2')) && existsSync(path.join(found.folder, 'include', 'tensorflow', 'c', 'c_api.h'));
      if (usable) this.line(`found TensorFlow ${found.version} (${found.name}) in ${found.folder}`);
      if (found.nvidia.length > 0) this.line(`found nvidia-* packages in ${found.nvidia.join(', ')}`);
      return {
        sitePackages: usable ? path.dirname(found.folder as string) : '',
        version: usable ? (found.version as string) : undefined,
        distribution: found.name ?? '',
        cudaBuild: isCudaBuild(found.name ?? ''),
        nvidia: found.nvidia,
      };
    } catch {
      return undefined;
    }
  }

  private async inspectWheel(file: string): Promise<{ version: string }> {
    if (!existsSync(file)) throw new EngineSetupError('BAD_WHEEL', `the wheel ${file} does not exist`, 'Check the path');
    let wheel: Awaited<ReturnType<typeof openWheel>>;
    try {
      wheel = await openWheel(file);
    } catch (error) {
      throw new EngineSetupError('BAD_WHEEL', `${file} is not a readable wheel (${(error as Error).message})`, 'Download it again');
    }
    const missing = TF_LIBRARIES.filter((name) => !wheel.has(`tensorflow/${name}`));
    const metadata = await wheelMetadata(wheel);
    const pinned = PINNED_WHEELS[this.variant];
    if (missing.length > 0 || !metadata || !/^(tensorflow|tf-nightly)/i.test(metadata.name)) {
      throw new EngineSetupError('BAD_WHEEL', `${file} is not a TensorFlow wheel with its C library (missing ${missing.join(', ') || 'METADATA'})`, `Use a Linux x86-64 ${this.variant === 'gpu' ? 'tensorflow' : 'tensorflow or tensorflow-cpu'} wheel, e.g. ${pinned.fileName}`);
    }
    if (this.variant === 'gpu' && !isCudaBuild(metadata.name)) {
      throw new EngineSetupError('BAD_WHEEL', `${file} is ${metadata.name} ${metadata.version}, a CPU-only build without CUDA kernels`, `The GPU engine needs the tensorflow wheel (CUDA build), e.g. ${pinned.fileName}`);
    }
    return { version: metadata.version };
  }

  /** `npm pack` (or the given tarball), integrity-checked, unpacked; google-protobuf into its node_modules. */
  private async fetchTfjsNode(downloads: string, packageDir: string): Promise<void> {
    const { name, integrity } = TFJS_NODE_PACKAGES[this.variant];
    this.progress('tfjs-node', this.options.tfjsNodeTarball ? `unpacking ${this.options.tfjsNodeTarball}` : `fetching ${name}@${TFJS_NODE_VERSION} from the npm registry`);
    const tfjsNode = await this.npmPack(`${name}@${TFJS_NODE_VERSION}`, integrity, downloads, this.options.tfjsNodeTarball);
    await this.untar(tfjsNode, packageDir);
    this.progress('tfjs-node', this.options.googleProtobufTarball ? `unpacking ${this.options.googleProtobufTarball}` : `fetching google-protobuf@${GOOGLE_PROTOBUF_VERSION}`, 0.5);
    const protobuf = await this.npmPack(`google-protobuf@${GOOGLE_PROTOBUF_VERSION}`, GOOGLE_PROTOBUF_INTEGRITY, downloads, this.options.googleProtobufTarball);
    await this.untar(protobuf, path.join(packageDir, 'node_modules', 'google-protobuf'));
    this.progress('tfjs-node', 'tfjs-node sources ready', 1);
  }

  private async npmPack(spec: string, integrity: string, downloads: string, given?: string): Promise<string> {
    const expectedName = `${spec.replace(/^@/, '').replace('/', '-').replace(/@([^@]+)$/, '-$1')}.tgz`;
    const file = given ? path.resolve(given) : path.join(downloads, expectedName);
    if (!existsSync(file) || (await sriOf(file)) !== integrity) {
      if (given) throw new EngineSetupError('NPM_FAILED', `${file} is missing or is not ${spec} (integrity mismatch)`, `Fetch it with: npm pack ${spec}`);
      const result = await this.exec('npm', ['pack', spec, '--pack-destination', downloads, '--loglevel=error'], { cwd: downloads });
      if (result.missing) throw new EngineSetupError('NO_NPM', 'npm was not found', 'Install Node.js with npm (npm 7 or newer)');
      if (result.code !== 0) {
        const offline = /ENOTFOUND|ECONNREFUSED|ETIMEDOUT|EAI_AGAIN|ECONNRESET|network|proxy/i.test(result.output);
        throw new EngineSetupError(
          'NPM_FAILED',
          offline ? `npm could not reach its registry to fetch ${spec}` : `npm pack ${spec} failed: ${lastLines(result.output, 3)}`,
          offline ? `Check the network or npm's registry/proxy settings (npm config get registry), or fetch the tarball elsewhere with "npm pack ${spec}" and pass it to the setup` : 'See the setup log for npm\'s full output',
        );
      }
      if ((await sriOf(file)) !== integrity) throw new EngineSetupError('NPM_FAILED', `the ${spec} tarball from the registry does not match its published integrity`, 'Run the setup again; if it persists, your registry mirror serves a different file');
      this.downloadedBytes += statSync(file).size;
    }
    return file;
  }

  private async untar(tarball: string, destination: string): Promise<void> {
    await fs.mkdir(destination, { recursive: true });
    const result = await this.exec('tar', ['-xzf', tarball, '-C', destination, '--strip-components=1', '--no-same-owner']);
    if (result.code !== 0) throw new EngineSetupError('NPM_FAILED', `could not unpack ${tarball}: ${lastLines(result.output, 2)}`, 'Check that `tar` works and the disk has space');
  }

  /**
   * `pip download` of pinned wheels (those not already in `downloads` with
   * the right hash), with progress read from pip's growing temporary file.
   * Returns the files, in the order given.
   */
  private async downloadPinned(wheels: readonly PinnedWheel[], downloads: string): Promise<string[]> {
    const files = wheels.map((w) => path.join(downloads, w.fileName));
    const needed: PinnedWheel[] = [];
    for (const [index, w] of wheels.entries()) {
      if (existsSync(files[index]) && statSync(files[index]).size === w.bytes && (await sha256Of(files[index])) === w.sha256) this.line(`reusing ${files[index]}`);
      else needed.push(w);
    }
    if (needed.length === 0) return files;
    await this.checkPip(this.options.python ?? 'python3', needed, downloads);
    const total = needed.reduce((sum, w) => sum + w.bytes, 0);
    const specs = needed.map((w) => `${w.pipName}==${w.version}`);
    const what = needed.length === 1 ? specs[0] : `${needed.length} wheels (${needed.map((w) => w.pipName).join(', ')})`;
    this.progress('tensorflow', `downloading ${what} (${(total / 1e6).toFixed(0)} MB) with pip`);
    // pip downloads into a temporary folder first; pointing TMPDIR at ours lets us watch it grow.
    const tmp = path.join(downloads, 'pip-tmp');
    await fs.rm(tmp, { recursive: true, force: true });
    await fs.mkdir(tmp, { recursive: true });
    let before = 0;
    const watch = setInterval(() => {
      void diskUsage(tmp).then((bytes) => {
        if (bytes > 0) this.progress('tensorflow', `downloading ${what}: ${((before + bytes) / 1e6).toFixed(0)} of ${(total / 1e6).toFixed(0)} MB`, (0.7 * (before + bytes)) / total);
      });
    }, 1000);
    const target = PINNED_WHEELS[this.variant];
    try {
      // One pip per platform tag. Exactly the pinned files whatever the local Python: target platform, Python tag and ABI are given.
      for (const platform of new Set(needed.map((w) => w.platform))) {
        const group = needed.filter((w) => w.platform === platform);
        const result = await this.exec(
          this.options.python ?? 'python3',
          ['-m', 'pip', 'download', ...group.map((w) => `${w.pipName}==${w.version}`), '--no-deps', '--only-binary=:all:', '--platform', platform, '--python-version', target.pythonVersion, '--implementation', 'cp', '--abi', target.abi, '--no-cache-dir', '--progress-bar', 'off', '-d', downloads],
          { env: { ...this.env, TMPDIR: tmp, PIP_DISABLE_PIP_VERSION_CHECK: '1' } },
        );
        if (result.code !== 0) throw pipError(result.output, group);
        before += group.reduce((sum, w) => sum + w.bytes, 0);
      }
    } finally {
      clearInterval(watch);
      await fs.rm(tmp, { recursive: true, force: true });
    }
    for (const w of needed) {
      const file = path.join(downloads, w.fileName);
      if (!existsSync(file)) throw new EngineSetupError('PIP_FAILED', `pip finished but ${file} is not there`, "See the setup log for pip's output");
      if ((await sha256Of(file)) !== w.sha256) {
        await fs.rm(file, { force: true });
        throw new EngineSetupError('PIP_FAILED', `the downloaded ${w.fileName} does not match its published SHA-256`, 'Run the setup again; if it persists, your package index serves a different file');
      }
      this.downloadedBytes += w.bytes;
    }
    return files;
  }

  /** The two libraries (+ the link names binding.gyp and tfjs-node's scripts look for) and the headers. */
  private async installLibraries(pkg: TensorFlowPackage, packageDir: string): Promise<void> {
    const libDir = path.join(packageDir, 'deps', 'lib');
    const includeDir = path.join(packageDir, 'deps', 'include');
    // The headers the addon's sources include, and what those include, and so on.
    const bindingDir = path.join(packageDir, 'binding');
    const seeds = new Set<string>();
    for (const name of await fs.readdir(bindingDir)) {
      for (const include of includesOf(await fs.readFile(path.join(bindingDir, name), 'utf8'))) if (include.startsWith('tensorflow/')) seeds.add(include);
    }
    const headers = await headerClosure(pkg, [...seeds]);
    if (!headers.includes('tensorflow/c/c_api.h') || !headers.includes('tensorflow/c/eager/c_api.h')) {
      throw new EngineSetupError('BAD_WHEEL', `${pkg.location} lacks TensorFlow's C API headers (tensorflow/include/tensorflow/c)`, `Use a tensorflow or tensorflow-cpu package of version 2.x, e.g. ${PINNED_WHEELS[this.variant].fileName}`);
    }
    await copyHeaders(pkg, headers, includeDir);
    this.line(`copied ${headers.length} headers: ${headers.join(' ')}`);

    const total = TF_LIBRARIES.reduce((sum, name) => sum + pkg.size(`tensorflow/${name}`), 0);
    const verb = pkg.location.endsWith('.whl') ? 'extracting' : 'linking';
    let before = 0;
    for (const name of TF_LIBRARIES) {
      this.checkCancelled();
      const done0 = before;
      this.progress('tensorflow', `${verb} ${name}`, 0.7 + (0.3 * done0) / total);
      let last = 0;
      await pkg.copyTo(
        `tensorflow/${name}`,
        path.join(libDir, name),
        (bytes) => {
          if (bytes - last > 50e6) {
            last = bytes;
            this.progress('tensorflow', `${verb} ${name}: ${((done0 + bytes) / 1e6).toFixed(0)} of ${(total / 1e6).toFixed(0)} MB`, 0.7 + (0.3 * (done0 + bytes)) / total);
          }
        },
        this.options.signal,
      );
      before += pkg.size(`tensorflow/${name}`);
    }
    // The wheel's libraries carry a 200 MB static symbol table (.symtab) that nothing
    // loads; `strip --strip-unneeded` keeps the dynamic symbols the addon links to.
    // Not for hard links into a Python install (stripping would copy them).
    if (verb === 'extracting') {
      for (const name of TF_LIBRARIES) {
        const file = path.join(libDir, name);
        const stripped = await this.exec('strip', ['--strip-unneeded', '-o', `${file}.stripped`, file]);
        if (stripped.code === 0) await fs.rename(`${file}.stripped`, file);
        else await fs.rm(`${file}.stripped`, { force: true }); // no binutils: keep it as it is
      }
    }
    // binding.gyp links -ltensorflow -ltensorflow_framework; the addon then records the
    // libraries' sonames (libtensorflow_cc.so.2, libtensorflow_framework.so.2), which
    // are the real files. The .so.2.9.1 names make tfjs-node's own install script, if
    // anyone runs it here, find "its" libtensorflow and skip its download.
    const links: Array<[string, string]> = [
      ['libtensorflow.so', 'libtensorflow_cc.so.2'],
      ['libtensorflow.so.2', 'libtensorflow_cc.so.2'],
      ['libtensorflow.so.2.9.1', 'libtensorflow_cc.so.2'],
      ['libtensorflow_framework.so', 'libtensorflow_framework.so.2'],
      ['libtensorflow_framework.so.2.9.1', 'libtensorflow_framework.so.2'],
    ];
    for (const [link, target] of links) await fs.symlink(target, path.join(libDir, link));
    this.progress('tensorflow', 'TensorFlow libraries in place', 1);
  }

  /**
   * node-gyp with tfjs-node's binding.gyp; the variables node-pre-gyp would
   * normally pass are given by hand. The same build makes the addon we ship
   * (`engine build-addon`), so it keeps within TensorFlow's manylinux_2_27
   * (see LIBSTDCXX_COMPAT).
   */
  private async build(packageDir: string, tools: BuildTools, python: string, downloads: string): Promise<void> {
    // Node's headers and the compatibility header, outside build/ (node-gyp rebuild empties that first).
    const support = path.join(packageDir, 'build-support');
    const nodeDir = await this.nodeHeaders(path.join(support, 'node'), downloads);
    const compat = path.join(support, 'libstdcxx_compat.h');
    await fs.mkdir(support, { recursive: true });
    await fs.writeFile(compat, LIBSTDCXX_COMPAT);
    this.progress('build', `compiling the TensorFlow addon (node-gyp, ${tools.compiler}, headers from ${nodeDir})`);
    const modulePath = path.join(packageDir, 'lib', `napi-v${NAPI_BUILD_VERSION}`);
    let compiled = 0;
    const result = await this.exec(
      tools.node.command,
      [
        tools.nodeGyp,
        'rebuild',
        `--nodedir=${nodeDir}`,
        // Keeps node-gyp away from ~/.cache/node-gyp and from nodejs.org.
        `--devdir=${path.join(packageDir, 'build', 'devdir')}`,
        `--python=${python}`,
        '--module_name=tfjs_binding',
        `--module_path=${modulePath}`,
        `--napi_build_version=${NAPI_BUILD_VERSION}`,
        '--jobs=max',
      ],
      {
        cwd: packageDir,
        // node-gyp takes npm_config_nodedir over --nodedir: both name the folder chosen.
        env: { ...this.env, ...tools.node.env, npm_config_offline: 'true', npm_config_nodedir: nodeDir, CXXFLAGS: `${this.env.CXXFLAGS ?? ''} -include '${compat}'`.trim() },
        onLine: (line) => {
          if (/^\s*CXX\(target\)/.test(line)) this.progress('build', `compiling (${++compiled} of 3 sources)`, compiled / 4);
          if (/SOLINK_MODULE/.test(line)) this.progress('build', 'linking', 0.8);
        },
      },
    );
    if (result.missing || result.code !== 0 || !existsSync(path.join(modulePath, 'tfjs_binding.node'))) {
      // The compiler and make were checked before; what is left is a real build problem.
      throw new EngineSetupError('BUILD_FAILED', `building the TensorFlow addon failed: ${buildErrorSummary(result.output)}`, "The setup log has node-gyp's full output; please attach it to a bug report");
    }
    // Only the .node in lib/ is used; the object files and Makefiles are not.
    await fs.rm(path.join(packageDir, 'build'), { recursive: true, force: true });
    await fs.rm(support, { recursive: true, force: true });
    this.progress('build', 'addon built', 1);
  }

  /**
   * A --nodedir for node-gyp: this machine's Node.js headers when it has them,
   * else (VS Code's Electron, distributions' node packages without headers)
   * the N-API headers from the node-api-headers npm package, with a minimal
   * common.gypi: an N-API addon needs nothing else of Node's.
   */
  private async nodeHeaders(folder: string, downloads: string): Promise<string> {
    const local = findNodeHeaders(this.env);
    if (local) return local;
    const spec = `node-api-headers@${NODE_API_HEADERS_VERSION}`;
    this.progress('build', this.options.nodeApiHeadersTarball ? `no Node.js headers here: using ${this.options.nodeApiHeadersTarball}` : `no Node.js headers here: fetching ${spec} from the npm registry`);
    const tarball = await this.npmPack(spec, NODE_API_HEADERS_INTEGRITY, downloads, this.options.nodeApiHeadersTarball);
    const unpacked = path.join(folder, 'package');
    await this.untar(tarball, unpacked);
    const include = path.join(folder, 'include', 'node');
    await fs.mkdir(include, { recursive: true });
    for (const name of await fs.readdir(path.join(unpacked, 'include'))) await fs.copyFile(path.join(unpacked, 'include', name), path.join(include, name));
    await fs.writeFile(path.join(include, 'common.gypi'), N_API_COMMON_GYPI);
    return folder;
  }

  /**
   * Loads the addon in a separate process with every symbol bound now (a
   * missing C API function fails here, not mid-training) and, for the GPU
   * engine, its CUDA libraries on the library path: what TensorFlow then
   * says about the GPU is part of the result.
   */
  private async verify(addon: string, cuda: CudaLibrarySet | undefined): Promise<{ version: string; gpu: GpuLogReading & { usingGpu: boolean } }> {
    this.progress('verify', 'loading the addon in a test process');
    const env: NodeJS.ProcessEnv = { ...this.env, TF_FORCE_GPU_ALLOW_GROWTH: 'true' };
    if (cuda?.libraryPath.length) env.LD_LIBRARY_PATH = [...cuda.libraryPath, ...(this.env.LD_LIBRARY_PATH ?? '').split(path.delimiter).filter(Boolean)].join(path.delimiter);
    const probe = await probeEngine(addon, env, nodeCommand(this.env));
    for (const line of probe.log.split('\n')) if (line.trim()) this.line(line);
    const version = probe.tensorflowVersion;
    if (probe.exitCode !== 0 || !version) {
      throw new EngineSetupError(
        'VERIFY_FAILED',
        `the built addon does not load: ${lastLines(probe.log, 3)}`,
        /GLIBC/.test(probe.log) ? 'This system\'s C/C++ runtime is older than TensorFlow needs (glibc 2.27, libstdc++ from GCC 6 or newer)' : 'The setup log has the details; try another TensorFlow version with --wheel',
      );
    }
    const gpu = { ...readGpuLog(probe.log), usingGpu: probe.usingGpu };
    this.progress('verify', `TensorFlow ${version} loads${cuda ? (gpu.usingGpu ? ` and uses ${gpu.devices.map((d) => d.name).join(', ')}` : `, without a GPU: ${gpu.reason}`) : ''}`, 1);
    return { version, gpu };
  }
}

/**
 * Adds our TensorFlow kernels (native/cellfinder_kernels.cc) to tfjs-node's
 * addon: the source into its binding/ (so the header closure copies the C
 * kernel API's headers too) and into binding.gyp's sources. Done for every
 * set-up, so that a compile after a shipped addon fails to load has it too.
 */
async function addOwnKernels(packageDir: string): Promise<void> {
  const gypFile = path.join(packageDir, 'binding.gyp');
  const gyp = await fs.readFile(gypFile, 'utf8');
  const lastSource = "'binding/tfjs_binding.cc'";
  if (!gyp.includes(lastSource)) throw new EngineSetupError('NPM_FAILED', `${gypFile} does not list ${lastSource}: not tfjs-node ${TFJS_NODE_VERSION}'s binding.gyp`, 'Run the setup again without --tfjs-node-tarball, or with the tarball of that version');
  await fs.copyFile(kernelsSourceFile(), path.join(packageDir, 'binding', KERNELS_SOURCE_NAME));
  await fs.writeFile(gypFile, gyp.replace(lastSource, `${lastSource},\n      'binding/${KERNELS_SOURCE_NAME}'`));
}

/** What compiling the addon runs. */
interface BuildTools {
  nodeGyp: string;
  node: NodeCommand;
  /** The compiler's --version line, for the manifest. */
  compiler: string;
}

/** The N-API headers used when Node.js's own are missing (`npm view node-api-headers@1.9.0 dist.integrity`). */
const NODE_API_HEADERS_VERSION = '1.9.0';
const NODE_API_HEADERS_INTEGRITY = 'sha512-2oNILP4jXwRB4ywnYKjVk1YyJ96n2D4EOVJO6S3oYZ5PtbJrw3Yt9TpAuX3nBLMuzn74rnfGQrv13pS9vC+YiA==';

/**
 * node-gyp includes the nodedir's common.gypi in every build; Node's own sets
 * its compiler flags. These are the ones of Node 20's that matter for an
 * N-API addon (optimised, position-independent, threads, C++17 without
 * exceptions or RTTI, as tfjs-node is built).
 */
const N_API_COMMON_GYPI = `${JSON.stringify(
  {
    target_defaults: {
      default_configuration: 'Release',
      configurations: { Release: { cflags: ['-O3'] }, Debug: { cflags: ['-g', '-O0'] } },
      cflags: ['-fPIC', '-pthread', '-fno-omit-frame-pointer', '-Wall', '-Wextra', '-Wno-unused-parameter'],
      cflags_cc: ['-fno-rtti', '-fno-exceptions', '-std=gnu++17'],
      ldflags: ['-pthread'],
    },
  },
  null,
  2,
)}\n`;

/**
 * Included before every source of the addon (-include). GCC 11 and newer's
 * std::allocator calls std::__throw_bad_array_new_length(), which only
 * libstdc++ 3.4.29 (GCC 11) exports: an addon compiled with Debian 12's GCC 12
 * would not load on the glibc 2.27 / GCC 7-8 systems TensorFlow's
 * manylinux_2_27 wheel supports (their libstdc++ stops at GLIBCXX_3.4.24/25).
 * This hidden inline definition keeps the call inside the addon and throws
 * std::bad_alloc instead, as allocators did before GCC 11 (the addon is built
 * without exceptions, so either ends the process, as an allocation of more
 * than the address space would). Linking libstdc++ statically instead would
 * pull in glibc 2.32-2.36 symbols (checked: __libc_single_threaded and others).
 */
const LIBSTDCXX_COMPAT = `// cellfinder-retrain: keeps the addon within GLIBCXX_3.4.24 (see engineSetup.ts).
namespace std {
void __throw_bad_alloc() __attribute__((__noreturn__));
__attribute__((__noreturn__, __visibility__("hidden"))) inline void __throw_bad_array_new_length() { __throw_bad_alloc(); }
}
`;

/** Where the GPU engine's CUDA libraries will come from (see planCudaLibraries). */
interface CudaPlan {
  source: CudaLibrarySet['source'];
  /** Folders that already hold them. */
  folders: string[];
  /** nvidia-* wheels the user has, to unpack. */
  wheels?: string[];
  /** Download the pinned wheels. */
  download?: boolean;
}

/** What `python` has: TensorFlow (when `version` is set) and nvidia-* packages. */
interface PythonTensorFlow {
  /** The folder that holds tensorflow/ (empty when there is no usable TensorFlow). */
  sitePackages: string;
  version?: string;
  /** The distribution's name: tensorflow, tensorflow-cpu, tf-nightly, ... */
  distribution: string;
  cudaBuild: boolean;
  /** The `nvidia` namespace package's folders. */
  nvidia: string[];
}

/** Linux x86-64 wheels named tensorflow (and the older tensorflow-gpu, and tf-nightly) carry CUDA kernels; tensorflow-cpu and tensorflow-intel do not. */
function isCudaBuild(distribution: string): boolean {
  return /^(tensorflow|tensorflow[-_]gpu|tf[-_]nightly)$/i.test(distribution);
}

/** Versions of a user's Python TensorFlow that `auto` uses without asking (others need an explicit --source python). */
function isTestedVersion(version: string): boolean {
  const [major, minor] = version.split('.').map(Number);
  return major === 2 && minor >= 16;
}

function pipError(output: string, wheels: readonly PinnedWheel[]): EngineSetupError {
  const specs = wheels.map((w) => `${w.pipName}==${w.version}`).join(', ');
  const files = wheels.map((w) => w.fileName).join(', ');
  const elsewhere = wheels[0].pipName.startsWith('nvidia') ? 'pass their folder with --cuda-libs' : 'pass it with --wheel';
  const noVersions = /from versions: none/.test(output);
  const network = /NewConnectionError|Could not fetch URL|Max retries exceeded|Temporary failure in name resolution|ProxyError|SSLError|ConnectTimeout|ReadTimeout|Network is unreachable/i.test(output);
  if (network || noVersions) {
    return new EngineSetupError(
      'PIP_UNREACHABLE',
      network ? `pip could not reach the Python package index to download ${specs}` : `pip found no ${specs} on the package index: it is unreachable or does not carry that package`,
      `Check the network and pip's index/proxy settings (python3 -m pip config list), or download ${files} from PyPI elsewhere and ${elsewhere}`,
    );
  }
  if (/No matching distribution found/.test(output)) {
    return new EngineSetupError('PIP_FAILED', `the package index has no ${files}`, `Your pip index (a mirror?) lacks it: download it from pypi.org and ${elsewhere}`);
  }
  return new EngineSetupError('PIP_FAILED', `pip download failed: ${lastLines(output, 3)}`, "See the setup log for pip's full output");
}

/** How to run Node for tools: inside VS Code (Electron) the same binary acts as Node with ELECTRON_RUN_AS_NODE. */
interface NodeCommand {
  command: string;
  env: NodeJS.ProcessEnv;
}
function nodeCommand(env: NodeJS.ProcessEnv): NodeCommand {
  if (process.versions.electron) return { command: process.execPath, env: { ...env, ELECTRON_RUN_AS_NODE: '1' } };
  return { command: process.execPath, env: {} };
}

/**
 * A folder with include/node/{node_api.h,common.gypi}, which node-gyp accepts
 * as --nodedir so it never downloads headers. N-API headers do not depend on
 * the Node version, so any local Node 18+ install's headers do.
 */
export function findNodeHeaders(env: NodeJS.ProcessEnv = process.env): string | undefined {
  const hasHeaders = (dir: string | undefined) => Boolean(dir) && existsSync(path.join(dir as string, 'include', 'node', 'node_api.h')) && existsSync(path.join(dir as string, 'include', 'node', 'common.gypi'));
  // A folder named explicitly is the only one looked at: without headers there, node-api-headers are used.
  const named = env.CELLFINDER_RETRAIN_NODEDIR || env.npm_config_nodedir;
  if (named) return hasHeaders(named) ? named : undefined;
  const candidates: Array<string | undefined> = [];
  const prefixOf = (executable: string) => path.dirname(path.dirname(realpathSync(executable)));
  if (!process.versions.electron) candidates.push(prefixOf(process.execPath));
  const nodeOnPath = which('node', env);
  if (nodeOnPath) candidates.push(prefixOf(nodeOnPath));
  candidates.push('/usr/local', '/usr');
  // Headers node-gyp itself downloaded some other time, online.
  for (const cache of [path.join(homedir(), '.cache', 'node-gyp'), path.join(homedir(), '.node-gyp')]) {
    candidates.push(path.join(cache, process.versions.node));
  }
  return candidates.find(hasHeaders);
}

function which(command: string, env: NodeJS.ProcessEnv): string | undefined {
  for (const dir of (env.PATH ?? '').split(path.delimiter)) {
    if (!dir) continue;
    const candidate = path.join(dir, command);
    try {
      if (statSync(candidate).isFile()) return candidate;
    } catch {
      // not here
    }
  }
  return undefined;
}

/** Makes `folder` the active engine of its variant; the other variant's stays. */
async function writeActive(root: string, variant: EngineVariant, folder: string): Promise<void> {
  const file = path.join(root, ACTIVE_FILE);
  let active = {};
  try {
    active = readActiveFile(root);
  } catch {
    // unreadable: written anew
  }
  const temporary = `${file}.${process.pid}.tmp`;
  await fs.writeFile(temporary, `${JSON.stringify({ ...active, [ACTIVE_KEY[variant]]: folder }, null, 2)}\n`);
  await fs.rename(temporary, file);
}

/** One setup at a time per cache folder; a lock left by a dead process is taken over. */
async function acquireLock(root: string): Promise<() => Promise<void>> {
  const lock = path.join(root, '.setup.lock');
  for (let attempt = 0; attempt < 2; attempt++) {
    try {
      await fs.writeFile(lock, String(process.pid), { flag: 'wx' });
      return () => fs.rm(lock, { force: true });
    } catch (error) {
      if ((error as NodeJS.ErrnoException).code !== 'EEXIST') throw error;
      const pid = Number(await fs.readFile(lock, 'utf8').catch(() => ''));
      if (pid && pid !== process.pid && isAlive(pid)) {
        throw new EngineSetupError('BUSY', `another engine setup (process ${pid}) is running in ${root}`, 'Wait for it to finish, then run the setup again');
      }
      await fs.rm(lock, { force: true });
    }
  }
  throw new EngineSetupError('BUSY', `could not lock ${root}`, 'Remove .setup.lock there if no setup is running');
}

function isAlive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (error) {
    return (error as NodeJS.ErrnoException).code === 'EPERM';
  }
}

async function hashOf(file: string, algorithm: 'sha256' | 'sha512'): Promise<Buffer> {
  const hash = createHash(algorithm);
  for await (const chunk of createReadStream(file, { highWaterMark: 1 << 20 })) hash.update(chunk as Buffer);
  return hash.digest();
}
export const sha256Of = async (file: string) => (await hashOf(file, 'sha256')).toString('hex');
/** npm's Subresource Integrity string. */
const sriOf = async (file: string) => `sha512-${(await hashOf(file, 'sha512')).toString('base64')}`;

/** Bytes under a folder (files only; symlinks not followed). */
export async function diskUsage(folder: string): Promise<number> {
  let total = 0;
  let items: import('node:fs').Dirent[];
  try {
    items = await fs.readdir(folder, { withFileTypes: true });
  } catch {
    return 0;
  }
  for (const item of items) {
    const child = path.join(folder, item.name);
    if (item.isDirectory()) total += await diskUsage(child);
    else if (item.isFile()) total += await fs.stat(child).then((s) => s.size, () => 0);
  }
  return total;
}

/** The compiler's or linker's own error lines, not node-gyp's "gyp ERR!" epilogue. */
function buildErrorSummary(output: string): string {
  const lines = output.split(/\r?\n/).map((line) => line.trim()).filter((line) => line && !/^gyp (info|ERR!|http)/.test(line));
  const errors = lines.filter((line) => /\berror\b|undefined reference|cannot find|not found/i.test(line));
  return [...new Set(errors.length > 0 ? errors : lines.slice(-3))].slice(0, 3).join(' | ') || 'no output';
}

function lastLines(text: string, count: number): string {
  return text
    .split(/\r?\n/)
    .map((line) => line.trim())
    .filter(Boolean)
    .slice(-count)
    .join(' | ');
}

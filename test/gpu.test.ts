/**
 * The GPU engine, as far as a machine without a GPU can prove it: the driver
 * check with its evidence, `engine setup --gpu` stopping early, finding and
 * unpacking CUDA libraries, reading TensorFlow's own start-up log, the
 * `started` event saying why the GPU is not used, the worker's environment,
 * and running out of memory in a real TensorFlow allocator.
 *
 * Tests marked "GPU engine" run when one is set up in the engine cache
 * (`cellfinder-retrain engine setup --gpu`, with --skip-driver-check on a
 * machine without a driver) and are skipped, with the reason, otherwise: CI
 * does not download TensorFlow's CUDA build (570 MB) and CUDA (1.5 GB).
 * Tests that read this machine's driver state assert what a machine without
 * an NVIDIA driver must say, and are skipped where a driver is present
 * (scripts/gpu-device-check.sh covers that side).
 */
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { existsSync, promises as fs, readFileSync } from 'node:fs';
import * as path from 'node:path';
import * as readline from 'node:readline';
import { test } from 'node:test';
import * as tf from '@tensorflow/tfjs';
import { zipSync } from 'fflate';
import { main } from '../src/cli/main';
import { cudaFoldersIn, REQUIRED_CUDA_LIBRARIES, scanCudaLibraries, versionOf } from '../src/engine/cudaLibraries';
import { engineFolderName, engineRoot, readActiveEngine, readActiveFile } from '../src/engine/engineLayout';
import { EngineSetupError, setupEngine } from '../src/engine/engineSetup';
import { childEnvironment, DEVICE_ENV, deviceChoice } from '../src/engine/gpuEnvironment';
import { checkNvidiaDriver, DRIVER_VERSION_FILE, inspectGpu, probeEngine, readGpuLog } from '../src/engine/gpuProbe';
import { loadNativeBackend } from '../src/engine/nativeBackend';
import { extractCudaWheel } from '../src/engine/wheel';
import { OutOfMemoryError, outOfMemoryError, readOutOfMemory, smallerBatchSizes } from '../src/training/outOfMemory';
import type { TrainingEvent } from '../src/training/events';
import { RunFollower, type RunRecord, startWorker, summarizeRun } from '../src/training/runs';
import { fakeWheel, REPO_ROOT, scratch, tinyDataset } from './helpers';

const ROOT = engineRoot();
const GPU_ENGINE = readActiveEngine(ROOT, 'gpu');
const NO_GPU_ENGINE = GPU_ENGINE.ok ? undefined : `${GPU_ENGINE.reason}; set it up with: cellfinder-retrain engine setup --gpu (--skip-driver-check without a driver)`;
const HAS_DRIVER = existsSync(DRIVER_VERSION_FILE) ? `this machine has an NVIDIA driver (${DRIVER_VERSION_FILE})` : undefined;
const NO_NATIVE = readActiveEngine(ROOT).ok ? undefined : `no native CPU engine in ${ROOT}; set it up with: cellfinder-retrain engine setup`;
const LOGS = path.join(REPO_ROOT, 'test', 'fixtures', 'tensorflow-logs');
const WORKER = path.join(REPO_ROOT, 'dist', 'worker.js');

async function cli(argv: string[]): Promise<{ code: number; out: string; err: string }> {
  let out = '';
  let err = '';
  const code = await main(argv, { out: (text) => (out += `${text}\n`), err: (text) => (err += `${text}\n`) });
  return { code, out, err };
}

test('engine status on a machine without an NVIDIA driver says so, with the evidence', { skip: HAS_DRIVER }, async () => {
  const driver = checkNvidiaDriver();
  assert.equal(driver.present, false);
  assert.deepEqual(driver.problem, { kind: 'no-driver', text: 'no NVIDIA driver' });
  assert.match(driver.evidence.join('\n'), /\/proc\/driver\/nvidia\/version does not exist/);
  assert.match(driver.evidence.join('\n'), /libcuda\.so\.1 is not in the loader cache \(ldconfig -p\), LD_LIBRARY_PATH/);
  const status = await cli(['engine', 'status']);
  assert.equal(status.code, 0, status.err);
  assert.match(status.out, /^NVIDIA driver: none \(no NVIDIA driver\)$/m);
  assert.match(status.out, /^ {2}\/proc\/driver\/nvidia\/version does not exist/m);
  assert.match(status.out, /^GPU: not used: no NVIDIA driver: /m);
  const json = JSON.parse((await cli(['engine', 'status', '--json'])).out);
  assert.equal(json.gpu.usable, false);
  assert.equal(json.gpu.problem, 'no-driver');
});

test('driver check: the kernel module version, libcuda.so.1 on the library path, a driver too old for CUDA 12', async (t) => {
  const dir = scratch(t);
  const versionFile = path.join(dir, 'version');
  // The first line as the NVIDIA kernel module writes it.
  const write = (version: string) => fs.writeFile(versionFile, `NVRM version: NVIDIA UNIX x86_64 Kernel Module  ${version}  Tue Mar  5 22:23:56 UTC 2024\nGCC version:  gcc version 12.2.0 (Debian 12.2.0-14)\n`);
  {
    await write('550.54.15');
    const noLibrary = checkNvidiaDriver({ LD_LIBRARY_PATH: '' }, new Map(), versionFile);
    assert.equal(noLibrary.version, '550.54.15');
    assert.equal(noLibrary.present, false);
    assert.match(noLibrary.problem?.text ?? '', /kernel module 550\.54\.15 is loaded but the driver's libcuda\.so\.1 is not where the loader looks/);
    const libraries = path.join(dir, 'lib');
    await fs.mkdir(libraries);
    await fs.writeFile(path.join(libraries, 'libcuda.so.1'), '');
    const ok = checkNvidiaDriver({ LD_LIBRARY_PATH: libraries }, new Map(), versionFile);
    assert.equal(ok.present, true);
    assert.equal(ok.problem, undefined);
    assert.equal(ok.libcuda, path.join(libraries, 'libcuda.so.1'));
    await write('470.256.02');
    const old = checkNvidiaDriver({ LD_LIBRARY_PATH: libraries }, new Map(), versionFile);
    assert.deepEqual(old.problem, { kind: 'driver-too-old', text: 'NVIDIA driver 470.256.02 is older than CUDA 12 needs (525 or newer)' });
    // The loader cache alone (ldconfig -p) is enough for libcuda.so.1.
    assert.equal(checkNvidiaDriver({}, new Map([['libcuda.so.1', '/usr/lib/x86_64-linux-gnu/libcuda.so.1']]), versionFile).libcuda, '/usr/lib/x86_64-linux-gnu/libcuda.so.1');
  }
});

test('setup --gpu on a machine without a driver stops before anything is written, unless told to build anyway', { skip: HAS_DRIVER }, async (t) => {
  const root = scratch(t);
  const error = await setupEngine({ variant: 'gpu', root }).then(
    () => assert.fail('setup should have stopped'),
    (e: unknown) => e,
  );
  assert.ok(error instanceof EngineSetupError);
  assert.equal(error.code, 'NO_GPU_DRIVER');
  assert.match(error.message, /^no NVIDIA driver, so the GPU engine could not use a GPU here \(\/proc\/driver\/nvidia\/version does not exist/);
  assert.match(error.message, /add --skip-driver-check to build the GPU engine now \(it runs on the CPU until a driver is present\)/);
  assert.deepEqual(await fs.readdir(root), [], 'no log, no download, no lock');
  const viaCli = await cli(['engine', 'setup', '--gpu']);
  assert.equal(viaCli.code, 1);
  assert.match(viaCli.err, /error: no NVIDIA driver/);
});

test('setup --gpu refuses a CPU-only TensorFlow wheel and incomplete CUDA folders, naming what is wrong', { skip: process.platform !== 'linux' || process.arch !== 'x64' ? 'the engine is Linux x86-64 only' : false }, async (t) => {
  const root = scratch(t);
  const cpuWheel = path.join(root, 'tensorflow_cpu-2.99.0-cp311-cp311-manylinux_2_27_x86_64.whl');
  await fs.writeFile(cpuWheel, fakeWheel());
  const setupError = (options: Parameters<typeof setupEngine>[0]) =>
    setupEngine({ variant: 'gpu', root, skipDriverCheck: true, force: true, ...options }).then(
      () => assert.fail('setup should have failed'),
      (e: unknown) => {
        assert.ok(e instanceof EngineSetupError, String(e));
        return e;
      },
    );
  const cpuOnly = await setupError({ wheel: cpuWheel });
  assert.equal(cpuOnly.code, 'BAD_WHEEL');
  assert.match(cpuOnly.message, /is tensorflow-cpu 2\.99\.0, a CPU-only build without CUDA kernels\. The GPU engine needs the tensorflow wheel/);

  // CUDA 11's runtime where TensorFlow 2.21 needs CUDA 12's: refused before any download.
  const gpuWheel = path.join(root, 'tensorflow-2.99.0-cp311-cp311-manylinux_2_27_x86_64.whl');
  await fs.writeFile(gpuWheel, fakeWheel({ distribution: 'tensorflow' }));
  const cuda11 = path.join(root, 'cuda-11.8', 'lib64');
  await fs.mkdir(cuda11, { recursive: true });
  await fs.writeFile(path.join(cuda11, 'libcudart.so.11.0'), '');
  const incomplete = await setupError({ wheel: gpuWheel, cudaLibs: [path.dirname(cuda11)] });
  assert.equal(incomplete.code, 'NO_CUDA_LIBRARIES');
  assert.match(incomplete.message, /libcudart\.so\.12 \(CUDA runtime; found only libcudart\.so\.11\.0\).*; TensorFlow 2\.21 needs CUDA 12 and cuDNN 9 for CUDA 12\./);
  assert.match(incomplete.message, /libcudnn\.so\.9 \(cuDNN\)/);
  assert.equal(existsSync(path.join(root, 'downloads', 'tensorflow-2.21.0-cp311-cp311-manylinux_2_27_x86_64.whl')), false);
  const missingFolder = await setupError({ wheel: gpuWheel, cudaLibs: [path.join(root, 'nowhere')] });
  assert.match(missingFolder.message, /the CUDA library folder .*nowhere does not exist/);
  assert.equal(existsSync(path.join(root, engineFolderName('2.99.0', 'gpu'))), false, 'no half engine');
});

/** An nvidia-* wheel laid out as NVIDIA publishes them, with placeholder library files. */
function nvidiaWheel(pipName: string, version: string, folder: string, files: string[]): Uint8Array {
  const text = (s: string) => new TextEncoder().encode(s);
  const entries: Record<string, Uint8Array> = {
    [`nvidia/${folder}/__init__.py`]: text(''),
    [`${pipName.replace(/-/g, '_')}-${version}.dist-info/METADATA`]: text(`Metadata-Version: 2.1\nName: ${pipName}\nVersion: ${version}\n`),
  };
  for (const file of files) entries[`nvidia/${folder}/lib/${file}`] = text(`placeholder for ${file}`);
  return zipSync(entries);
}

test('CUDA libraries: wheels unpack as site-packages does; the scan finds each library, its version, and what is missing', async (t) => {
  const dir = scratch(t);
  const byPackage = new Map<string, string[]>();
  for (const library of REQUIRED_CUDA_LIBRARIES) byPackage.set(library.pipName, [...(byPackage.get(library.pipName) ?? []), library.file]);
  const site = path.join(dir, 'site');
  for (const [pipName, files] of byPackage) {
    if (pipName === 'nvidia-cudnn-cu12') continue; // left out: reported missing below
    const folder = REQUIRED_CUDA_LIBRARIES.find((library) => library.pipName === pipName)?.folder as string;
    const wheel = path.join(dir, `${pipName}.whl`);
    await fs.writeFile(wheel, nvidiaWheel(pipName, '12.5.82', folder, files));
    await extractCudaWheel(wheel, site);
  }
  const folders = cudaFoldersIn(site);
  assert.deepEqual(folders.map((folder) => path.relative(site, folder)).sort(), ['cublas', 'cuda_runtime', 'cufft', 'cusolver', 'cusparse', 'nvjitlink'].map((f) => `nvidia/${f}/lib`));
  const scan = scanCudaLibraries(folders, new Map());
  assert.deepEqual(scan.missing.map((library) => library.file), ['libcudnn.so.9']);
  assert.equal(scan.versions['libcudart.so.12'], '12.5.82', 'from the dist-info next to the nvidia folder');
  // A CUDA toolkit installs the soname as a link to the fully versioned file; cuDNN's headers say its version.
  const toolkit = path.join(dir, 'cuda-12.4', 'lib64');
  await fs.mkdir(toolkit, { recursive: true });
  await fs.writeFile(path.join(toolkit, 'libcudart.so.12.4.127'), '');
  await fs.symlink('libcudart.so.12.4.127', path.join(toolkit, 'libcudart.so.12'));
  assert.equal(versionOf(path.join(toolkit, 'libcudart.so.12'), REQUIRED_CUDA_LIBRARIES[0]), '12.4.127');
  const cudnnLib = path.join(dir, 'cudnn', 'lib');
  await fs.mkdir(path.join(dir, 'cudnn', 'include'), { recursive: true });
  await fs.mkdir(cudnnLib);
  await fs.writeFile(path.join(cudnnLib, 'libcudnn.so.9'), '');
  await fs.writeFile(path.join(dir, 'cudnn', 'include', 'cudnn_version.h'), '#define CUDNN_MAJOR 9\n#define CUDNN_MINOR 3\n#define CUDNN_PATCHLEVEL 0\n');
  const complete = scanCudaLibraries([...folders, cudnnLib], new Map());
  assert.deepEqual(complete.missing, []);
  assert.equal(complete.versions['libcudnn.so.9'], '9.3.0');
  // What the system's loader cache has counts too.
  assert.deepEqual(scanCudaLibraries(folders, new Map([['libcudnn.so.9', path.join(cudnnLib, 'libcudnn.so.9')]])).missing, []);
  // PyTorch's CUDA 13 packages keep some CUDA 12 file names (libcudnn.so.9 from nvidia-cudnn-cu13,
  // libcusparse.so.12 from nvidia-cusparse 12.7) but not their ABI: not taken for CUDA 12's.
  const torchSite = path.join(dir, 'torch-site');
  for (const [pipName, folder, file] of [['nvidia-cudnn-cu13', 'cudnn', 'libcudnn.so.9'], ['nvidia-cusparse', 'cu13', 'libcusparse.so.12']]) {
    const wheel = path.join(dir, `${pipName}.whl`);
    await fs.writeFile(wheel, nvidiaWheel(pipName, pipName.endsWith('cu13') ? '9.26.0.51' : '12.7.10.12', folder, [file]));
    await extractCudaWheel(wheel, torchSite);
  }
  const mixed = scanCudaLibraries([...folders, ...cudaFoldersIn(torchSite)], new Map());
  assert.deepEqual(mixed.missing.map((library) => library.file), ['libcudnn.so.9']);
  assert.deepEqual(mixed.otherVersions.get('libcudnn.so.9'), ['nvidia-cudnn-cu13 9.26.0.51 (for another CUDA)']);
  assert.equal(mixed.found.get('libcusparse.so.12'), path.join(site, 'nvidia', 'cusparse', 'lib'), 'the CUDA 12 one, not the CUDA 13 one');
  await fs.writeFile(path.join(dir, 'not-cuda.whl'), zipSync({ 'six.py': new TextEncoder().encode('') }));
  await assert.rejects(extractCudaWheel(path.join(dir, 'not-cuda.whl'), site), /not an NVIDIA CUDA wheel/);
});

test("TensorFlow 2.21's own start-up logs: no driver, with and without the CUDA libraries", () => {
  // Captured from the GPU engine's probe on a machine without a driver (see the README in this folder).
  for (const name of ['tf-2.21-no-driver-no-cuda-libraries.log', 'tf-2.21-no-driver-with-cuda-libraries.log']) {
    const reading = readGpuLog(readFileSync(path.join(LOGS, name), 'utf8'));
    assert.deepEqual(reading.devices, [], name);
    assert.equal(reading.problem, 'no-driver', name);
    assert.equal(reading.reason, 'no NVIDIA driver (TensorFlow: "kernel driver does not appear to be running on this host (vm): /proc/driver/nvidia/version does not exist")');
  }
});

test("TensorFlow's log lines on a GPU machine, built from TensorFlow 2.21's own message formats", () => {
  // These cannot be produced without a GPU. Each message's fixed text is in the 2.21 wheel's
  // libtensorflow_framework.so.2 / libtensorflow_cc.so.2 (`strings`); the device line is laid out
  // as gpu_device.cc prints it. scripts/gpu-device-check.sh records the real ones on a GPU.
  const prefix = 'I0000 00:00:1795709780.862770    3567';
  const created = readGpuLog(`${prefix} gpu_device.cc:2020] Created device /job:localhost/replica:0/task:0/device:GPU:0 with 79078 MB memory:  -> device: 0, name: NVIDIA H100 80GB HBM3, pci bus id: 0000:1b:00.0, compute capability: 9.0\n`);
  assert.deepEqual(created, { devices: [{ tensorflowName: '/job:localhost/replica:0/task:0/device:GPU:0', memoryMiB: 79078, name: 'NVIDIA H100 80GB HBM3', computeCapability: '9.0' }] });
  const missing = readGpuLog(
    [
      `${prefix} dso_loader.cc:144] Could not load dynamic library 'libcudnn.so.9'; dlerror: libcudnn.so.9: cannot open shared object file: No such file or directory; LD_LIBRARY_PATH: /opt/cuda`,
      `W0000 00:00:1795709780.862770    3567 gpu_device.cc:2341] Cannot dlopen some GPU libraries. Please make sure the missing libraries mentioned above are installed properly if you would like to use GPU. Follow the guide at https://www.tensorflow.org/install/gpu for how to download and setup the required libraries for your platform.`,
      'Skipping registering GPU devices...',
    ].join('\n'),
  );
  assert.equal(missing.problem, 'libraries-missing');
  assert.equal(missing.reason, 'TensorFlow could not load CUDA libraries: libcudnn.so.9 (libcudnn.so.9: cannot open shared object file: No such file or directory)');
  assert.equal(readGpuLog(`E0000 00:00:1 1 cuda_dnn.cc:522] Loaded runtime CuDNN library: 9.1.0 but source was compiled with: 9.3.0.  CuDNN library needs to have matching major version and equal or higher minor version.`).problem, 'cudnn-version');
  assert.equal(readGpuLog('E0000 00:00:1 1 cuda_platform.cc:52] failed call to cuInit: INTERNAL: CUDA error: Failed call to cuInit: CUDA_ERROR_NO_DEVICE: no CUDA-capable device is detected').problem, 'no-device');
  assert.equal(readGpuLog('E0000 00:00:1 1 cuda_platform.cc:52] failed call to cuInit: INTERNAL: CUDA error: Failed call to cuInit: CUDA_ERROR_OUT_OF_MEMORY: out of memory').problem, 'out-of-memory');
  assert.equal(readGpuLog('E0000 00:00:1 1 cuda_platform.cc:52] failed call to cuInit: INTERNAL: CUDA error: Failed call to cuInit: CUDA_ERROR_SYSTEM_DRIVER_MISMATCH: system has unsupported display driver / cuda driver combination').problem, 'driver-too-old');
  assert.equal(readGpuLog('I0000 00:00:1 1 gpu_device.cc:2200] Ignoring visible gpu device (device: 0, name: Tesla K80, pci bus id: 0000:00:04.0, compute capability: 3.7) with Cuda compute capability 3.7. The minimum required Cuda capability is 5.0.').problem, 'gpu-too-old');
});

test('a run asked to use the GPU on a machine without a driver trains on the CPU, and its started event says why', { skip: HAS_DRIVER }, async (t) => {
  const root = scratch(t);
  const yaml = await tinyDataset(root);
  const config = path.join(root, 'config.json');
  await fs.writeFile(config, JSON.stringify({ yamlFiles: [yaml], outputDir: path.join(root, 'out'), networkDepth: 18, epochs: 1, batchSize: 4, seed: 1, saveCheckpoints: false }));
  const child = spawn(process.execPath, [WORKER, 'train', config], { env: { ...process.env, [DEVICE_ENV]: 'gpu' }, stdio: ['pipe', 'pipe', 'pipe'] });
  const events: TrainingEvent[] = [];
  for await (const line of readline.createInterface({ input: child.stdout })) events.push(JSON.parse(line) as TrainingEvent);
  const started = events.find((event) => event.type === 'started') as Extract<TrainingEvent, { type: 'started' }>;
  assert.ok(started, JSON.stringify(events));
  assert.doesNotMatch(started.backend, /GPU:/);
  assert.equal(started.gpu?.requested, 'gpu');
  assert.equal(started.gpu?.used, false);
  assert.match(started.gpu?.reason ?? '', /^no NVIDIA driver: \/proc\/driver\/nvidia\/version does not exist/);
  assert.ok(events.some((event) => event.type === 'finished'));
  // The same line in the run's log, which the training panel shows.
  assert.match(await fs.readFile(path.join(root, 'out', 'training-events.jsonl'), 'utf8'), /"gpu":\{"requested":"gpu","used":false,"reason":"no NVIDIA driver/);
});

test('device choice: --device and CELLFINDER_RETRAIN_DEVICE, with a clear error for anything else', async () => {
  assert.equal(deviceChoice({}), 'auto');
  assert.equal(deviceChoice({ [DEVICE_ENV]: 'cpu' }), 'cpu');
  assert.throws(() => deviceChoice({ [DEVICE_ENV]: 'cuda' }), /CELLFINDER_RETRAIN_DEVICE=cuda is not a device; use one of auto, gpu, cpu/);
  const usage = await cli(['train', '-y', 'x.yaml', '-o', 'out', '--device', 'cuda']);
  assert.equal(usage.code, 2);
  assert.match(usage.err, /--device must be one of auto, gpu, cpu, got cuda/);
});

test('GPU engine: its addon loads in a test process, and TensorFlow says why it has no GPU here', { skip: NO_GPU_ENGINE }, async (t) => {
  if (!GPU_ENGINE.ok) return;
  const { engineDir, manifest } = GPU_ENGINE;
  assert.equal(manifest.variant, 'gpu');
  assert.ok(manifest.cuda && manifest.cuda.libraryPath.every((folder) => existsSync(folder)));
  const probe = await probeEngine(path.join(engineDir, manifest.addon), childEnvironment(process.env, 'gpu'));
  assert.equal(probe.exitCode, 0, probe.log);
  assert.equal(probe.tensorflowVersion, manifest.tensorflowVersion);
  const reading = readGpuLog(probe.log);
  t.diagnostic(probe.usingGpu ? `GPU: ${reading.devices.map((d) => d.name).join(', ')}` : `no GPU: ${reading.reason}`);
  if (HAS_DRIVER) return;
  assert.equal(probe.usingGpu, false);
  assert.equal(reading.problem, 'no-driver');
  const inspection = await inspectGpu({ probe: 'always' });
  assert.equal(inspection.usable, false);
  assert.deepEqual(inspection.cuda?.missing, []);
  assert.equal(inspection.cuda?.versions['libcudnn.so.9'], manifest.cuda?.versions['libcudnn.so.9']);
});

test("GPU engine: the CUDA library path goes into the worker's environment only, never the caller's", { skip: NO_GPU_ENGINE }, async (t) => {
  if (!GPU_ENGINE.ok) return;
  const libraryPath = GPU_ENGINE.manifest.cuda?.libraryPath ?? [];
  const before = { ...process.env };
  const root = scratch(t);
  const config = path.join(root, 'config.json');
  await fs.writeFile(config, JSON.stringify({ yamlFiles: [await tinyDataset(root)], outputDir: path.join(root, 'out'), networkDepth: 18, epochs: 1, batchSize: 4, saveCheckpoints: false }));
  const pid = await startWorker({ nodePath: process.execPath, workerScript: WORKER, mode: 'train', target: config, outputDir: path.join(root, 'out'), device: 'gpu' });
  // Read before it can finish: the environment it was started with.
  const environ = (await fs.readFile(`/proc/${pid}/environ`, 'utf8')).split('\0');
  assert.ok(environ.includes(`${DEVICE_ENV}=gpu`));
  const ld = environ.find((entry) => entry.startsWith('LD_LIBRARY_PATH='))?.slice('LD_LIBRARY_PATH='.length).split(':') ?? [];
  for (const folder of libraryPath) assert.ok(ld.includes(folder), `${folder} on the worker's LD_LIBRARY_PATH`);
  assert.deepEqual({ ...process.env }, before, "this process's environment is unchanged");
  for (const folder of libraryPath) assert.ok(!(process.env.LD_LIBRARY_PATH ?? '').includes(folder));
  assert.equal(childEnvironment(process.env, 'cpu').LD_LIBRARY_PATH, process.env.LD_LIBRARY_PATH, 'a CPU run gets no CUDA path');
  // Its last word, from the run's log.
  const run = await new Promise<RunRecord>((resolve) => {
    const events: TrainingEvent[] = [];
    const follower = new RunFollower(path.join(root, 'out'), (batch) => {
      events.push(...batch);
      const record = summarizeRun(path.join(root, 'out'), events);
      if (record.status !== 'running' && events.some((event) => event.type === 'launched')) {
        follower.close();
        resolve(record);
      }
    });
    void follower.start();
  });
  assert.equal(run.status, 'finished', JSON.stringify(run.events.at(-1)));
  assert.deepEqual(readActiveFile(ROOT).gpuFolder, path.basename(GPU_ENGINE.engineDir));
});

test('GPU engine alone (no CPU engine): --device cpu runs it with its GPUs hidden, natively', { skip: NO_GPU_ENGINE }, async (t) => {
  if (!GPU_ENGINE.ok) return;
  // A cache that holds only the GPU engine: its files hard-linked, its CUDA folders where they are.
  const root = scratch(t);
  const folder = path.basename(GPU_ENGINE.engineDir);
  await new Promise<void>((resolve, reject) => spawn('cp', ['-al', GPU_ENGINE.engineDir, path.join(root, folder)]).on('close', (code) => (code === 0 ? resolve() : reject(new Error(`cp -al: ${code}`)))));
  await fs.writeFile(path.join(root, 'active.json'), JSON.stringify({ gpuFolder: folder }));
  const child = spawn(process.execPath, [path.join(REPO_ROOT, 'bin', 'cellfinder-retrain.js'), 'engine', 'bench', '--network-depth', '18', '--train-batch', '2', '--infer-batch', '2', '--steps', '1', '--device', 'cpu', '--json'], {
    env: { ...process.env, CELLFINDER_RETRAIN_ENGINE_DIR: root },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  let out = '';
  child.stdout.on('data', (chunk: Buffer) => (out += chunk.toString()));
  assert.equal(await new Promise((resolve) => child.on('close', resolve)), 0);
  const result = JSON.parse(out.trim().split('\n').pop() as string) as { backend: string; trainCubesPerSecond: number };
  assert.equal(result.backend, `native TensorFlow ${GPU_ENGINE.manifest.tensorflowVersion} (CPU, GPU engine)`);
  assert.ok(result.trainCubesPerSecond > 0);
});

test('out of memory: the real error of a TensorFlow allocator that is full, classified, with a message a user understands', { skip: NO_NATIVE }, async () => {
  // TensorFlow's CPU allocator as a BFC allocator with a 256 MB limit (its own settings, read when
  // the engine loads; this test file's process loads it first), then a 1.3 GB tensor: a real RESOURCE_EXHAUSTED.
  process.env.TF_CPU_ALLOCATOR_USE_BFC = 'true';
  process.env.TF_CPU_BFC_MEM_LIMIT_IN_MB = '256';
  const loaded = await loadNativeBackend(tf);
  delete process.env.TF_CPU_ALLOCATOR_USE_BFC;
  delete process.env.TF_CPU_BFC_MEM_LIMIT_IN_MB;
  assert.ok(loaded.ok, loaded.ok ? '' : loaded.reason);
  let thrown: unknown;
  try {
    tf.tidy(() => tf.tile(tf.ones([1, 50, 50, 20, 64]), [100, 1, 1, 1, 1]).dataSync());
  } catch (error) {
    thrown = error;
  }
  assert.match(String((thrown as Error)?.message), /^Invalid TF_Status: 8\nMessage: OOM when allocating tensor with shape\[100,50,50,20,64\] and type float on \/job:localhost\/replica:0\/task:0\/device:CPU:0 by allocator/);
  const oom = readOutOfMemory(thrown);
  assert.deepEqual({ device: oom?.device, shape: oom?.shape, dtype: oom?.dtype }, { device: 'CPU:0', shape: [100, 50, 50, 20, 64], dtype: 'float' });
  const error = outOfMemoryError(oom!, { batchSize: 100, networkDepth: 50, fits: 24 });
  assert.ok(error instanceof OutOfMemoryError);
  assert.equal(error.problem, 'Out of memory (TensorFlow device CPU:0) training ResNet-50 at batch size 100: TensorFlow could not allocate a float tensor of shape [100, 50, 50, 20, 64] (1221 MiB)');
  assert.equal(error.fix, 'Batch size 24 fits (tried just now): start the run again with --batch-size 24 (in the editor: Retrain Network with batch size 24)');
  assert.equal(readOutOfMemory(new Error('Invalid TF_Status: 3\nMessage: Conv3D: input depth must be evenly divisible')), undefined);
});

test('out of memory: the GPU allocator\'s wording, JavaScript\'s own, and the batch sizes tried', () => {
  // The GPU's BFC allocator words it as the CPU one does (same format string), naming the GPU.
  const gpu = readOutOfMemory(new Error('Invalid TF_Status: 8\nMessage: OOM when allocating tensor with shape[16,64,25,25,10] and type float on /job:localhost/replica:0/task:0/device:GPU:0 by allocator GPU_0_bfc'));
  assert.equal(outOfMemoryError(gpu!, { batchSize: 16, networkDepth: 50 }).message, 'Out of GPU memory (GPU:0) training ResNet-50 at batch size 16: TensorFlow could not allocate a float tensor of shape [16, 64, 25, 25, 10] (24 MiB). Try batch size 8 (half): start the run again with --batch-size 8 (in the editor: Retrain Network with batch size 8)');
  assert.match(outOfMemoryError(gpu!, { batchSize: 16, networkDepth: 50, fits: 0 }).fix, /^Even one cube does not fit: use a smaller network \(--network-depth 18 or 34\), or free the GPU's memory \(nvidia-smi lists the processes holding it\), or train on the CPU \(--device cpu\)$/);
  assert.equal(readOutOfMemory(new Error('Invalid TF_Status: 13\nMessage: Failed to get convolution algorithm: CUDNN_STATUS_ALLOC_FAILED'))?.device, 'GPU');
  let rangeError: unknown;
  try {
    new ArrayBuffer(2 ** 40);
  } catch (error) {
    rangeError = error;
  }
  assert.equal(readOutOfMemory(rangeError)?.device, 'host');
  assert.deepEqual(smallerBatchSizes(16), [8, 4, 2, 1]);
  assert.deepEqual(smallerBatchSizes(3), [1]);
  assert.deepEqual(smallerBatchSizes(1), []);
});

test('out of memory in a real training run: the worker stops with an error event naming a batch size that fitted', { skip: NO_NATIVE }, async (t) => {
  // Sixteen of cellfinder's real cubes (its four labelled ones, each under four names) and
  // TensorFlow's CPU allocator limited to 1200 MB: ResNet-18's weights, Adam's slots and a step at
  // batch 16 do not fit there, smaller batches do. oneDNN is off for it: its kernels do not all
  // survive an allocator that says no (seen: a segmentation fault), Eigen's do.
  const root = scratch(t);
  const config = path.join(root, 'config.json');
  await fs.writeFile(config, JSON.stringify({ yamlFiles: [await tinyDataset(root, 4)], outputDir: path.join(root, 'out'), networkDepth: 18, epochs: 1, batchSize: 16, testFraction: 0, seed: 1, saveCheckpoints: false }));
  const env = { ...process.env, TF_ENABLE_ONEDNN_OPTS: '0', TF_CPU_ALLOCATOR_USE_BFC: 'true', TF_CPU_BFC_MEM_LIMIT_IN_MB: '1200', [DEVICE_ENV]: 'cpu' };
  const child = spawn(process.execPath, [WORKER, 'train', config], { env, stdio: ['pipe', 'pipe', 'pipe'] });
  const events: TrainingEvent[] = [];
  for await (const line of readline.createInterface({ input: child.stdout })) events.push(JSON.parse(line) as TrainingEvent);
  const code = await new Promise<number | null>((resolve) => (child.exitCode !== null ? resolve(child.exitCode) : child.on('exit', resolve)));
  const error = events.find((event) => event.type === 'error') as Extract<TrainingEvent, { type: 'error' }>;
  assert.ok(error, JSON.stringify(events.at(-1)));
  t.diagnostic(`${error.message}. ${error.fix}`);
  assert.equal(code, 1);
  assert.match(error.message, /^Out of memory \(TensorFlow device CPU:0\) training ResNet-18 at batch size 16: TensorFlow could not allocate a float tensor of shape \[[\d, ]+\]/);
  assert.ok(error.suggestedBatchSize && [1, 2, 4, 8].includes(error.suggestedBatchSize), `suggested ${error.suggestedBatchSize}`);
  assert.equal(error.fix, `Batch size ${error.suggestedBatchSize} fits (tried just now): start the run again with --batch-size ${error.suggestedBatchSize} (in the editor: Retrain Network with batch size ${error.suggestedBatchSize})`);
  assert.equal(events.filter((event) => event.type === 'batch').length, 0, 'no step was taken at batch 16');
});

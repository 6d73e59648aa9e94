/**
 * The native TensorFlow engine (src/engine): gradient checks of the
 * ResNet's operations, a one-batch fit, loading, status and setup.
 *
 * The gradient checks always run on the pure-JS cpu backend (against finite
 * differences). The native ones run when an engine is set up in the cache
 * (`cellfinder-retrain engine setup`; CI runs it first) and are skipped,
 * with the reason, only when there is no engine at all: an engine that is
 * set up but does not load or disagrees fails.
 */
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { existsSync, promises as fs } from 'node:fs';
import * as path from 'node:path';
import { test } from 'node:test';
import * as tf from '@tensorflow/tfjs';
import { cpuMaxPool3dGradIsBroken, fixCpuMaxPool3dGrad } from '../src/engine/cpuMaxPool3dGradFix';
import { ACTIVE_FILE, engineRoot, MANIFEST_FILE, readActiveEngine } from '../src/engine/engineLayout';
import { EngineSetupError, setupEngine, type SetupProgress } from '../src/engine/engineSetup';
import { compareTinyFits, formatGradientChecks, inputValues, resnetGradientCases, runGradientChecks, tinyModelFit } from '../src/training/gradientCheck';
import { engineStatus, loadNativeBackend } from '../src/engine/nativeBackend';
import { nativeConvolution, OWN_KERNELS_ENV, ownKernels } from '../src/engine/nativeKernels';
import { headerClosure, openWheel, readZipDirectory, wheelMetadata, ZipError } from '../src/engine/wheel';
import { forward, initialWeights, resnetSpec } from '../src/training/resnet';
import { assembleBatch, planBatch } from '../src/training/trainingData';
import { ownConvolutionDifferences } from './convolutionCases';
import { fakeWheel, scratch } from './helpers';
import { PEER_CUBES } from './kerasPeer';

const ROOT = engineRoot();
/** Native tests are skipped only when no engine was ever set up here. */
const NO_ENGINE = existsSync(path.join(ROOT, ACTIVE_FILE)) ? undefined : `no native engine in ${ROOT}; set it up with: cellfinder-retrain engine setup`;
/** The native tests run whatever CELLFINDER_RETRAIN_NATIVE says. */
const LOAD_ENV = { ...process.env, CELLFINDER_RETRAIN_NATIVE: undefined };

function failures(results: Awaited<ReturnType<typeof runGradientChecks>>): string[] {
  return results.filter((r) => !r.passed).map((r) => `${r.name}: ${r.failures.join('; ')}`);
}

// First, before anything loads the engine into this process.
test('status and loader say why native is unavailable when no engine is set up', async (t) => {
  const empty = scratch(t);
  const status = engineStatus({ root: empty, env: LOAD_ENV });
  assert.equal(status.installed, false);
  assert.equal(status.loaded, false);
  assert.match(status.reason ?? '', /no native engine is set up in .*cellfinder-retrain engine setup/);
  const result = await loadNativeBackend(tf, { root: empty, env: LOAD_ENV });
  assert.equal(result.ok, false);
  assert.match(result.ok ? '' : result.reason, /no native engine is set up/);
  const off = await loadNativeBackend(tf, { root: empty, env: { ...LOAD_ENV, CELLFINDER_RETRAIN_NATIVE: '0' } });
  assert.match(off.ok ? '' : off.reason, /turned off/);

  // A folder that claims an engine but lacks its files is reported as broken, not missing.
  await fs.mkdir(path.join(empty, 'tfjs-node-4.22.0-tf-2.21.0-linux-x64'));
  await fs.writeFile(path.join(empty, ACTIVE_FILE), JSON.stringify({ folder: 'tfjs-node-4.22.0-tf-2.21.0-linux-x64' }));
  assert.match(engineStatus({ root: empty, env: LOAD_ENV }).reason ?? '', /setup did not finish/);
});

test('cpu backend: the tfjs 4.22 MaxPool3DGrad bug (non-square windows) is detected and fixed', async (t) => {
  const poolCase = resnetGradientCases().filter((c) => c.name.startsWith('maxPool3d'));
  const broken = await cpuMaxPool3dGradIsBroken(tf);
  if (broken) {
    // Without the fix, cellfinder's (3, 3, 2) pool gets gradients that finite differences refute.
    const [before] = await runGradientChecks(tf, 'cpu', { cases: poolCase });
    assert.equal(before.passed, false);
    assert.ok(before.gradientVsFiniteDifference.maxRel > 0.5, `expected the known wrong gradient, got ${before.gradientVsFiniteDifference.maxRel}`);
  } else {
    t.diagnostic('this tfjs-backend-cpu computes MaxPool3DGrad correctly; the fix stays out');
  }
  assert.equal(await fixCpuMaxPool3dGrad(tf), broken);
  assert.equal(await cpuMaxPool3dGradIsBroken(tf), false);
  assert.equal(await fixCpuMaxPool3dGrad(tf), false, 'a second call changes nothing');
  const [after] = await runGradientChecks(tf, 'cpu', { cases: poolCase });
  assert.ok(after.passed, after.failures.join('; '));
});

test('gradient checks on the pure-JS cpu backend: analytic vs central finite differences (float32)', async (t) => {
  await fixCpuMaxPool3dGrad(tf);
  const results = await runGradientChecks(tf, 'cpu');
  t.diagnostic(`\n${formatGradientChecks(results)}`);
  assert.equal(results.length, resnetGradientCases().length);
  assert.deepEqual(failures(results), []);
});

test('native engine: gradient checks vs the cpu backend and vs finite differences', async (t) => {
  if (NO_ENGINE) return t.skip(NO_ENGINE);
  const loaded = await loadNativeBackend(tf, { env: LOAD_ENV });
  assert.ok(loaded.ok, loaded.ok ? '' : `an engine is set up in ${ROOT} but does not load: ${loaded.reason}`);
  t.diagnostic(`TensorFlow ${loaded.info.tensorflowVersion} from ${loaded.info.libraryDir} (loaded in ${loaded.info.loadMs} ms)`);
  assert.equal(tf.getBackend(), 'tensorflow');
  await fixCpuMaxPool3dGrad(tf); // the cpu reference must be right too
  const results = await runGradientChecks(tf, 'tensorflow');
  t.diagnostic(`\n${formatGradientChecks(results)}`);
  assert.equal(results.length, resnetGradientCases().length);
  for (const r of results) {
    assert.ok(r.forwardVsCpu && r.gradientVsCpu, `${r.name}: compared with cpu`);
  }
  assert.deepEqual(failures(results), []);
  assert.equal(tf.getBackend(), 'tensorflow');
});

test('native engine: ResNet-18 inference on real cubes, with batch-norm statistics as training leaves them, equals the cpu backend', async (t) => {
  if (NO_ENGINE) return t.skip(NO_ENGINE);
  assert.ok((await loadNativeBackend(tf, { env: LOAD_ENV })).ok);
  // Fresh weights, with gamma, beta and the moving statistics drawn away from
  // their initial 1, 0, 0, 1 so that every term of the inference formula counts.
  await tf.setBackend('cpu');
  const spec = resnetSpec(18, 2);
  const values = new Map<string, { data: Float32Array; shape: number[] }>();
  for (const [key, variable] of initialWeights(tf, spec, 5)) {
    const kind = /(gamma|moving_variance)$/.test(key) ? 'positive' : /(beta|moving_mean)$/.test(key) ? 'normal' : undefined;
    values.set(key, { data: kind ? inputValues(variable.shape, kind, values.size, 0.5) : (variable.dataSync() as Float32Array), shape: variable.shape });
    variable.dispose();
  }
  // The real cubes four times over: our convolution kernel runs on batches of 12 or more (resnet.ts).
  const samples = [1, 2, 3, 4].flatMap(() => PEER_CUBES).map((ch0) => ({ files: [ch0, ch0.replace(/Ch0\.tif$/, 'Ch1.tif')], label: 0 as const, position: { x: 0, y: 0, z: 0 } }));
  const batch = await assembleBatch(planBatch(samples, { channels: 2, normalise: false }));
  const logitsOn = async (backend: string, observe?: () => void) => {
    await tf.setBackend(backend);
    const weights = new Map([...values].map(([key, v]) => [key, tf.variable(tf.tensor(v.data, v.shape, 'float32'))]));
    const input = tf.tensor5d(batch.inputs, [batch.size, 50, 50, 20, 2]);
    let logits: Float32Array = new Float32Array();
    const { kernelNames } = await tf.profile(() => {
      logits = forward(tf, spec, weights, input, false, observe).logits.dataSync() as Float32Array;
    });
    tf.dispose([input, ...weights.values()]);
    return { logits, kernelNames };
  };
  const { logits: cpu } = await logitsOn('cpu');
  const scale = Math.max(...cpu.map(Math.abs));
  // Our kernels with batch norm, add and ReLU fused; layer by layer (observe turns fusing off); TensorFlow's own ops.
  const fusedRun = await logitsOn('tensorflow');
  assert.ok(ownKernels(tf), 'the CPU engine runs our batch-norm and convolution kernels (native/cellfinder_kernels.cc)');
  for (const kernel of ['CellfinderConvolution', 'CellfinderBatchNormReluMaxPool', 'CellfinderBatchNormAddRelu']) assert.ok(fusedRun.kernelNames.includes(kernel), `inference ran ${kernel}`);
  const fused = fusedRun.logits;
  const layerByLayer = (await logitsOn('tensorflow', () => undefined)).logits;
  process.env[OWN_KERNELS_ENV] = '0';
  const tensorflowOpsRun = await logitsOn('tensorflow').finally(() => delete process.env[OWN_KERNELS_ENV]);
  assert.ok(!tensorflowOpsRun.kernelNames.some((name) => name.startsWith('Cellfinder') && name !== 'CellfinderNativeRelu' && name !== 'CellfinderNativeBatchNormInference'), `with ${OWN_KERNELS_ENV}=0 only TensorFlow's ops: ${tensorflowOpsRun.kernelNames}`);
  const tensorflowOps = tensorflowOpsRun.logits;
  for (const [name, native] of Object.entries({ fused, layerByLayer, tensorflowOps })) {
    const worst = Math.max(...native.map((v, i) => Math.abs(v - cpu[i])));
    t.diagnostic(`${name}: logits of ${batch.size} cubes: largest |cpu| ${scale.toExponential(2)}, largest |native - cpu| ${worst.toExponential(2)}`);
    assert.ok(worst <= 1e-4 * scale, `${name}: native logits differ from cpu by ${worst} (scale ${scale})`);
  }
});

test('native engine: our fused inference kernels keep a NaN, as TensorFlow\'s Relu does, so a diverged model does not look like a working one', async (t) => {
  if (NO_ENGINE) return t.skip(NO_ENGINE);
  assert.ok((await loadNativeBackend(tf, { env: LOAD_ENV })).ok);
  const identity = { gamma: tf.ones([1]), beta: tf.zeros([1]), mean: tf.zeros([1]), variance: tf.ones([1]) };
  const x = tf.tensor5d([NaN, -1, 2, -3], [1, 2, 2, 1, 1]);
  const values = (tensor: unknown) => Array.from((tensor as tf.Tensor).dataSync());
  assert.deepEqual(values(tf.relu(x)), [NaN, 0, 2, 0], "TensorFlow's own Relu");
  assert.deepEqual(values(tf.engine().runKernel('CellfinderBatchNormInference', { x, ...identity }, { epsilon: 0, relu: true })), [NaN, 0, 2, 0]);
  assert.deepEqual(values(tf.engine().runKernel('CellfinderBatchNormAddRelu', { x, ...identity, shortcut: tf.zeros([1, 2, 2, 1, 1]) }, { epsilon: 0 })), [NaN, 0, 2, 0]);
  // Wherever the NaN sits in the window.
  for (const window of [[NaN, 1, 2, 3], [1, 2, 3, NaN]]) {
    assert.deepEqual(values(tf.engine().runKernel('CellfinderBatchNormReluMaxPool', { x: tf.tensor5d(window, [1, 2, 2, 1, 1]), ...identity }, { epsilon: 0, pool: [2, 2, 1], strides: [1, 1, 1] })), [NaN]);
  }
});

test('native engine: our convolution kernel equals TensorFlow\'s Conv3D on each layer shape inference gives it, any batch size, padding and strides, in each instruction set\'s variant', async (t) => {
  if (NO_ENGINE) return t.skip(NO_ENGINE);
  assert.ok((await loadNativeBackend(tf, { env: LOAD_ENV })).ok);
  assert.ok(ownKernels(tf));
  assert.deepEqual(ownConvolutionDifferences(tf), []);
  // The variant is chosen once per process: the narrower ones (this CPU runs them too) each in a child.
  const child = `const tf = require('@tensorflow/tfjs');
    require(${JSON.stringify(path.join(__dirname, '..', 'src', 'engine', 'nativeBackend.js'))}).loadNativeBackend(tf).then((loaded) => {
      if (!loaded.ok) throw new Error('no native engine');
      console.log(JSON.stringify(require(${JSON.stringify(path.join(__dirname, 'convolutionCases.js'))}).ownConvolutionDifferences(tf)));
    });`;
  for (const isa of ['avx2', 'sse']) {
    const env: NodeJS.ProcessEnv = { ...process.env, CELLFINDER_RETRAIN_CONVOLUTION_ISA: isa };
    delete env.CELLFINDER_RETRAIN_NATIVE;
    const run = spawnSync(process.execPath, ['-e', child], { cwd: path.join(__dirname, '..', '..'), env, encoding: 'utf8' });
    assert.equal(run.status, 0, run.stderr);
    assert.deepEqual(JSON.parse(run.stdout.trim().split('\n').pop() as string), [], `the ${isa} variant`);
  }
  assert.throws(() => nativeConvolution(tf, tf.ones([1, 4, 4, 4, 2]) as tf.Tensor5D, tf.ones([3, 3, 3, 2, 32]) as tf.Tensor5D, [1, 1, 1], 1), /CellfinderConvolution: the kernel's axis 3 must equal the input's channels and its filters be a multiple of 64/);
  assert.throws(() => nativeConvolution(tf, tf.ones([1, 4, 4, 4, 3]) as tf.Tensor5D, tf.ones([3, 3, 3, 2, 64]) as tf.Tensor5D, [1, 1, 1], 1), /CellfinderConvolution: the kernel's axis 3 must equal the input's channels/);
  assert.throws(() => nativeConvolution(tf, tf.ones([1, 2, 2, 2, 2]) as tf.Tensor5D, tf.ones([5, 5, 5, 2, 64]) as tf.Tensor5D, [1, 1, 1], 0), /CellfinderConvolution: .*the kernel must fit in the padded input/);
});

test('native engine: our batch-norm kernels name themselves and the problem when given a tensor of the wrong shape', async (t) => {
  if (NO_ENGINE) return t.skip(NO_ENGINE);
  assert.ok((await loadNativeBackend(tf, { env: LOAD_ENV })).ok);
  const perZ = tf.ones([4]);
  assert.throws(() => tf.engine().runKernel('CellfinderBatchNormTraining', { x: tf.ones([2, 3, 4, 5]), gamma: perZ, beta: perZ }, { epsilon: 1e-5 }), /CellfinderBatchNormTraining: the input must be 5-D \(batch, y, x, z, channels\)/);
  assert.throws(() => tf.engine().runKernel('CellfinderBatchNormTraining', { x: tf.ones([1, 2, 2, 3, 2]), gamma: perZ, beta: perZ }, { epsilon: 1e-5 }), /CellfinderBatchNormTraining: each per-z input must have one value per z/);
  const x = tf.ones([1, 2, 2, 4, 2]);
  assert.throws(() => tf.engine().runKernel('CellfinderBatchNormAddRelu', { x, gamma: perZ, beta: perZ, mean: perZ, variance: perZ, shortcut: tf.ones([1, 2, 2, 4, 3]) }, { epsilon: 1e-5 }), /CellfinderBatchNormAddRelu: x and the shortcut must have the same shape/);
  assert.throws(() => tf.engine().runKernel('CellfinderBatchNormTrainingGrad', { dy: tf.ones([1, 2, 2, 4, 3]), x, mean: perZ, variance: perZ, gamma: perZ }, { epsilon: 1e-5 }), /CellfinderBatchNormTrainingGrad: dy and x must have the same shape/);
});

test('native engine: a one-batch fit of a tiny tfjs-layers model matches the cpu backend', async (t) => {
  if (NO_ENGINE) return t.skip(NO_ENGINE);
  assert.ok((await loadNativeBackend(tf, { env: LOAD_ENV })).ok);
  await fixCpuMaxPool3dGrad(tf);
  const cpu = await tinyModelFit(tf, 'cpu');
  const native = await tinyModelFit(tf, 'tensorflow');
  t.diagnostic(`loss before/after one SGD step: cpu ${cpu.lossBefore.toFixed(6)} -> ${cpu.lossAfter.toFixed(6)}, native ${native.lossBefore.toFixed(6)} -> ${native.lossAfter.toFixed(6)}`);
  assert.ok(native.lossAfter < native.lossBefore, 'one step of SGD lowers the batch loss');
  const agreement = compareTinyFits(native, cpu);
  assert.ok(agreement.passed, JSON.stringify(agreement));
  await tf.setBackend('tensorflow');
});

test('native engine: one tfjs-core in the process, library found through the addon\'s RUNPATH', async (t) => {
  if (NO_ENGINE) return t.skip(NO_ENGINE);
  const loaded = await loadNativeBackend(tf, { env: LOAD_ENV });
  assert.ok(loaded.ok);
  const coreCopies = new Set(
    Object.keys(require.cache)
      .map((file) => /^(.*[\\/]@tensorflow[\\/]tfjs-core)[\\/]/.exec(file)?.[1])
      .filter(Boolean),
  );
  assert.equal(coreCopies.size, 1, `tfjs-core loaded from ${[...coreCopies].join(', ')}`);
  assert.equal(existsSync(path.join(loaded.info.engineDir, 'tfjs-node', 'node_modules', '@tensorflow')), false);
  assert.ok(!(process.env.LD_LIBRARY_PATH ?? '').includes(loaded.info.libraryDir), 'no LD_LIBRARY_PATH needed');
  // The dynamic loader found the engine's own libtensorflow (RUNPATH $ORIGIN/../../deps/lib).
  const maps = await fs.readFile('/proc/self/maps', 'utf8');
  assert.ok(maps.includes(path.join(loaded.info.libraryDir, 'libtensorflow_cc.so.2')), 'libtensorflow_cc.so.2 is mapped from the engine folder');
  const status = engineStatus({ tf, env: LOAD_ENV });
  assert.equal(status.loaded, true);
  assert.equal(status.activeBackend, 'tensorflow');
  assert.equal(status.reason, undefined);
});

test('native engine: a second setup finds it and does nothing', async (t) => {
  if (NO_ENGINE) return t.skip(NO_ENGINE);
  const active = readActiveEngine(ROOT);
  assert.ok(active.ok, active.ok ? '' : active.reason);
  const events: SetupProgress[] = [];
  const manifestBefore = await fs.stat(path.join(active.engineDir, MANIFEST_FILE));
  const result = await setupEngine({ onProgress: (p) => events.push(p) });
  assert.equal(result.alreadyInstalled, true);
  assert.equal(result.engineDir, active.engineDir);
  // Nothing rebuilt or rewritten: the manifest (written last by a build) is untouched, and no step but "done" ran.
  assert.equal((await fs.stat(path.join(active.engineDir, MANIFEST_FILE))).mtimeMs, manifestBefore.mtimeMs);
  assert.deepEqual(events.map((e) => [e.step, e.fraction]), [['done', 1]]);
});

test('wheel reader: only the libraries and the headers the addon reaches come out, CRC-checked', async (t) => {
  const dir = scratch(t);
  const wheelFile = path.join(dir, 'tensorflow_cpu-2.99.0-cp311-cp311-manylinux_2_27_x86_64.whl');
  await fs.writeFile(wheelFile, fakeWheel());
  const wheel = await openWheel(wheelFile);
  assert.deepEqual(await wheelMetadata(wheel), { name: 'tensorflow-cpu', version: '2.99.0' });
  assert.deepEqual(await headerClosure(wheel, ['tensorflow/c/c_api.h', 'tensorflow/c/eager/c_api.h', 'tensorflow/not/there.h']), [
    'tensorflow/c/c_api.h',
    'tensorflow/c/eager/c_api.h',
    'tensorflow/c/tf_status.h',
    'tensorflow/c/tf_tensor.h',
    'xla/tsl/c/tsl_status.h',
  ]);
  const out = path.join(dir, 'lib', 'libtensorflow_cc.so.2');
  let reported = 0;
  await wheel.copyTo('tensorflow/libtensorflow_cc.so.2', out, (bytes) => (reported = bytes));
  assert.equal(reported, 300_000);
  const expected = new Uint8Array(300_000).map((_, i) => (i * 7919) % 251);
  assert.deepEqual(new Uint8Array(await fs.readFile(out)), expected);
  await wheel.copyTo('tensorflow/libtensorflow_framework.so.2', path.join(dir, 'lib', 'fw'));
  assert.equal((await fs.stat(path.join(dir, 'lib', 'fw'))).size, 1000);

  // A flipped byte in the compressed data is caught by the CRC (or by inflate), and leaves no file behind.
  const entries = await readZipDirectory(wheelFile);
  const entry = entries.get('tensorflow/libtensorflow_cc.so.2');
  assert.ok(entry);
  const bytes = await fs.readFile(wheelFile);
  bytes[entry.localHeaderOffset + 30 + entry.name.length + 100] ^= 0xff;
  const corrupt = path.join(dir, 'corrupt.whl');
  await fs.writeFile(corrupt, bytes);
  await assert.rejects((await openWheel(corrupt)).copyTo('tensorflow/libtensorflow_cc.so.2', path.join(dir, 'bad.so')), (error: Error) => error instanceof ZipError || /invalid|incorrect/i.test(error.message));
  assert.equal(existsSync(path.join(dir, 'bad.so')), false);
  assert.equal(existsSync(path.join(dir, 'bad.so.partial')), false);
  await fs.writeFile(path.join(dir, 'not.whl'), 'hello');
  await assert.rejects(readZipDirectory(path.join(dir, 'not.whl')), /not a zip file/);
});

test('setup: errors a user can act on, before any download', { skip: process.platform !== 'linux' || process.arch !== 'x64' ? 'the engine is Linux x86-64 only' : false }, async (t) => {
  const root = scratch(t);
  const setupError = async (options: Parameters<typeof setupEngine>[0]) => {
    try {
      await setupEngine({ root, force: true, ...options });
    } catch (error) {
      assert.ok(error instanceof EngineSetupError, String(error));
      return error;
    }
    assert.fail('setup should have failed');
  };
  const noWheel = await setupError({ wheel: path.join(root, 'missing.whl') });
  assert.equal(noWheel.code, 'BAD_WHEEL');
  assert.match(noWheel.message, /does not exist/);

  const notTensorFlow = path.join(root, 'thing.whl');
  await fs.writeFile(notTensorFlow, fakeWheel({ metadata: false }));
  const bad = await setupError({ wheel: notTensorFlow });
  assert.equal(bad.code, 'BAD_WHEEL');
  assert.match(bad.message, /not a TensorFlow wheel/);

  const noPython = await setupError({ python: path.join(root, 'no-such-python3'), source: 'download' });
  assert.equal(noPython.code, 'NO_PYTHON');
  assert.match(noPython.message, /Python 3 was not found.*--python/);
  assert.ok(noPython.logFile && existsSync(noPython.logFile), 'the tools\' output is kept in a log file');
  assert.equal(existsSync(path.join(root, 'downloads')), false, 'nothing was downloaded');
});

/**
 * `npm run bench [-- extraction|models|labelling|editor|scale]`: cube extraction speed and
 * peak memory on a synthetic whole-volume far larger than the cubes it
 * extracts, then training and inference speed of the network on each engine,
 * then the labelling page's key-to-paint latency, then the extension in a real
 * VS Code (activation, key to paint, tree updates). `scale` (not part of the
 * default run: it writes 9 GiB) measures labelling and candidate files on
 * whole-brain-sized data (bench/scaleBench.ts). Each case
 * runs in its own process so its figures (and peak memory) are its own.
 * Prints tables.
 */
import { spawnSync } from 'node:child_process';
import { existsSync, mkdirSync, promises as fs, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import * as path from 'node:path';
import { TrainingDataset } from '../src/core/dataset';
import { BAND_BYTES_PER_CHANNEL, extractCubes, planExtraction, type VoxelSizes } from '../src/core/extraction';
import { encodeFloat32Stack } from '../src/core/tiffWriter';
import { openVolume } from '../src/core/volume';
import { benchEditor } from './editorBench';
import { benchLabelling } from './labellingBench';
import { benchScale, runScaleStep } from './scaleBench';
import { benchPipeline, type PipelineBenchResult } from './modelBench';
import { benchModel, type ModelBenchResult } from '../src/training/modelSpeed';
import type { NetworkDepth } from '../src/training/resnet';

const PLANES = 120;
const SIDE = 2048;
const POINTS = 3000;
/** Batches per pipeline run: enough that the median interval is not one noisy batch. */
const PIPELINE_BATCHES = 10;
/** Timed steps (median printed) per native or Keras case, the same on both sides. */
const NATIVE_STEPS = 8;

interface CaseResult {
  name: string;
  cubes: number;
  seconds: number;
  maxRssMiB: number;
}

async function makeVolume(folder: string): Promise<void> {
  if (existsSync(path.join(folder, 'done'))) return;
  mkdirSync(folder, { recursive: true });
  const plane = new Float32Array(SIDE * SIDE);
  for (let z = 0; z < PLANES; z++) {
    for (let i = 0; i < plane.length; i++) plane[i] = (i * 31 + z * 17) % 4096;
    await fs.writeFile(path.join(folder, `plane_${z}.tif`), encodeFloat32Stack(plane, 1, SIDE, SIDE));
  }
  await fs.writeFile(path.join(folder, 'done'), '');
}

/** Deterministic pseudo-random points spread through the volume. */
function points(): Array<{ x: number; y: number; z: number }> {
  let seed = 12345;
  const next = () => (seed = (seed * 1103515245 + 12345) % 2 ** 31) / 2 ** 31;
  return Array.from({ length: POINTS }, () => ({ x: Math.floor(20 + next() * (SIDE - 40)), y: Math.floor(20 + next() * (SIDE - 40)), z: Math.floor(12 + next() * (PLANES - 24)) }));
}

async function runCase(volumeDir: string, name: string, voxelSizes: VoxelSizes | undefined, writeTo: string | undefined): Promise<void> {
  const channels = [await openVolume(volumeDir), await openVolume(volumeDir)];
  const plan = planExtraction({ points: points(), channels, dataVoxelSizes: voxelSizes });
  const dataset = writeTo ? await TrainingDataset.create(writeTo) : undefined;
  const start = process.hrtime.bigint();
  let cubes = 0;
  for await (const cube of extractCubes(plan, channels)) {
    if (dataset) await dataset.addCube({ position: cube.point, label: 'cell', channels: cube.channels, source: volumeDir });
    cubes++;
  }
  const seconds = Number(process.hrtime.bigint() - start) / 1e9;
  const result: CaseResult = { name, cubes, seconds, maxRssMiB: process.resourceUsage().maxRSS / 1024 };
  process.stdout.write(`${JSON.stringify(result)}\n`);
}

async function main(): Promise<void> {
  const [mode, volumeDir, name, voxels, writeTo] = process.argv.slice(2);
  if (mode === 'model') {
    // argv: model <depth> <train batch> <infer batch> <steps>
    const [depth, trainBatch, inferBatch, steps] = process.argv.slice(3).map(Number);
    process.stdout.write(`${JSON.stringify(await benchModel(depth as NetworkDepth, trainBatch, inferBatch, steps))}\n`);
    return;
  }
  if (mode === 'pipeline') {
    // argv: pipeline <depth> <batch> <batches>
    const [depth, batch, batches] = process.argv.slice(3).map(Number);
    const folder = path.join(tmpdir(), `cellfinder-retrain-bench-pipeline-${process.pid}`);
    process.stdout.write(`${JSON.stringify(await benchPipeline(depth as NetworkDepth, batch, batches, folder))}\n`);
    return;
  }
  if (mode === 'case') {
    await runCase(volumeDir, name, voxels === 'none' ? undefined : (voxels.split(',').map(Number) as unknown as VoxelSizes), writeTo === 'none' ? undefined : writeTo);
    return;
  }
  if (mode === 'models') {
    benchModels();
    return;
  }
  if (mode === 'labelling') {
    await benchLabelling();
    return;
  }
  if (mode === 'editor') {
    await benchEditor();
    return;
  }
  if (mode === 'scale') {
    await benchScale(__filename);
    return;
  }
  if (mode === 'scale-step') {
    await runScaleStep(volumeDir, name);
    return;
  }
  const work = path.join(tmpdir(), 'cellfinder-retrain-bench');
  const volume = path.join(work, 'volume');
  process.stderr.write(`making a synthetic volume: ${PLANES} planes of ${SIDE}x${SIDE} float32 (${((PLANES * SIDE * SIDE * 4) / 2 ** 30).toFixed(1)} GiB, used as both channels)...\n`);
  await makeVolume(volume);
  const cases: Array<[string, string, boolean]> = [
    ['no rescaling (5, 1, 1 µm)', 'none', false],
    ['rescaled from 5, 2, 2 µm', '5,2,2', false],
    ['rescaled from 2.5, 0.8, 0.8 µm', '2.5,0.8,0.8', false],
    ['rescaled from 5, 2, 2 µm + saved to dataset', '5,2,2', true],
  ];
  const results: CaseResult[] = [];
  for (const [name, voxels, save] of cases) {
    const out = path.join(work, `dataset-${results.length}`);
    rmSync(out, { recursive: true, force: true });
    const run = spawnSync(process.execPath, [__filename, 'case', volume, name, voxels, save ? out : 'none'], { encoding: 'utf8' });
    if (run.status !== 0) throw new Error(run.stderr);
    results.push(JSON.parse(run.stdout.trim()) as CaseResult);
    rmSync(out, { recursive: true, force: true });
  }
  const volumeMiB = (PLANES * SIDE * SIDE * 4 * 2) / 2 ** 20;
  console.log(`\nCube extraction, ${POINTS} points, 2 channels, volume ${PLANES}x${SIDE}x${SIDE} float32 per channel (${(volumeMiB / 1024).toFixed(1)} GiB both channels), Node ${process.version}\n`);
  console.log('| case | cubes | seconds | cubes/s | peak RSS (MiB) | cube data out (MiB) |');
  console.log('|---|---|---|---|---|---|');
  for (const r of results) {
    console.log(`| ${r.name} | ${r.cubes} | ${r.seconds.toFixed(2)} | ${(r.cubes / r.seconds).toFixed(0)} | ${r.maxRssMiB.toFixed(0)} | ${((r.cubes * 2 * 20 * 50 * 50 * 4) / 2 ** 20).toFixed(0)} |`);
  }
  console.log(`\nPeak memory stays bounded by one band of rows (${BAND_BYTES_PER_CHANNEL / 2 ** 20} MiB of one cuboid depth per channel; freed rows are collected lazily), not the volume.`);
  if (mode !== 'extraction') {
    benchModels();
    await benchLabelling();
    await benchEditor();
  }
}

/**
 * Training (Adam step, batch 16) and inference (batch 64) of ResNet-18 and
 * -50 on each engine, then the whole training pipeline on the native one. The pure-JavaScript engine is ~100x slower, so it runs
 * smaller batches and a single step.
 */
function benchModels(): void {
  const cases: Array<{ native: boolean; depth: number; trainBatch: number; inferBatch: number; steps: number }> = [
    { native: true, depth: 18, trainBatch: 16, inferBatch: 64, steps: NATIVE_STEPS },
    { native: true, depth: 50, trainBatch: 16, inferBatch: 64, steps: NATIVE_STEPS },
    { native: false, depth: 18, trainBatch: 2, inferBatch: 4, steps: 1 },
    { native: false, depth: 50, trainBatch: 1, inferBatch: 2, steps: 1 },
  ];
  const results: ModelBenchResult[] = [];
  for (const c of cases) {
    const env = { ...process.env, ...(c.native ? {} : { CELLFINDER_RETRAIN_NATIVE: '0' }) };
    const result = runBenchProcess<ModelBenchResult>(['model', String(c.depth), String(c.trainBatch), String(c.inferBatch), String(c.steps)], env);
    if (c.native && !result.backend.startsWith('native')) {
      console.log(`\n(native engine not set up: run "cellfinder-retrain engine setup" to bench it)`);
      continue;
    }
    results.push(result);
  }
  // cellfinder itself (Keras 3 + a backend) in the same run, when a Python with it is given.
  const python = process.env.CELLFINDER_BENCH_KERAS_PYTHON;
  for (const kerasBackend of python ? (process.env.CELLFINDER_BENCH_KERAS_BACKENDS ?? 'torch').split(',') : []) {
    for (const depth of [18, 50]) {
      const script = path.resolve(__dirname, '..', '..', 'test', 'python', 'bench_keras.py');
      const run = spawnSync(python as string, [script, String(depth), '16', '64', String(NATIVE_STEPS)], { encoding: 'utf8', env: { ...process.env, KERAS_BACKEND: kerasBackend } });
      if (run.status !== 0) {
        console.log(`(Keras ${kerasBackend} bench failed: ${run.stderr.trim().split('\n').pop()})`);
        continue;
      }
      const keras = JSON.parse(run.stdout.trim().split('\n').pop() as string) as Omit<ModelBenchResult, 'forwardGflopPerCube'>;
      results.push({ ...keras, forwardGflopPerCube: results.find((r) => r.depth === depth)?.forwardGflopPerCube ?? 0 });
    }
  }
  console.log(`\ncellfinder's ResNet, 2 channels, 50x50x20 cubes, Adam; training FLOPs taken as 3x forward\n`);
  console.log('| engine | model | forward GFLOP/cube | train batch | train cubes/s | train GFLOP/s | infer batch | infer cubes/s | infer GFLOP/s |');
  console.log('|---|---|---|---|---|---|---|---|---|');
  for (const r of results) {
    console.log(
      `| ${r.backend} | ResNet-${r.depth} | ${r.forwardGflopPerCube.toFixed(2)} | ${r.trainBatch} | ${r.trainCubesPerSecond.toFixed(2)} | ${(r.trainCubesPerSecond * 3 * r.forwardGflopPerCube).toFixed(1)} | ${r.inferBatch} | ${r.inferCubesPerSecond.toFixed(2)} | ${(r.inferCubesPerSecond * r.forwardGflopPerCube).toFixed(1)} |`,
    );
  }
  benchPipelines(results.filter((r) => r.backend.startsWith('native')));
}

/**
 * The trainer on real cube files with augmentation, batch 16, next to the
 * step-only figures of the same engine: the difference is what reading,
 * normalising, augmenting and packing cost on the critical path. The native
 * engine only (the JavaScript one would take minutes per batch); each case
 * runs 3 times, the median is printed.
 */
function benchPipelines(steps: ModelBenchResult[]): void {
  if (steps.length === 0) return;
  console.log(`\nThe training pipeline: real cube files read from disk, normalised, augmented (cellfinder's defaults), packed and trained by the trainer, ${PIPELINE_BATCHES} batches of 16, median of 3 runs of the median batch after the first; and the same batches assembled alone on one thread\n`);
  console.log('| engine | model | batch | train step only, cubes/s | whole pipeline, cubes/s | data on the critical path, ms/batch | batch assembly alone (one thread), ms/batch |');
  console.log('|---|---|---|---|---|---|---|');
  for (const step of steps) {
    const runs = [0, 1, 2].map(() => runBenchProcess<PipelineBenchResult>(['pipeline', String(step.depth), String(step.trainBatch), String(PIPELINE_BATCHES)], process.env)).sort((a, b) => a.secondsPerBatch - b.secondsPerBatch);
    const { secondsPerBatch: seconds, assemblySecondsPerBatch } = runs[1];
    console.log(
      `| ${step.backend} | ResNet-${step.depth} | ${step.trainBatch} | ${step.trainCubesPerSecond.toFixed(2)} | ${(step.trainBatch / seconds).toFixed(2)} | ${(1000 * (seconds - step.trainBatch / step.trainCubesPerSecond)).toFixed(0)} | ${(1000 * assemblySecondsPerBatch).toFixed(0)} |`,
    );
  }
}

/** Runs one bench case in its own process and returns the JSON it prints last. */
function runBenchProcess<T>(args: string[], env: NodeJS.ProcessEnv): T {
  const run = spawnSync(process.execPath, [__filename, ...args], { encoding: 'utf8', env });
  if (run.status !== 0) throw new Error(run.stderr);
  return JSON.parse(run.stdout.trim().split('\n').pop() as string) as T;
}

main().catch((error) => {
  console.error(error);
  process.exitCode = 1;
});

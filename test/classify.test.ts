/**
 * Classification that can stop and continue: a kill -9 or Ctrl-C mid-run
 * keeps what was classified (flushed batch by batch), and the same command
 * finishes the rest, giving exactly the files an uninterrupted run gives.
 */
import assert from 'node:assert/strict';
import { spawn, spawnSync } from 'node:child_process';
import { existsSync, promises as fs } from 'node:fs';
import * as path from 'node:path';
import { test } from 'node:test';
import * as tf from '@tensorflow/tfjs';
import { writeCellCounterXml } from '../src/core/cellCounterXml';
import { encodeStack } from '../src/core/tiffWriter';
import { openVolume } from '../src/core/volume';
import { PARTIAL_RESULTS } from '../src/training/inference';
import { TRAIN_CONFIG_FILE } from '../src/training/trainConfig';
import { writeKerasModel } from '../src/training/modelFiles';
import { initialWeights, resnetSpec } from '../src/training/resnet';
import { REPO_ROOT, SAMPLE, scratch } from './helpers';

const CLI = path.join(REPO_ROOT, 'bin', 'cellfinder-retrain.js');

function classifyArgs(model: string, output: string): string[] {
  return ['classify', '--trained-model', model, '--signal', path.join(SAMPLE, 'signal'), '--background', path.join(SAMPLE, 'background'), '--points', path.join(SAMPLE, 'candidates', 'candidates.xml'), '--voxel-sizes', '5', '2', '2', '--network-depth', '18', '--batch-size', '2', '-o', output];
}

/** Runs classify and stops it with `signal` once it reports `after` candidates done; resolves with its exit code and stderr. */
function interrupted(args: string[], after: number, signal: NodeJS.Signals): Promise<{ code: number | null; stderr: string }> {
  return new Promise((resolve) => {
    const child = spawn(process.execPath, [CLI, ...args], { stdio: ['ignore', 'ignore', 'pipe'] });
    let stderr = '';
    let sent = false;
    child.stderr.on('data', (chunk: Buffer) => {
      stderr += chunk;
      const done = [...stderr.matchAll(/classifying: (\d+)\//g)].map((m) => Number(m[1]));
      if (!sent && done.some((n) => n >= after)) {
        sent = true;
        child.kill(signal);
      }
    });
    child.on('exit', (code) => resolve({ code, stderr }));
  });
}

test('classify stopped by kill -9 or Ctrl-C continues where it stopped and writes what an uninterrupted run writes', { timeout: 10 * 60_000 }, async (t) => {
  const root = scratch(t);
  const model = path.join(root, 'random.keras');
  const spec = resnetSpec(18, 2);
  await writeKerasModel(model, spec, initialWeights(tf, spec, 3));

  const clean = path.join(root, 'clean');
  const whole = spawnSync(process.execPath, [CLI, ...classifyArgs(model, clean)], { encoding: 'utf8' });
  assert.equal(whole.status, 0, whole.stderr);
  assert.match(whole.stderr, /classifying: 13\/13 \(100%/);
  const expectedCsv = await fs.readFile(path.join(clean, 'classified_points.csv'), 'utf8');
  const expectedXml = await fs.readFile(path.join(clean, 'classified_points.xml'), 'utf8');
  assert.ok(!existsSync(path.join(clean, PARTIAL_RESULTS)));
  // The same command after it finished (a resubmitted array job's finished brains) classifies nothing again...
  const repeated = spawnSync(process.execPath, [CLI, ...classifyArgs(model, clean)], { encoding: 'utf8' });
  assert.equal(repeated.status, 0, repeated.stderr);
  assert.match(repeated.stderr, /all 13 candidate\(s\) were classified by an earlier run of this command/);
  assert.doesNotMatch(repeated.stderr, /classifying: [0-9]\//);
  assert.equal(await fs.readFile(path.join(clean, 'classified_points.csv'), 'utf8'), expectedCsv);
  // ...unless the model file changed since (retrained in place): then every candidate is classified with it.
  const later = new Date(Date.now() + 60_000);
  await fs.utimes(model, later, later);
  const changed = spawnSync(process.execPath, [CLI, ...classifyArgs(model, clean)], { encoding: 'utf8' });
  assert.equal(changed.status, 0, changed.stderr);
  assert.doesNotMatch(changed.stderr, /earlier run|already classified/);
  assert.match(changed.stderr, /classifying: 13\/13 \(100%/);

  for (const signal of ['SIGKILL', 'SIGINT'] as const) {
    const output = path.join(root, `stopped-${signal}`);
    const stopped = await interrupted(classifyArgs(model, output), 4, signal);
    if (signal === 'SIGINT') {
      assert.equal(stopped.code, 3, stopped.stderr);
      assert.match(stopped.stderr, /Stopped\. Run the same command again to classify the rest/);
    }
    const partial = (await fs.readFile(path.join(output, PARTIAL_RESULTS), 'utf8')).trim().split('\n');
    assert.ok(partial.length >= 5, `${signal}: the batches done before the stop are on disk (${partial.length - 1} rows)`);
    const again = spawnSync(process.execPath, [CLI, ...classifyArgs(model, output)], { encoding: 'utf8' });
    assert.equal(again.status, 0, again.stderr);
    const resumed = Number(/continued an interrupted run: (\d+) candidate\(s\) were already classified/.exec(again.stderr)?.[1]);
    assert.ok(resumed >= 4 && resumed < 13, `${signal}: ${resumed} taken from the partial file`);
    assert.equal(await fs.readFile(path.join(output, 'classified_points.csv'), 'utf8'), expectedCsv, `${signal}: the same probabilities, in input order`);
    assert.equal(await fs.readFile(path.join(output, 'classified_points.xml'), 'utf8'), expectedXml);
    assert.ok(!existsSync(path.join(output, PARTIAL_RESULTS)), 'the partial file is removed once done');
  }

  // A partial file of another classification (another model) is not taken.
  const other = path.join(root, 'other');
  await fs.mkdir(other);
  await fs.writeFile(path.join(other, PARTIAL_RESULTS), '# {"model":"/elsewhere/model.keras"}\n0,1,1,1,2,0.9\n');
  const fresh = spawnSync(process.execPath, [CLI, ...classifyArgs(model, other)], { encoding: 'utf8' });
  assert.equal(fresh.status, 0, fresh.stderr);
  assert.doesNotMatch(fresh.stderr, /continued an interrupted run/);
  assert.equal(await fs.readFile(path.join(other, 'classified_points.csv'), 'utf8'), expectedCsv);
});

test('classify --normalize-channels with an empty background channel: exit 1, the error names the volume and the fix; the model\'s run says how it was trained', { timeout: 5 * 60_000 }, async (t) => {
  const root = scratch(t);
  const runFolder = path.join(root, 'run');
  await fs.mkdir(runFolder);
  const model = path.join(runFolder, 'model.keras');
  const spec = resnetSpec(18, 2);
  await writeKerasModel(model, spec, initialWeights(tf, spec, 3));
  await fs.writeFile(path.join(runFolder, TRAIN_CONFIG_FILE), JSON.stringify({ normalizeChannels: true }));
  const [depth, height, width] = [30, 120, 120];
  const background = path.join(root, 'background.tif');
  await fs.writeFile(background, encodeStack(new Uint16Array(depth * height * width), depth, height, width));
  // Real signal: the sample's planes, cropped to the same shape.
  const signalPlanes = new Uint16Array(depth * height * width);
  const sample = await openVolume(path.join(SAMPLE, 'signal'));
  for (let z = 0; z < depth; z++) {
    const plane = await sample.readRows(z % sample.shape[0], 500, 500 + height);
    for (let y = 0; y < height; y++) signalPlanes.set(plane.subarray(y * sample.shape[2] + 300, y * sample.shape[2] + 300 + width) as Uint16Array, (z * height + y) * width);
  }
  await sample.close();
  const signal = path.join(root, 'signal.tif');
  await fs.writeFile(signal, encodeStack(signalPlanes, depth, height, width));
  const points = path.join(root, 'points.xml');
  await writeCellCounterXml(points, [{ x: 60, y: 60, z: 15, type: 1 }]);
  const args = ['classify', '--trained-model', model, '--signal', signal, '--background', background, '--points', points, '--network-depth', '18', '-o', path.join(root, 'out')];

  const normalised = spawnSync(process.execPath, [CLI, ...args, '--normalize-channels'], { encoding: 'utf8' });
  assert.equal(normalised.status, 1, normalised.stderr);
  assert.match(normalised.stderr, /background\.tif: has the same value \(0\) in every voxel of the 30 plane\(s\) sampled for --normalize-channels.*standard deviation is 0.*classify without --normalize-channels/);
  assert.doesNotMatch(normalised.stderr, /warning: .* was trained/);

  const plain = spawnSync(process.execPath, [CLI, ...args], { encoding: 'utf8' });
  assert.equal(plain.status, 0, plain.stderr);
  assert.match(plain.stderr, /warning: .*model\.keras was trained with --normalize-channels \(its run's training-config\.json\): add --normalize-channels to classify as it was trained/);
});

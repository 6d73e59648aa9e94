/**
 * The candidate cache: one sweep cuts every candidate's cube and context,
 * bit-identical to cutting it alone; labelling serves from it; a sweep killed
 * with kill -9 continues where it stopped; classify re-predicts the set from it.
 */
import assert from 'node:assert/strict';
import { spawn, spawnSync } from 'node:child_process';
import { promises as fs } from 'node:fs';
import * as path from 'node:path';
import { test } from 'node:test';
import { formatCellCounterXml } from '../src/core/cellCounterXml';
import { cutCube } from '../src/core/extraction';
import { cacheCandidates, LabellingSession, saveCandidateSet, type CandidateSet } from '../src/core/labelling';
import { openChannels } from '../src/core/volume';
import * as tf from '@tensorflow/tfjs';
import { writeKerasModel } from '../src/training/modelFiles';
import { initialWeights, resnetSpec } from '../src/training/resnet';
import { seededRandom } from '../src/core/random';
import { REPO_ROOT, SAMPLE, scratch } from './helpers';

const CLI = path.join(REPO_ROOT, 'bin', 'cellfinder-retrain.js');

/** `count` candidates spread through the sample volume, all with a full cube at 5, 2, 2 µm. */
async function manyCandidates(folder: string, count: number): Promise<string> {
  const random = seededRandom(99);
  const next = () => random.next();
  const points = Array.from({ length: count }, () => ({ x: 15 + Math.floor(next() * 595), y: 15 + Math.floor(next() * 1085), z: 10 + Math.floor(next() * 6), type: 1 }));
  const file = path.join(folder, 'many.xml');
  await fs.writeFile(file, formatCellCounterXml(points).text);
  return file;
}

function setOf(points: string, signal = path.join(SAMPLE, 'signal'), background = path.join(SAMPLE, 'background')): CandidateSet {
  return { points, signal, background, voxelSizes: [5, 2, 2] };
}

test('the sweep cuts every candidate\'s cube and context bit-identical to cutting it alone, and labelling serves them from the cache', async (t) => {
  const root = scratch(t);
  const data = path.join(root, 'volumes');
  for (const channel of ['signal', 'background']) await fs.cp(path.join(SAMPLE, channel), path.join(data, channel), { recursive: true });
  const set = setOf(path.join(SAMPLE, 'candidates', 'candidates.xml'), path.join(data, 'signal'), path.join(data, 'background'));
  const dataset = path.join(root, 'dataset');
  const direct = await LabellingSession.open(set, dataset);
  await saveCandidateSet(dataset, set);
  assert.equal(direct.cache?.cached, 0);
  const progress: number[] = [];
  const result = await cacheCandidates(dataset, { onProgress: (cached) => progress.push(cached) });
  assert.deepEqual([result.cached, result.total], [13, 13]);
  assert.equal(progress.at(-1), 13);

  const session = await LabellingSession.open(set, dataset);
  const cache = session.cache;
  assert.ok(cache);
  assert.equal(cache.cached, 13);
  const volumes = await openChannels(set.signal, set.background);
  for (const candidate of session.candidates) {
    const cached = (await cache.readCube(candidate.id)) as Float32Array[];
    const alone = await cutCube(candidate.position, volumes, set.voxelSizes);
    cached.forEach((channel, c) => assert.ok(Buffer.from(channel.buffer, channel.byteOffset, channel.byteLength).equals(Buffer.from(alone[c].buffer)), `cube ${candidate.id}, channel ${c}`));
    assert.deepEqual(await cache.readContext(candidate.id, candidate.position), await direct.context(candidate.id), `context ${candidate.id}`);
  }
  await Promise.all(volumes.map((volume) => volume.close()));
  await direct.close();

  // With the planes gone bad, the cached candidates are still shown and saved, from the cache.
  for (const name of await fs.readdir(path.join(data, 'signal'))) await fs.truncate(path.join(data, 'signal', name), 100);
  const [first] = session.candidates;
  assert.equal((await session.cube(first.id)).channels.length, 2);
  assert.ok(await session.context(first.id));
  await session.decide(first.id, 'cell');
  assert.equal(session.status(first.id), 'cell');
  const saved = await fs.readFile(path.join(dataset, 'cells', `pCellz${first.position.z}y${first.position.y}x${first.position.x}Ch0.tif`));
  assert.ok(saved.length > 200_000);
  await session.close();
});

test('a sweep killed with kill -9 continues where it stopped; Ctrl-C stops it with exit 3', { timeout: 5 * 60_000 }, async (t) => {
  const root = scratch(t);
  const set = setOf(await manyCandidates(root, 600));
  const dataset = path.join(root, 'dataset');
  await (await LabellingSession.open(set, dataset)).close();
  await saveCandidateSet(dataset, set);

  const stopped = await new Promise<{ code: number | null; stderr: string }>((resolve) => {
    const child = spawn(process.execPath, [CLI, 'cache', dataset], { stdio: ['ignore', 'ignore', 'pipe'] });
    let stderr = '';
    child.stderr.on('data', (chunk: Buffer) => {
      stderr += chunk;
      const counts = [...stderr.matchAll(/caching candidates: (\d+)\//g)].map((m) => Number(m[1]));
      if (counts.some((n) => n >= 64)) child.kill('SIGKILL');
    });
    child.on('exit', (code) => resolve({ code, stderr }));
  });
  assert.equal(stopped.code, null, 'killed');
  const again = spawnSync(process.execPath, [CLI, 'cache', dataset, '--json'], { encoding: 'utf8' });
  assert.equal(again.status, 0, again.stderr);
  const firstLine = /caching candidates: (\d+)\/600/.exec(again.stderr);
  assert.ok(Number(firstLine?.[1]) >= 64, `the second sweep starts from what the first flushed (${firstLine?.[0]})`);
  assert.deepEqual(JSON.parse(again.stdout).cached, 600);

  // Every 20th cached cube equals the cube cut alone.
  const session = await LabellingSession.open(set, dataset);
  const volumes = await openChannels(set.signal, set.background);
  for (const candidate of session.candidates.filter((_, i) => i % 20 === 0)) {
    const cached = (await session.cache?.readCube(candidate.id)) as Float32Array[];
    const alone = await cutCube(candidate.position, volumes, set.voxelSizes);
    cached.forEach((channel, c) => assert.ok(Buffer.from(channel.buffer, channel.byteOffset, channel.byteLength).equals(Buffer.from(alone[c].buffer)), `cube ${candidate.id}`));
  }
  await Promise.all(volumes.map((volume) => volume.close()));
  await session.close();

  // Ctrl-C on a fresh sweep (the cache of another set replaces this one's).
  await fs.mkdir(path.join(root, 'other'));
  const other = setOf(await manyCandidates(path.join(root, 'other'), 600));
  await saveCandidateSet(dataset, other);
  const interrupted = await new Promise<{ code: number | null; stderr: string }>((resolve) => {
    const child = spawn(process.execPath, [CLI, 'cache', dataset], { stdio: ['ignore', 'ignore', 'pipe'] });
    let stderr = '';
    let sent = false;
    child.stderr.on('data', (chunk: Buffer) => {
      stderr += chunk;
      if (!sent && /caching candidates: [1-9]\d*\//.test(stderr)) {
        sent = true;
        child.kill('SIGINT');
      }
    });
    child.on('exit', (code) => resolve({ code, stderr }));
  });
  assert.equal(interrupted.code, 3, interrupted.stderr);
  assert.match(interrupted.stderr, /Stopped\. Run the same command again to cut the rest/);
});

test('classify --cache re-predicts a set from the cubes its cache holds, cuts the rest, and gives what classify from the volumes gives', { timeout: 5 * 60_000 }, async (t) => {
  const root = scratch(t);
  const set = setOf(await manyCandidates(root, 200));
  const dataset = path.join(root, 'dataset');
  await (await LabellingSession.open(set, dataset)).close();
  await saveCandidateSet(dataset, set);
  const model = path.join(root, 'random.keras');
  const spec = resnetSpec(18, 2);
  await writeKerasModel(model, spec, initialWeights(tf, spec, 5));
  const classify = (output: string, ...extra: string[]) =>
    spawnSync(process.execPath, [CLI, 'classify', '--trained-model', model, '--signal', set.signal, '--background', set.background as string, '--points', set.points, '--voxel-sizes', '5', '2', '2', '-o', path.join(root, output), '--json', ...extra], { encoding: 'utf8' });
  // Before any sweep (a set of under 500 candidates never gets one): every cube is cut from the volumes.
  const beforeSweep = classify('before-sweep', '--cache', dataset);
  assert.equal(beforeSweep.status, 0, beforeSweep.stderr);
  assert.equal(JSON.parse(beforeSweep.stdout).fromCache, 0);

  // As a sweep stopped after its first flush leaves it: 128 of the 200 logged as cached.
  const { cacheFolder } = await cacheCandidates(dataset);
  const log = path.join(cacheFolder, 'done.log');
  await fs.writeFile(log, `${(await fs.readFile(log, 'utf8')).split('\n').slice(0, 128).join('\n')}\n`);

  const fromVolumes = classify('from-volumes');
  assert.equal(fromVolumes.status, 0, fromVolumes.stderr);
  const fromCache = classify('from-cache', '--cache', dataset);
  assert.equal(fromCache.status, 0, fromCache.stderr);
  assert.equal(JSON.parse(fromCache.stdout).fromCache, 128);
  assert.match(fromCache.stderr, /128 cube\(s\) read from the candidate cache/);
  for (const file of ['classified_points.csv', 'classified_points.xml']) {
    for (const output of ['from-cache', 'before-sweep']) assert.equal(await fs.readFile(path.join(root, output, file), 'utf8'), await fs.readFile(path.join(root, 'from-volumes', file), 'utf8'), `${output}/${file}`);
  }

  // The cache of another set (the sample's own candidates here) is not taken, and not removed either.
  const cacheFolders = await fs.readdir(path.join(dataset, '.candidate-cache'));
  const otherPoints = path.join(SAMPLE, 'candidates', 'candidates.xml');
  const other = spawnSync(process.execPath, [CLI, 'classify', '--trained-model', model, '--signal', set.signal, '--background', set.background as string, '--points', otherPoints, '--voxel-sizes', '5', '2', '2', '-o', path.join(root, 'other'), '--json', '--cache', dataset], { encoding: 'utf8' });
  assert.equal(other.status, 0, other.stderr);
  assert.equal(JSON.parse(other.stdout).fromCache, 0);
  assert.deepEqual(await fs.readdir(path.join(dataset, '.candidate-cache')), cacheFolders);
});

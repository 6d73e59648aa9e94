/**
 * The candidate cache: one sweep cuts every candidate's cube and context,
 * bit-identical to cutting it alone; labelling serves from it; a sweep killed
 * with kill -9 continues where it stopped.
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

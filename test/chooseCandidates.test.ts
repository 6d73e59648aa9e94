/**
 * Choosing the candidates to label out of a large detection: spread evenly
 * and seeded without a model; half predicted cells, half predicted non-cells,
 * most uncertain first with one; through the CLI into a set labelling opens.
 */
import assert from 'node:assert/strict';
import { promises as fs } from 'node:fs';
import * as path from 'node:path';
import { test } from 'node:test';
import { main } from '../src/cli/main';
import { readCellCounterXml } from '../src/core/cellCounterXml';
import { chooseCandidates } from '../src/core/chooseCandidates';
import { positionKey } from '../src/core/dataset';
import { LabellingSession } from '../src/core/labelling';
import { seededRandom } from '../src/core/random';
import { SAMPLE, scratch } from './helpers';

function detection(count: number): Array<{ x: number; y: number; z: number; type: number }> {
  const random = seededRandom(5);
  const next = () => random.next();
  return Array.from({ length: count }, () => ({ x: Math.floor(next() * 5000), y: Math.floor(next() * 4000), z: Math.floor(next() * 1000), type: 1 }));
}

test('without a model: a seeded sample spread evenly over the volume, no candidate twice', () => {
  const points = detection(100_000);
  const chosen = chooseCandidates(points, { count: 2000, seed: 7 });
  assert.equal(chosen.length, 2000);
  assert.equal(new Set(chosen.map(positionKey)).size, 2000);
  const all = new Set(points.map(positionKey));
  assert.ok(chosen.every((p) => all.has(positionKey(p))));
  assert.deepEqual(chooseCandidates(points, { count: 2000, seed: 7 }), chosen, 'the same seed, the same choice');
  assert.notDeepEqual(chooseCandidates(points, { count: 2000, seed: 8 }), chosen);
  // Each of the 64 blocks of a 4x4x4 split of the volume gets its share (31 each), within a third.
  const blocks = new Map<string, number>();
  for (const p of chosen) {
    const key = `${Math.floor(p.x / 1250)},${Math.floor(p.y / 1000)},${Math.floor(p.z / 250)}`;
    blocks.set(key, (blocks.get(key) ?? 0) + 1);
  }
  assert.equal(blocks.size, 64);
  for (const [block, n] of blocks) assert.ok(n >= 21 && n <= 42, `block ${block}: ${n}`);
  assert.equal(chooseCandidates(points.slice(0, 10), { count: 2000 }).length, 10, 'fewer candidates than asked: all of them');
});

test('with probabilities: half predicted cells, half predicted non-cells, most uncertain first; a short side gives its share', () => {
  const points = detection(20_000);
  const random = seededRandom(9);
  const next = () => random.next();
  const probabilities = new Map(points.map((p) => {
    const cell = next();
    return [positionKey(p), { cell, logOdds: Math.log(cell / (1 - cell)) }];
  }));
  const chosen = chooseCandidates(points, { count: 2000, probabilities });
  const cells = chosen.filter((p) => p.type === 2);
  assert.equal(cells.length, 1000);
  assert.ok(cells.every((p) => (p.probabilities?.cell as number) > 0.5));
  const chosenKeys = new Set(chosen.map(positionKey));
  const margin = (p: { x: number; y: number; z: number }) => Math.abs((probabilities.get(positionKey(p))?.cell as number) - 0.5);
  const worstChosen = Math.max(...cells.map(margin));
  const bestLeft = Math.min(...points.filter((p) => !chosenKeys.has(positionKey(p)) && (probabilities.get(positionKey(p))?.cell as number) > 0.5).map(margin));
  assert.ok(worstChosen <= bestLeft, 'no predicted cell left out is more uncertain than one chosen');

  // Few predicted cells: all of them, the rest non-cells.
  const mostlyNot = new Map(points.map((p, i) => [positionKey(p), i < 300 ? { cell: 0.9, logOdds: Math.log(9) } : { cell: 0.1, logOdds: -Math.log(9) }]));
  const lopsided = chooseCandidates(points, { count: 2000, probabilities: mostlyNot });
  assert.deepEqual([lopsided.filter((p) => p.type === 2).length, lopsided.filter((p) => p.type === 1).length], [300, 1700]);
});

test('choose on the CLI: only candidates with a full cube, an XML and probabilities that labelling opens most uncertain first', async (t) => {
  const dir = scratch(t);
  const points = path.join(SAMPLE, 'candidates', 'candidates.xml');
  const io = { out: '', err: '' };
  const run = (argv: string[]) => main(argv, { out: (text) => (io.out += `${text}\n`), err: (text) => (io.err += `${text}\n`) });
  const chosenXml = path.join(dir, 'chosen.xml');
  assert.equal(await run(['choose', '--points', points, '-n', '5', '--signal', path.join(SAMPLE, 'signal'), '--voxel-sizes', '5', '2', '2', '-o', chosenXml]), 0, io.err);
  assert.match(io.out, /Chose 5 of 13 candidates: spread evenly over the volume \(seed 1\)/);
  const chosen = (await readCellCounterXml(chosenXml)).points;
  assert.equal(chosen.length, 5);

  // A classify run's probabilities for all 38 candidates.
  const { points: all } = await readCellCounterXml(points);
  const csv = path.join(dir, 'classified_points.csv');
  await fs.writeFile(csv, `x,y,z,type,cell_probability\n${all.map((p, i) => `${p.x},${p.y},${p.z},${i % 2 ? 2 : 1},${i % 2 ? 0.5 + i / 100 : 0.45 - i / 100}`).join('\n')}\n`);
  const withModel = path.join(dir, 'uncertain.xml');
  io.out = '';
  assert.equal(await run(['choose', '--points', points, '-n', '6', '--probabilities', csv, '--signal', path.join(SAMPLE, 'signal'), '--voxel-sizes', '5', '2', '2', '-o', withModel]), 0, io.err);
  assert.match(io.out, /Chose 6 of 13 candidates: 3 predicted cells and 3 predicted non-cells, most uncertain first/);
  // The chosen set's CSV has classify's columns, the log-odds taken from p(cell) of this older file.
  const chosenCsv = (await fs.readFile(path.join(dir, 'uncertain.classified_points.csv'), 'utf8')).split('\n');
  assert.equal(chosenCsv[0], 'x,y,z,type,cell_probability,cell_log_odds');
  for (const row of chosenCsv.slice(1, -1)) {
    const [, , , , p, logOdds] = row.split(',').map(Number);
    assert.ok(Math.abs(logOdds - Math.log(p / (1 - p))) < 1e-12, row);
  }
  const session = await LabellingSession.open({ points: withModel, predictions: path.join(dir, 'uncertain.classified_points.csv'), signal: path.join(SAMPLE, 'signal'), background: path.join(SAMPLE, 'background'), voxelSizes: [5, 2, 2] }, path.join(dir, 'dataset'));
  assert.equal(session.candidates.length, 6);
  assert.ok(session.candidates.every((c) => c.prediction?.cellProbability !== undefined));
  await session.close();
  assert.equal(await run(['choose', '--points', points, '-n', '0', '-o', withModel]), 2);
});

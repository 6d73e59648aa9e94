/**
 * The logic behind the editor's views, without a GUI: the workspace scan
 * behind the sidebar, run status and attaching to a run's log as it grows,
 * and the labelling session's bookkeeping (skips, undo, balance, order,
 * remembered candidate sets, bad prediction files).
 */
import assert from 'node:assert/strict';
import { promises as fs } from 'node:fs';
import * as path from 'node:path';
import { test } from 'node:test';
import { parseArgs } from '../src/cli/args';
import { SLURM_FLAGS, slurmRequestFrom } from '../src/cli/clusterCommands';
import { summarizeRunWithJob } from '../src/cluster/clusterRuns';
import { classifyArgs, slurmArgs } from '../src/controllers/cliProcess';
import { TrainingDataset } from '../src/core/dataset';
import { CANDIDATE_SET_FILE, LabellingSession, loadCandidateSet, orderCandidates, saveCandidateSet, type CandidateSet } from '../src/core/labelling';
import { scanWorkspace } from '../src/core/workspaceScan';
import { DataFileError } from '../src/core/errors';
import { EVENTS_FILE } from '../src/core/runFiles';
import type { TrainingEvent } from '../src/training/events';
import { RunFollower, runStatus, summarizeRun } from '../src/training/runs';
import { TRAIN_CONFIG_FILE, TRAIN_DEFAULTS } from '../src/training/trainConfig';
import { SAMPLE, scratch } from './helpers';

const SET: CandidateSet = {
  points: path.join(SAMPLE, 'candidates', 'candidates.xml'),
  signal: path.join(SAMPLE, 'signal'),
  background: path.join(SAMPLE, 'background'),
  voxelSizes: [5, 2, 2],
};

test('workspace scan finds datasets (with and without training.yaml), models and runs, skipping cube folders and hidden state', async (t) => {
  const root = scratch(t);
  await TrainingDataset.create(path.join(root, 'labels', 'round1'));
  await fs.mkdir(path.join(root, 'old', 'cells'), { recursive: true });
  await fs.mkdir(path.join(root, 'old', 'non_cells'), { recursive: true });
  await fs.mkdir(path.join(root, 'runs', 'a', '.resume'), { recursive: true });
  await fs.writeFile(path.join(root, 'runs', 'a', EVENTS_FILE), '');
  await fs.writeFile(path.join(root, 'runs', 'a', 'model.keras'), '');
  await fs.writeFile(path.join(root, 'runs', 'a', '.resume', 'state.keras'), '');
  await fs.writeFile(path.join(root, 'weights.h5'), '');
  await fs.mkdir(path.join(root, 'node_modules', 'x', 'cells'), { recursive: true });
  await fs.mkdir(path.join(root, 'node_modules', 'x', 'non_cells'), { recursive: true });
  const found = await scanWorkspace([root]);
  assert.deepEqual(found.datasets, [{ root: path.join(root, 'labels', 'round1'), yamlFile: path.join(root, 'labels', 'round1', 'training.yaml') }, { root: path.join(root, 'old') }]);
  assert.deepEqual(found.models, [path.join(root, 'runs', 'a', 'model.keras'), path.join(root, 'weights.h5')]);
  assert.deepEqual(found.runs, [path.join(root, 'runs', 'a')]);
});

test('run status: finished / cancelled / failed from the log, running while the process lives, interrupted when it died silently', () => {
  const launched: TrainingEvent = { type: 'launched', pid: 1234, mode: 'train', time: 0 };
  const alive = () => true;
  const dead = () => false;
  assert.equal(runStatus([launched], alive), 'running');
  assert.equal(runStatus([launched], dead), 'interrupted');
  assert.equal(runStatus([launched, { type: 'cancelled', epoch: 0, batch: 1, resumeFrom: '/x' }], dead), 'cancelled');
  assert.equal(runStatus([launched, { type: 'error', message: 'bad' }], dead), 'failed');
  // A resume after a cancel is a new attempt: its own outcome counts.
  const resumed: TrainingEvent = { type: 'launched', pid: 99, mode: 'resume', time: 1 };
  assert.equal(runStatus([launched, { type: 'cancelled', epoch: 0, batch: 1, resumeFrom: '/x' }, resumed], alive), 'running');
  assert.equal(runStatus([launched, { type: 'cancelled', epoch: 0, batch: 1, resumeFrom: '/x' }, resumed, { type: 'finished', modelFile: 'm.keras', history: [] }], dead), 'finished');
  const summary = summarizeRun('/nowhere', [launched, { type: 'epoch', epochs: 2, epoch: 0, loss: 1, accuracy: 0.5, valLoss: 1, valAccuracy: 0.75, learningRate: 1e-4, seconds: 1 }], alive);
  assert.equal(summary.valAccuracy, 0.75);
  assert.equal(summary.pid, 1234);
});

test('attaching to a run: the follower delivers what was logged, then each append, holding back a half-written line', async (t) => {
  const run = scratch(t);
  const file = path.join(run, EVENTS_FILE);
  await fs.writeFile(file, `${JSON.stringify({ type: 'launched', pid: 1, mode: 'train', time: 5 })}\n`);
  const seen: TrainingEvent[] = [];
  const follower = new RunFollower(run, (events) => seen.push(...events));
  await follower.start();
  assert.deepEqual(seen.map((e) => e.type), ['launched']);
  const batch = JSON.stringify({ type: 'batch', epoch: 0, batch: 0, batches: 2, loss: 1, accuracy: 0 });
  await fs.appendFile(file, `${batch}\n${batch.slice(0, 10)}`);
  await follower.caughtUp();
  assert.deepEqual(seen.map((e) => e.type), ['launched', 'batch']);
  await fs.appendFile(file, `${batch.slice(10)}\n`);
  // The watcher picks the append up by itself.
  const deadline = Date.now() + 5000;
  while (seen.length < 3 && Date.now() < deadline) await new Promise((resolve) => setTimeout(resolve, 20));
  follower.close();
  assert.deepEqual(seen.map((e) => e.type), ['launched', 'batch', 'batch']);
});

test('labelling session: skip, relabel, undo of each, and statuses read back from the dataset', async (t) => {
  const root = scratch(t);
  const session = await LabellingSession.open(SET, root);
  assert.equal(session.candidates.length, 13);
  assert.equal(session.skippedAtEdge.length, 25);
  const [a, b] = session.candidates;
  await session.decide(a.id, 'cell');
  await session.decide(b.id, 'skip');
  let statuses = await session.statuses();
  assert.equal(statuses.get(a.id), 'cell');
  assert.equal(statuses.get(b.id), 'skip');
  // Changing one's mind moves the cube (bytes unchanged), it does not write a second one.
  await session.decide(a.id, 'no_cell');
  assert.equal((await fs.readdir(path.join(root, 'cells'))).length, 0);
  assert.equal((await fs.readdir(path.join(root, 'non_cells'))).length, 2);
  assert.equal((await session.undo())?.id, a.id);
  assert.equal((await session.statuses()).get(a.id), 'cell');
  assert.equal((await session.undo())?.id, b.id);
  statuses = await session.statuses();
  assert.equal(statuses.get(b.id), 'todo');
  assert.equal((await session.undo())?.id, a.id);
  assert.equal((await session.statuses()).get(a.id), 'todo');
  assert.equal(await session.undo(), undefined);
  await session.close();
});

test('balance: cubes labelled before predictions existed are counted with the predictions of the model chosen later', async (t) => {
  const root = scratch(t);
  const plain = await LabellingSession.open(SET, root);
  const [a, b] = plain.candidates;
  await plain.decide(a.id, 'cell');
  await plain.decide(b.id, 'cell');
  assert.deepEqual((await plain.balance()).withoutPrediction, { cells: 2, nonCells: 0 });
  await plain.close();
  const csv = path.join(scratch(t), 'classified_points.csv');
  await fs.writeFile(csv, `x,y,z,type,cell_probability\n${a.position.x},${a.position.y},${a.position.z},2,0.9\n${b.position.x},${b.position.y},${b.position.z},1,0.2\n`);
  const predicted = await LabellingSession.open({ ...SET, predictions: csv }, root);
  const balance = await predicted.balance();
  await predicted.close();
  assert.equal(balance.cellsPredictedCell, 1);
  assert.equal(balance.cellsPredictedNonCell, 1);
  assert.deepEqual(balance.withoutPrediction, { cells: 0, nonCells: 0 });
});

test('remembered candidate sets, and clear errors for a damaged one or a bad predictions file', async (t) => {
  const root = scratch(t);
  await fs.mkdir(root, { recursive: true });
  assert.equal(await loadCandidateSet(root), undefined);
  await saveCandidateSet(root, SET);
  assert.deepEqual(await loadCandidateSet(root), SET);
  await fs.writeFile(path.join(root, CANDIDATE_SET_FILE), '{"points": 3');
  await assert.rejects(loadCandidateSet(root), (error: DataFileError) => error instanceof DataFileError && error.file.endsWith(CANDIDATE_SET_FILE) && /not valid JSON/.test(error.message));

  const csv = path.join(root, 'classified_points.csv');
  await fs.writeFile(csv, 'x,y,z,type\n1,2,3,2\n');
  await assert.rejects(LabellingSession.open({ ...SET, predictions: csv }, scratch(t)), /has no x, y, z and cell_probability columns/);
  await fs.writeFile(csv, 'x,y,z,type,cell_probability\n1,2,3,2,high\n');
  await assert.rejects(LabellingSession.open({ ...SET, predictions: csv }, scratch(t)), /line 2 is not numbers/);
});

test('candidate order: most uncertain first, predicted cells first, file order', () => {
  const candidates = [
    { id: 0, position: { x: 0, y: 0, z: 0 }, prediction: { label: 'no_cell' as const, cellProbability: 0.05 } },
    { id: 1, position: { x: 1, y: 0, z: 0 }, prediction: { label: 'cell' as const, cellProbability: 0.55 } },
    { id: 2, position: { x: 2, y: 0, z: 0 } },
    { id: 3, position: { x: 3, y: 0, z: 0 }, prediction: { label: 'cell' as const, cellProbability: 0.99 } },
  ];
  assert.deepEqual(orderCandidates(candidates, 'file'), [0, 1, 2, 3]);
  assert.deepEqual(orderCandidates(candidates, 'uncertain-first'), [1, 0, 3, 2]);
  assert.deepEqual(orderCandidates(candidates, 'predicted-cells-first'), [3, 1, 2, 0]);
});

test('candidate order ranks the sure ends too, by the log-odds classify writes, where p(cell) has rounded to 1 or 0', () => {
  // p(cell) of float32 softmax: 1 - 2^-24 for every log-odds over about 17; 0 below about -103.
  const saturated = 0.9999999403953552;
  const candidates = [
    { id: 0, position: { x: 0, y: 0, z: 0 }, prediction: { label: 'cell' as const, cellProbability: saturated, cellLogOdds: 35.2 } },
    { id: 1, position: { x: 1, y: 0, z: 0 }, prediction: { label: 'cell' as const, cellProbability: saturated, cellLogOdds: 17.1 } },
    { id: 2, position: { x: 2, y: 0, z: 0 }, prediction: { label: 'no_cell' as const, cellProbability: 0, cellLogOdds: -120.5 } },
    { id: 3, position: { x: 3, y: 0, z: 0 }, prediction: { label: 'no_cell' as const, cellProbability: 1e-12, cellLogOdds: -27.6 } },
    // Recorded before log-odds were kept: taken from p(cell).
    { id: 4, position: { x: 4, y: 0, z: 0 }, prediction: { label: 'cell' as const, cellProbability: 0.9 } },
  ];
  assert.deepEqual(orderCandidates(candidates, 'uncertain-first'), [4, 1, 3, 0, 2]);
  assert.deepEqual(orderCandidates(candidates, 'predicted-cells-first'), [0, 1, 4, 3, 2]);
});

test('decisions keep statuses and balance in memory; a reopened session rebuilt from the dataset agrees after every step', async (t) => {
  const root = scratch(t);
  const csv = path.join(scratch(t), 'classified_points.csv');
  const probe = await LabellingSession.open(SET, path.join(scratch(t), 'probe'));
  // Predictions for every candidate, some right and some wrong whatever the labels, so all four categories fill.
  await fs.writeFile(csv, `x,y,z,type,cell_probability\n${probe.candidates.map((c, i) => `${c.position.x},${c.position.y},${c.position.z},1,${(i % 4) / 4 + 0.1}`).join('\n')}\n`);
  await probe.close();
  const set = { ...SET, predictions: csv };
  const session = await LabellingSession.open(set, root);
  const [a, b, c, d] = session.candidates;
  const steps: Array<() => Promise<unknown>> = [
    () => session.decide(a.id, 'cell'),
    () => session.decide(b.id, 'no_cell'),
    () => session.decide(c.id, 'skip'),
    () => session.decide(d.id, 'cell'),
    () => session.decide(a.id, 'no_cell'),
    () => session.undo(),
    () => session.undo(),
    () => session.decide(c.id, 'cell'),
    () => session.undo(),
    () => session.undo(),
    () => session.decide(b.id, 'cell'),
  ];
  for (const [index, step] of steps.entries()) {
    await step();
    const reopened = await LabellingSession.open(set, root);
    assert.deepEqual(session.statuses(), reopened.statuses(), `statuses after step ${index + 1}`);
    assert.deepEqual(session.balance(), reopened.balance(), `balance after step ${index + 1}`);
    await reopened.close();
  }
  const balance = session.balance();
  assert.ok(balance.cellsPredictedCell + balance.cellsPredictedNonCell + balance.nonCellsPredictedNonCell + balance.nonCellsPredictedCell > 0);
  await session.close();
});

test('a decision reads no folder and no log, so its cost does not grow with the dataset (5,000 cubes already in it)', async (t) => {
  const root = scratch(t);
  const session0 = await LabellingSession.open(SET, root);
  await session0.close();
  // 5,000 labelled cubes and their log: names are all the session reads at open.
  const log: string[] = [];
  for (let i = 0; i < 5000; i++) {
    const folder = i % 2 ? 'cells' : 'non_cells';
    const position = { x: 5000 + i, y: 7, z: 3 };
    for (const channel of [0, 1]) await fs.writeFile(path.join(root, folder, `pCellz3y7x${position.x}Ch${channel}.tif`), '');
    log.push(JSON.stringify({ id: `seed-${i}`, time: '2026-12-04T00:00:00.000Z', action: 'add', position, label: i % 2 ? 'cell' : 'no_cell', source: SET.signal }));
  }
  await fs.writeFile(path.join(root, 'provenance.jsonl'), `${log.join('\n')}\n`);
  const session = await LabellingSession.open(SET, root);
  assert.deepEqual(session.balance().withoutPrediction, { cells: 2500, nonCells: 2500 });
  const readdir = t.mock.method(fs, 'readdir');
  const readFile = t.mock.method(fs, 'readFile');
  const [a, b, c] = session.candidates;
  await session.decide(a.id, 'cell');
  await session.decide(b.id, 'skip');
  await session.decide(a.id, 'no_cell');
  await session.decide(c.id, 'no_cell');
  assert.equal(readdir.mock.callCount(), 0, 'no folder listed');
  assert.deepEqual(readFile.mock.calls.map((call) => String(call.arguments[0])).filter((file) => !file.endsWith('.tif')), [], 'no log read');
  assert.deepEqual(session.balance().withoutPrediction, { cells: 2500, nonCells: 2502 });
  assert.equal(session.status(b.id), 'skip');
  await session.close();
});

test('the editor classifies a model as its run trained it: --normalize-channels from the run\'s training-config.json, else cellfinder\'s default', async (t) => {
  const root = scratch(t);
  const run = path.join(root, 'run');
  await fs.mkdir(run);
  await fs.writeFile(path.join(run, TRAIN_CONFIG_FILE), JSON.stringify({ ...TRAIN_DEFAULTS, yamlFiles: [], outputDir: run, normalizeChannels: true }));
  const request = { points: SET.points, signal: SET.signal, background: SET.background, voxelSizes: SET.voxelSizes, outputDir: path.join(root, 'out') };
  const normalised = await classifyArgs({ ...request, model: path.join(run, 'model-epoch.02.keras') });
  assert.ok(normalised.args.includes('--normalize-channels'));
  assert.match(normalised.note ?? '', /channels normalised \(--normalize-channels\), as the model's run trained/);
  const elsewhere = await classifyArgs({ ...request, model: path.join(root, 'resnet50_tv.h5'), cacheOf: root });
  assert.ok(!elsewhere.args.includes('--normalize-channels'));
  assert.equal(elsewhere.note, undefined);
  assert.deepEqual(elsewhere.args.slice(0, 3), ['classify', '--model-weights', path.join(root, 'resnet50_tv.h5')]);
  assert.deepEqual(elsewhere.args.slice(-2), ['--cache', root]);
});

test('the editor\'s SLURM form values reach the CLI unchanged (slurmArgs read back by train --slurm), and a SLURM run\'s status follows its job', () => {
  const request = { partition: 'gpu', gres: 'gpu:a100:1', cpus: 8, mem: '64G', time: '2-00:00:00', account: 'lab x', extraLines: ['--qos=long', '#SBATCH --constraint=a100,h100'], requeue: true };
  const { flags } = parseArgs(slurmArgs(request), SLURM_FLAGS);
  assert.deepEqual(slurmRequestFrom(flags), request);
  assert.deepEqual(slurmRequestFrom(parseArgs(slurmArgs({}), SLURM_FLAGS).flags), { partition: undefined, gres: undefined, cpus: undefined, mem: undefined, time: undefined, account: undefined, extraLines: undefined, requeue: false });

  const launched: TrainingEvent = { type: 'launched', time: 1, pid: 2 ** 22 + 12345, mode: 'train' } as TrainingEvent;
  const cancelled = { type: 'cancelled', epoch: 0, batch: 3, resumeFrom: '/run' } as unknown as TrainingEvent;
  const finished = { type: 'finished', modelFile: '/run/model.keras', history: [] } as unknown as TrainingEvent;
  const status = (events: TrainingEvent[], state?: string) => summarizeRunWithJob('/run', events, state ? { jobId: '7', state } : undefined).status;
  // Queued: nothing written yet, or only an earlier attempt's end; the job says the run goes on.
  assert.equal(status([], 'PENDING'), 'running');
  assert.equal(status([launched, cancelled], 'PENDING'), 'running');
  // A pid in the log names a process on the job's node: never looked up here.
  assert.equal(status([launched], 'RUNNING'), 'running');
  assert.equal(status([launched, finished], 'COMPLETING'), 'finished');
  // The job gone: the events say how the run ended; without an end, interrupted.
  assert.equal(status([launched, cancelled], 'CANCELLED'), 'cancelled');
  assert.equal(status([launched], 'NODE_FAIL'), 'interrupted');
  assert.equal(status([launched], undefined), 'interrupted');
});

/**
 * The background training process end to end on real cubes: events, cancel
 * at a batch boundary and resume with the optimiser state and epoch count,
 * and kill -9 losing at most the current epoch.
 */
import assert from 'node:assert/strict';
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { existsSync, promises as fs } from 'node:fs';
import { tmpdir } from 'node:os';
import * as path from 'node:path';
import * as readline from 'node:readline';
import { test } from 'node:test';
import type { TrainingEvent } from '../src/training/events';
import { main } from '../src/cli/main';
import { readCellCounterXml } from '../src/core/cellCounterXml';
import { readCube } from '../src/core/cube';
import { SPLIT_FILE } from '../src/core/runFiles';
import { DataFileError } from '../src/core/errors';
import { readModelFile } from '../src/training/modelFiles';
import { runConfigOf, TRAIN_DEFAULTS, type TrainConfig } from '../src/training/trainConfig';
import { checkpointName } from '../src/training/trainer';
import { REPO_ROOT, SAMPLE, scratch, tinyDataset } from './helpers';

const WORKER = path.join(REPO_ROOT, 'dist', 'worker.js');

interface Run {
  child: ChildProcess;
  events: TrainingEvent[];
  /** Resolves with the first event that matches. */
  waitFor(match: (event: TrainingEvent) => boolean): Promise<TrainingEvent>;
  exit: Promise<{ code: number | null; signal: NodeJS.Signals | null }>;
}

function startWorker(args: string[]): Run {
  const child = spawn(process.execPath, [WORKER, ...args], { stdio: ['pipe', 'pipe', 'pipe'] });
  const events: TrainingEvent[] = [];
  const waiters: Array<{ match: (event: TrainingEvent) => boolean; resolve: (event: TrainingEvent) => void }> = [];
  let stderr = '';
  child.stderr?.on('data', (chunk) => (stderr += chunk));
  readline.createInterface({ input: child.stdout! }).on('line', (line) => {
    const event = JSON.parse(line) as TrainingEvent;
    events.push(event);
    for (const waiter of [...waiters]) {
      if (waiter.match(event)) {
        waiters.splice(waiters.indexOf(waiter), 1);
        waiter.resolve(event);
      }
    }
  });
  const exit = new Promise<{ code: number | null; signal: NodeJS.Signals | null }>((resolve) => child.on('exit', (code, signal) => resolve({ code, signal })));
  return {
    child,
    events,
    exit,
    waitFor: (match) =>
      new Promise((resolve, reject) => {
        const found = events.find(match);
        if (found) return resolve(found);
        waiters.push({ match, resolve });
        void exit.then(({ code }) => reject(new Error(`worker exited (${code}) before the event; stderr:\n${stderr.slice(-2000)}\nevents: ${JSON.stringify(events.slice(-3))}`)));
      }),
  };
}

async function writeConfig(root: string, yaml: string, overrides: Partial<TrainConfig>): Promise<string> {
  const config: TrainConfig = { ...TRAIN_DEFAULTS, yamlFiles: [yaml], outputDir: path.join(root, 'out'), networkDepth: 18, epochs: 3, batchSize: 1, testFraction: 0.25, seed: 7, saveProgress: true, ...overrides };
  const file = path.join(root, 'config.json');
  await fs.writeFile(file, JSON.stringify(config));
  return file;
}

test('cancel stops at a batch boundary with a resumable checkpoint; resume continues the epoch count and optimiser state', { timeout: 20 * 60_000 }, async (t) => {
  assert.ok(existsSync(WORKER), 'dist/worker.js is built by npm test');
  const root = scratch(t);
  const config = await writeConfig(root, await tinyDataset(root), { saveCheckpoints: false });
  const first = startWorker(['train', config]);
  const started = (await first.waitFor((e) => e.type === 'started')) as Extract<TrainingEvent, { type: 'started' }>;
  assert.deepEqual(started.model, { depth: 18, channels: 2, layers: 88, parameters: 33152674 });
  assert.deepEqual([started.samples.training, started.samples.validation], [3, 1]);
  t.diagnostic(`backend: ${started.backend}`);
  await first.waitFor((e) => e.type === 'batch' && e.epoch === 0 && e.batch === 2);
  first.child.stdin!.write('{"command":"cancel"}\n');
  const cancelled = (await first.waitFor((e) => e.type === 'cancelled')) as Extract<TrainingEvent, { type: 'cancelled' }>;
  // It stops between batches: no batch after the cancel event, none half done.
  const lastBatch = first.events.filter((e) => e.type === 'batch').at(-1) as Extract<TrainingEvent, { type: 'batch' }>;
  assert.equal(cancelled.epoch * 3 + cancelled.batch, lastBatch.epoch * 3 + lastBatch.batch, 'stopped right after the last reported batch');
  assert.equal((await first.exit).code, 3);
  const state = JSON.parse(await fs.readFile(path.join(root, 'out', '.resume', 'state.json'), 'utf8'));
  assert.equal(state.epoch, cancelled.epoch);
  const checkpoint = await readModelFile(path.join(root, 'out', '.resume', 'state.keras'));
  // Every step taken so far is in the optimiser state (3 batches per epoch).
  assert.equal(checkpoint.optimizer?.iterations, cancelled.epoch * 3 + cancelled.batch);

  const splitBefore = await fs.readFile(path.join(root, 'out', SPLIT_FILE), 'utf8');
  const second = startWorker(['resume', path.join(root, 'out')]);
  const resumed = (await second.waitFor((e) => e.type === 'started')) as Extract<TrainingEvent, { type: 'started' }>;
  assert.equal(resumed.resumedAtEpoch, cancelled.epoch);
  // The resumed run says where the run started from and the step its optimiser goes on from, and keeps the split it started with.
  assert.deepEqual(resumed.start, started.start);
  assert.equal(resumed.resumedAtIteration, cancelled.epoch * 3 + cancelled.batch);
  assert.deepEqual(resumed.split, started.split);
  assert.equal(await fs.readFile(path.join(root, 'out', SPLIT_FILE), 'utf8'), splitBefore);
  const finished = (await second.waitFor((e) => e.type === 'finished')) as Extract<TrainingEvent, { type: 'finished' }>;
  assert.equal((await second.exit).code, 0);
  assert.deepEqual(finished.history.map((h) => h.epoch), [0, 1, 2]);
  // The interrupted epoch's batches were split over the two processes; none was trained twice or skipped.
  const model = await readModelFile(finished.modelFile);
  assert.equal(model.optimizer?.iterations, 9);
  const csv = (await fs.readFile(path.join(root, 'out', 'training.csv'), 'utf8')).split('\r\n');
  assert.equal(csv[0], 'epoch,accuracy,loss,val_accuracy,val_loss');
  assert.deepEqual(csv.slice(1, 4).map((row) => row.split(',')[0]), ['0', '1', '2']);
  assert.ok(!existsSync(path.join(root, 'out', '.resume')), 'the resume state is removed when the run finishes');

  // The trained model classifies candidates (cellfinder's XML + every probability) and evaluates.
  let out = '';
  const io = { out: (text: string) => (out += `${text}\n`), err: () => undefined };
  const classified = path.join(root, 'classified');
  const code = await main(['classify', '--trained-model', finished.modelFile, '--signal', path.join(SAMPLE, 'signal'), '--background', path.join(SAMPLE, 'background'), '--points', path.join(SAMPLE, 'candidates', 'candidates.xml'), '--voxel-sizes', '5', '2', '2', '-o', classified], io);
  assert.equal(code, 0, out);
  const points = (await readCellCounterXml(path.join(classified, 'classified_points.xml'))).points;
  assert.equal(points.length, 13);
  assert.ok(points.every((p) => p.type === 1 || p.type === 2));
  const rows = (await fs.readFile(path.join(classified, 'classified_points.csv'), 'utf8')).trim().split('\n');
  assert.equal(rows[0], 'x,y,z,type,cell_probability,cell_log_odds');
  for (const row of rows.slice(1)) {
    const [, , , type, p, logOdds] = row.split(',').map(Number);
    // p(cell) is the softmax of the log-odds, to float32 precision.
    assert.ok(p >= 0 && p <= 1 && (p > 0.5) === (type === 2) && Math.abs(p - 1 / (1 + Math.exp(-logOdds))) < 1e-6, row);
  }
  out = '';
  assert.equal(await main(['evaluate', '--trained-model', finished.modelFile, '--compare', finished.modelFile, '-y', path.join(root, 'training.yaml'), '--json'], io), 0);
  const evaluations = JSON.parse(out) as Array<{ samples: number; confusion: number[][] }>;
  assert.equal(evaluations.length, 2);
  assert.equal(evaluations[0].confusion.flat().reduce((a, b) => a + b, 0), 4);
  assert.deepEqual(evaluations[0].confusion, evaluations[1].confusion);
});

test('kill -9 mid-epoch loses at most that epoch: resume restarts it from the last epoch\'s checkpoint; keeping one checkpoint keeps the best of both processes', { timeout: 20 * 60_000 }, async (t) => {
  const root = scratch(t);
  // Keeping one checkpoint: the resumed process ranks the first process's epoch with its own.
  const config = await writeConfig(root, await tinyDataset(root), { epochs: 2, keepCheckpoints: 1 });
  const first = startWorker(['train', config]);
  const checkpoint = (await first.waitFor((e) => e.type === 'checkpoint' && e.epoch === 0)) as Extract<TrainingEvent, { type: 'checkpoint' }>;
  assert.match(path.basename(checkpoint.file), /^model-epoch\.01-loss-\d+\.\d{3}\.keras$/);
  await first.waitFor((e) => e.type === 'batch' && e.epoch === 1);
  first.child.kill('SIGKILL');
  assert.equal((await first.exit).signal, 'SIGKILL');

  const second = startWorker(['resume', path.join(root, 'out')]);
  const resumed = (await second.waitFor((e) => e.type === 'started')) as Extract<TrainingEvent, { type: 'started' }>;
  assert.equal(resumed.resumedAtEpoch, 1);
  const finished = (await second.waitFor((e) => e.type === 'finished')) as Extract<TrainingEvent, { type: 'finished' }>;
  assert.deepEqual(finished.history.map((h) => h.epoch), [0, 1]);
  assert.equal((await readModelFile(finished.modelFile)).optimizer?.iterations, 6);
  const files = await fs.readdir(path.join(root, 'out'));
  assert.ok(files.includes('model.keras'));
  const best = finished.history.reduce((a, b) => ((b.valLoss as number) <= (a.valLoss as number) ? b : a));
  assert.deepEqual(files.filter((f) => f.startsWith('model-epoch.')), [path.basename(checkpointName(best.epoch, best.valLoss, false))]);
  const kept = second.events.find((e) => e.type === 'checkpoints-kept') as Extract<TrainingEvent, { type: 'checkpoints-kept' }>;
  assert.deepEqual(kept.kept, [path.join(root, 'out', checkpointName(best.epoch, best.valLoss, false))]);
  assert.equal(kept.removed.length, best.epoch === 1 ? 1 : 0, 'the first epoch\'s checkpoint goes when the second is better; else the second is not written');
});

test('a training.yaml with a problem ends the worker with an error event naming the file', async (t) => {
  const root = scratch(t);
  const yaml = path.join(root, 'training.yaml');
  await fs.writeFile(yaml, 'data:\n- cube_dir: missing\n  type: cell\n  signal_channel: 0\n  bg_channel: 1\n');
  const run = startWorker(['train', await writeConfig(root, yaml, {})]);
  const error = (await run.waitFor((e) => e.type === 'error')) as Extract<TrainingEvent, { type: 'error' }>;
  assert.equal(error.file, yaml);
  assert.match(error.message, /cube_dir "missing" is not a folder/);
  assert.equal((await run.exit).code, 1);
});

test('a corrupt cube file ends the run with the error it gives when read here, through dist/worker.js and through the CLI, and the process exits', async (t) => {
  const root = scratch(t);
  const yaml = await tinyDataset(root);
  const corrupt = path.join(root, 'cells', 'pCellz1132y413x1896Ch1.tif');
  await fs.writeFile(corrupt, Buffer.alloc(4096, 7));
  const expected = (await readCube(corrupt).then(() => assert.fail('a corrupt cube is an error'), (error: unknown) => error)) as DataFileError;
  assert.ok(expected instanceof DataFileError);
  // Batches are read on the batch thread: its error comes back as the run's error event, unchanged.
  const run = startWorker(['train', await writeConfig(root, yaml, { testFraction: 0 })]);
  const error = (await run.waitFor((e) => e.type === 'error')) as Extract<TrainingEvent, { type: 'error' }>;
  assert.deepEqual([error.message, error.file, error.fix], [expected.message, corrupt, expected.fix]);
  assert.equal((await run.exit).code, 1);
  // The CLI bundle starts the same thread from its own folder.
  const cli = spawnSync(process.execPath, [path.join(REPO_ROOT, 'bin', 'cellfinder-retrain.js'), 'train', '-y', yaml, '-o', path.join(root, 'cli-out'), '--network-depth', '18', '--batch-size', '2', '--test-fraction', '0', '--seed', '1'], { encoding: 'utf8' });
  assert.equal(cli.status, 1, cli.stderr);
  assert.ok(cli.stderr.split('\n').includes(`error: ${expected.message}`), cli.stderr);
  // What the run was started with is kept beside its models, as the editor keeps it (classify reads --normalize-channels there).
  const recorded = await runConfigOf(path.join(root, 'cli-out', 'model.keras'));
  assert.deepEqual([recorded?.yamlFiles, recorded?.networkDepth, recorded?.batchSize, recorded?.seed, recorded?.normalizeChannels], [[path.resolve(yaml)], 18, 2, 1, false]);
});

test('--continue-training with no model named starts from cellfinder\'s pre-trained file, and says where it must be', async (t) => {
  const root = scratch(t);
  const home = path.join(root, 'home');
  await fs.mkdir(home);
  const config = await writeConfig(root, await tinyDataset(root), { continueTraining: true, networkDepth: 50 });
  const run = spawn(process.execPath, [WORKER, 'train', config], { env: { ...process.env, HOME: home } });
  let out = '';
  run.stdout.on('data', (chunk) => (out += chunk));
  const code = await new Promise((resolve) => run.on('exit', resolve));
  assert.equal(code, 1);
  const error = JSON.parse(out.trim().split('\n').pop() as string) as Extract<TrainingEvent, { type: 'error' }>;
  assert.equal(error.file, path.join(home, '.brainglobe', 'cellfinder', 'models', 'resnet50_tv.h5'));
  assert.match(error.message, /is not there: --continue-training without --trained-model or --model-weights starts from cellfinder's pre-trained ResNet-50/);
});

test('cancel stops within one batch of many, through stdin (the editor) and Ctrl-C (the CLI), and says so at once', { timeout: 10 * 60_000 }, async (t) => {
  const root = scratch(t);
  // 16 batches in the epoch: a cancel after batch 2 must not run to the epoch's end.
  const yaml = await tinyDataset(root, 4);
  const config = await writeConfig(root, yaml, { epochs: 1, batchSize: 1, testFraction: 0, saveCheckpoints: false });
  const worker = startWorker(['train', config]);
  await worker.waitFor((e) => e.type === 'batch' && e.batch === 2);
  worker.child.stdin!.write('{"command":"cancel"}\n');
  const cancelled = (await worker.waitFor((e) => e.type === 'cancelled')) as Extract<TrainingEvent, { type: 'cancelled' }>;
  assert.ok(cancelled.batch <= 3, `stopped at batch ${cancelled.batch} of 16 (the one in flight at most)`);
  assert.equal((await worker.exit).code, 3);

  const cli = spawn(process.execPath, [path.join(REPO_ROOT, 'bin', 'cellfinder-retrain.js'), 'train', '-y', yaml, '-o', path.join(root, 'cli'), '--network-depth', '18', '--epochs', '1', '--batch-size', '1', '--test-fraction', '0', '--json'], { stdio: ['ignore', 'pipe', 'pipe'] });
  let stderr = '';
  cli.stderr.on('data', (chunk) => (stderr += chunk));
  const events: TrainingEvent[] = [];
  let interruptedAfter: number | undefined;
  readline.createInterface({ input: cli.stdout }).on('line', (line) => {
    const event = JSON.parse(line) as TrainingEvent;
    events.push(event);
    if (event.type === 'batch' && event.batch === 2 && interruptedAfter === undefined) {
      interruptedAfter = event.batch;
      cli.kill('SIGINT');
    }
  });
  const code = await new Promise<number | null>((resolve) => cli.on('exit', resolve));
  assert.equal(code, 3, stderr);
  const stopped = events.find((e) => e.type === 'cancelled') as Extract<TrainingEvent, { type: 'cancelled' }>;
  assert.ok(stopped.batch <= 3, `the CLI stopped at batch ${stopped.batch} of 16`);
  assert.match(stderr, /Stopping after the current batch/);
  assert.equal(events.filter((e) => e.type === 'batch').length, stopped.batch, 'no batch ran after the stop');
});

test('a loss that turns NaN (a diverging network) stops the run with the reason, and no model is written from it', { timeout: 10 * 60_000 }, async (t) => {
  const root = scratch(t);
  const config = await writeConfig(root, await tinyDataset(root), { epochs: 2, batchSize: 2, testFraction: 0, learningRate: 1e30, saveCheckpoints: true });
  const worker = startWorker(['train', config]);
  const error = (await worker.waitFor((e) => e.type === 'error')) as Extract<TrainingEvent, { type: 'error' }>;
  assert.match(error.message, /training stopped: the loss became NaN at epoch 1, batch \d \(the network diverged\)/);
  assert.match(error.fix ?? '', /lower the learning rate \(now 1e\+30\)/);
  assert.equal((await worker.exit).code, 1);
  assert.ok(!existsSync(path.join(root, 'out', 'model.keras')));
  assert.deepEqual((await fs.readdir(path.join(root, 'out'))).filter((name) => name.endsWith('.keras')), []);
});

test('kill -9 while a checkpoint is written: the next run in that folder removes the partial archive and its temporary HDF5 file', { timeout: 10 * 60_000 }, async (t) => {
  const root = scratch(t);
  const config = await writeConfig(root, await tinyDataset(root), { epochs: 2, batchSize: 2 });
  const run = startWorker(['train', config]);
  // The second epoch's checkpoint is the one killed, so there is a resume state to resume from.
  await run.waitFor((e) => e.type === 'batch' && e.epoch === 1);
  const output = path.join(root, 'out');
  const pid = run.child.pid as number;
  const leftovers = async () => [
    ...(await fs.readdir(output)).filter((name) => name.startsWith('.model-epoch.') && name.endsWith('.tmp')).map((name) => path.join(output, name)),
    ...(await fs.readdir(tmpdir())).filter((name) => name.startsWith(`cellfinder-retrain-${pid}-`)).map((name) => path.join(tmpdir(), name)),
  ];
  // A checkpoint is being written once either temporary file appears.
  let found: string[] = [];
  while (found.length === 0) {
    found = await leftovers();
    if (found.length === 0) await new Promise((resolve) => setTimeout(resolve, 2));
  }
  run.child.kill('SIGKILL');
  await run.exit;
  found = await leftovers();
  assert.ok(found.length > 0, 'the kill left a partial checkpoint behind (the fault is reproduced)');
  const resumed = startWorker(['resume', output]);
  await resumed.waitFor((e) => e.type === 'started');
  for (const file of found) assert.ok(!existsSync(file), `${file} was removed`);
  await resumed.waitFor((e) => e.type === 'finished');
  assert.equal((await resumed.exit).code, 0);
});

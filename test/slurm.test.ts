/**
 * Training as SLURM jobs against a real SLURM: the one-node cluster of
 * scripts/slurm-local.sh on this machine (started here when it is not
 * running, and stopped again after). The CLI is run as a user runs it
 * (bin/cellfinder-retrain.js); the run is followed through its events file
 * with the same follower the editor uses.
 */
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { existsSync, promises as fs, symlinkSync } from 'node:fs';
import * as path from 'node:path';
import { after, before, describe, test } from 'node:test';
import { cancelArrayJob, readJobRecords, SLURM_SCRIPT_FILE } from '../src/cluster/slurm';
import { runCliJson, slurmArgs } from '../src/controllers/cliProcess';
import { engineRoot, readActiveEngine } from '../src/engine/engineLayout';
import { TrainingController } from '../src/controllers/trainingController';
import { TRAIN_CONFIG_FILE, TRAIN_DEFAULTS, type TrainConfig } from '../src/training/trainConfig';
import type { HostToTraining } from '../src/webview/protocol';
import { SLURM_JOBS_FILE } from '../src/core/runFiles';
import type { TrainingEvent } from '../src/training/events';
import { readModelFile, writeKerasModel } from '../src/training/modelFiles';
import { initialWeights, resnetSpec } from '../src/training/resnet';
import * as tf from '@tensorflow/tfjs';
import { RESUME_FOLDER } from '../src/training/trainer';
import { RunFollower, type RunRecord } from '../src/training/runs';
import { REPO_ROOT, SAMPLE, scratch, tinyDataset } from './helpers';

const CLI = path.join(REPO_ROOT, 'bin', 'cellfinder-retrain.js');
const SLURM_SCRIPT = path.join(REPO_ROOT, 'scripts', 'slurm-local.sh');
let startedHere = false;

before(() => {
  if (spawnSync('bash', [SLURM_SCRIPT, 'status']).status === 0) return;
  const start = spawnSync('bash', [SLURM_SCRIPT, 'start'], { encoding: 'utf8' });
  assert.equal(start.status, 0, `the test cluster did not start: ${start.stderr}`);
  startedHere = true;
});

after(() => {
  if (startedHere) spawnSync('bash', [SLURM_SCRIPT, 'stop']);
});

function cli(args: string[], env: NodeJS.ProcessEnv = process.env) {
  const result = spawnSync(process.execPath, [CLI, ...args], { encoding: 'utf8', env });
  return { code: result.status, out: result.stdout, err: result.stderr };
}

/** `train --slurm`; returns the job id it printed. */
function submit(args: string[]): string {
  const result = cli(['train', ...args, '--slurm']);
  assert.equal(result.code, 0, result.err);
  const jobId = /^Submitted SLURM job (\d+): /.exec(result.out)?.[1];
  assert.ok(jobId, result.out);
  return jobId;
}

function scontrolShowJob(jobId: string): string {
  return spawnSync('scontrol', ['show', 'job', '-o', jobId], { encoding: 'utf8' }).stdout;
}

/** The run's events as the editor gets them (RunFollower); waitFor fails with the job's state and stderr when the event does not come. */
async function follow(t: { after(fn: () => void): void }, runDir: string) {
  const events: TrainingEvent[] = [];
  let changed = () => undefined as void;
  const follower = new RunFollower(runDir, (batch) => {
    events.push(...batch);
    changed();
  });
  await follower.start();
  t.after(() => follower.close());
  return {
    events,
    async waitFor<K extends TrainingEvent['type']>(type: K, match: (event: Extract<TrainingEvent, { type: K }>) => boolean = () => true, seconds = 300): Promise<Extract<TrainingEvent, { type: K }>> {
      const deadline = Date.now() + seconds * 1000;
      for (;;) {
        await follower.caughtUp();
        const found = events.find((e): e is Extract<TrainingEvent, { type: K }> => e.type === type && match(e as Extract<TrainingEvent, { type: K }>));
        if (found) return found;
        if (Date.now() > deadline) {
          const jobs = await readJobRecords(runDir);
          const errors = await Promise.all(jobs.map((job) => fs.readFile(path.join(runDir, `slurm-${job.jobId}.err`), 'utf8').catch(() => '(none)')));
          assert.fail(`no ${type} event within ${seconds} s; jobs: ${jobs.map((job) => scontrolShowJob(job.jobId)).join('\n')}\nstderr: ${errors.map((e) => e.slice(-1500)).join('\n')}\nlast events: ${JSON.stringify(events.slice(-3))}`);
        }
        // The follower watches the folder; this wait only bounds how long a missed notification could delay us.
        await new Promise<void>((resolve) => {
          changed = resolve;
          setTimeout(resolve, 1000);
        });
      }
    },
  };
}

const TINY_RUN = ['--network-depth', '18', '--batch-size', '1', '--test-fraction', '0.25', '--seed', '7', '--no-save-checkpoints'];

test('train --slurm runs the same training as a job: the request reaches SLURM, the events are followed to the end, runs shows the job; a second job for a run in progress is refused', { timeout: 10 * 60_000 }, async (t) => {
  const root = scratch(t);
  // 8 cubes, 3 epochs: long enough to still be running when asked about below.
  const yaml = await tinyDataset(root, 2);
  const runDir = path.join(root, 'run');
  const jobId = submit(['-y', yaml, '-o', runDir, ...TINY_RUN, '--epochs', '3', '--cpus', '1', '--mem', '2G', '--time', '20', '--sbatch-line', '#SBATCH --comment=cfr-slurm-test']);
  // What was asked for is what SLURM holds (scontrol knows the job for minutes after it ends).
  const job = scontrolShowJob(jobId);
  for (const expected of ['JobName=cellfinder-train', 'Partition=cpu', 'TimeLimit=00:20:00', 'NumCPUs=1', 'mem=2G', 'Comment=cfr-slurm-test', `StdOut=${runDir}/slurm-${jobId}.out`, `WorkDir=${process.cwd()}`]) assert.ok(job.includes(expected), `${expected} in ${job}`);
  const script = await fs.readFile(path.join(runDir, SLURM_SCRIPT_FILE), 'utf8');
  assert.match(script, /^#SBATCH --signal=B:USR2@300$/m);
  assert.match(script, new RegExp(`^exec ${process.execPath} ${CLI} train -y ${yaml} -o ${runDir} --network-depth 18 .* --epochs 3$`, 'm'), 'the job runs our CLI with the arguments of a local run, without the SLURM options');

  const run = await follow(t, runDir);
  const started = await run.waitFor('started');
  assert.deepEqual(started.model, { depth: 18, channels: 2, layers: 88, parameters: 33152674 });
  // While the job runs, runs says so, and another job writing into the same run is refused, naming the one there.
  const listed = cli(['runs', root]);
  assert.equal(listed.code, 0, listed.err);
  assert.match(listed.out, new RegExp(`^${runDir}: running.* \\| SLURM job ${jobId}: running on node \\S+$`, 'm'));
  const again = cli(['train', '-y', yaml, '-o', runDir, ...TINY_RUN, '--slurm']);
  assert.equal(again.code, 1);
  assert.match(again.err, new RegExp(`^error: job ${jobId} of ${runDir} is running on node \\S+\\. Wait for it, or stop it first \\(cellfinder-retrain cancel ${runDir}\\)`, 'm'));
  assert.equal((await readJobRecords(runDir)).length, 1);

  const finished = await run.waitFor('finished');
  assert.deepEqual(finished.history.map((h) => h.epoch), [0, 1, 2]);
  assert.equal(finished.modelFile, path.join(runDir, 'model.keras'));
  assert.deepEqual(run.events.filter((e) => e.type === 'epoch').map((e) => (e as { epoch: number }).epoch), [0, 1, 2]);
  // SLURM's own output file holds what the CLI prints for a local run.
  assert.match(await fs.readFile(path.join(runDir, `slurm-${jobId}.out`), 'utf8'), /^Finished: .*model\.keras$/m);
  const json = cli(['runs', runDir, '--json']);
  const [record] = JSON.parse(json.out) as Array<{ status: string; job: { jobId: string; mode: string } }>;
  assert.deepEqual([record.status, record.job.jobId, record.job.mode], ['finished', jobId, 'train']);
});

test('cancel stops a running job mid-epoch with a resumable checkpoint; train --resume --slurm resubmits it and it finishes with the full epoch count', { timeout: 10 * 60_000 }, async (t) => {
  const root = scratch(t);
  // 16 cubes: 12 training batches of one per epoch, so the cancel lands mid-epoch.
  const yaml = await tinyDataset(root, 4);
  const runDir = path.join(root, 'run');
  const firstJob = submit(['-y', yaml, '-o', runDir, ...TINY_RUN, '--epochs', '3', '--time', '30']);
  const run = await follow(t, runDir);
  await run.waitFor('batch', (e) => e.epoch === 1 && e.batch === 2);
  const cancel = cli(['cancel', runDir]);
  assert.equal(cancel.code, 0, cancel.err);
  assert.equal(cancel.out.trim(), `job ${firstJob} told to stop after the current batch (a resumable checkpoint is written)`);
  const cancelled = await run.waitFor('cancelled');
  assert.equal(cancelled.epoch, 1);
  assert.ok(cancelled.batch >= 2 && cancelled.batch < 11, `stopped within the epoch, at batch ${cancelled.batch}`);
  assert.ok(existsSync(path.join(runDir, RESUME_FOLDER, 'state.json')));
  // The job ends by itself once the checkpoint is written; runs then offers the resume.
  for (let i = 0; i < 60 && / \| SLURM job \d+: (running|completing)/.test(cli(['runs', runDir]).out); i++) await new Promise((resolve) => setTimeout(resolve, 1000));
  assert.match(cli(['runs', runDir]).out, new RegExp(`^${runDir}: cancelled, epoch 1/3, val_accuracy [\\d.]+, resumable \\| SLURM job ${firstJob}: (failed|completed)`, 'm'));

  const secondJob = submit(['--resume', runDir]);
  assert.notEqual(secondJob, firstJob);
  // Resubmitted without SLURM options (as the editor's Resume does), it asks for what the first job asked for.
  assert.match(scontrolShowJob(secondJob), /TimeLimit=00:30:00/);
  const resumed = await run.waitFor('started', (e) => e.resumedAtEpoch !== undefined);
  assert.equal(resumed.resumedAtEpoch, 1);
  assert.equal(resumed.resumedAtIteration, 12 + cancelled.batch);
  const finished = await run.waitFor('finished');
  assert.deepEqual(finished.history.map((h) => h.epoch), [0, 1, 2]);
  // Every batch trained exactly once over the two jobs.
  assert.equal((await readModelFile(finished.modelFile)).optimizer?.iterations, 36);
  assert.deepEqual((await readJobRecords(runDir)).map((job) => [job.jobId, job.mode]), [[firstJob, 'train'], [secondJob, 'resume']]);
  assert.ok(!existsSync(path.join(runDir, RESUME_FOLDER)), 'the resume state is removed when the run finishes');
});

test('bad requests are refused before anything is queued, each saying what is wrong and what to do; a run whose squeue is missing is still listed', { timeout: 5 * 60_000 }, async (t) => {
  const root = scratch(t);
  const yaml = await tinyDataset(root);
  const runDir = path.join(root, 'run');
  const args = ['train', '-y', yaml, '-o', runDir, ...TINY_RUN, '--slurm'];

  const unknownPartition = cli([...args, '--partition', 'gpu-nope']);
  assert.equal(unknownPartition.code, 1);
  assert.equal(unknownPartition.err.trim(), 'error: unknown partition "gpu-nope": this cluster\'s partitions are cpu (default). Give one of them with --partition, or leave --partition out for the default');
  assert.ok(!existsSync(runDir), 'nothing is written for a refused request');

  // sbatch's own refusal, in its words: this cluster has no GPUs.
  const refused = cli([...args, '--gres', 'gpu:1']);
  assert.equal(refused.code, 1);
  assert.match(refused.err, new RegExp(`^error: sbatch refused the job: Invalid generic resource \\(gres\\) specification.*\\. Change what it names and submit again \\(the script it was given: ${runDir}/${SLURM_SCRIPT_FILE}\\)$`, 'm'));
  assert.ok(!existsSync(path.join(runDir, SLURM_JOBS_FILE)), 'no job is recorded');

  for (const [bad, message] of [
    [['--mem', '32 GB'], 'memory "32 GB" is not a size sbatch takes. Give a number with an optional unit K, M, G or T, e.g. --mem 32G'],
    [['--time', 'noon'], 'time limit "noon" is not one sbatch takes. Give minutes, HH:MM:SS or D-HH:MM:SS, e.g. --time 12:00:00'],
    [['--sbatch-line', 'module load cuda'], 'extra sbatch line "module load cuda" is not an sbatch option. Give options such as --qos=long or "#SBATCH --constraint=a100", one per line'],
  ] as const) {
    const result = cli([...args, ...bad]);
    assert.deepEqual([result.code, result.err.trim()], [1, `error: ${message}`]);
  }
  const stray = cli(['train', '-y', yaml, '-o', runDir, '--partition', 'cpu']);
  assert.equal(stray.code, 2);
  assert.match(stray.err, /^error: --partition is an option of a SLURM job: add --slurm, or leave it out to run on this machine/);

  // Without SLURM's commands on PATH (only node is there): submitting says which is missing; a SLURM run is still listed from its events.
  const bin = path.join(root, 'bin');
  await fs.mkdir(bin);
  symlinkSync(process.execPath, path.join(bin, 'node'));
  const noSlurm = { ...process.env, PATH: bin };
  const missing = cli(args, noSlurm);
  assert.equal(missing.code, 1);
  assert.match(missing.err, new RegExp(`^error: sbatch is not on PATH \\(${bin}\\)\\. SLURM's commands must be found on this machine`, 'm'));
  const jobId = submit(['-y', yaml, '-o', runDir, ...TINY_RUN, '--epochs', '1']);
  const run = await follow(t, runDir);
  await run.waitFor('finished');
  const listed = cli(['runs', runDir], noSlurm);
  assert.equal(listed.code, 0, listed.err);
  assert.match(listed.out, new RegExp(`^${runDir}: finished, epoch 1/1, val_accuracy [\\d.]+ \\| SLURM job ${jobId}: state unknown \\(squeue is not on PATH`, 'm'));
});

test('a queued run is listed before it writes anything, with why it waits; cancelling it removes it from the queue, leaving the run folder as it was', { timeout: 2 * 60_000 }, async (t) => {
  const root = scratch(t);
  const yaml = await tinyDataset(root);
  const runDir = path.join(root, 'run');
  // Held: it stays pending whatever the cluster's load.
  const jobId = submit(['-y', yaml, '-o', runDir, ...TINY_RUN, '--epochs', '1', '--sbatch-line', '--hold']);
  assert.equal(cli(['runs', root]).out.trim(), `${runDir}: not started | SLURM job ${jobId}: pending: JobHeldUser`);
  const before = (await fs.readdir(runDir)).sort();
  const cancel = cli(['cancel', runDir]);
  assert.equal(cancel.out.trim(), `job ${jobId} removed from the queue before it started`);
  assert.match(cli(['runs', root]).out, new RegExp(`^${runDir}: not started \\| SLURM job ${jobId}: cancelled`, 'm'));
  assert.deepEqual((await fs.readdir(runDir)).sort(), before);
  assert.deepEqual(before, [SLURM_SCRIPT_FILE, SLURM_JOBS_FILE]);
});

test('near its time limit a job gets SLURM\'s warning signal and stops by itself with a resumable checkpoint, before SLURM would kill it', { timeout: 5 * 60_000 }, async (t) => {
  const root = scratch(t);
  const yaml = await tinyDataset(root, 4);
  const runDir = path.join(root, 'run');
  // 2 minutes: the warning comes at half of it (SLURM may send it up to a minute early); 50 epochs would take several minutes.
  const jobId = submit(['-y', yaml, '-o', runDir, ...TINY_RUN, '--epochs', '50', '--time', '2']);
  assert.match(await fs.readFile(path.join(runDir, SLURM_SCRIPT_FILE), 'utf8'), /^#SBATCH --signal=B:USR2@60$/m);
  const run = await follow(t, runDir);
  const cancelled = await run.waitFor('cancelled', () => true, 150);
  assert.ok(cancelled.epoch < 49, `stopped at epoch ${cancelled.epoch + 1} of 50`);
  assert.ok(existsSync(path.join(runDir, RESUME_FOLDER, 'state.json')));
  for (let i = 0; i < 60 && / \| SLURM job \d+: (running|completing)/.test(cli(['runs', runDir]).out); i++) await new Promise((resolve) => setTimeout(resolve, 1000));
  // It ended by itself (exit 3, as a cancelled run here), not killed at the limit (TIMEOUT).
  assert.match(cli(['runs', runDir]).out, new RegExp(`^${runDir}: cancelled, epoch \\d+/50, val_accuracy [\\d.]+, resumable \\| SLURM job ${jobId}: failed on node \\S+ \\(NonZeroExitCode\\)$`, 'm'));
});

// SLURM lets a requeued job start again only about two minutes after the requeue: the two requeue tests wait that out
// side by side (each job asks for 4 GB, so both fit on the test cluster's node at once).
describe('requeued jobs', { concurrency: 2 }, () => {
  test('with --requeue, a job SLURM requeues mid-epoch (scontrol requeue) runs its command again, which resumes the run instead of starting it over', { timeout: 10 * 60_000 }, async (t) => {
    const root = scratch(t);
    const yaml = await tinyDataset(root, 4);
    const runDir = path.join(root, 'run');
    const jobId = submit(['-y', yaml, '-o', runDir, ...TINY_RUN, '--epochs', '3', '--requeue', '--mem', '4G']);
    assert.match(await fs.readFile(path.join(runDir, 'slurm-job.sh'), 'utf8'), /^#SBATCH --requeue$/m);
    const run = await follow(t, runDir);
    await run.waitFor('batch', (e) => e.epoch === 1 && e.batch === 2);
    const requeue = spawnSync('scontrol', ['requeue', jobId], { encoding: 'utf8' });
    assert.equal(requeue.status, 0, requeue.stderr);
    // The same job, started again: its command resumes from the checkpoint the first start left (mid-epoch on SIGTERM, else the last epoch's).
    const resumed = await run.waitFor('started', (e) => e.resumedAtEpoch !== undefined);
    assert.equal(resumed.resumedAtEpoch, 1);
    const finished = await run.waitFor('finished');
    assert.deepEqual(finished.history.map((h) => h.epoch), [0, 1, 2]);
    // Every batch trained once over the two starts; nothing of the first start's epoch 0 was trained again.
    assert.equal((await readModelFile(finished.modelFile)).optimizer?.iterations, 36);
    assert.match(await fs.readFile(path.join(runDir, `slurm-${jobId}.err`), 'utf8'), new RegExp(`SLURM restarted job ${jobId} \\(restart 1\\): resuming ${runDir}`));
  });

  test('with --requeue, a job near its time limit stops with a checkpoint, requeues itself and finishes the run in its next start', { timeout: 12 * 60_000 }, async (t) => {
    const root = scratch(t);
    const yaml = await tinyDataset(root, 4);
    const runDir = path.join(root, 'run');
    // 2 minutes, the warning at 1: more epochs than one start trains before it.
    const jobId = submit(['-y', yaml, '-o', runDir, ...TINY_RUN, '--epochs', '15', '--time', '2', '--requeue', '--mem', '4G']);
    assert.match(await fs.readFile(path.join(runDir, SLURM_SCRIPT_FILE), 'utf8'), /^export CELLFINDER_RETRAIN_SLURM_REQUEUE=1$/m);
    const run = await follow(t, runDir);
    const cancelled = await run.waitFor('cancelled', () => true, 150);
    // SLURM makes a requeued job eligible again only after a delay (2 minutes here), then schedules it.
    const resumed = await run.waitFor('started', (e) => e.resumedAtEpoch !== undefined, 330);
    assert.equal(resumed.resumedAtIteration, cancelled.epoch * 12 + cancelled.batch);
    const finished = await run.waitFor('finished', () => true, 240);
    assert.deepEqual(finished.history.map((h) => h.epoch), Array.from({ length: 15 }, (_, i) => i));
    assert.equal((await readModelFile(finished.modelFile)).optimizer?.iterations, 15 * 12);
    // One job throughout: requeued, not resubmitted.
    assert.deepEqual((await readJobRecords(runDir)).map((job) => job.jobId), [jobId]);
    assert.match(await fs.readFile(path.join(runDir, `slurm-${jobId}.err`), 'utf8'), /SLURM restarted job \d+ \(restart \d+\): resuming/);
  });
});

test('the editor\'s path: Retrain Network\'s settings file submitted with train --config --slurm; the training panel\'s controller shows the queue state, follows the job to the end, and its Cancel takes a queued job off the queue', { timeout: 6 * 60_000 }, async (t) => {
  const root = scratch(t);
  const yaml = await tinyDataset(root);
  const cliLocation = { nodePath: process.execPath, cliScript: CLI, device: 'cpu' as const };
  /** Writes the run's settings as Retrain Network does and submits them held (pending whatever the cluster's load). */
  const submitHeld = async (name: string) => {
    const runDir = path.join(root, name);
    const config: TrainConfig = { ...TRAIN_DEFAULTS, yamlFiles: [yaml], outputDir: runDir, networkDepth: 18, batchSize: 1, epochs: 2, testFraction: 0.25, seed: 7, saveCheckpoints: false };
    await fs.mkdir(runDir);
    await fs.writeFile(path.join(runDir, TRAIN_CONFIG_FILE), JSON.stringify(config));
    const request = { time: '20', extraLines: ['--hold'] };
    const { jobId } = await runCliJson<{ jobId: string }>(cliLocation, ['train', '--config', path.join(runDir, TRAIN_CONFIG_FILE), ...slurmArgs(request)]);
    assert.deepEqual((await readJobRecords(runDir)).map((job) => job.request), [{ ...request, requeue: false }]);
    // The job runs the settings file; the --json the editor submits with is the submission's, not the job's.
    assert.match(await fs.readFile(path.join(runDir, SLURM_SCRIPT_FILE), 'utf8'), new RegExp(`^exec \\S+ \\S+ train --config ${path.join(runDir, TRAIN_CONFIG_FILE)}$`, 'm'));
    return { runDir, jobId };
  };
  /** The panel's host side, as the editor makes it; the messages it would post to the page. */
  const panel = async (runDir: string) => {
    const messages: HostToTraining[] = [];
    const statuses: RunRecord['status'][] = [];
    const controller = new TrainingController(runDir, (message) => messages.push(message), {
      resume: async () => undefined,
      classify: async () => undefined,
      evaluate: async () => undefined,
      revealOutput: () => undefined,
      onStatus: (run) => statuses.push(run.status),
    });
    t.after(() => controller.dispose());
    await controller.handle({ type: 'ready' });
    return { controller, messages, statuses, jobTexts: () => messages.flatMap((m) => (m.type === 'job' && m.text ? [m.text] : [])) };
  };

  const finishing = await submitHeld('run');
  const followed = await panel(finishing.runDir);
  assert.deepEqual(followed.jobTexts(), [`SLURM job ${finishing.jobId}: pending: JobHeldUser`]);
  const shown = followed.messages.find((m): m is Extract<HostToTraining, { type: 'run' }> => m.type === 'run');
  assert.equal(shown?.run.status, 'running', 'a queued run counts as going on: Cancel applies to it');
  assert.equal(spawnSync('scontrol', ['release', finishing.jobId]).status, 0);
  const deadline = Date.now() + 4 * 60_000;
  while (followed.controller.run().status === 'running' && Date.now() < deadline) await new Promise((resolve) => setTimeout(resolve, 1000));
  assert.equal(followed.controller.run().status, 'finished', JSON.stringify(followed.messages.filter((m) => m.type !== 'events').slice(-5)));
  assert.ok(followed.messages.some((m) => m.type === 'events' && m.events.some((e) => e.type === 'epoch')), 'the epochs reached the page');
  assert.deepEqual(followed.statuses.at(-1), 'finished');

  const queued = await submitHeld('queued');
  const cancelling = await panel(queued.runDir);
  await cancelling.controller.handle({ type: 'cancel' });
  assert.ok(cancelling.messages.some((m) => m.type === 'busy' && m.message === `job ${queued.jobId} removed from the queue before it started`), JSON.stringify(cancelling.messages));
  assert.match(cancelling.jobTexts().at(-1) ?? '', new RegExp(`^SLURM job ${queued.jobId}: cancelled`));
  assert.notEqual(cancelling.controller.run().status, 'running');
});

test('a job on a node where the login node\'s engine does not load fails at its start, saying why in the run\'s log, instead of training on the slow engine', { timeout: 3 * 60_000 }, async (t) => {
  // CI sets the native engine up before the tests (npm run test:all); without it no engine is required of a job.
  if (!readActiveEngine(engineRoot()).ok) return t.skip('the native engine is not set up on this machine (cellfinder-retrain engine setup)');
  const root = scratch(t);
  const yaml = await tinyDataset(root);
  const runDir = path.join(root, 'run');
  // The node sees no engine where the login node has it: as when the engine sits in a home folder the nodes do not mount.
  const jobId = submit(['-y', yaml, '-o', runDir, ...TINY_RUN, '--epochs', '1', '--sbatch-line', '--export=ALL,CELLFINDER_RETRAIN_ENGINE_DIR=/nonexistent/engine']);
  const script = await fs.readFile(path.join(runDir, SLURM_SCRIPT_FILE), 'utf8');
  assert.match(script, /^export CELLFINDER_RETRAIN_REQUIRED_ENGINE="\$\{CELLFINDER_RETRAIN_REQUIRED_ENGINE:-native\}"$/m);
  assert.ok(script.includes(`export CELLFINDER_RETRAIN_ENGINE_DIR="\${CELLFINDER_RETRAIN_ENGINE_DIR:-${engineRoot()}}"`), script);
  const run = await follow(t, runDir);
  const failed = await run.waitFor('error', () => true, 120);
  assert.match(failed.message, /^stopped at the start on node \S+: the native engine does not load here \(no native engine is set up in \/nonexistent\/engine[^)]*\), so training would run on the pure-JavaScript engine, many times slower$/);
  assert.match(failed.fix ?? '', /^Set the engine up on a path every node sees \(CELLFINDER_RETRAIN_ENGINE_DIR=<shared folder> cellfinder-retrain engine setup on the login node\)/);
  assert.ok(!run.events.some((e) => e.type === 'batch'), 'nothing was trained');
  for (let i = 0; i < 30 && / \| SLURM job \d+: (running|completing)/.test(cli(['runs', runDir]).out); i++) await new Promise((resolve) => setTimeout(resolve, 1000));
  assert.match(cli(['runs', runDir]).out, new RegExp(`^${runDir}: failed \\| SLURM job ${jobId}: failed`, 'm'));
});

test('classify --brains --slurm classifies each brain of a list as one task of an array job; jobs shows each task; each brain\'s results are those of a classify here', { timeout: 8 * 60_000 }, async (t) => {
  const root = scratch(t);
  const model = path.join(root, 'resnet18.keras');
  const spec = resnetSpec(18, 2);
  await writeKerasModel(model, spec, initialWeights(tf, spec, 3));
  // Two brains (the bundled sample twice), one with a path relative to the list.
  const list = path.join(root, 'brains.csv');
  const [signal, background, points] = [path.join(SAMPLE, 'signal'), path.join(SAMPLE, 'background'), path.join(SAMPLE, 'candidates', 'candidates.xml')];
  await fs.writeFile(list, ['signal,background,points,output_dir', `${signal},${background},${points},brain-a`, `${signal},${background},${points},${path.join(root, 'brain-b')}`, ''].join('\n'));
  const common = ['--trained-model', model, '--voxel-sizes', '5', '2', '2', '--batch-size', '8'];
  const jobs = path.join(root, 'jobs');
  const submitted = cli(['classify', '--brains', list, ...common, '-o', jobs, '--slurm', '--time', '20']);
  assert.equal(submitted.code, 0, submitted.err);
  const jobId = /^Submitted SLURM job (\d+): classifying 2 brains as an array job, one task per brain$/m.exec(submitted.out)?.[1];
  assert.ok(jobId, submitted.out);
  assert.match(await fs.readFile(path.join(jobs, SLURM_SCRIPT_FILE), 'utf8'), /^#SBATCH --array=0-1$/m);
  // Followed as the editor follows it, until both tasks are done.
  let listed = '';
  for (let i = 0; i < 300 && !/: 2 of 2 brains classified/.test(listed); i++) {
    listed = cli(['jobs', jobs]).out;
    await new Promise((resolve) => setTimeout(resolve, 1000));
  }
  assert.match(listed, new RegExp(`^SLURM job ${jobId}: 2 of 2 brains classified$`, 'm'));
  assert.match(listed, new RegExp(`^  task 0 \\(${signal}\\): (completed on node \\S+ · |no longer in SLURM's queue · )?classified · \\d+/\\d+ candidates \\(100%\\)$`, 'm'));
  assert.match(listed, /^ {2}task 1 \(.*\): .*classified/m);
  // Each brain's results are what classify here writes for it.
  const here = path.join(root, 'here');
  const local = cli(['classify', '--signal', signal, '--background', background, '--points', points, ...common, '-o', here]);
  assert.equal(local.code, 0, local.err);
  const expected = await fs.readFile(path.join(here, 'classified_points.csv'), 'utf8');
  for (const brain of [path.join(root, 'brain-a'), path.join(root, 'brain-b')]) assert.equal(await fs.readFile(path.join(brain, 'classified_points.csv'), 'utf8'), expected, brain);
});

test('a job killed outright (SIGKILL to every process of the run, as a node failure leaves it) resumes from its last epoch when resubmitted, and trains every batch of the later epochs once', { timeout: 8 * 60_000 }, async (t) => {
  const root = scratch(t);
  const yaml = await tinyDataset(root, 4);
  const runDir = path.join(root, 'run');
  const firstJob = submit(['-y', yaml, '-o', runDir, ...TINY_RUN, '--epochs', '3']);
  const run = await follow(t, runDir);
  await run.waitFor('batch', (e) => e.epoch === 1 && e.batch === 4);
  // As a node that loses power: every process of the run dies at once, the training process first (else it would see its
  // parent go and write a checkpoint, as it does when the job's shell is killed), with no signal any of them could handle.
  const processes = spawnSync('pgrep', ['-f', runDir], { encoding: 'utf8' }).stdout.trim().split('\n').map(Number).filter((pid) => pid !== process.pid);
  assert.ok(processes.length >= 1, 'the job\'s processes are found');
  for (const pid of processes.sort((a, b) => b - a)) spawnSync('kill', ['-9', String(pid)]);
  for (let i = 0; i < 60 && / \| SLURM job \d+: (running|completing)/.test(cli(['runs', runDir]).out); i++) await new Promise((resolve) => setTimeout(resolve, 1000));
  const listed = cli(['runs', runDir]).out;
  assert.match(listed, new RegExp(`^${runDir}: interrupted, epoch 1/3, val_accuracy [\\d.]+, resumable \\| SLURM job ${firstJob}: `, 'm'));
  assert.ok(!run.events.some((e) => e.type === 'cancelled'), 'the run had no chance to write a checkpoint of its own');

  const secondJob = submit(['--resume', runDir]);
  const resumed = await run.waitFor('started', (e) => e.resumedAtEpoch !== undefined);
  // From the end of epoch 0, the last checkpoint: epoch 1's batches are trained again, from its start.
  assert.equal(resumed.resumedAtEpoch, 1);
  assert.equal(resumed.resumedAtIteration, 12);
  const finished = await run.waitFor('finished');
  assert.deepEqual(finished.history.map((h) => h.epoch), [0, 1, 2]);
  assert.equal((await readModelFile(finished.modelFile)).optimizer?.iterations, 36);
  assert.deepEqual((await readJobRecords(runDir)).map((job) => job.jobId), [firstJob, secondJob]);
});

test('a queued array job of a brain list shows each task pending, and cancelling it takes every task off the queue', { timeout: 2 * 60_000 }, async (t) => {
  const root = scratch(t);
  const list = path.join(root, 'brains.csv');
  const [signal, background, points] = [path.join(SAMPLE, 'signal'), path.join(SAMPLE, 'background'), path.join(SAMPLE, 'candidates', 'candidates.xml')];
  await fs.writeFile(list, `signal,background,points,output_dir\n${signal},${background},${points},a\n${signal},,${points},b\n`);
  const jobs = path.join(root, 'jobs');
  const submitted = cli(['classify', '--brains', list, '--trained-model', path.join(root, 'no-model-needed-while-held.keras'), '-o', jobs, '--slurm', '--sbatch-line', '--hold']);
  assert.equal(submitted.code, 0, submitted.err);
  const jobId = /^Submitted SLURM job (\d+)/m.exec(submitted.out)?.[1] as string;
  assert.equal(cli(['jobs', jobs]).out, `SLURM job ${jobId}: 0 of 2 brains classified\n  task 0: pending: JobHeldUser\n  task 1: pending: JobHeldUser\n`);
  assert.equal(await cancelArrayJob(jobId, 2), `job ${jobId}: 2 queued task(s) taken off the queue, 0 running task(s) told to stop after the current batch (what they classified is kept; submit again to classify the rest)`);
  assert.match(cli(['jobs', jobs]).out, /^ {2}task 0: cancelled\b.*\n {2}task 1: cancelled\b.*\n$/m);
  assert.equal(await cancelArrayJob(jobId, 2), `job ${jobId} has no task queued or running: nothing to cancel`);
});

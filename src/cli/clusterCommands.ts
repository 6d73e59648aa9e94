/**
 * The command line's SLURM side: `train --slurm` (and `train --resume <dir>
 * --slurm`) submits the same command as a job, `runs` lists runs with their
 * job's state, `cancel` stops a run (a job through scancel, a run here
 * through its process) with a resumable checkpoint.
 */
import * as path from 'node:path';
import { EVENTS_FILE } from '../core/runFiles';
import { REQUIRED_ENGINE_ENV, type RequiredEngine } from '../engine/backend';
import { engineRoot, ENGINE_DIR_ENV, readActiveEngine } from '../engine/engineLayout';
import { scanWorkspace } from '../core/workspaceScan';
import { cancelRunOrJob, classifyJobProgress, describeClassifyTask, describeJob, latestJob, readRunWithJob, type RunWithJob } from '../cluster/clusterRuns';
import { describeJobState, jobIsActive, jobOutputFile, SlurmError, submitJob, type JobRecord, type SlurmRequest } from '../cluster/slurm';
import type { TrainingEvent } from '../training/events';
import { parseArgs, UsageError, type FlagSpec } from './args';

interface Io {
  out: (text: string) => void;
  err: (text: string) => void;
}

export const SLURM_FLAGS: FlagSpec[] = [
  { name: 'slurm', values: 0 },
  { name: 'partition', values: 1 },
  { name: 'gres', values: 1 },
  { name: 'cpus', values: 1 },
  { name: 'mem', values: 1 },
  { name: 'time', values: 1 },
  { name: 'account', values: 1 },
  { name: 'sbatch-line', values: 1, verbatim: true },
  { name: 'requeue', values: 0 },
];

/** What the job asks SLURM for; undefined without --slurm (then the SLURM options are a usage error). */
export function slurmRequestFrom(flags: Map<string, string[]>): SlurmRequest | undefined {
  if (!flags.has('slurm')) {
    const stray = SLURM_FLAGS.find((flag) => flags.has(flag.name));
    if (stray) throw new UsageError(`--${stray.name} is an option of a SLURM job: add --slurm, or leave it out to run on this machine`);
    return undefined;
  }
  const cpus = flags.get('cpus')?.[0];
  if (cpus !== undefined && !/^[1-9]\d*$/.test(cpus)) throw new UsageError(`--cpus must be a positive whole number, got ${cpus}`);
  return {
    partition: flags.get('partition')?.[0],
    gres: flags.get('gres')?.[0],
    cpus: cpus === undefined ? undefined : Number(cpus),
    mem: flags.get('mem')?.[0],
    time: flags.get('time')?.[0],
    account: flags.get('account')?.[0],
    extraLines: flags.get('sbatch-line'),
    requeue: flags.has('requeue'),
  };
}

/**
 * The engine a job runs on: the one set up on this (login) node, found by
 * its folder (put it on the shared filesystem with CELLFINDER_RETRAIN_ENGINE_DIR
 * before `engine setup`, so the nodes see it), and required when it is set up
 * here: the GPU engine for a job given GPUs, else the native one.
 */
function jobEngine(request: SlurmRequest): Record<string, string> {
  const root = engineRoot();
  const environment: Record<string, string> = { [ENGINE_DIR_ENV]: root };
  const gpus = /(^|,)gpu\b/.test(request.gres ?? '');
  const required: RequiredEngine | undefined = gpus && readActiveEngine(root, 'gpu').ok ? 'gpu' : readActiveEngine(root, 'cpu').ok || readActiveEngine(root, 'gpu').ok ? 'native' : undefined;
  if (required) environment[REQUIRED_ENGINE_ENV] = required;
  return environment;
}

function asksForAnything(request: SlurmRequest): boolean {
  return Object.values(request).some((value) => (Array.isArray(value) ? value.length > 0 : value !== undefined && value !== false));
}

/**
 * What the job runs: our CLI's `command` with `argv` less the SLURM options
 * (each takes one value, inline or next) and less --json, which says how this
 * submission reports (the editor reads the job id from it); the job writes
 * its own events and results, and SLURM's output files read as a run in a
 * terminal does.
 */
function jobCommand(cli: { node: string; entry: string }, command: 'train' | 'classify', argv: readonly string[]): string[] {
  const kept: string[] = [];
  for (let i = 0; i < argv.length; i++) {
    const flag = SLURM_FLAGS.find((spec) => argv[i] === `--${spec.name}` || argv[i].startsWith(`--${spec.name}=`));
    if (flag) {
      if (flag.values === 1 && !argv[i].includes('=')) i++;
    } else if (argv[i] !== '--json') kept.push(argv[i]);
  }
  return [cli.node, cli.entry, command, ...kept];
}

/**
 * Submits `classify` (given as `argv`, with its SLURM options) as a job:
 * one brain, its records in its output folder; or, with `tasks`, an array
 * job over a brain list, its records and SLURM's files in `folder`. A
 * resubmitted job classifies only what is left (classify resumes).
 */
export async function submitClassifyJob(argv: readonly string[], request: SlurmRequest, folder: string, tasks: number | undefined, cli: { node: string; entry: string }, json: boolean, io: Io): Promise<number> {
  const latest = await latestJob(folder);
  if (latest && jobIsActive(latest.state)) {
    throw new SlurmError(`job ${latest.job.jobId} of ${folder} is ${describeJobState(latest.state)}`, `Wait for it, or stop it first (scancel ${latest.job.jobId}), then submit again`);
  }
  const record = await submitJob({ name: 'cellfinder-classify', runDir: folder, workDir: process.cwd(), command: jobCommand(cli, 'classify', argv), request, environment: jobEngine(request), tasks }, 'classify');
  if (json) io.out(JSON.stringify({ jobId: record.jobId, mode: 'classify', folder, tasks }));
  else {
    io.out(`Submitted SLURM job ${record.jobId}: classifying ${tasks ? `${tasks} brains as an array job, one task per brain` : folder}`);
    io.out(`  follow it: cellfinder-retrain jobs ${folder}   (SLURM's output: ${jobOutputFile(folder, record.jobId, 'out', tasks ? 0 : undefined)}${tasks ? ', one per task' : ''})`);
  }
  return 0;
}

/**
 * Submits `train` (given as `argv`, with its SLURM options) as a job whose
 * outputs and events go to `runDir`, as they would here; prints the job id
 * and how to follow it.
 */
export async function submitTrainJob(argv: readonly string[], request: SlurmRequest, runDir: string, mode: JobRecord['mode'], cli: { node: string; entry: string }, json: boolean, io: Io): Promise<number> {
  const latest = await latestJob(runDir);
  if (latest && jobIsActive(latest.state)) {
    throw new SlurmError(`job ${latest.job.jobId} of ${runDir} is ${describeJobState(latest.state)}`, `Wait for it, or stop it first (cellfinder-retrain cancel ${runDir}), then submit again`);
  }
  // Resubmitted without SLURM options (the editor's Resume, or `--resume DIR --slurm`), a run asks for what its last job asked for.
  const asked = mode === 'resume' && latest && !asksForAnything(request) ? (latest.job.request ?? request) : request;
  const record = await submitJob({ name: `cellfinder-${mode}`, runDir, workDir: process.cwd(), command: jobCommand(cli, 'train', argv), request: asked, environment: jobEngine(asked) }, mode);
  if (json) io.out(JSON.stringify({ jobId: record.jobId, mode, runDir, events: path.join(runDir, EVENTS_FILE) }));
  else {
    io.out(`Submitted SLURM job ${record.jobId}: ${mode === 'resume' ? 'resuming' : 'training'} ${runDir}`);
    io.out(`  follow it: cellfinder-retrain runs ${runDir}   (its events: ${path.join(runDir, EVENTS_FILE)}; SLURM's output: ${path.join(runDir, `slurm-${record.jobId}.out`)})`);
    io.out(`  stop it with a resumable checkpoint: cellfinder-retrain cancel ${runDir}`);
  }
  return 0;
}

function describeRun(listing: RunWithJob): string {
  const { run } = listing;
  const epoch = run.events.filter((e): e is Extract<TrainingEvent, { type: 'epoch' }> => e.type === 'epoch').at(-1);
  const parts = [run.events.length ? run.status : 'not started', epoch && `epoch ${epoch.epoch + 1}/${epoch.epochs}`, run.valAccuracy !== undefined && `val_accuracy ${run.valAccuracy.toFixed(4)}`, run.resumable && 'resumable'];
  const jobText = describeJob(listing);
  return `${run.outputDir}: ${parts.filter(Boolean).join(', ')}${jobText ? ` | ${jobText}` : ''}`;
}

/** `runs [folder...]`: the training runs under the folders (default: here), with their SLURM job's state. */
export async function runsCommand(argv: readonly string[], io: Io): Promise<number> {
  const { flags, positionals } = parseArgs(argv, [{ name: 'json', values: 0 }]);
  const roots = (positionals.length ? positionals : ['.']).map((folder) => path.resolve(folder));
  const listings = [];
  for (const runDir of (await scanWorkspace(roots)).runs) listings.push(await readRunWithJob(runDir));
  if (flags.has('json')) {
    io.out(JSON.stringify(listings.map(({ run, job, jobState: state, jobStateProblem }) => ({ ...run, events: undefined, job, jobState: state, jobStateProblem })), null, 2));
    return 0;
  }
  if (!listings.length) io.out(`No training runs under ${roots.join(', ')}.`);
  for (const listing of listings) io.out(describeRun(listing));
  return 0;
}

/** `cancel <run-dir>`: stops the run after its current batch with a resumable checkpoint, whether it runs as a job or here. */
export async function cancelCommand(argv: readonly string[], io: Io): Promise<number> {
  const { positionals } = parseArgs(argv, []);
  if (positionals.length !== 1) throw new UsageError('cancel takes one run folder');
  io.out(await cancelRunOrJob(path.resolve(positionals[0])));
  return 0;
}

/** `jobs <folder>`: the classify job submitted for the folder, each task's state and progress (a brain list's array job: one line per brain). */
export async function jobsCommand(argv: readonly string[], io: Io): Promise<number> {
  const { flags, positionals } = parseArgs(argv, [{ name: 'json', values: 0 }]);
  if (positionals.length !== 1) throw new UsageError('jobs takes one folder: the -o of classify --slurm');
  const folder = path.resolve(positionals[0]);
  const progress = await classifyJobProgress(folder);
  if (!progress) {
    io.out(`No classify job was submitted for ${folder}.`);
    return 0;
  }
  if (flags.has('json')) io.out(JSON.stringify(progress, null, 2));
  else {
    const done = progress.tasks.filter((task) => task.finished).length;
    io.out(`SLURM job ${progress.job.jobId}: ${done} of ${progress.tasks.length} ${progress.tasks.length === 1 ? 'brain' : 'brains'} classified`);
    for (const task of progress.tasks) io.out(`  ${describeClassifyTask(task)}`);
  }
  return 0;
}

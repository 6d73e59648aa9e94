/**
 * The command line's SLURM side: `train --slurm` (and `train --resume <dir>
 * --slurm`) submits the same command as a job, `runs` lists runs with their
 * job's state, `cancel` stops a run (a job through scancel, a run here
 * through its process) with a resumable checkpoint.
 */
import * as path from 'node:path';
import { EVENTS_FILE } from '../core/runFiles';
import { scanWorkspace } from '../core/workspaceScan';
import { cancelJob, describeJobState, jobIsActive, jobState, readJobRecords, SlurmError, submitJob, type JobRecord, type JobState, type SlurmRequest } from '../cluster/slurm';
import type { TrainingEvent } from '../training/events';
import { cancelRun, readRun, summarizeRun, type RunRecord } from '../training/runs';
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

/** `argv` without the SLURM options (each takes one value, inline or next): the command the job runs. */
function withoutSlurmFlags(argv: readonly string[]): string[] {
  const kept: string[] = [];
  for (let i = 0; i < argv.length; i++) {
    const flag = SLURM_FLAGS.find((spec) => argv[i] === `--${spec.name}` || argv[i].startsWith(`--${spec.name}=`));
    if (!flag) kept.push(argv[i]);
    else if (flag.values === 1 && !argv[i].includes('=')) i++;
  }
  return kept;
}

/** The run's latest job and its state; a job of the run still queued or running refuses a second one. */
async function latestJob(runDir: string): Promise<{ job: JobRecord; state: JobState | undefined } | undefined> {
  const job = (await readJobRecords(runDir)).at(-1);
  return job && { job, state: await jobState(job.jobId) };
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
  const record = await submitJob({ name: `cellfinder-${mode}`, runDir, workDir: process.cwd(), command: [cli.node, cli.entry, 'train', ...withoutSlurmFlags(argv)], request }, mode);
  if (json) io.out(JSON.stringify({ jobId: record.jobId, mode, runDir, events: path.join(runDir, EVENTS_FILE) }));
  else {
    io.out(`Submitted SLURM job ${record.jobId}: ${mode === 'resume' ? 'resuming' : 'training'} ${runDir}`);
    io.out(`  follow it: cellfinder-retrain runs ${runDir}   (its events: ${path.join(runDir, EVENTS_FILE)}; SLURM's output: ${path.join(runDir, `slurm-${record.jobId}.out`)})`);
    io.out(`  stop it with a resumable checkpoint: cellfinder-retrain cancel ${runDir}`);
  }
  return 0;
}

interface RunListing {
  run: RunRecord;
  job?: JobRecord;
  jobState?: JobState;
  /** Why the job's state is not known (squeue missing, the cluster not answering). */
  jobStateProblem?: string;
}

/**
 * A run as its events say, and for a SLURM run its latest job's state: the
 * job, not a process id (which names a process on the job's node), says
 * whether the run still goes on.
 */
async function listRun(runDir: string): Promise<RunListing> {
  const run = await readRun(runDir);
  let latest;
  try {
    latest = await latestJob(runDir);
  } catch (error) {
    if (!(error instanceof SlurmError)) throw error;
    return { run, job: (await readJobRecords(runDir)).at(-1), jobStateProblem: error.message };
  }
  if (!latest) return { run };
  return { run: summarizeRun(runDir, run.events, () => jobIsActive(latest.state)), job: latest.job, jobState: latest.state };
}

function describeRun({ run, job, jobState: state, jobStateProblem }: RunListing): string {
  const epoch = run.events.filter((e): e is Extract<TrainingEvent, { type: 'epoch' }> => e.type === 'epoch').at(-1);
  const parts = [run.events.length ? run.status : 'not started', epoch && `epoch ${epoch.epoch + 1}/${epoch.epochs}`, run.valAccuracy !== undefined && `val_accuracy ${run.valAccuracy.toFixed(4)}`, run.resumable && 'resumable'];
  const jobText = job && `SLURM job ${job.jobId}: ${jobStateProblem ? `state unknown (${jobStateProblem})` : describeJobState(state)}`;
  return `${run.outputDir}: ${parts.filter(Boolean).join(', ')}${jobText ? ` | ${jobText}` : ''}`;
}

/** `runs [folder...]`: the training runs under the folders (default: here), with their SLURM job's state. */
export async function runsCommand(argv: readonly string[], io: Io): Promise<number> {
  const { flags, positionals } = parseArgs(argv, [{ name: 'json', values: 0 }]);
  const roots = (positionals.length ? positionals : ['.']).map((folder) => path.resolve(folder));
  const listings = [];
  for (const runDir of (await scanWorkspace(roots)).runs) listings.push(await listRun(runDir));
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
  const runDir = path.resolve(positionals[0]);
  const job = (await readJobRecords(runDir)).at(-1);
  if (job) {
    io.out(await cancelJob(job.jobId));
    return 0;
  }
  const run = await readRun(runDir);
  if (run.status !== 'running' || run.pid === undefined) {
    io.out(`${runDir} is not running (${run.events.length ? run.status : 'no run there'}): nothing to cancel`);
    return 0;
  }
  cancelRun(run.pid);
  io.out(`run ${runDir} (process ${run.pid}) told to stop after the current batch (a resumable checkpoint is written)`);
  return 0;
}

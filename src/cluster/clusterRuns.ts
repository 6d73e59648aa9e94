/**
 * A training run together with its SLURM job, for every place that shows or
 * stops runs (the CLI's `runs` and `cancel`, the editor's Runs view and
 * training panel). A run submitted as a job records it in its folder
 * (SLURM_JOBS_FILE); then the job, not a process id (which names a process
 * on the job's node), says whether the run still goes on. No VS Code here.
 */
import type { TrainingEvent } from '../training/events';
import { cancelRun, readRun, summarizeRun, type RunRecord } from '../training/runs';
import { cancelJob, describeJobState, jobIsActive, jobState, readJobRecords, SlurmError, type JobRecord, type JobState } from './slurm';

export interface RunWithJob {
  run: RunRecord;
  /** The run's latest SLURM job; undefined for a run started on this machine. */
  job?: JobRecord;
  jobState?: JobState;
  /** Why the job's state is not known (squeue missing, the cluster not answering). */
  jobStateProblem?: string;
}

/** The run's latest job and its state from squeue; undefined for a run never submitted. */
export async function latestJob(runDir: string): Promise<{ job: JobRecord; state: JobState | undefined } | undefined> {
  const job = (await readJobRecords(runDir)).at(-1);
  return job && { job, state: await jobState(job.jobId) };
}

/** The run as its events say, its status judged by its job when it has one. */
export async function readRunWithJob(runDir: string): Promise<RunWithJob> {
  const run = await readRun(runDir);
  let latest;
  try {
    latest = await latestJob(runDir);
  } catch (error) {
    if (!(error instanceof SlurmError)) throw error;
    return { run, job: (await readJobRecords(runDir)).at(-1), jobStateProblem: error.message };
  }
  if (!latest) return { run };
  return { run: summarizeRunWithJob(runDir, run.events, latest.state), job: latest.job, jobState: latest.state };
}

/**
 * The run's status while its job is queued or running counts as running
 * (Cancel applies; the panel follows it), unless the run has finished and
 * the job is only completing: the events written by an earlier attempt (its
 * cancel, its error) are history then. Without an active job, the events
 * alone say how the run ended.
 */
export function summarizeRunWithJob(runDir: string, events: TrainingEvent[], state: JobState | undefined): RunRecord {
  const active = jobIsActive(state);
  const run = summarizeRun(runDir, events, () => active);
  return active && run.status !== 'finished' ? { ...run, status: 'running', resumable: false } : run;
}

/** "SLURM job 123: pending: Resources"; undefined for a run on this machine. */
export function describeJob({ job, jobState: state, jobStateProblem }: Omit<RunWithJob, 'run'>): string | undefined {
  return job && `SLURM job ${job.jobId}: ${jobStateProblem ? `state unknown (${jobStateProblem})` : describeJobState(state)}`;
}

/**
 * Stops the run after its current batch with a resumable checkpoint, whether
 * it runs as a job (scancel with the signal it handles like Ctrl-C) or here
 * (its process). Returns what was done, for the user.
 */
export async function cancelRunOrJob(runDir: string): Promise<string> {
  const job = (await readJobRecords(runDir)).at(-1);
  if (job) return cancelJob(job.jobId);
  const run = await readRun(runDir);
  if (run.status !== 'running' || run.pid === undefined) return `${runDir} is not running (${run.events.length ? run.status : 'no run there'}): nothing to cancel`;
  cancelRun(run.pid);
  return `run ${runDir} (process ${run.pid}) told to stop after the current batch (a resumable checkpoint is written)`;
}

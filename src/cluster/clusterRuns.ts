/**
 * A training run together with its SLURM job, for every place that shows or
 * stops runs (the CLI's `runs` and `cancel`, the editor's Runs view and
 * training panel), and the per-task progress of classify jobs. A run
 * submitted as a job records it in its folder (SLURM_JOBS_FILE); then the
 * job, not a process id (which names a process on the job's node), says
 * whether the run still goes on. No VS Code here.
 */
import { promises as fs } from 'node:fs';
import type { TrainingEvent } from '../training/events';
import { cancelRun, readRun, summarizeRun, type RunRecord } from '../training/runs';
import { arrayTaskStates, cancelJob, describeJobState, jobIsActive, jobOutputFile, jobState, readJobRecords, SlurmError, type JobRecord, type JobState } from './slurm';

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

/** One task of a classify job (the job itself when it is not an array), as SLURM and its output files say. */
export interface ClassifyTask {
  /** Index in the brain list; undefined for a one-brain job. */
  task?: number;
  /** The brain's signal volume, as the task named it when it started. */
  signal?: string;
  state?: JobState;
  /** Candidates classified so far and in all, from the task's last progress line. */
  progress?: { done: number; total: number };
  finished: boolean;
  /** The task's error, when it ended with one. */
  error?: string;
}

/**
 * The progress of each task of the latest classify job submitted for
 * `folder`: SLURM's state, and the task's own progress lines in its error
 * file (written as it goes, also on the shared filesystem); undefined when
 * no classify job was submitted there.
 */
export async function classifyJobProgress(folder: string): Promise<{ job: JobRecord; tasks: ClassifyTask[] } | undefined> {
  const job = (await readJobRecords(folder)).filter((record) => record.mode === 'classify').at(-1);
  if (!job) return undefined;
  const indices: Array<number | undefined> = job.tasks ? Array.from({ length: job.tasks }, (_, task) => task) : [undefined];
  const states: Map<number | undefined, JobState | undefined> = job.tasks ? await arrayTaskStates(job.jobId, job.tasks) : new Map([[undefined, await jobState(job.jobId)]]);
  const tasks = await Promise.all(
    indices.map(async (task): Promise<ClassifyTask> => {
      const read = (kind: 'out' | 'err') => fs.readFile(jobOutputFile(folder, job.jobId, kind, task), 'utf8').catch(() => '');
      const [out, err] = await Promise.all([read('out'), read('err')]);
      const progress = [...err.matchAll(/^classifying: (\d+)\/(\d+)/gm)].at(-1);
      return {
        task,
        signal: /^brain \d+ of .*?: (.*)$/m.exec(err)?.[1],
        state: states.get(task),
        progress: progress && { done: Number(progress[1]), total: Number(progress[2]) },
        finished: /^Classified \d+ candidates/m.test(out),
        error: [...err.matchAll(/^error: (.*)$/gm)].at(-1)?.[1],
      };
    }),
  );
  return { job, tasks };
}

/** "task 1 (…/brain2/signal): running on node gpu07 · 1200/5000 candidates (24%)". */
export function describeClassifyTask(task: ClassifyTask): string {
  const name = `${task.task === undefined ? 'job' : `task ${task.task}`}${task.signal ? ` (${task.signal})` : ''}`;
  const progress = task.progress && `${task.progress.done}/${task.progress.total} candidates (${task.progress.total ? Math.floor((100 * task.progress.done) / task.progress.total) : 100}%)`;
  const outcome = task.finished ? 'classified' : task.error ? `failed: ${task.error}` : undefined;
  return `${name}: ${[jobIsActive(task.state) || !outcome ? describeJobState(task.state) : undefined, outcome, progress].filter(Boolean).join(' · ')}`;
}

/**
 * Runs as SLURM jobs: the cluster's own commands (sbatch, squeue, scancel,
 * sinfo) as they are, never a scheduler of our own. A job runs our CLI with
 * the arguments a local run has, so it writes the same events file and
 * outputs into the run folder (on the shared filesystem); each submission is
 * recorded in that folder (SLURM_JOBS_FILE) so any machine that sees the
 * folder can ask SLURM about the run's job. No VS Code here.
 */
import { spawn } from 'node:child_process';
import { promises as fs } from 'node:fs';
import * as path from 'node:path';
import { appendLineDurably, parseJsonLines, writeFileAtomic } from '../core/atomicFile';
import { SLURM_JOBS_FILE } from '../core/runFiles';

/** A problem with the cluster or the request, said so the user can act on it. */
export class SlurmError extends Error {
  constructor(
    readonly problem: string,
    readonly fix: string,
  ) {
    super(`${problem}. ${fix}`);
    this.name = 'SlurmError';
  }
}

/** What the job asks SLURM for; all optional, the cluster's defaults otherwise. */
export interface SlurmRequest {
  partition?: string;
  /** Generic resources, e.g. `gpu:1` (--gres). */
  gres?: string;
  /** CPUs for the one task (--cpus-per-task). */
  cpus?: number;
  /** Memory per node, e.g. `32G` (--mem). */
  mem?: string;
  /** Time limit, e.g. `12:00:00` or `2-00:00:00` (--time). */
  time?: string;
  account?: string;
  /** Further sbatch options, one per line, with or without the `#SBATCH` in front. */
  extraLines?: string[];
  /** --requeue: SLURM may requeue the job (preemption, node failure, scontrol requeue); the CLI then resumes the run. */
  requeue?: boolean;
}

/**
 * Sent to the job's own process (B:, with the batch shell replaced by it
 * through exec) this many seconds before its time limit; the CLI stops at it
 * as at Ctrl-C, writing a resumable checkpoint. USR2, not USR1: Node.js
 * reserves SIGUSR1 for starting its debugger.
 */
export const TIME_LIMIT_SIGNAL = 'USR2';
/** Time for the batch in flight and the checkpoint (ResNet-50 with its optimiser: 550 MB) on a network filesystem. */
const TIME_LIMIT_WARNING_SECONDS = 300;

/** sbatch's --time (minutes, M:S, H:M:S, D-H, D-H:M, D-H:M:S) in seconds. */
export function timeLimitSeconds(time: string): number {
  const [days, clock] = time.includes('-') ? [Number(time.split('-')[0]), time.split('-')[1]] : [0, time];
  const parts = clock.split(':').map(Number);
  const [hours, minutes, seconds] = time.includes('-') ? [parts[0], parts[1] ?? 0, parts[2] ?? 0] : parts.length === 3 ? parts : [0, parts[0], parts[1] ?? 0];
  return ((days * 24 + hours) * 60 + minutes) * 60 + seconds;
}

/** When the warning comes before the end: TIME_LIMIT_WARNING_SECONDS, or half of a shorter time limit, so a short job trains first. */
export function warningSeconds(request: SlurmRequest): number {
  return request.time ? Math.min(TIME_LIMIT_WARNING_SECONDS, Math.floor(timeLimitSeconds(request.time) / 2)) : TIME_LIMIT_WARNING_SECONDS;
}
/** The batch script of the run's latest submission, kept for the record. */
export const SLURM_SCRIPT_FILE = 'slurm-job.sh';
/** Set by the batch script of a job submitted with --requeue: at the time-limit warning the run requeues its own job. */
export const REQUEUE_ENV = 'CELLFINDER_RETRAIN_SLURM_REQUEUE';

export interface JobRecord {
  jobId: string;
  /** Which command the job runs: a new run, the continuation of an interrupted one, or classification (of one brain, or one per task of an array). */
  mode: 'train' | 'resume' | 'classify';
  /** For an array job: its number of tasks (task i runs entry i of the job's list). */
  tasks?: number;
  /** ms since epoch. */
  submittedAt: number;
  /** What the job asked SLURM for (absent in records written before it was kept): a resubmission asks for it again. */
  request?: SlurmRequest;
}

export interface JobSpec {
  /** The job's name in squeue. */
  name: string;
  /** The run folder: the batch script and SLURM's output and error files go there. */
  runDir: string;
  /** The job's working directory: where the command was given, so relative paths mean the same. */
  workDir: string;
  /** The program and its arguments (our CLI), run in place of the batch shell. */
  command: readonly string[];
  request: SlurmRequest;
  /** Set for the command unless the job's environment (sbatch's --export) already sets them. */
  environment?: Readonly<Record<string, string>>;
  /** An array job of this many tasks (SLURM_ARRAY_TASK_ID 0..n-1), each with its own output files. */
  tasks?: number;
}

/** SLURM's output or error file of the job (or of task `task` of an array job) in the folder it was submitted for. */
export function jobOutputFile(runDir: string, jobId: string, kind: 'out' | 'err', task?: number): string {
  return path.join(runDir, `slurm-${jobId}${task === undefined ? '' : `_${task}`}.${kind}`);
}

/** `'it''s'`-style quoting: the one form the shell takes literally, whatever the text. */
function shellQuote(text: string): string {
  return /^[\w@%+=:,./-]+$/.test(text) ? text : `'${text.replace(/'/g, `'\\''`)}'`;
}

/** An `#SBATCH` value: sbatch reads double quotes around a value with spaces. */
function sbatchValue(text: string): string {
  if (/["\n]/.test(text)) throw new SlurmError(`"${text}" cannot be given to sbatch`, 'Use a path or value without double quotes or line breaks');
  return /\s/.test(text) ? `"${text}"` : text;
}

/** The sbatch options of `request`, checked for what sbatch would take as something else. */
export function sbatchOptions(request: SlurmRequest): string[] {
  const options: string[] = [];
  if (request.partition) options.push(`--partition=${sbatchValue(request.partition)}`);
  if (request.gres) options.push(`--gres=${sbatchValue(request.gres)}`);
  if (request.cpus !== undefined) {
    if (!Number.isInteger(request.cpus) || request.cpus < 1) throw new SlurmError(`CPUs must be a positive whole number, got ${request.cpus}`, 'Give --cpus N, e.g. --cpus 8');
    options.push(`--cpus-per-task=${request.cpus}`);
  }
  if (request.mem) {
    if (!/^\d+[KMGT]?$/i.test(request.mem)) throw new SlurmError(`memory "${request.mem}" is not a size sbatch takes`, 'Give a number with an optional unit K, M, G or T, e.g. --mem 32G');
    options.push(`--mem=${request.mem}`);
  }
  if (request.time) {
    if (!/^(\d+-)?\d+(:\d+){0,2}$/.test(request.time)) throw new SlurmError(`time limit "${request.time}" is not one sbatch takes`, 'Give minutes, HH:MM:SS or D-HH:MM:SS, e.g. --time 12:00:00');
    options.push(`--time=${request.time}`);
  }
  if (request.account) options.push(`--account=${sbatchValue(request.account)}`);
  if (request.requeue) options.push('--requeue');
  for (const line of request.extraLines ?? []) {
    const option = line.trim().replace(/^#SBATCH\s+/, '');
    if (option === '') continue;
    if (!option.startsWith('-') || option.includes('\n')) throw new SlurmError(`extra sbatch line "${line}" is not an sbatch option`, 'Give options such as --qos=long or "#SBATCH --constraint=a100", one per line');
    options.push(option);
  }
  return options;
}

/**
 * The batch script: SLURM's output and error files in the run folder, the
 * time-limit warning, the request, then our CLI in place of the shell (exec),
 * so that scancel's and the time limit's signals reach it, not a shell that
 * would only pass them on after the command ends.
 */
export function batchScript(spec: JobSpec): string {
  const directives = [
    `--job-name=${sbatchValue(spec.name)}`,
    `--chdir=${sbatchValue(spec.workDir)}`,
    // %A_%a: an array's job id and task index, the names jobOutputFile gives.
    `--output=${sbatchValue(path.join(spec.runDir, spec.tasks ? 'slurm-%A_%a.out' : 'slurm-%j.out'))}`,
    `--error=${sbatchValue(path.join(spec.runDir, spec.tasks ? 'slurm-%A_%a.err' : 'slurm-%j.err'))}`,
    ...(spec.tasks ? [`--array=0-${spec.tasks - 1}`] : []),
    `--signal=B:${TIME_LIMIT_SIGNAL}@${warningSeconds(spec.request)}`,
    ...sbatchOptions(spec.request),
  ];
  const requeue = spec.request.requeue ? [`export ${REQUEUE_ENV}=1`] : [];
  const environment = Object.entries(spec.environment ?? {}).map(([name, value]) => `export ${name}="\${${name}:-${value.replace(/["\\$`]/g, '\\$&')}}"`);
  return ['#!/bin/bash', '# Submitted by cellfinder-retrain: the same command as a run on this machine, its events in the run folder.', ...directives.map((d) => `#SBATCH ${d}`), ...requeue, ...environment, `exec ${spec.command.map(shellQuote).join(' ')}`, ''].join('\n');
}

interface CommandResult {
  code: number;
  stdout: string;
  stderr: string;
}

/** Runs one of SLURM's commands; a missing command is a SlurmError that says where it must come from. */
function runSlurmCommand(command: string, args: readonly string[]): Promise<CommandResult> {
  return new Promise((resolve, reject) => {
    const child = spawn(command, args, { stdio: ['ignore', 'pipe', 'pipe'] });
    let stdout = '';
    let stderr = '';
    child.stdout.on('data', (chunk: Buffer) => (stdout += chunk.toString()));
    child.stderr.on('data', (chunk: Buffer) => (stderr += chunk.toString()));
    child.once('error', (error: NodeJS.ErrnoException) => {
      if (error.code === 'ENOENT') {
        reject(new SlurmError(`${command} is not on PATH (${process.env.PATH ?? 'no PATH'})`, `SLURM's commands must be found on this machine (a cluster's login node): load them (e.g. "module load slurm") or add their folder to PATH, then try again`));
      } else reject(new SlurmError(`cannot run ${command}: ${error.message}`, 'Check that SLURM is installed and runnable here'));
    });
    child.once('close', (code) => resolve({ code: code ?? 1, stdout, stderr }));
  });
}

/** SLURM's own words from stderr, without its "sbatch: error:" prefixes. */
function slurmSaid(result: CommandResult): string {
  return result.stderr.trim().split('\n').map((line) => line.replace(/^\w+: error: /, '').trim()).filter(Boolean).join('; ') || `exit code ${result.code}`;
}

export interface Partition {
  name: string;
  isDefault: boolean;
  /** up, down, drain, inact. */
  availability: string;
}

/** The cluster's partitions, from sinfo. */
export async function listPartitions(): Promise<Partition[]> {
  const result = await runSlurmCommand('sinfo', ['-h', '-o', '%P|%a']);
  if (result.code !== 0) throw new SlurmError(`sinfo could not list the partitions: ${slurmSaid(result)}`, 'Check that the cluster answers (sinfo) and try again');
  const partitions = new Map<string, Partition>();
  for (const line of result.stdout.split('\n').filter(Boolean)) {
    const [name, availability] = line.split('|');
    const isDefault = name.endsWith('*');
    partitions.set(name.replace(/\*$/, ''), { name: name.replace(/\*$/, ''), isDefault, availability });
  }
  return [...partitions.values()];
}

/** Refuses a partition the cluster does not have, naming those it has (sbatch's own refusal names none). */
export async function checkPartition(partition: string): Promise<void> {
  const partitions = await listPartitions();
  if (partitions.some((p) => p.name === partition)) return;
  const names = partitions.map((p) => `${p.name}${p.isDefault ? ' (default)' : ''}`).join(', ');
  throw new SlurmError(`unknown partition "${partition}": this cluster's partitions are ${names || 'none (sinfo lists none)'}`, 'Give one of them with --partition, or leave --partition out for the default');
}

/**
 * Writes the batch script into the run folder and submits it; returns the job
 * id and records it in the run folder. sbatch's refusal is passed on in its
 * own words; nothing in the run folder is changed but the script.
 */
export async function submitJob(spec: JobSpec, mode: JobRecord['mode']): Promise<JobRecord> {
  const script = batchScript(spec);
  if (spec.request.partition) await checkPartition(spec.request.partition);
  const scriptFile = path.join(spec.runDir, SLURM_SCRIPT_FILE);
  await fs.mkdir(spec.runDir, { recursive: true });
  await writeFileAtomic(scriptFile, script, { overwrite: true });
  const result = await runSlurmCommand('sbatch', ['--parsable', scriptFile]);
  // --parsable: "<job id>" or "<job id>;<cluster>".
  const jobId = result.stdout.trim().split(';')[0];
  if (result.code !== 0 || !/^\d+$/.test(jobId)) {
    throw new SlurmError(`sbatch refused the job: ${slurmSaid(result)}`, `Change what it names and submit again (the script it was given: ${scriptFile})`);
  }
  const record: JobRecord = { jobId, mode, submittedAt: Date.now(), request: spec.request, ...(spec.tasks ? { tasks: spec.tasks } : {}) };
  await appendLineDurably(path.join(spec.runDir, SLURM_JOBS_FILE), JSON.stringify(record));
  return record;
}

/** The jobs submitted for the run in `runDir`, oldest first. */
export async function readJobRecords(runDir: string): Promise<JobRecord[]> {
  const text = await fs.readFile(path.join(runDir, SLURM_JOBS_FILE), 'utf8').catch(() => '');
  return parseJsonLines<JobRecord>(text);
}

export interface JobState {
  jobId: string;
  /** SLURM's state: PENDING, RUNNING, COMPLETING, COMPLETED, FAILED, CANCELLED, TIMEOUT, NODE_FAIL, PREEMPTED, REQUEUED... */
  state: string;
  /** Why it waits (Resources, Priority, ...); undefined when SLURM gives none. */
  reason?: string;
  /** The node(s) it runs or ran on. */
  nodes?: string;
}

/** States in which the job still holds or waits for a node: it may still write to the run folder. */
const ACTIVE_STATES = new Set(['PENDING', 'CONFIGURING', 'RUNNING', 'COMPLETING', 'SUSPENDED', 'REQUEUED', 'REQUEUE_HOLD', 'REQUEUE_FED', 'RESIZING', 'SIGNALING', 'STAGE_OUT', 'STOPPED']);

export function jobIsActive(state: JobState | undefined): boolean {
  return state !== undefined && ACTIVE_STATES.has(state.state);
}

/**
 * The job's state from squeue, which knows jobs until a few minutes after
 * they end (MinJobAge); undefined once SLURM has forgotten it (the run's
 * events then say how it ended).
 */
export async function jobState(jobId: string): Promise<JobState | undefined> {
  const result = await runSlurmCommand('squeue', ['-h', '--states=all', '-j', jobId, '-o', '%i|%T|%r|%N']);
  if (result.code !== 0) {
    if (/invalid job id/i.test(result.stderr)) return undefined;
    throw new SlurmError(`squeue could not say the state of job ${jobId}: ${slurmSaid(result)}`, 'Check that the cluster answers (squeue) and try again');
  }
  const line = result.stdout.split('\n').find((l) => l.split('|')[0] === jobId);
  if (!line) return undefined;
  const [, state, reason, nodes] = line.split('|');
  return { jobId, state, reason: reason && reason !== 'None' ? reason : undefined, nodes: nodes || undefined };
}

/**
 * The state of each of the `tasks` tasks of array job `jobId` (task index to
 * state) that squeue still knows; a task it has forgotten (ended minutes
 * ago) is absent. Tasks SLURM has not yet split off the array (all pending
 * together, or cancelled before any started) take the array's own state.
 */
export async function arrayTaskStates(jobId: string, tasks: number): Promise<Map<number, JobState>> {
  // -r: one line per task, also for tasks still pending together (else "123_[0-4]").
  const result = await runSlurmCommand('squeue', ['-h', '-r', '--states=all', '-j', jobId, '-o', '%i|%T|%r|%N']);
  if (result.code !== 0) {
    if (/invalid job id/i.test(result.stderr)) return new Map();
    throw new SlurmError(`squeue could not say the state of job ${jobId}: ${slurmSaid(result)}`, 'Check that the cluster answers (squeue) and try again');
  }
  const states = new Map<number, JobState>();
  let whole: JobState | undefined;
  for (const line of result.stdout.split('\n').filter(Boolean)) {
    const [id, state, reason, nodes] = line.split('|');
    const parsed = { jobId: id, state, reason: reason && reason !== 'None' ? reason : undefined, nodes: nodes || undefined };
    const task = /^(\d+)_(\d+)$/.exec(id);
    if (task?.[1] === jobId) states.set(Number(task[2]), parsed);
    else if (id === jobId) whole = parsed;
  }
  if (whole) for (let task = 0; task < tasks; task++) if (!states.has(task)) states.set(task, whole);
  return states;
}

/** "pending: Resources", "running on node gpu07", "completed on node gpu07", "no longer in SLURM's queue". */
export function describeJobState(state: JobState | undefined): string {
  if (!state) return "no longer in SLURM's queue";
  const name = state.state.toLowerCase().replace(/_/g, ' ');
  if (state.state === 'PENDING') return `pending${state.reason ? `: ${state.reason}` : ''}`;
  return `${name}${state.nodes ? ` on node ${state.nodes}` : ''}${state.reason && state.state !== 'RUNNING' ? ` (${state.reason})` : ''}`;
}

/**
 * Stops a job the way Ctrl-C stops a run here: a running job's process gets
 * SIGTERM (only that process, the batch step, which the job's exec made our
 * CLI), stops after the batch in flight and writes a resumable checkpoint,
 * then ends by itself; a pending job has done nothing yet and is simply
 * removed from the queue. Returns what was done, for the user.
 */
/**
 * Puts the job this process runs in back in the queue (scontrol requeue):
 * after the time-limit warning a --requeue run has written its checkpoint,
 * and the job's next start resumes it with a new time limit.
 */
export async function requeueJob(jobId: string): Promise<void> {
  const result = await runSlurmCommand('scontrol', ['requeue', jobId]);
  if (result.code !== 0) throw new SlurmError(`scontrol could not requeue job ${jobId}: ${slurmSaid(result)}`, 'The run stopped with a resumable checkpoint: resubmit it with cellfinder-retrain train --resume <run folder> --slurm');
}

export async function cancelJob(jobId: string): Promise<string> {
  const state = await jobState(jobId);
  if (!jobIsActive(state)) return `job ${jobId} is ${describeJobState(state)}: nothing to cancel`;
  const running = state?.state !== 'PENDING';
  const result = await runSlurmCommand('scancel', running ? ['--batch', '--signal=TERM', jobId] : [jobId]);
  if (result.code !== 0) throw new SlurmError(`scancel could not stop job ${jobId}: ${slurmSaid(result)}`, `Check the job with squeue -j ${jobId}; scancel ${jobId} ends it at once (losing the epoch in progress)`);
  return running ? `job ${jobId} told to stop after the current batch (a resumable checkpoint is written)` : `job ${jobId} removed from the queue before it started`;
}

/**
 * Stops every task of array job `jobId` as `cancelJob` stops one job: tasks
 * still queued are taken off the queue, running ones get SIGTERM (they stop
 * after the batch in flight, keeping what they classified).
 */
export async function cancelArrayJob(jobId: string, tasks: number): Promise<string> {
  const states = [...(await arrayTaskStates(jobId, tasks)).values()].filter(jobIsActive);
  if (!states.length) return `job ${jobId} has no task queued or running: nothing to cancel`;
  const pending = states.filter((state) => state.state === 'PENDING').length;
  for (const args of [pending ? ['--state=PENDING', jobId] : undefined, states.length > pending ? ['--batch', '--signal=TERM', jobId] : undefined]) {
    if (!args) continue;
    const result = await runSlurmCommand('scancel', args);
    if (result.code !== 0) throw new SlurmError(`scancel could not stop job ${jobId}: ${slurmSaid(result)}`, `Check the job with squeue -r -j ${jobId}; scancel ${jobId} ends every task at once`);
  }
  return `job ${jobId}: ${pending} queued task(s) taken off the queue, ${states.length - pending} running task(s) told to stop after the current batch (what they classified is kept; submit again to classify the rest)`;
}

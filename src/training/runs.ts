/**
 * Training runs as the editor sees them: an output folder with a
 * `training-events.jsonl` log (written by the worker and by the CLI). A run's
 * status is read from its log and whether its process still lives, so a run
 * started before a window reload, or from a terminal, is shown the same way.
 */
import { processIsAlive } from '../core/atomicFile';
import { spawn } from 'node:child_process';
import { closeSync, existsSync, openSync, promises as fs, watch, type FSWatcher } from 'node:fs';
import * as path from 'node:path';
import { parseJsonLines } from '../core/atomicFile';
import { EVENTS_FILE } from '../core/runFiles';
import type { TrainingEvent } from './events';
import { childEnvironment, type DeviceChoice } from '../engine/gpuEnvironment';
import { RESUME_FOLDER } from './trainer';

export type RunStatus = 'running' | 'finished' | 'cancelled' | 'failed' | 'interrupted';

export interface RunRecord {
  outputDir: string;
  status: RunStatus;
  events: TrainingEvent[];
  /** ms since epoch, when the first process of the run started. */
  startedAt?: number;
  /** The process of the latest attempt, while it runs. */
  pid?: number;
  modelFile?: string;
  /** Validation accuracy of the last epoch that had one. */
  valAccuracy?: number;
  /** True when a `.resume/` checkpoint lets the run continue. */
  resumable: boolean;
}

/** The status after `events`: the last process's last word, or interrupted if it died without one. */
export function runStatus(events: readonly TrainingEvent[], alive: (pid: number) => boolean = processIsAlive): RunStatus {
  const lastLaunch = events.map((e) => e.type).lastIndexOf('launched');
  const attempt = events.slice(Math.max(0, lastLaunch));
  const last = [...attempt].reverse().find((e) => e.type === 'finished' || e.type === 'cancelled' || e.type === 'error');
  if (last?.type === 'finished') return 'finished';
  if (last?.type === 'cancelled') return 'cancelled';
  if (last?.type === 'error') return 'failed';
  const launch = attempt[0];
  return launch?.type === 'launched' && alive(launch.pid) ? 'running' : 'interrupted';
}

export function summarizeRun(outputDir: string, events: TrainingEvent[], alive: (pid: number) => boolean = processIsAlive): RunRecord {
  const status = runStatus(events, alive);
  const launches = events.filter((e): e is Extract<TrainingEvent, { type: 'launched' }> => e.type === 'launched');
  const finished = events.find((e): e is Extract<TrainingEvent, { type: 'finished' }> => e.type === 'finished');
  const withValidation = events.filter((e): e is Extract<TrainingEvent, { type: 'epoch' }> => e.type === 'epoch' && e.valAccuracy !== undefined);
  return {
    outputDir,
    status,
    events,
    startedAt: launches[0]?.time,
    pid: status === 'running' ? launches[launches.length - 1]?.pid : undefined,
    modelFile: finished?.modelFile,
    valAccuracy: withValidation[withValidation.length - 1]?.valAccuracy,
    resumable: status !== 'finished' && status !== 'running' && existsSync(path.join(outputDir, RESUME_FOLDER, 'state.json')),
  };
}

export async function readRun(outputDir: string): Promise<RunRecord> {
  const text = await fs.readFile(path.join(outputDir, EVENTS_FILE), 'utf8').catch(() => '');
  return summarizeRun(outputDir, parseJsonLines<TrainingEvent>(text));
}

/** Stops a run at its next batch boundary, leaving a resumable checkpoint (the worker treats SIGTERM as cancel). */
export function cancelRun(pid: number): void {
  process.kill(pid, 'SIGTERM');
}

export interface WorkerLaunch {
  /** The Node.js to run the worker with (the native engine is built for it). */
  nodePath: string;
  /** `dist/worker.js`. */
  workerScript: string;
  mode: 'train' | 'resume';
  /** A config JSON file for `train`, the run's output folder for `resume`. */
  target: string;
  /** The run's output folder: the worker's stderr goes to `worker.log` there. */
  outputDir: string;
  /** The device the user chose (default auto). */
  device?: DeviceChoice;
}

/**
 * Starts the training worker detached from the caller, so that it survives a
 * window reload; its progress is followed through the run's event log. Its
 * environment, not the caller's, gets the device and the GPU engine's CUDA
 * library path.
 */
export async function startWorker(launch: WorkerLaunch): Promise<number> {
  await fs.mkdir(launch.outputDir, { recursive: true });
  const stderr = openSync(path.join(launch.outputDir, 'worker.log'), 'a');
  try {
    const env = childEnvironment(process.env, launch.device ?? 'auto');
    const child = spawn(launch.nodePath, [launch.workerScript, launch.mode, launch.target], { detached: true, stdio: ['ignore', 'ignore', stderr], env });
    const pid = await new Promise<number>((resolve, reject) => {
      child.once('spawn', () => resolve(child.pid as number));
      child.once('error', (error) => reject(new Error(`cannot start the training worker with ${launch.nodePath}: ${error.message}`)));
    });
    child.unref();
    return pid;
  } finally {
    closeSync(stderr);
  }
}

/**
 * Follows a run's event log as it grows (inotify through fs.watch, no
 * polling) and hands over each batch of new complete events.
 */
export class RunFollower {
  private offset = 0;
  private partial = '';
  private watcher: FSWatcher | undefined;
  private reading: Promise<void> = Promise.resolve();

  constructor(
    readonly outputDir: string,
    private readonly onEvents: (events: TrainingEvent[]) => void,
  ) {}

  get file(): string {
    return path.join(this.outputDir, EVENTS_FILE);
  }

  /** Delivers everything logged so far, then follows. */
  async start(): Promise<void> {
    await fs.mkdir(this.outputDir, { recursive: true });
    // Watching the folder also sees the log being created.
    this.watcher = watch(this.outputDir, (_, name) => {
      if (name === EVENTS_FILE) this.readMore();
    });
    this.readMore();
    await this.reading;
  }

  /** Resolves once everything written so far has been delivered. */
  async caughtUp(): Promise<void> {
    this.readMore();
    await this.reading;
  }

  close(): void {
    this.watcher?.close();
    this.watcher = undefined;
  }

  private readMore(): void {
    this.reading = this.reading.then(async () => {
      const handle = await fs.open(this.file, 'r').catch(() => undefined);
      if (!handle) return;
      try {
        const { size } = await handle.stat();
        if (size <= this.offset) return;
        const buffer = Buffer.alloc(size - this.offset);
        await handle.read(buffer, 0, buffer.length, this.offset);
        this.offset = size;
        const text = this.partial + buffer.toString('utf8');
        const cut = text.lastIndexOf('\n') + 1;
        this.partial = text.slice(cut);
        const events = parseJsonLines<TrainingEvent>(text.slice(0, cut));
        if (events.length) this.onEvents(events);
      } finally {
        await handle.close();
      }
    });
  }
}

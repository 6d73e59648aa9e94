/**
 * The host side of the training panel, without VS Code: follows one run's
 * event log and streams it to the page; Cancel signals the run's process,
 * Resume, Classify and Evaluate are handed to the editor, which owns
 * processes and dialogs. The harness tests drive this same class.
 */
import * as path from 'node:path';
import type { Evaluation } from '../training/inference';
import { cancelRunOrJob, describeJob, summarizeRunWithJob } from '../cluster/clusterRuns';
import { jobState, readJobRecords, SlurmError, type JobRecord, type JobState } from '../cluster/slurm';
import { readRun, RunFollower, summarizeRun, type RunRecord } from '../training/runs';
import type { TrainingEvent } from '../training/events';
import { dispatchMessage, type HostToTraining, type MessageHandlers, type TrainingToHost } from '../webview/protocol';

const LIVENESS_CHECK_MS = 3000;
/** squeue is asked less often than a local process is checked: a cluster's controller serves every user. */
const JOB_CHECK_MS = 10_000;

export interface TrainingControllerActions {
  resume(run: RunRecord): Promise<void>;
  classify(run: RunRecord): Promise<void>;
  /** Evaluates the run's model (and, if the user wants, another beside it). */
  evaluate(run: RunRecord): Promise<Evaluation[] | undefined>;
  revealOutput(run: RunRecord): void;
  /** Called when the run's status changes (for the status bar, the Runs view, notifications). */
  onStatus?(run: RunRecord): void;
}

export class TrainingController {
  private events: TrainingEvent[] = [];
  private follower: RunFollower | undefined;
  private readonly handlers: MessageHandlers<TrainingToHost>;
  private lastStatus: RunRecord['status'] | undefined;
  private liveness: ReturnType<typeof setInterval> | undefined;
  private jobChecks: ReturnType<typeof setInterval> | undefined;
  /** The run's latest SLURM job and its last known state; no job for a run on this machine. */
  private job: JobRecord | undefined;
  private jobStateNow: JobState | undefined;

  constructor(
    readonly outputDir: string,
    private readonly post: (message: HostToTraining) => void,
    private readonly actions: TrainingControllerActions,
  ) {
    this.handlers = {
      ready: () => this.attach(),
      cancel: async () => {
        this.post({ type: 'busy', message: await cancelRunOrJob(this.outputDir) });
        await this.checkJob();
      },
      resume: () => this.actions.resume(this.run()),
      classify: () => this.actions.classify(this.run()),
      evaluate: async () => {
        this.post({ type: 'busy', message: 'Evaluating…' });
        try {
          const results = await this.actions.evaluate(this.run());
          if (results) this.post({ type: 'evaluation', results });
        } finally {
          this.post({ type: 'busy', message: undefined });
        }
      },
      revealOutput: () => this.actions.revealOutput(this.run()),
    };
  }

  /** The run as its log says now. */
  run(): RunRecord {
    return this.job ? summarizeRunWithJob(this.outputDir, this.events, this.jobStateNow) : summarizeRun(this.outputDir, this.events);
  }

  /** Asks SLURM about the run's latest job (a Resume submits a new one) and shows its state; sends the run's status when that changed. */
  private async checkJob(): Promise<void> {
    this.job = (await readJobRecords(this.outputDir)).at(-1);
    if (!this.job) return;
    let jobStateProblem: string | undefined;
    try {
      this.jobStateNow = await jobState(this.job.jobId);
    } catch (error) {
      if (!(error instanceof SlurmError)) throw error;
      jobStateProblem = error.problem;
    }
    this.post({ type: 'job', text: describeJob({ job: this.job, jobState: this.jobStateNow, jobStateProblem }) });
    this.sendStatusIfChanged();
  }

  private sendStatusIfChanged(): void {
    const run = this.run();
    if (run.status === this.lastStatus) return;
    this.lastStatus = run.status;
    this.post({ type: 'events', events: [], status: run.status, resumable: run.resumable });
    if (run.status !== 'running') this.post({ type: 'busy', message: undefined });
    this.actions.onStatus?.(run);
  }

  async handle(message: TrainingToHost): Promise<void> {
    try {
      await dispatchMessage(this.handlers, message);
    } catch (error) {
      this.post({ type: 'error', message: (error as Error).message ?? String(error) });
    }
  }

  /** (Re)sends the whole run, then streams new events as the log grows. */
  private async attach(): Promise<void> {
    this.follower?.close();
    const record = await readRun(this.outputDir);
    this.events = [];
    let sentWhole = false;
    this.follower = new RunFollower(this.outputDir, (events) => {
      this.events.push(...events);
      const run = this.run();
      if (sentWhole) this.post({ type: 'events', events, status: run.status, resumable: run.resumable });
      if (run.status !== 'running') this.post({ type: 'busy', message: undefined });
      if (run.status !== this.lastStatus) {
        this.lastStatus = run.status;
        this.actions.onStatus?.(run);
      }
    });
    await this.follower.start();
    sentWhole = true;
    // A killed process writes nothing more: notice it by checking, while the run is running, that its process lives;
    // for a SLURM run, by asking SLURM about its job (queued, running on a node, gone).
    clearInterval(this.liveness);
    clearInterval(this.jobChecks);
    await this.checkJob();
    this.liveness = setInterval(() => {
      if (this.lastStatus === 'running' && !this.job) this.sendStatusIfChanged();
    }, LIVENESS_CHECK_MS);
    this.jobChecks = setInterval(() => {
      if (this.job) void this.checkJob().catch((error: Error) => this.post({ type: 'error', message: error.message }));
    }, JOB_CHECK_MS);
    const run = this.run();
    this.lastStatus = run.status;
    this.post({ type: 'run', run: { name: path.basename(this.outputDir), outputDir: this.outputDir, status: run.status, resumable: run.resumable || record.resumable, events: this.events } });
  }

  /** Waits until every event logged so far has reached the page. */
  async caughtUp(): Promise<void> {
    await this.follower?.caughtUp();
  }

  dispose(): void {
    clearInterval(this.liveness);
    clearInterval(this.jobChecks);
    this.follower?.close();
  }
}

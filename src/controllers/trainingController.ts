/**
 * The host side of the training panel, without VS Code: follows one run's
 * event log and streams it to the page; Cancel signals the run's process,
 * Resume, Classify and Evaluate are handed to the editor, which owns
 * processes and dialogs. The harness tests drive this same class.
 */
import * as path from 'node:path';
import type { Evaluation } from '../training/inference';
import { cancelRun, readRun, RunFollower, summarizeRun, type RunRecord } from '../training/runs';
import type { TrainingEvent } from '../training/events';
import { dispatchMessage, type HostToTraining, type MessageHandlers, type TrainingToHost } from '../webview/protocol';

const LIVENESS_CHECK_MS = 3000;

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

  constructor(
    readonly outputDir: string,
    private readonly post: (message: HostToTraining) => void,
    private readonly actions: TrainingControllerActions,
  ) {
    this.handlers = {
      ready: () => this.attach(),
      cancel: () => {
        const run = this.run();
        if (run.pid === undefined) throw new Error('the run is not running');
        cancelRun(run.pid);
        this.post({ type: 'busy', message: 'Stopping after the current batch…' });
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
    return summarizeRun(this.outputDir, this.events);
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
    // A killed process writes nothing more: notice it by checking, while the run is running, that its process lives.
    clearInterval(this.liveness);
    this.liveness = setInterval(() => {
      if (this.lastStatus !== 'running') return;
      const run = this.run();
      if (run.status === 'running') return;
      this.lastStatus = run.status;
      this.post({ type: 'events', events: [], status: run.status, resumable: run.resumable });
      this.actions.onStatus?.(run);
    }, LIVENESS_CHECK_MS);
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
    this.follower?.close();
  }
}

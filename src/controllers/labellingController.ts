/**
 * The host side of the labelling page, without VS Code: answers the page's
 * messages from a `LabellingSession`. The editor glue (src/editor) and the
 * headless-browser harness (test/) both wire a page to this class, so the
 * tests exercise the same logic users run.
 */
import * as path from 'node:path';
import { LabellingSession, orderCandidates, saveCandidateSet, type CandidateOrder, type CandidateSet } from '../core/labelling';
import { dispatchMessage, type HostToLabelling, type LabellingToHost, type LabellingView, type MessageHandlers } from '../webview/protocol';

/** The guide's lower bound of 1,000 labelled candidates, split over its four categories. */
export const DEFAULT_TARGET_PER_CATEGORY = 250;

export interface LabellingControllerOptions {
  targetPerCategory?: number;
  order?: CandidateOrder;
  /**
   * Asks the user for a model, runs it on the candidates (in a separate
   * process) and returns the `classified_points.csv` it wrote, or undefined
   * when the user cancelled.
   */
  predict?: (set: CandidateSet) => Promise<string | undefined>;
  /** Called with each measured key-to-paint time. */
  onPaintLatency?: (milliseconds: number) => void;
  /** Called after each saved decision, e.g. to refresh the dataset tree. */
  onChange?: () => void;
}

export class LabellingController {
  private order: CandidateOrder;
  /** Decisions and undos run one after another, in the order the keys were pressed. */
  private writes: Promise<void> = Promise.resolve();
  private cubeReads: Promise<void> = Promise.resolve();
  private readonly handlers: MessageHandlers<LabellingToHost>;

  constructor(
    private session: LabellingSession,
    private readonly post: (message: HostToLabelling) => void,
    private readonly options: LabellingControllerOptions = {},
  ) {
    this.order = options.order ?? (session.candidates.some((c) => c.prediction?.cellProbability !== undefined) ? 'uncertain-first' : 'file');
    this.handlers = {
      ready: () => this.sendSession(),
      // One at a time, in the order asked: the page asks for the cube on screen first, then those ahead,
      // and reading them all at once would make the one on screen wait for the others.
      requestCube: ({ id }) => (this.cubeReads = this.cubeReads.then(() => this.sendCube(id)).catch((error: unknown) => this.post({ type: 'error', message: (error as Error).message ?? String(error) }))),
      decide: ({ id, decision }) =>
        this.serialised(async () => {
          await this.session.decide(id, decision);
          this.post({ type: 'decided', id, status: this.session.status(id), balance: this.session.balance() });
          this.options.onChange?.();
        }),
      undo: () =>
        this.serialised(async () => {
          const candidate = await this.session.undo();
          const balance = this.session.balance();
          if (candidate === undefined) {
            this.post({ type: 'undone', id: null, balance });
            return;
          }
          const status = candidate ? this.session.status(candidate.id) : undefined;
          this.post({ type: 'undone', id: candidate?.id ?? null, status, balance });
          this.options.onChange?.();
        }),
      setOrder: async ({ order }) => {
        this.order = order;
        await this.sendSession();
      },
      chooseModel: () => this.predictWithModel(),
      paintLatency: ({ milliseconds }) => this.options.onPaintLatency?.(milliseconds),
    };
  }

  get dataset(): string {
    return this.session.dataset.root;
  }

  /** Handles one message from the page; errors are shown on the page, never lost. */
  async handle(message: LabellingToHost): Promise<void> {
    try {
      await dispatchMessage(this.handlers, message);
    } catch (error) {
      this.post({ type: 'error', message: (error as Error).message ?? String(error) });
    }
  }

  /** Resolves once every decision sent so far is on disk. */
  settled(): Promise<void> {
    return this.writes;
  }

  private disposed = false;

  /** Waits for pending decisions, then closes the volumes; safe to call twice. */
  async dispose(): Promise<void> {
    if (this.disposed) return;
    this.disposed = true;
    await this.settled();
    await this.session.close();
  }

  private serialised(work: () => Promise<void>): Promise<void> {
    const run = this.writes.then(work);
    this.writes = run.catch(() => undefined);
    return run;
  }

  async view(): Promise<LabellingView> {
    const statuses = this.session.statuses();
    const orderedIds = orderCandidates(this.session.candidates, this.order);
    const set = this.session.set;
    const datasetName = path.basename(this.session.dataset.root);
    return {
      title: set ? path.basename(set.points) : `Reviewing ${datasetName}`,
      datasetRoot: this.session.dataset.root,
      channels: this.session.dataset.channels.length === 2 ? ['Signal', 'Background'] : ['Signal'],
      candidates: this.session.candidates.map((c) => ({ id: c.id, ...c.position, status: statuses.get(c.id) ?? 'todo', prediction: c.prediction })),
      order: this.order,
      orderedIds,
      startId: orderedIds.find((id) => statuses.get(id) === 'todo'),
      balance: this.session.balance(),
      targetPerCategory: this.options.targetPerCategory ?? DEFAULT_TARGET_PER_CATEGORY,
      atEdge: this.session.skippedAtEdge.length,
      predictionSource: set?.predictions
        ? `${path.basename(path.dirname(set.predictions))}${path.sep}${path.basename(set.predictions)}`
        : this.session.candidates.some((c) => c.prediction)
          ? set
            ? path.basename(set.points)
            : `the predictions recorded in ${datasetName}`
          : undefined,
    };
  }

  private async sendSession(): Promise<void> {
    this.post({ type: 'session', view: await this.view() });
  }

  private async sendCube(id: number): Promise<void> {
    const [cube, context] = await Promise.all([this.session.cube(id), this.session.context(id)]);
    this.post({ type: 'cube', id, channels: cube.channels, context });
  }

  private async predictWithModel(): Promise<void> {
    const set = this.session.set;
    if (!set) throw new Error('predicting works on candidates from volumes; these cubes are being reviewed without their volumes');
    if (!this.options.predict) throw new Error('predicting needs the editor: run `cellfinder-retrain classify` and reopen the candidates with its classified_points.csv');
    const predictions = await this.options.predict(set);
    if (!predictions) return;
    await this.settled();
    const reopened = await LabellingSession.open({ ...set, predictions }, this.session.dataset.root);
    // Reopening the dataset later keeps this order.
    await saveCandidateSet(this.session.dataset.root, reopened.set as CandidateSet);
    await this.session.close();
    this.session = reopened;
    this.order = 'uncertain-first';
    await this.sendSession();
  }
}

/**
 * The one message protocol between the extension host and its webviews.
 * Every message shape is written here and nowhere else; host and page both
 * import these types, and `MessageHandlers` makes the compiler check that
 * each side handles every message the other can send.
 *
 * Type-only imports keep this file free of Node code so the browser bundle
 * can include it.
 */
import type { BalanceCounts, CandidateContext, CandidateOrder, CandidateStatus, Decision } from '../core/labelling';
import type { Prediction } from '../core/dataset';
import type { TrainingEvent } from '../training/events';
import type { Evaluation } from '../training/inference';
import type { RunStatus } from '../training/runs';

/** Handlers for every message of union `M`, keyed by its `type`. */
export type MessageHandlers<M extends { type: string }> = { [K in M['type']]: (message: Extract<M, { type: K }>) => void | Promise<void> };

export function dispatchMessage<M extends { type: string }>(handlers: MessageHandlers<M>, message: M): void | Promise<void> {
  const handler = handlers[message.type as M['type']] as ((message: M) => void | Promise<void>) | undefined;
  return handler?.(message);
}

// ---------------------------------------------------------------- labelling

export interface CandidateSummary {
  id: number;
  x: number;
  y: number;
  z: number;
  status: CandidateStatus;
  prediction?: Prediction;
}

export interface LabellingView {
  /** Shown in the header: the candidate file's name. */
  title: string;
  datasetRoot: string;
  /** Channel names in cube order. */
  channels: string[];
  candidates: CandidateSummary[];
  order: CandidateOrder;
  /** Candidate ids in display order. */
  orderedIds: number[];
  /** Where to start: the first candidate still to do in that order. */
  startId: number | undefined;
  balance: BalanceCounts;
  /** The guide's 1,000-5,000 candidates evenly split: the count per category to aim for. */
  targetPerCategory: number;
  /** Candidates too close to the volume edge for a cube. */
  atEdge: number;
  /** Where predictions came from (a model or a classified file), if any. */
  predictionSource?: string;
}

export interface CubeMessage {
  type: 'cube';
  id: number;
  /** (z, y, x) 20x50x50 per channel. */
  channels: Float32Array[];
  /** Absent when reviewing a dataset's cubes without their volume. */
  context?: CandidateContext;
}

export type HostToLabelling =
  | { type: 'session'; view: LabellingView }
  | CubeMessage
  | { type: 'decided'; id: number; status: CandidateStatus; balance: BalanceCounts }
  | { type: 'undone'; id: number | null; status?: CandidateStatus; balance: BalanceCounts }
  | { type: 'busy'; message: string | undefined }
  | { type: 'error'; message: string };

export type LabellingToHost =
  | { type: 'ready' }
  | { type: 'requestCube'; id: number }
  | { type: 'decide'; id: number; decision: Decision }
  | { type: 'undo' }
  | { type: 'setOrder'; order: CandidateOrder }
  | { type: 'chooseModel' }
  /** Time from key press to the next cube painted, for the latency figures. */
  | { type: 'paintLatency'; milliseconds: number };

// ---------------------------------------------------------------- training

export interface RunView {
  name: string;
  outputDir: string;
  status: RunStatus;
  resumable: boolean;
  /** Every event of the run so far, oldest first. */
  events: TrainingEvent[];
}

export type HostToTraining =
  | { type: 'run'; run: RunView }
  | { type: 'events'; events: TrainingEvent[]; status: RunStatus; resumable: boolean }
  | { type: 'evaluation'; results: Evaluation[] }
  /** Where a SLURM run's job stands ("SLURM job 12: pending: Resources"); none for a run on this machine. */
  | { type: 'job'; text: string | undefined }
  | { type: 'error'; message: string }
  | { type: 'busy'; message: string | undefined };

export type TrainingToHost =
  | { type: 'ready' }
  | { type: 'cancel' }
  | { type: 'resume' }
  | { type: 'classify' }
  | { type: 'evaluate' }
  | { type: 'revealOutput' };

/**
 * What a labelling session knows of its dataset between decisions: each
 * position's label, the candidates skipped, the prediction each label was
 * made against, and the guide's four balance counts. Built once from the
 * dataset on disk (cube folders + provenance log), then updated per decision
 * in constant time, so a decision costs the same with 5 or 5,000 cubes in
 * the dataset. The dataset on disk stays the truth: reopening rebuilds this
 * from it, and must agree (tested).
 */
import { positionKey, type Prediction, type ProvenanceRecord } from './dataset';
import type { Point3 } from './cube';
import type { CubeLabel } from './trainingYaml';

/**
 * The guide's four kinds of training example. Balanced training data has
 * roughly as many of each; the counts tell the user when to stop and retrain.
 */
export interface BalanceCounts {
  cellsPredictedCell: number;
  cellsPredictedNonCell: number;
  nonCellsPredictedNonCell: number;
  nonCellsPredictedCell: number;
  /** Labelled cubes whose candidate had no prediction. */
  withoutPrediction: { cells: number; nonCells: number };
}

type Category = 'cellsPredictedCell' | 'cellsPredictedNonCell' | 'nonCellsPredictedNonCell' | 'nonCellsPredictedCell' | 'cells' | 'nonCells';

function categoryOf(label: CubeLabel | undefined, predicted: CubeLabel | undefined): Category | undefined {
  if (!label) return undefined;
  if (!predicted) return label === 'cell' ? 'cells' : 'nonCells';
  if (label === 'cell') return predicted === 'cell' ? 'cellsPredictedCell' : 'cellsPredictedNonCell';
  return predicted === 'no_cell' ? 'nonCellsPredictedNonCell' : 'nonCellsPredictedCell';
}

function emptyCounts(): BalanceCounts {
  return { cellsPredictedCell: 0, cellsPredictedNonCell: 0, nonCellsPredictedNonCell: 0, nonCellsPredictedCell: 0, withoutPrediction: { cells: 0, nonCells: 0 } };
}

function addTo(counts: BalanceCounts, category: Category | undefined, delta: number): void {
  if (category === 'cells' || category === 'nonCells') counts.withoutPrediction[category] += delta;
  else if (category) counts[category] += delta;
}

/** The records of `history` that a later undo reversed. */
function undoneIds(history: readonly ProvenanceRecord[]): Set<string | undefined> {
  return new Set(history.filter((r) => r.action === 'undo').map((r) => r.undoes));
}

/** The prediction of each position's latest add that is not undone. */
export function recordedPredictions(history: readonly ProvenanceRecord[]): Map<string, Prediction> {
  const undone = undoneIds(history);
  const predictions = new Map<string, Prediction>();
  for (const record of history) {
    if (record.action === 'add' && !undone.has(record.id) && record.prediction) predictions.set(positionKey(record.position), record.prediction);
  }
  return predictions;
}

/**
 * Folds the provenance log into the guide's four categories, using each
 * cube's current label. A cube labelled before any prediction was known takes
 * the prediction from `laterPredictions` (by position), when given.
 */
export function balanceOf(history: readonly ProvenanceRecord[], labels: ReadonlyMap<string, CubeLabel>, laterPredictions: ReadonlyMap<string, Prediction> = new Map()): BalanceCounts {
  const predictions = new Map<string, Prediction>([...laterPredictions, ...recordedPredictions(history)]);
  const counts = emptyCounts();
  for (const [key, label] of labels) addTo(counts, categoryOf(label, predictions.get(key)?.label), 1);
  return counts;
}

export class LabelState {
  private readonly counts: BalanceCounts;

  private constructor(
    private readonly labels: Map<string, CubeLabel>,
    private readonly skipped: Set<string>,
    private readonly recorded: Map<string, Prediction>,
    /** Predictions of the candidate set (a classify run), used where no label recorded one. */
    private readonly setPredictions: ReadonlyMap<string, Prediction>,
    /** Skips count only when recorded for this source volume (a skip is about one set's candidate). */
    private readonly skipSource: string | undefined,
  ) {
    this.counts = balanceOf([], labels, new Map([...setPredictions, ...recorded]));
  }

  /** From the dataset's current labels (its cube folders) and provenance log. */
  static build(labels: ReadonlyMap<string, CubeLabel>, history: readonly ProvenanceRecord[], setPredictions: ReadonlyMap<string, Prediction>, skipSource: string | undefined): LabelState {
    const undone = undoneIds(history);
    const skipped = new Set(history.filter((r) => r.action === 'skip' && !undone.has(r.id) && r.source === skipSource).map((r) => positionKey(r.position)));
    return new LabelState(new Map(labels), skipped, recordedPredictions(history), setPredictions, skipSource);
  }

  label(position: Point3): CubeLabel | undefined {
    return this.labels.get(positionKey(position));
  }

  status(position: Point3): CubeLabel | 'skip' | 'todo' {
    const key = positionKey(position);
    return this.labels.get(key) ?? (this.skipped.has(key) ? 'skip' : 'todo');
  }

  balance(): BalanceCounts {
    return { ...this.counts, withoutPrediction: { ...this.counts.withoutPrediction } };
  }

  /** A new cube at `position`, labelled against `prediction`. */
  added(position: Point3, label: CubeLabel, prediction: Prediction | undefined): void {
    this.change(position, (key) => {
      this.labels.set(key, label);
      if (prediction) this.recorded.set(key, prediction);
    });
  }

  relabelled(position: Point3, label: CubeLabel): void {
    this.change(position, (key) => this.labels.set(key, label));
  }

  skippedAt(position: Point3): void {
    this.skipped.add(positionKey(position));
  }

  /** Reverses `record` (just undone in the dataset); `history` is the log before the undo, for an add's earlier prediction. */
  undone(record: ProvenanceRecord, history: readonly ProvenanceRecord[]): void {
    this.change(record.position, (key) => {
      switch (record.action) {
        case 'add': {
          this.labels.delete(key);
          const earlier = recordedPredictions(history.filter((r) => r.id !== record.id)).get(key);
          if (earlier) this.recorded.set(key, earlier);
          else this.recorded.delete(key);
          break;
        }
        case 'relabel':
        case 'remove':
          this.labels.set(key, record.previousLabel as CubeLabel);
          break;
        case 'skip': {
          // An earlier skip of the same candidate, not undone, still stands.
          const undone = undoneIds(history);
          const earlierSkip = history.some((r) => r.id !== record.id && r.action === 'skip' && !undone.has(r.id) && r.source === this.skipSource && positionKey(r.position) === key);
          if (!earlierSkip) this.skipped.delete(key);
          break;
        }
      }
    });
  }

  /** Applies one position's change, moving it between balance categories. */
  private change(position: Point3, apply: (key: string) => void): void {
    const key = positionKey(position);
    addTo(this.counts, this.categoryAt(key), -1);
    apply(key);
    addTo(this.counts, this.categoryAt(key), 1);
  }

  private categoryAt(key: string): Category | undefined {
    return categoryOf(this.labels.get(key), (this.recorded.get(key) ?? this.setPredictions.get(key))?.label);
  }
}

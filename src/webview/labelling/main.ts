/**
 * The labelling page: one candidate cube at a time, one key per decision.
 *
 * Speed: cubes arrive ahead of need (the host is asked for the next few in
 * display order), their contrast limits are computed on arrival, so a key
 * press only moves the cursor and paints three small canvases. The host owns
 * every saved decision; this page shows the decision at once and the host's
 * reply confirms it.
 */
import '@vscode-elements/elements/dist/vscode-badge/index.js';
import '@vscode-elements/elements/dist/vscode-button/index.js';
import '@vscode-elements/elements/dist/vscode-checkbox/index.js';
import '@vscode-elements/elements/dist/vscode-option/index.js';
import '@vscode-elements/elements/dist/vscode-single-select/index.js';
import '@vscode-elements/elements/dist/vscode-textfield/index.js';
import type { BalanceCounts, CandidateOrder, CandidateStatus, Decision } from '../../core/labelling';
import { connectToHost, element, showBusy, showError } from '../bridge';
import type { CandidateSummary, CubeMessage, HostToLabelling, LabellingToHost, LabellingView } from '../protocol';
import { autoContrast, maxProjection, planeOf, toGreyRgba, type Contrast } from '../render';

const DEPTH = 20;
const SIDE = 50;
/** Cubes requested ahead of the cursor (and one behind) so the next one paints from memory. */
const PREFETCH_AHEAD = 6;
const ZOOM_LEVELS = [3, 4, 5, 6, 8, 10, 12];

interface ViewState {
  /** Lets the editor reopen this tab on the same dataset after a window reload. */
  datasetRoot?: string;
  cursorId?: number;
  z: number;
  maxProjection: boolean;
  autoContrast: boolean;
  manual: Contrast;
  /** Undefined until the user zooms: then the panes are sized to fit the editor's width. */
  zoomIndex?: number;
}

interface LoadedCube {
  message: CubeMessage;
  contrast: Contrast[];
  contextContrast: Contrast[];
}

let view: LabellingView | undefined;
const summaries = new Map<number, CandidateSummary>();
const cubes = new Map<number, LoadedCube>();
const requested = new Set<number>();
/** Decisions sent to the host and not yet confirmed saved. */
let unsaved = 0;
/** Key-press time of the action whose cube is not painted yet. */
let pendingPaintSince: number | undefined;
const state: ViewState = { z: DEPTH / 2, maxProjection: false, autoContrast: true, manual: { min: 0, max: 1000 } };

const host = connectToHost<LabellingToHost, HostToLabelling, ViewState>({
  session: ({ view: next }) => showSession(next),
  cube: (message) => {
    requested.delete(message.id);
    cubes.set(message.id, {
      message,
      contrast: message.channels.map((channel) => autoContrast(channel)),
      contextContrast: message.context?.channels.map((channel) => autoContrast(channel)) ?? [],
    });
    if (message.id === state.cursorId) {
      paint();
      prefetchAround(message.id);
    }
  },
  decided: ({ id, status, balance }) => {
    unsaved = Math.max(0, unsaved - 1);
    setStatus(id, status);
    showBalance(balance);
  },
  undone: ({ id, status, balance }) => {
    showBalance(balance);
    if (id === null || status === undefined) return;
    setStatus(id, status);
    moveTo(id, performance.now());
  },
  busy: ({ message }) => showBusy(message),
  error: ({ message }) => showError(message),
});

Object.assign(state, host.state() ?? {});

function orderedIds(): number[] {
  return view?.orderedIds ?? [];
}

function showSession(next: LabellingView): void {
  // A new order (chosen, or from new predictions) starts at its first candidate to do; a reload keeps the place.
  const reordered = view !== undefined && view.order !== next.order;
  view = next;
  state.datasetRoot = next.datasetRoot;
  summaries.clear();
  for (const candidate of next.candidates) summaries.set(candidate.id, candidate);
  element('title').textContent = next.title;
  element('dataset-line').textContent = `Saving into ${next.datasetRoot}`;
  (element('order') as HTMLElement & { value: string }).value = next.order;
  element('channel-0-name').textContent = next.channels[0] ?? 'Signal';
  element('channel-1-figure').hidden = next.channels.length < 2;
  const keep = !reordered && state.cursorId !== undefined && summaries.has(state.cursorId);
  const start = keep ? (state.cursorId as number) : (next.startId ?? next.orderedIds[0]);
  showBalance(next.balance);
  if (start === undefined) {
    element('candidate-name').textContent = next.atEdge ? `No candidate has a full cube inside the volume (${next.atEdge} at the edge).` : 'No candidates.';
    return;
  }
  moveTo(start, undefined);
}

function setStatus(id: number, status: CandidateStatus): void {
  const summary = summaries.get(id);
  if (summary) summary.status = status;
  if (id === state.cursorId) showCandidateLine();
  showProgress();
}

function showProgress(): void {
  const all = [...summaries.values()];
  const done = all.filter((c) => c.status !== 'todo').length;
  const edge = view?.atEdge ? ` · ${view.atEdge} too close to the edge for a cube` : '';
  // Shown until the host confirms the files are on disk (a few ms), so "saved" is never claimed early.
  const saving = unsaved > 0 ? ' · saving…' : ' · all saved';
  element('progress').textContent = `${done} of ${all.length} decided${saving}${edge}`;
}

function moveTo(id: number, since: number | undefined): void {
  state.cursorId = id;
  host.saveState(state);
  pendingPaintSince = since;
  prefetchAround(id);
  showCandidateLine();
  showProgress();
  paint();
}

function prefetchAround(id: number): void {
  const ids = orderedIds();
  const at = ids.indexOf(id);
  // The cube to show first: those around it are asked for once it is here, so they do not queue before it (opening a set, a jump).
  const wanted = cubes.has(id) ? ids.slice(Math.max(0, at - 1), at + PREFETCH_AHEAD + 1) : [id];
  for (const want of wanted) {
    if (!cubes.has(want) && !requested.has(want)) {
      requested.add(want);
      host.post({ type: 'requestCube', id: want });
    }
  }
}

const STATUS_TEXT: Record<CandidateStatus, string> = { todo: 'to do', cell: 'labelled cell', no_cell: 'labelled non-cell', skip: 'skipped' };

function showCandidateLine(): void {
  const candidate = state.cursorId === undefined ? undefined : summaries.get(state.cursorId);
  if (!candidate) return;
  const ids = orderedIds();
  element('candidate-name').textContent = `Candidate ${ids.indexOf(candidate.id) + 1} of ${ids.length} · x ${candidate.x}, y ${candidate.y}, z ${candidate.z}`;
  const badge = element('status-badge');
  badge.textContent = STATUS_TEXT[candidate.status];
  badge.dataset.status = candidate.status;
  const prediction = candidate.prediction;
  element('prediction').textContent = !prediction
    ? 'No prediction'
    : `Model says ${prediction.label === 'cell' ? 'cell' : 'non-cell'}${prediction.cellProbability === undefined ? '' : ` (p(cell) = ${prediction.cellProbability.toFixed(2)})`}`;
}

function drawGrey(canvas: HTMLCanvasElement, values: Float32Array, width: number, height: number, contrast: Contrast, cssScale: number): CanvasRenderingContext2D {
  if (canvas.width !== width || canvas.height !== height) {
    canvas.width = width;
    canvas.height = height;
  }
  canvas.style.width = `${width * cssScale}px`;
  canvas.style.height = `${height * cssScale}px`;
  const context = canvas.getContext('2d') as CanvasRenderingContext2D;
  const image = context.createImageData(width, height);
  toGreyRgba(values, contrast, image.data);
  context.putImageData(image, 0, 0);
  return context;
}

function paint(): void {
  const id = state.cursorId;
  const loaded = id === undefined ? undefined : cubes.get(id);
  element('z-value').textContent = state.maxProjection ? '(max)' : String(state.z);
  (element('z-slider') as HTMLInputElement).value = String(state.z);
  if (!loaded) return;
  const zoom = ZOOM_LEVELS[state.zoomIndex ?? fittingZoomIndex()];
  loaded.message.channels.forEach((channel, index) => {
    const values = state.maxProjection ? maxProjection(channel, DEPTH, SIDE, SIDE) : planeOf(channel, state.z, SIDE, SIDE);
    const contrast = state.autoContrast ? loaded.contrast[index] : state.manual;
    drawGrey(element<HTMLCanvasElement>(`channel-${index}`), values, SIDE, SIDE, contrast, zoom);
  });
  const context = loaded.message.context;
  element('context-figure').hidden = !context;
  if (context) {
    // The neighbourhood is drawn at the same on-screen size as one cube pane, whatever its voxel count.
    const contextScale = (SIDE * zoom) / Math.max(context.width, context.height);
    const canvas = element<HTMLCanvasElement>('context');
    const drawing = drawGrey(canvas, context.channels[0], context.width, context.height, state.autoContrast ? loaded.contextContrast[0] : state.manual, contextScale);
    drawing.strokeStyle = getComputedStyle(document.body).getPropertyValue('--vscode-focusBorder').trim() || '#0078d4';
    drawing.lineWidth = 1;
    drawing.strokeRect(context.box.x + 0.5, context.box.y + 0.5, context.box.width - 1, context.box.height - 1);
    element('context-z').textContent = String(context.z);
  }
  if (state.autoContrast) {
    (element('contrast-min') as HTMLElement & { value: string }).value = loaded.contrast[0].min.toFixed(0);
    (element('contrast-max') as HTMLElement & { value: string }).value = loaded.contrast[0].max.toFixed(0);
  }
  if (pendingPaintSince !== undefined) {
    const since = pendingPaintSince;
    pendingPaintSince = undefined;
    // The frame after this one is when the pixels are on screen.
    requestAnimationFrame(() => host.post({ type: 'paintLatency', milliseconds: performance.now() - since }));
  }
}

const PANE_GAP = 16;

/** The largest zoom at which the panes (signal, background, context) sit side by side in the page's width. */
function fittingZoomIndex(): number {
  const panes = view?.channels.length === 1 ? 2 : 3;
  const width = element('panes').clientWidth;
  let index = 0;
  while (index + 1 < ZOOM_LEVELS.length && panes * (SIDE * ZOOM_LEVELS[index + 1] + 2) + (panes - 1) * PANE_GAP <= width) index++;
  return index;
}

const BALANCE_KEYS = ['cellsPredictedCell', 'cellsPredictedNonCell', 'nonCellsPredictedNonCell', 'nonCellsPredictedCell'] as const;

function showBalance(balance: BalanceCounts): void {
  const target = view?.targetPerCategory ?? 250;
  for (const key of BALANCE_KEYS) {
    const row = document.querySelector<HTMLTableRowElement>(`tr[data-category="${key}"]`) as HTMLTableRowElement;
    (row.querySelector('.count') as HTMLElement).textContent = `${balance[key]} / ${target}`;
    (row.querySelector('.bar > div') as HTMLElement).style.width = `${Math.min(100, (100 * balance[key]) / target)}%`;
  }
  const without = balance.withoutPrediction;
  (document.querySelector('tr[data-category="withoutPrediction"] .count') as HTMLElement).textContent = `${without.cells} cells, ${without.nonCells} non-cells`;
  element('balance-hint').textContent = view?.predictionSource
    ? `Predictions from ${view.predictionSource}. The guide: 1,000-5,000 candidates, split evenly over these four.`
    : 'No model predictions yet: use “Predict with model…” to sort labels into the guide’s four categories.';
  const counts = BALANCE_KEYS.map((key) => balance[key]);
  const lowest = BALANCE_KEYS[counts.indexOf(Math.min(...counts))];
  const labels: Record<(typeof BALANCE_KEYS)[number], string> = {
    cellsPredictedCell: 'cells the model got right',
    cellsPredictedNonCell: 'cells it missed',
    nonCellsPredictedNonCell: 'artefacts it rejected',
    nonCellsPredictedCell: 'artefacts it called cells',
  };
  element('balance-advice').textContent = counts.every((count) => count >= target)
    ? 'Every category has reached its target: a good time to retrain.'
    : `Most needed: ${labels[lowest]}.`;
}

function nextTodoAfter(id: number): number | undefined {
  const ids = orderedIds();
  const at = ids.indexOf(id);
  const after = [...ids.slice(at + 1), ...ids.slice(0, at)];
  return after.find((other) => summaries.get(other)?.status === 'todo') ?? ids[at + 1];
}

function decide(decision: Decision, since: number): void {
  const id = state.cursorId;
  if (id === undefined) return;
  unsaved++;
  host.post({ type: 'decide', id, decision });
  // Shown at once; the host's 'decided' reply confirms what was saved.
  setStatus(id, decision);
  const next = nextTodoAfter(id);
  if (next !== undefined) moveTo(next, since);
}

function step(offset: number, since: number): void {
  const ids = orderedIds();
  const at = ids.indexOf(state.cursorId as number);
  const next = ids[Math.max(0, Math.min(ids.length - 1, at + offset))];
  if (next !== undefined && next !== state.cursorId) moveTo(next, since);
}

function setZ(z: number): void {
  state.z = Math.max(0, Math.min(DEPTH - 1, z));
  state.maxProjection = false;
  (element('max-projection') as HTMLElement & { checked: boolean }).checked = false;
  host.saveState(state);
  paint();
}

function toggleHelp(show?: boolean): void {
  const help = element('help');
  help.hidden = show === undefined ? !help.hidden : !show;
}

function setZoom(delta: number): void {
  state.zoomIndex = Math.max(0, Math.min(ZOOM_LEVELS.length - 1, (state.zoomIndex ?? fittingZoomIndex()) + delta));
  host.saveState(state);
  paint();
}

function setMaxProjection(on: boolean): void {
  state.maxProjection = on;
  (element('max-projection') as HTMLElement & { checked: boolean }).checked = on;
  host.saveState(state);
  paint();
}

function setAutoContrast(on: boolean): void {
  state.autoContrast = on;
  (element('auto-contrast') as HTMLElement & { checked: boolean }).checked = on;
  for (const id of ['contrast-min', 'contrast-max']) (element(id) as HTMLElement & { disabled: boolean }).disabled = on;
  host.saveState(state);
  paint();
}

document.addEventListener('keydown', (event) => {
  // Typing into the contrast fields is not a decision.
  if ((event.target as HTMLElement).tagName === 'VSCODE-TEXTFIELD') return;
  const since = performance.now();
  const key = event.key.toLowerCase();
  if ((event.ctrlKey || event.metaKey) && key === 'z') {
    host.post({ type: 'undo' });
  } else if (event.ctrlKey || event.metaKey || event.altKey) {
    return;
  } else if (key === 'y') decide('cell', since);
  else if (key === 'n') decide('no_cell', since);
  else if (key === 's') decide('skip', since);
  else if (key === 'u') host.post({ type: 'undo' });
  else if (key === 'arrowright') step(1, since);
  else if (key === 'arrowleft') step(-1, since);
  else if (key === 'arrowup') setZ(state.z + 1);
  else if (key === 'arrowdown') setZ(state.z - 1);
  else if (key === 'm') setMaxProjection(!state.maxProjection);
  else if (key === 'a') setAutoContrast(!state.autoContrast);
  else if (key === '+' || key === '=') setZoom(1);
  else if (key === '-') setZoom(-1);
  else if (key === '?') toggleHelp();
  else if (key === 'escape') toggleHelp(false);
  else return;
  event.preventDefault();
});

function onClick(id: string, action: () => void): void {
  element(id).addEventListener('click', action);
}

onClick('decide-cell', () => decide('cell', performance.now()));
onClick('decide-no-cell', () => decide('no_cell', performance.now()));
onClick('decide-skip', () => decide('skip', performance.now()));
onClick('undo', () => host.post({ type: 'undo' }));
onClick('previous', () => step(-1, performance.now()));
onClick('next', () => step(1, performance.now()));
onClick('zoom-in', () => setZoom(1));
onClick('zoom-out', () => setZoom(-1));
onClick('help-button', () => toggleHelp());
onClick('help', () => toggleHelp(false));
onClick('choose-model', () => host.post({ type: 'chooseModel' }));
element('z-slider').addEventListener('input', (event) => setZ(Number((event.target as HTMLInputElement).value)));
element('max-projection').addEventListener('change', (event) => setMaxProjection((event.target as HTMLElement & { checked: boolean }).checked));
element('auto-contrast').addEventListener('change', (event) => setAutoContrast((event.target as HTMLElement & { checked: boolean }).checked));
for (const [id, bound] of [['contrast-min', 'min'], ['contrast-max', 'max']] as const) {
  element(id).addEventListener('change', (event) => {
    const value = Number((event.target as HTMLElement & { value: string }).value);
    if (Number.isFinite(value)) state.manual[bound] = value;
    host.saveState(state);
    paint();
  });
}
element('order').addEventListener('change', (event) => host.post({ type: 'setOrder', order: (event.target as HTMLElement & { value: string }).value as CandidateOrder }));
for (const id of ['channel-0', 'channel-1', 'context']) {
  element(id).addEventListener(
    'wheel',
    (event) => {
      event.preventDefault();
      setZ(state.z + (event.deltaY > 0 ? -1 : 1));
    },
    { passive: false },
  );
}
setAutoContrast(state.autoContrast);
// Re-fit the panes when the editor is resized, unless the user chose a zoom.
new ResizeObserver(() => {
  if (state.zoomIndex === undefined) paint();
}).observe(element('panes'));
host.post({ type: 'ready' });

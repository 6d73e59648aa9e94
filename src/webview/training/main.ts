/**
 * The training panel: a run's events (replayed from its log, then streamed
 * live) as loss and accuracy curves, an epoch table, elapsed time and an
 * estimate of the time left; Cancel / Resume; and evaluation results.
 */
import '@vscode-elements/elements/dist/vscode-badge/index.js';
import '@vscode-elements/elements/dist/vscode-button/index.js';
import '@vscode-elements/elements/dist/vscode-progress-bar/index.js';
import { Chart, Legend, LinearScale, LineController, LineElement, PointElement, Tooltip } from 'chart.js';
import { type ClassCounts, describeRunStart, type TrainingEvent } from '../../training/events';
import type { Evaluation } from '../../training/inference';
import type { RunStatus } from '../../training/runs';
import { connectToHost, element, showBusy, showError } from '../bridge';
import type { HostToTraining, TrainingToHost } from '../protocol';

Chart.register(LineController, LineElement, PointElement, LinearScale, Legend, Tooltip);

type EpochEvent = Extract<TrainingEvent, { type: 'epoch' }>;

const counted = (n: number, one: string, many: string) => `${n} ${n === 1 ? one : many}`;
const classes = (counts: ClassCounts) => `${counted(counts.cells, 'cell', 'cells')}, ${counted(counts.nonCells, 'non-cell', 'non-cells')}`;
type Point = { x: number; y: number };

let events: TrainingEvent[] = [];
let status: RunStatus = 'running';
let resumable = false;
/** Arrival times of live batch events, for the rate behind the estimate. */
const batchArrivals: number[] = [];

/** Lets the editor reopen this panel on the same run after a window reload. */
interface PanelState {
  outputDir?: string;
}

const host = connectToHost<TrainingToHost, HostToTraining, PanelState>({
  run: ({ run }) => {
    host.saveState({ outputDir: run.outputDir });
    events = [...run.events];
    status = run.status;
    resumable = run.resumable;
    element('run-name').textContent = run.name;
    element('output').textContent = run.outputDir;
    element('output').title = run.outputDir;
    render();
  },
  events: (message) => {
    const now = performance.now();
    for (const event of message.events) if (event.type === 'batch') batchArrivals.push(now);
    while (batchArrivals.length > 50) batchArrivals.shift();
    events.push(...message.events);
    status = message.status;
    resumable = message.resumable;
    render();
  },
  evaluation: ({ results }) => showEvaluation(results),
  job: ({ text }) => {
    element('job-row').hidden = text === undefined;
    element('job').textContent = text ?? '';
  },
  busy: ({ message }) => showBusy(message),
  error: ({ message }) => showError(message),
});

function themeColour(name: string, fallback: string): string {
  return getComputedStyle(document.body).getPropertyValue(`--vscode-${name}`).trim() || fallback;
}

function makeChart(canvasId: string, title: string): Chart<'line', Point[]> {
  // chart.js resolves point colours once, so the series colours are given at creation.
  const blue = themeColour('charts-blue', '#3794ff');
  const orange = themeColour('charts-orange', '#d18616');
  const paint = (colour: string) => ({ borderColor: colour, backgroundColor: colour, pointBorderColor: colour, pointBackgroundColor: colour });
  const chart: Chart<'line', Point[]> = new Chart(element<HTMLCanvasElement>(canvasId), {
    type: 'line',
    data: {
      datasets: [
        { label: `${title} (batches)`, data: [], borderWidth: 1, pointRadius: 0, ...paint(`${blue}66`) },
        { label: `${title} (epoch)`, data: [], borderWidth: 2, pointRadius: 3, ...paint(blue) },
        { label: `validation ${title}`, data: [], borderWidth: 2, pointRadius: 3, ...paint(orange) },
      ],
    },
    options: {
      animation: false,
      maintainAspectRatio: false,
      parsing: false,
      scales: {
        x: { type: 'linear', min: 0, title: { display: true, text: 'epoch' }, ticks: { precision: 0 } },
        y: {},
      },
      plugins: { legend: { labels: { boxWidth: 12 } } },
    },
  });
  applyTheme(chart);
  chart.update('none');
  return chart;
}

/** Text and grid colours from the current theme, applied at every render so a theme switch in the editor reaches the axes. */
function applyTheme(chart: Chart<'line', Point[]>): void {
  const text = themeColour('foreground', '#ccc');
  const grid = themeColour('panel-border', '#80808040');
  const scales = chart.options.scales as { x: { title: { color?: string }; ticks: { color?: string }; grid?: { color?: string } }; y: { ticks?: { color?: string }; grid?: { color?: string } } };
  scales.x.title.color = text;
  scales.x.ticks.color = text;
  scales.x.grid = { ...scales.x.grid, color: grid };
  scales.y.ticks = { ...scales.y.ticks, color: text };
  scales.y.grid = { ...scales.y.grid, color: grid };
  (chart.options.plugins as { legend: { labels: { color?: string } } }).legend.labels.color = text;
}

// Made at the first render, once the page has its theme (colours are read from it).
let charts: { loss: Chart<'line', Point[]>; accuracy: Chart<'line', Point[]> } | undefined;

function formatDuration(seconds: number): string {
  if (!Number.isFinite(seconds)) return '–';
  const s = Math.round(seconds);
  const h = Math.floor(s / 3600);
  const m = Math.floor((s % 3600) / 60);
  return h ? `${h} h ${m} min` : m ? `${m} min ${s % 60} s` : `${s} s`;
}

const STATUS_TEXT: Record<RunStatus, string> = { running: 'running', finished: 'finished', cancelled: 'cancelled', failed: 'failed', interrupted: 'interrupted' };

function render(): void {
  const started = [...events].reverse().find((e): e is Extract<TrainingEvent, { type: 'started' }> => e.type === 'started');
  const launched = events.find((e): e is Extract<TrainingEvent, { type: 'launched' }> => e.type === 'launched');
  // A resumed run repeats epochs it had not finished: the last report of each epoch counts.
  const epochs = new Map<number, EpochEvent>();
  for (const event of events) if (event.type === 'epoch') epochs.set(event.epoch, event);
  const epochList = [...epochs.values()].sort((a, b) => a.epoch - b.epoch);
  const batches = events.filter((e): e is Extract<TrainingEvent, { type: 'batch' }> => e.type === 'batch');
  const lastBatch = batches[batches.length - 1];
  const totalEpochs = started?.epochs ?? epochList[0]?.epochs ?? 0;
  const failure = [...events].reverse().find((e): e is Extract<TrainingEvent, { type: 'error' }> => e.type === 'error');

  const badge = element('run-status');
  badge.textContent = STATUS_TEXT[status];
  badge.dataset.status = status;
  // Never a silent CPU run when a GPU was asked for or is set up: the reason stays in view.
  const gpuNote = started?.gpu && !started.gpu.used ? ` (GPU not used: ${started.gpu.reason})` : '';
  element('run-backend').textContent = started ? `on ${started.backend}${gpuNote}` : '';
  element('model').textContent = started ? `ResNet-${started.model.depth}, ${started.model.channels} channel(s), ${started.model.parameters.toLocaleString('en')} parameters` : 'starting…';
  const split = started?.split;
  element('samples').textContent = !started
    ? '–'
    : split
      ? `${started.samples.training} (${classes(split.training)}) / ${started.samples.validation ? `${started.samples.validation} (${classes(split.validation)})` : 'none'}`
      : `${started.samples.training} / ${started.samples.validation} (${started.samples.cells} cells, ${started.samples.nonCells} non-cells)`;
  element('samples').title = split ? `Each cube's part: ${split.file}` : '';
  const resumed = started?.resumedAtEpoch !== undefined ? `; resumed at epoch ${started.resumedAtEpoch + 1} with its optimiser at iteration ${started.resumedAtIteration}` : '';
  element('start').textContent = started?.start ? `${describeRunStart(started.start)}${resumed}` : '–';
  const warnings = element('warnings');
  warnings.hidden = !started?.warnings?.length;
  warnings.textContent = (started?.warnings ?? []).map((warning) => `Warning: ${warning}`).join('\n');
  const currentEpoch = lastBatch ? lastBatch.epoch + 1 : epochList.length;
  element('epoch').textContent = totalEpochs ? `${Math.min(currentEpoch, totalEpochs)} of ${totalEpochs}` : '–';
  const trainedSeconds = epochList.reduce((sum, e) => sum + e.seconds, 0);
  const elapsed = status === 'running' && launched ? (Date.now() - launched.time) / 1000 : trainedSeconds;
  element('elapsed').textContent = formatDuration(elapsed);
  element('eta').textContent = status === 'running' ? formatDuration(remainingSeconds(epochList, lastBatch, totalEpochs)) : '–';
  const progress = element('epoch-progress') as HTMLElement & { value: number; max: number };
  progress.max = lastBatch?.batches ?? 1;
  // Batch numbers in the events count from 1.
  progress.value = status === 'finished' ? progress.max : (lastBatch?.batch ?? 0);

  charts ??= { loss: makeChart('loss-chart', 'loss'), accuracy: makeChart('accuracy-chart', 'accuracy') };
  const { loss: lossChart, accuracy: accuracyChart } = charts;
  const batchX = (b: Extract<TrainingEvent, { type: 'batch' }>) => b.epoch + b.batch / b.batches;
  lossChart.data.datasets[0].data = batches.map((b) => ({ x: batchX(b), y: b.loss }));
  lossChart.data.datasets[1].data = epochList.map((e) => ({ x: e.epoch + 1, y: e.loss }));
  lossChart.data.datasets[2].data = epochList.filter((e) => e.valLoss !== undefined).map((e) => ({ x: e.epoch + 1, y: e.valLoss as number }));
  accuracyChart.data.datasets[0].data = batches.map((b) => ({ x: batchX(b), y: b.accuracy }));
  accuracyChart.data.datasets[1].data = epochList.map((e) => ({ x: e.epoch + 1, y: e.accuracy }));
  accuracyChart.data.datasets[2].data = epochList.filter((e) => e.valAccuracy !== undefined).map((e) => ({ x: e.epoch + 1, y: e.valAccuracy as number }));
  for (const chart of [lossChart, accuracyChart]) {
    applyTheme(chart);
    (chart.options.scales as { x: { max?: number } }).x.max = Math.max(1, totalEpochs);
    chart.update('none');
    // What the chart shows, readable by assistive technology and by the page tests.
    chart.canvas.dataset.points = String(chart.data.datasets.reduce((sum, d) => sum + d.data.length, 0));
  }

  const rows = epochList.map(
    (e) =>
      `<tr><td>${e.epoch + 1}</td><td>${e.loss.toFixed(4)}</td><td>${e.accuracy.toFixed(4)}</td><td>${e.valLoss?.toFixed(4) ?? '–'}</td><td>${e.valAccuracy?.toFixed(4) ?? '–'}</td><td>${e.learningRate.toExponential(2)}</td><td>${e.seconds.toFixed(1)}</td></tr>`,
  );
  (document.querySelector('#epochs tbody') as HTMLElement).innerHTML = rows.join('');

  (element('cancel') as HTMLElement & { disabled: boolean }).disabled = status !== 'running';
  (element('resume') as HTMLElement & { disabled: boolean }).disabled = !resumable;
  const hasModel = events.some((e) => e.type === 'finished');
  (element('classify') as HTMLElement & { disabled: boolean }).disabled = !hasModel;
  (element('evaluate') as HTMLElement & { disabled: boolean }).disabled = !hasModel;
  const error = element('error');
  error.hidden = !failure || status !== 'failed';
  if (failure && status === 'failed') error.textContent = `${failure.message}${failure.fix ? ` — ${failure.fix}` : ''}`;
}

/** Time left: the recent batch rate (live), else the mean epoch time, times the work left. */
function remainingSeconds(epochList: EpochEvent[], lastBatch: Extract<TrainingEvent, { type: 'batch' }> | undefined, totalEpochs: number): number {
  if (!lastBatch) return Number.NaN;
  const batchesLeft = (totalEpochs - lastBatch.epoch - 1) * lastBatch.batches + (lastBatch.batches - lastBatch.batch);
  if (batchArrivals.length >= 2) {
    const perBatch = (batchArrivals[batchArrivals.length - 1] - batchArrivals[0]) / 1000 / (batchArrivals.length - 1);
    if (perBatch > 0) return batchesLeft * perBatch;
  }
  if (epochList.length === 0) return Number.NaN;
  const perEpoch = epochList.reduce((sum, e) => sum + e.seconds, 0) / epochList.length;
  return (batchesLeft / lastBatch.batches) * perEpoch;
}

function percent(value: number): string {
  return `${(100 * value).toFixed(1)}%`;
}

function escapeHtml(text: string): string {
  return text.replace(/[&<>"']/g, (c) => `&#${c.charCodeAt(0)};`);
}

function showEvaluation(results: Evaluation[]): void {
  element('evaluation').hidden = false;
  element('evaluation-results').innerHTML = results
    .map((result) => {
      const [[nn, nc], [cn, cc]] = result.confusion;
      const name = escapeHtml(result.model.split(/[\\/]/).slice(-2).join('/'));
      return `<div>
  <h3 title="${escapeHtml(result.model)}">${name}</h3>
  <p>Accuracy <strong>${percent(result.accuracy)}</strong> on ${result.samples} cubes</p>
  <table class="plain" aria-label="Confusion matrix">
    <thead><tr><th>labelled \\ predicted</th><th>non-cell</th><th>cell</th></tr></thead>
    <tbody><tr><td>non-cell</td><td>${nn}</td><td>${nc}</td></tr><tr><td>cell</td><td>${cn}</td><td>${cc}</td></tr></tbody>
  </table>
  <table class="plain" aria-label="Per-class precision and recall">
    <thead><tr><th>class</th><th>precision</th><th>recall</th></tr></thead>
    <tbody><tr><td>cell</td><td>${percent(result.cell.precision)}</td><td>${percent(result.cell.recall)}</td></tr><tr><td>non-cell</td><td>${percent(result.nonCell.precision)}</td><td>${percent(result.nonCell.recall)}</td></tr></tbody>
  </table>
</div>`;
    })
    .join('');
}

for (const [id, type] of [
  ['cancel', 'cancel'],
  ['resume', 'resume'],
  ['classify', 'classify'],
  ['evaluate', 'evaluate'],
  ['reveal', 'revealOutput'],
] as const) {
  element(id).addEventListener('click', () => host.post({ type }));
}
// Elapsed time and the estimate move on between events.
setInterval(() => {
  if (status === 'running') render();
}, 1000);
host.post({ type: 'ready' });

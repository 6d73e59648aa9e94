/**
 * The labelling editor tab: asks for a candidate set (or reuses the one the
 * dataset remembers), opens the page and wires it to a LabellingController.
 * Predictions come from running `classify` in a separate process.
 */
import * as path from 'node:path';
import * as vscode from 'vscode';
import { LabellingController } from '../controllers/labellingController';
import { classifyArgs, runCliJson } from '../controllers/cliProcess';
import { DEFAULT_CHOSEN } from '../core/chooseCandidates';
import { CACHE_SWEEP_MIN_CANDIDATES, LabellingSession, loadCandidateSet, saveCandidateSet, type CandidateSet } from '../core/labelling';
import { percentile } from '../webview/render';
import { LABELLING_BODY } from '../webview/labelling/body';
import type { LabellingToHost } from '../webview/protocol';
import { askVoxelSizes, pickDatasetFolder, pickFile, pickVolume } from './pickers';
import { cliLocation, requireTrust, setting } from './settings';
import type { WorkspaceIndex } from './sidebar';
import { loadPage } from './webviewPanel';

export const LABELLING_VIEW_TYPE = 'cellfinder.labelling';

/** Asks for candidate points, volumes and voxel sizes. */
export async function askForCandidateSet(): Promise<CandidateSet | undefined> {
  const points = await pickFile('Candidate points to label (Cell Counter XML, e.g. cellfinder\'s detected or classified points)', { 'Cell Counter XML': ['xml'] });
  if (!points) return undefined;
  const volumes = await askForVolumes();
  return volumes && { points, ...volumes };
}

/** The volumes the candidates sit in, and their voxel sizes. */
async function askForVolumes(): Promise<Omit<CandidateSet, 'points'> | undefined> {
  const signal = await pickVolume('Signal channel: folder of z-planes, plane list or multi-page TIFF');
  if (!signal) return undefined;
  const background = await pickVolume('Background channel (cancel for signal-only)');
  const voxelSizes = await askVoxelSizes();
  if (voxelSizes === undefined) return undefined;
  return { signal, background, voxelSizes: voxelSizes ?? undefined };
}

export class LabellingPanels {
  private readonly open = new Map<string, vscode.WebviewPanel>();

  constructor(
    private readonly context: vscode.ExtensionContext,
    private readonly index: WorkspaceIndex,
    private readonly log: vscode.OutputChannel,
  ) {
    context.subscriptions.push(
      vscode.window.registerWebviewPanelSerializer(LABELLING_VIEW_TYPE, {
        // After a window reload the tab comes back on the same dataset and candidate set, at the first undecided candidate.
        deserializeWebviewPanel: async (panel, state: { datasetRoot?: string } | undefined) => {
          if (!state?.datasetRoot || !vscode.workspace.isTrusted) {
            panel.dispose();
            return;
          }
          // The dataset's remembered candidate set, or (for a review tab) none.
          await this.show(state.datasetRoot, await loadCandidateSet(state.datasetRoot), panel);
        },
      }),
    );
  }

  /** Labels into `datasetRoot`: the candidate set it remembers, else one the user picks. */
  async labelDataset(datasetRoot: string, askAgain = false): Promise<void> {
    requireTrust('Labelling');
    const set = (!askAgain && (await loadCandidateSet(datasetRoot))) || (await askForCandidateSet());
    if (set) await this.show(datasetRoot, set);
  }

  /** Steps through the cubes already in the dataset, to confirm or change their labels. */
  async reviewDataset(datasetRoot: string): Promise<void> {
    requireTrust('Reviewing labels');
    await this.show(datasetRoot, undefined);
  }

  /** Asks for candidates and a dataset folder, then labels. */
  async labelCandidates(): Promise<void> {
    requireTrust('Labelling');
    const set = await askForCandidateSet();
    if (!set) return;
    const root = await pickDatasetFolder('Save the labels into which training dataset?', this.index.datasetRoots(), 'training-data');
    if (root) await this.show(root, set);
  }

  /** Opens the labelling tab on `set`, or on the dataset's own cubes when `set` is undefined. */
  private async show(datasetRoot: string, set: CandidateSet | undefined, restored?: vscode.WebviewPanel): Promise<void> {
    const existing = this.open.get(datasetRoot);
    if (existing && !restored) {
      existing.reveal();
      return;
    }
    const session = set ? await LabellingSession.open(set, datasetRoot) : await LabellingSession.review(datasetRoot);
    if (set) await saveCandidateSet(datasetRoot, set);
    for (const skipped of session.skippedAtEdge) this.log.appendLine(`labelling: candidate x=${skipped.point.x} y=${skipped.point.y} z=${skipped.point.z} has no full cube: ${skipped.reason}`);
    const title = set ? `Label: ${path.basename(set.points)}` : `Review: ${path.basename(datasetRoot)}`;
    const panel = restored ?? vscode.window.createWebviewPanel(LABELLING_VIEW_TYPE, title, vscode.ViewColumn.Active);
    panel.iconPath = vscode.Uri.joinPath(this.context.extensionUri, 'media', 'cellfinder.svg');
    const latencies: number[] = [];
    const controller = new LabellingController(session, (message) => void panel.webview.postMessage(message), {
      targetPerCategory: setting('labelling.targetPerCategory', 250),
      predict: (current) => this.predict(current, datasetRoot),
      onChange: () => this.index.refreshSoon(),
      onPaintLatency: (ms) => {
        latencies.push(ms);
        if (latencies.length % 100 === 0) {
          const sorted = [...latencies].sort((a, b) => a - b);
          this.log.appendLine(`labelling: key-to-paint over ${sorted.length} moves: p50 ${percentile(sorted, 0.5).toFixed(1)} ms, p95 ${percentile(sorted, 0.95).toFixed(1)} ms`);
        }
      },
    });
    loadPage(panel.webview, this.context.extensionUri, 'labelling', LABELLING_BODY);
    const subscription = panel.webview.onDidReceiveMessage((message: LabellingToHost) => controller.handle(message));
    this.open.set(datasetRoot, panel);
    const sweep = set && session.cache && session.cache.cached < session.cache.total && session.candidates.length >= CACHE_SWEEP_MIN_CANDIDATES ? this.sweepCache(datasetRoot) : undefined;
    panel.onDidDispose(() => {
      subscription.dispose();
      this.open.delete(datasetRoot);
      // A stopped sweep continues when the set is opened again.
      sweep?.abort();
      void controller.dispose();
    });
  }

  /**
   * Cuts every candidate into the dataset's cache in a separate process
   * (cellfinder-retrain cache), so labelling shows each one at once; its
   * progress in a notification, which can stop it.
   */
  private sweepCache(datasetRoot: string): AbortController {
    const abort = new AbortController();
    void vscode.window.withProgress({ location: vscode.ProgressLocation.Notification, title: 'Cellfinder: cutting the candidates for labelling', cancellable: true }, async (progress, token) => {
      token.onCancellationRequested(() => abort.abort());
      try {
        await runCliJson(cliLocation(this.context), ['cache', datasetRoot], { onStderrLine: (line) => progress.report({ message: line }), signal: abort.signal });
      } catch (error) {
        // Stopped on purpose: the next opening continues it. Otherwise labelling goes on from the planes.
        if (!abort.signal.aborted) this.log.appendLine(`labelling: the candidate cache sweep failed (${(error as Error).message}); candidates are read from the planes`);
      }
    });
    return abort;
  }

  /**
   * Out of a large detection, chooses the candidates worth an expert's time
   * (cellfinder-retrain choose, in a separate process: a million-point XML
   * takes seconds to read), then labels them.
   */
  async chooseCandidates(): Promise<void> {
    requireTrust('Choosing candidates');
    const points = await pickFile('Detected candidates to choose from (Cell Counter XML)', { 'Cell Counter XML': ['xml'] });
    if (!points) return;
    const spread = { label: 'Spread evenly over the volume', detail: 'Without a model: a seeded sample of the whole brain' };
    const uncertain = { label: 'Most uncertain first, by a model\'s predictions', detail: 'Half predicted cells, half predicted non-cells, from a classify run\'s classified_points.csv' };
    const how = await vscode.window.showQuickPick([spread, uncertain], { title: 'Which candidates to label?' });
    if (!how) return;
    const probabilities = how === uncertain ? await pickFile('The classify run\'s probabilities (classified_points.csv)', { 'classified_points.csv': ['csv'] }) : undefined;
    if (how === uncertain && !probabilities) return;
    const count = await vscode.window.showInputBox({
      title: 'How many candidates to label?',
      prompt: 'The retraining guide: 1,000-5,000 per round, in several sittings',
      value: String(DEFAULT_CHOSEN),
      validateInput: (value) => (/^[1-9]\d*$/.test(value.trim()) ? undefined : 'A positive whole number'),
    });
    if (!count) return;
    const volumes = await askForVolumes();
    if (!volumes) return;
    const chosenFile = path.join(path.dirname(points), `${path.basename(points, '.xml')}-chosen-${count.trim()}.xml`);
    const args = ['choose', '--points', points, '-n', count.trim(), '--signal', volumes.signal, '-o', chosenFile];
    if (probabilities) args.push('--probabilities', probabilities);
    if (volumes.voxelSizes) args.push('--voxel-sizes', ...volumes.voxelSizes.map(String));
    const chosen = await vscode.window.withProgress({ location: vscode.ProgressLocation.Notification, title: 'Cellfinder: choosing candidates' }, () =>
      runCliJson<{ xmlFile: string; probabilitiesFile?: string; chosen: number; of: number }>(cliLocation(this.context), args),
    );
    this.log.appendLine(`choose: ${chosen.chosen} of ${chosen.of} candidates -> ${chosen.xmlFile}`);
    const root = await pickDatasetFolder(`Label the ${chosen.chosen} chosen candidates into which training dataset?`, this.index.datasetRoots(), 'training-data');
    if (root) await this.show(root, { points: chosen.xmlFile, ...volumes, predictions: chosen.probabilitiesFile });
  }

  /** Runs a model the user picks on the candidates and returns the probabilities file. */
  private async predict(set: CandidateSet, datasetRoot: string): Promise<string | undefined> {
    const models = this.index.models().flatMap((item) => (item.kind === 'model' ? [{ label: path.basename(item.file), description: vscode.workspace.asRelativePath(item.file), file: item.file }] : []));
    const browse = { label: '$(folder-opened) Browse…', description: '', file: '' };
    const picked = await vscode.window.showQuickPick([...models, browse], { title: 'Model to predict the candidates with' });
    if (!picked) return undefined;
    const model = picked.file || (await pickFile('Model file', { 'Keras model or weights': ['keras', 'h5'] }));
    if (!model) return undefined;
    const outputDir = path.join(datasetRoot, 'predictions', path.basename(model).replace(/\.(weights\.h5|keras|h5)$/, ''));
    // The cubes the cache sweep cut are read from the cache, not cut again.
    const { args, note } = await classifyArgs({ model, ...set, outputDir, cacheOf: datasetRoot });
    const report = await vscode.window.withProgress({ location: vscode.ProgressLocation.Notification, title: `Cellfinder: predicting with ${path.basename(model)}${note ? `, ${note}` : ''}`, cancellable: true }, (progress, token) => {
      const abort = new AbortController();
      token.onCancellationRequested(() => abort.abort());
      return runCliJson<{ probabilitiesFile: string }>(cliLocation(this.context), args, { onStderrLine: (line) => progress.report({ message: line }), signal: abort.signal });
    });
    return report.probabilitiesFile;
  }
}

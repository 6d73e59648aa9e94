/**
 * Training in the editor: the "Retrain Network" flow (quick picks prefilled
 * from settings and the last run), the worker started detached so a run
 * survives a window reload, one training panel per run, a status-bar item
 * while a run is going, and a notification offering the next step when it
 * ends.
 */
import { existsSync, promises as fs } from 'node:fs';
import * as path from 'node:path';
import * as vscode from 'vscode';
import { cancelRunOrJob, describeJob, summarizeRunWithJob } from '../cluster/clusterRuns';
import { readJobRecords } from '../cluster/slurm';
import { classifyArgs, runCliJson, slurmArgs } from '../controllers/cliProcess';
import { TrainingController } from '../controllers/trainingController';
import { EVENTS_FILE } from '../core/runFiles';
import { listFetchedModels } from '../sharing/fetchedModels';
import { hubModelFolder, type CellfinderModelName } from '../sharing/modelFetch';
import type { Evaluation } from '../training/inference';
import type { NetworkDepth } from '../training/resnet';
import { RunFollower, startWorker, summarizeRun, type RunRecord } from '../training/runs';
import { runConfigOf, TRAIN_CONFIG_FILE, TRAIN_DEFAULTS, type TrainConfig } from '../training/trainConfig';
import { pretrainedWeightsPath } from '../training/trainer';
import { TRAINING_BODY } from '../webview/training/body';
import type { TrainingToHost } from '../webview/protocol';
import { askVoxelSizes, pickFile, pickVolume } from './pickers';
import { cliLocation, nodePath, requireTrust, setting, trainingDevice, workerScript } from './settings';
import type { WorkspaceIndex } from './sidebar';
import { submitClassifyJob } from './classifyJobs';
import { askWhereToRun } from './slurmForm';
import { loadPage } from './webviewPanel';

export const TRAINING_VIEW_TYPE = 'cellfinder.training';
const LAST_RUN_KEY = 'cellfinder.lastTrainConfig';
const DEPTHS: NetworkDepth[] = [18, 34, 50, 101, 152];
const CELLFINDER_NETWORK_LABELS: Record<CellfinderModelName, string> = { resnet50_tv: 'cellfinder\'s pre-trained network', resnet50_1ch: 'cellfinder\'s signal-only network' };

export class Training {
  private readonly panels = new Map<string, vscode.WebviewPanel>();
  private readonly statusBar = vscode.window.createStatusBarItem(vscode.StatusBarAlignment.Left, 20);
  private followed: RunFollower | undefined;
  private followedEvents: RunRecord['events'] = [];
  /** Jobs submitted from this window, until the Runs view has asked SLURM about them (a queued job writes nothing yet). */
  private readonly submittedJobs = new Map<string, string>();

  constructor(
    private readonly context: vscode.ExtensionContext,
    private readonly index: WorkspaceIndex,
  ) {
    this.statusBar.command = 'cellfinder.openRun';
    context.subscriptions.push(
      this.statusBar,
      { dispose: () => this.followed?.close() },
      vscode.window.registerWebviewPanelSerializer(TRAINING_VIEW_TYPE, {
        deserializeWebviewPanel: async (panel, state: { outputDir?: string } | undefined) => {
          if (!state?.outputDir || !existsSync(state.outputDir)) {
            panel.dispose();
            return;
          }
          this.show(state.outputDir, panel);
        },
      }),
    );
    // A run still going from before a window reload gets its status-bar item back.
    index.onDidChange(() => {
      const running = index.runItems().find((item) => item.kind === 'run' && item.run.status === 'running');
      if (running?.kind === 'run' && this.followed?.outputDir !== running.run.outputDir) this.follow(running.run.outputDir);
      // A SLURM job's state changes without a new event (queued, started, gone): the Runs view has just asked.
      else if (this.followed) this.showProgress(this.summarize(this.followed.outputDir, this.followedEvents));
    });
  }

  /** "Cellfinder: Retrain Network": asks for the run's settings, starts it and opens its panel. */
  async retrain(preselectedDataset?: string): Promise<void> {
    requireTrust('Training');
    const last = this.context.workspaceState.get<Partial<TrainConfig>>(LAST_RUN_KEY) ?? {};
    const yamlFiles = await this.pickDatasets(preselectedDataset, last.yamlFiles);
    if (!yamlFiles?.length) return;
    const start = await this.pickStart(last);
    if (!start) return;
    const depth = start.depth ?? (await this.pickDepth(last.networkDepth ?? setting<NetworkDepth>('training.networkDepth', TRAIN_DEFAULTS.networkDepth)));
    if (!depth) return;
    const epochs = await askNumber('Epochs', last.epochs ?? setting('training.epochs', TRAIN_DEFAULTS.epochs), (n) => Number.isInteger(n) && n > 0);
    if (epochs === undefined) return;
    const batchSize = await askNumber('Batch size', last.batchSize ?? setting('training.batchSize', TRAIN_DEFAULTS.batchSize), (n) => Number.isInteger(n) && n > 0);
    if (batchSize === undefined) return;
    const fromFile = Boolean(start.trainedModel || start.modelWeights);
    const optimizer = fromFile
      ? await vscode.window.showQuickPick(
          [
            { label: 'Continue its optimiser', description: 'Adam\'s steps and learning rate saved in the file, as cellfinder continues (a fresh Adam when the file has none)', fresh: false },
            { label: 'Fresh optimiser', description: 'Adam from step 0 at the learning rate you give next (--fresh-optimizer)', fresh: true },
          ],
          { title: 'Optimiser' },
        )
      : { fresh: true };
    if (!optimizer) return;
    const rateTitle = optimizer.fresh ? 'Learning rate' : 'Learning rate (used only when the file holds no optimiser state)';
    const learningRate = await askNumber(rateTitle, last.learningRate ?? setting('training.learningRate', TRAIN_DEFAULTS.learningRate), (n) => n > 0);
    if (learningRate === undefined) return;
    const augment = await vscode.window.showQuickPick(
      [
        { label: 'Augment', description: 'flips, rotations, translation, scaling (cellfinder\'s default)', value: true },
        { label: 'No augmentation', description: '--no-augment', value: false },
      ],
      { title: 'Augmentation' },
    );
    if (!augment) return;
    const stamp = new Date().toISOString().replace(/[-:]/g, '').replace('T', '-').slice(0, 15);
    const defaultOutput = path.join(path.dirname(path.dirname(yamlFiles[0])), 'runs', `run-${stamp}`);
    const outputDir = await vscode.window.showInputBox({ title: 'Output folder for the run', value: defaultOutput, validateInput: (v) => (existsSync(path.join(v, EVENTS_FILE)) ? 'A run already wrote there: choose a new folder' : undefined) });
    if (!outputDir) return;
    const slurm = await askWhereToRun(this.context, 'Where to train');
    if (slurm === null) return;

    const config: TrainConfig = {
      ...TRAIN_DEFAULTS,
      yamlFiles,
      outputDir,
      networkDepth: depth,
      epochs,
      batchSize,
      learningRate,
      augment: augment.value,
      testFraction: setting('training.testFraction', TRAIN_DEFAULTS.testFraction),
      trainedModel: start.trainedModel,
      modelWeights: start.modelWeights,
      continueTraining: fromFile,
      freshOptimizer: fromFile && optimizer.fresh,
      saveProgress: true,
      keepCheckpoints: setting('training.keepCheckpoints', 0) || undefined,
    };
    await this.context.workspaceState.update(LAST_RUN_KEY, { yamlFiles, networkDepth: depth, epochs, batchSize, learningRate });
    await fs.mkdir(outputDir, { recursive: true });
    const configFile = path.join(outputDir, TRAIN_CONFIG_FILE);
    await fs.writeFile(configFile, `${JSON.stringify(config, null, 2)}\n`);
    if (slurm) await this.submit(outputDir, ['train', '--config', configFile, ...slurmArgs(slurm)]);
    else await startWorker({ nodePath: nodePath(), workerScript: workerScript(this.context), mode: 'train', target: configFile, outputDir, device: trainingDevice() });
    this.show(outputDir);
    this.follow(outputDir);
    this.index.refreshSoon();
  }

  /**
   * Submits the run as a SLURM job through the CLI (`train ... --slurm`), as
   * a user would from a terminal in the run folder: the job starts in the
   * folder it was submitted from, and the run folder is one the nodes see
   * (they write the run's events there).
   */
  private async submit(outputDir: string, args: string[]): Promise<void> {
    const { jobId } = await runCliJson<{ jobId: string }>(cliLocation(this.context), args, { cwd: outputDir });
    this.submittedJobs.set(outputDir, jobId);
    void vscode.window.showInformationMessage(`Cellfinder: submitted SLURM job ${jobId} for ${path.basename(outputDir)}; its panel follows it`);
  }

  async resume(outputDir: string): Promise<void> {
    requireTrust('Training');
    // A SLURM run is resubmitted, asking for what its last job asked for.
    if ((await readJobRecords(outputDir)).length) await this.submit(outputDir, ['train', '--resume', outputDir, '--slurm']);
    else await startWorker({ nodePath: nodePath(), workerScript: workerScript(this.context), mode: 'resume', target: outputDir, outputDir, device: trainingDevice() });
    this.follow(outputDir);
    this.index.refreshSoon();
  }

  /** Opens (or reveals) the training panel of the run in `outputDir`. */
  show(outputDir: string, restored?: vscode.WebviewPanel): void {
    const existing = this.panels.get(outputDir);
    if (existing && !restored) {
      existing.reveal();
      return;
    }
    const panel = restored ?? vscode.window.createWebviewPanel(TRAINING_VIEW_TYPE, `Training: ${path.basename(outputDir)}`, vscode.ViewColumn.Active);
    panel.iconPath = vscode.Uri.joinPath(this.context.extensionUri, 'media', 'cellfinder.svg');
    const controller = new TrainingController(outputDir, (message) => void panel.webview.postMessage(message), {
      resume: (run) => this.resume(run.outputDir),
      classify: (run) => this.classifyWith(run.modelFile),
      evaluate: (run) => this.evaluate(run),
      revealOutput: (run) => void vscode.commands.executeCommand('revealFileInOS', vscode.Uri.file(run.outputDir)),
      onStatus: () => this.index.refreshSoon(),
    });
    loadPage(panel.webview, this.context.extensionUri, 'training', TRAINING_BODY);
    const subscription = panel.webview.onDidReceiveMessage((message: TrainingToHost) => controller.handle(message));
    this.panels.set(outputDir, panel);
    panel.onDidDispose(() => {
      subscription.dispose();
      controller.dispose();
      this.panels.delete(outputDir);
    });
  }

  /** Cancels a running run (its process or its SLURM job stops after the current batch with a checkpoint). */
  async cancel(outputDir: string): Promise<void> {
    void vscode.window.showInformationMessage(`Cellfinder: ${await cancelRunOrJob(outputDir)}`);
    this.index.refreshSoon();
  }

  /**
   * The run's status: a SLURM run's by its job as the Runs view last asked;
   * a job submitted from here that the Runs view has not asked about yet (a
   * new run, or a Resume while the view still knows the job before) counts
   * as queued.
   */
  private summarize(outputDir: string, events: RunRecord['events']): RunRecord {
    const listing = this.index.runWithJob(outputDir);
    const submitted = this.submittedJobs.get(outputDir);
    if (submitted !== undefined && listing?.job?.jobId !== submitted) return summarizeRunWithJob(outputDir, events, { jobId: submitted, state: 'PENDING' });
    return listing?.job ? summarizeRunWithJob(outputDir, events, listing.jobState) : summarizeRun(outputDir, events);
  }

  /** Shows the run's progress in the status bar until it ends, then offers the next step. */
  private follow(outputDir: string): void {
    this.followed?.close();
    const events: RunRecord['events'] = [];
    this.followedEvents = events;
    const follower = new RunFollower(outputDir, (more) => {
      // The follower already holds every event: no need to read the whole log again per batch.
      events.push(...more);
      this.showProgress(this.summarize(outputDir, events));
    });
    this.followed = follower;
    // A queued job has no events yet: its state shows at once.
    void follower.start().then(() => this.followed === follower && this.showProgress(this.summarize(outputDir, events)));
  }

  private showProgress(run: RunRecord): void {
    const name = path.basename(run.outputDir);
    if (run.status === 'running') {
      const batch = [...run.events].reverse().find((e) => e.type === 'batch');
      const started = run.events.find((e) => e.type === 'started');
      const epochs = started?.type === 'started' ? started.epochs : undefined;
      const listing = this.index.runWithJob(run.outputDir);
      const submitted = this.submittedJobs.get(run.outputDir);
      const waiting = submitted !== undefined && listing?.job?.jobId !== submitted ? `SLURM job ${submitted} submitted` : ((listing && describeJob(listing)) ?? 'starting training…');
      this.statusBar.text = batch?.type === 'batch' ? `$(sync~spin) Cellfinder: epoch ${batch.epoch + 1}/${epochs ?? '?'} · ${Math.round((100 * batch.batch) / batch.batches)}%` : `$(sync~spin) Cellfinder: ${waiting}`;
      this.statusBar.tooltip = `Training ${name}: click to open its panel`;
      this.statusBar.command = { command: 'cellfinder.openRun', title: 'Open', arguments: [{ kind: 'run', run }] };
      this.statusBar.show();
      return;
    }
    this.statusBar.hide();
    this.followed?.close();
    this.followed = undefined;
    this.index.refreshSoon();
    if (run.status === 'finished') void this.offerNextStep(run);
    else if (run.status === 'failed') {
      const error = [...run.events].reverse().find((e) => e.type === 'error');
      void vscode.window.showErrorMessage(`Cellfinder: training ${name} failed: ${error?.type === 'error' ? error.message : 'see its panel'}`, 'Open Panel').then((choice) => choice && this.show(run.outputDir));
    }
  }

  private async offerNextStep(run: RunRecord): Promise<void> {
    const choice = await vscode.window.showInformationMessage(`Cellfinder: training ${path.basename(run.outputDir)} finished: ${run.modelFile}`, 'Classify with new model', 'Evaluate', 'Open Panel');
    if (choice === 'Classify with new model') await this.classifyWith(run.modelFile);
    else if (choice === 'Evaluate' || choice === 'Open Panel') this.show(run.outputDir);
  }

  /** Classifies candidates with a model in a separate process, writing cellfinder's classified XML and the probabilities. */
  async classifyWith(model: string | undefined): Promise<void> {
    requireTrust('Classifying');
    const file = model ?? (await pickFile('Model to classify with', { 'Keras model or weights': ['keras', 'h5'] }));
    if (!file) return;
    const points = await pickFile('Candidate points (Cell Counter XML)', { 'Cell Counter XML': ['xml'] });
    if (!points) return;
    const signal = await pickVolume('Signal channel');
    if (!signal) return;
    const background = await pickVolume('Background channel (cancel for signal-only)');
    const voxelSizes = await askVoxelSizes();
    if (voxelSizes === undefined) return;
    const outputDir = path.join(path.dirname(points), `classified-${path.basename(file).replace(/\.(weights\.h5|keras|h5)$/, '')}`);
    const { args, note } = await classifyArgs({ model: file, points, signal, background, voxelSizes, outputDir });
    const slurm = await askWhereToRun(this.context, 'Where to classify');
    if (slurm === null) return;
    if (slurm) {
      await submitClassifyJob(this.context, [...args, ...slurmArgs(slurm)], outputDir, `Cellfinder: classifying ${path.basename(points)} on SLURM`);
      return;
    }
    const report = await vscode.window.withProgress({ location: vscode.ProgressLocation.Notification, title: `Cellfinder: classifying candidates${note ? `, ${note}` : ''}`, cancellable: true }, (progress, token) => {
      const abort = new AbortController();
      token.onCancellationRequested(() => abort.abort());
      return runCliJson<{ xmlFile: string; cells: number; nonCells: number }>(cliLocation(this.context), args, { onStderrLine: (line) => progress.report({ message: line }), signal: abort.signal });
    });
    const choice = await vscode.window.showInformationMessage(`Cellfinder: ${report.cells} cells, ${report.nonCells} non-cells → ${report.xmlFile}`, 'Label these candidates');
    if (choice) await vscode.commands.executeCommand('cellfinder.labelCandidates');
  }

  /** Evaluates the run's model on its training data, optionally beside another model. */
  private async evaluate(run: RunRecord): Promise<Evaluation[] | undefined> {
    if (!run.modelFile) throw new Error('the run has not written a model yet');
    const config = (run.modelFile && (await runConfigOf(run.modelFile))) || {};
    const yamlFiles = config.yamlFiles?.length ? config.yamlFiles : [await pickFile('Labelled training.yaml to evaluate on', { 'training.yaml': ['yaml', 'yml'] })].filter((f): f is string => Boolean(f));
    if (!yamlFiles.length) return undefined;
    const others = this.index.models().flatMap((item) => (item.kind === 'model' && item.file !== run.modelFile ? [{ label: path.basename(item.file), description: vscode.workspace.asRelativePath(item.file), file: item.file }] : []));
    const compare = others.length ? await vscode.window.showQuickPick([{ label: 'This model only', description: '', file: '' }, ...others], { title: 'Compare with another model?' }) : undefined;
    const args = ['evaluate', '--trained-model', run.modelFile, '-y', ...yamlFiles];
    // Evaluated on its cubes as it was trained on them.
    if (config.normalizeChannels) args.push('--normalize-channels');
    if (compare?.file) args.push('--compare', compare.file);
    return runCliJson<Evaluation[]>(cliLocation(this.context), args);
  }

  private async pickDatasets(preselected: string | undefined, lastYamls: string[] | undefined): Promise<string[] | undefined> {
    const datasets = this.index.datasets().flatMap((item) => (item.kind === 'dataset' && item.dataset.yamlFile ? [item] : []));
    if (!datasets.length) {
      const file = await pickFile('training.yaml to train on', { 'training.yaml': ['yaml', 'yml'] });
      return file ? [file] : undefined;
    }
    // Pre-ticked, so Enter alone trains on the dataset the user came from, or the last run's, or the first readable one.
    const readable = datasets.filter((item) => item.kind === 'dataset' && !item.error);
    const lastPicked = (lastYamls ?? []).filter((file) => readable.some((item) => item.kind === 'dataset' && item.dataset.yamlFile === file));
    const picked = await vscode.window.showQuickPick(
      datasets.map((item) => {
        const dataset = item.kind === 'dataset' ? item : undefined;
        const yamlFile = dataset?.dataset.yamlFile as string;
        const defaultPick = preselected ? path.dirname(yamlFile) === preselected : lastPicked.length ? lastPicked.includes(yamlFile) : readable[0] === item;
        return {
          label: path.basename(path.dirname(yamlFile)),
          description: dataset?.error ? `$(warning) ${dataset.error}` : `${dataset?.cells} cells · ${dataset?.nonCells} non-cells`,
          detail: yamlFile,
          picked: defaultPick && !dataset?.error,
          yamlFile,
        };
      }),
      { title: 'Train on which datasets? (Space ticks; pooled, as cellfinder_train -y a.yaml b.yaml)', canPickMany: true },
    );
    if (picked && picked.length === 0) throw new Error('no dataset ticked: tick one or more with Space (or the mouse), then press Enter');
    return picked?.map((p) => p.yamlFile);
  }

  private async pickStart(last: Partial<TrainConfig>): Promise<{ trainedModel?: string; modelWeights?: string; depth?: NetworkDepth } | undefined> {
    const pretrained = pretrainedWeightsPath();
    type Choice = vscode.QuickPickItem & { start: { trainedModel?: string; modelWeights?: string; depth?: NetworkDepth } | 'browse' };
    const items: Choice[] = [];
    // What `model fetch` brought in (cellfinder's networks, hf:// repositories), each with the depth its file says.
    for (const fetched of await listFetchedModels()) {
      if ('error' in fetched.description) continue;
      const { depth, channels } = fetched.description;
      const label = fetched.origin === 'hub' ? `hf://${fetched.repo}` : CELLFINDER_NETWORK_LABELS[fetched.name];
      const within = fetched.origin === 'hub' ? path.relative(hubModelFolder(fetched.repo), fetched.file) : path.basename(fetched.file);
      const start = fetched.file.endsWith('.keras') ? { trainedModel: fetched.file } : { modelWeights: fetched.file };
      items.push({ label: `$(cloud-download) ${label}`, description: `ResNet-${depth}, ${channels} ch · ${within}`, detail: fetched.origin === 'hub' ? fetched.file : undefined, start: { ...start, depth } });
    }
    for (const item of this.index.models()) {
      if (item.kind !== 'model') continue;
      items.push({ label: path.basename(item.file), description: vscode.workspace.asRelativePath(item.file), start: item.file.endsWith('.keras') ? { trainedModel: item.file } : { modelWeights: item.file } });
    }
    items.push({ label: 'From scratch', description: 'random initial weights', start: {} });
    items.push({ label: '$(folder-opened) Browse for a model…', start: 'browse' });
    const lastStart = last.trainedModel ?? last.modelWeights;
    const picked = await vscode.window.showQuickPick(items, {
      title: existsSync(pretrained) ? 'Start from' : `Start from (cellfinder's pre-trained network is not at ${pretrained}: "Cellfinder: Fetch a Model…" brings it)`,
      placeHolder: lastStart ? `last run started from ${path.basename(lastStart)}` : undefined,
    });
    if (!picked) return undefined;
    if (picked.start !== 'browse') return picked.start;
    const file = await pickFile('Model or weights to start from', { 'Keras model or weights': ['keras', 'h5'] });
    return file ? (file.endsWith('.keras') ? { trainedModel: file } : { modelWeights: file }) : undefined;
  }

  private async pickDepth(current: NetworkDepth): Promise<NetworkDepth | undefined> {
    const picked = await vscode.window.showQuickPick(
      DEPTHS.map((depth) => ({ label: `ResNet-${depth}`, description: depth === 50 ? 'cellfinder\'s default' : depth === current ? 'last used' : '', depth })).sort((a, b) => (a.depth === current ? -1 : b.depth === current ? 1 : 0)),
      { title: 'Network depth (a model you start from sets its own)' },
    );
    return picked?.depth;
  }
}

async function askNumber(title: string, value: number, valid: (n: number) => boolean): Promise<number | undefined> {
  const text = await vscode.window.showInputBox({ title, value: String(value), validateInput: (t) => (valid(Number(t)) ? undefined : `${title}: not a valid value`) });
  return text === undefined ? undefined : Number(text);
}

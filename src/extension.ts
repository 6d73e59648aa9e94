/**
 * Extension entry: registers the sidebar, the labelling and training panels
 * and the commands. Thin glue between VS Code and the core: every command
 * asks for its inputs, runs a core job (or a background process) with
 * progress, and reports the result; no domain logic lives here.
 */
import * as path from 'node:path';
import * as vscode from 'vscode';
import { TrainingDataset, validateTrainingYaml } from './core/dataset';
import { mergeTrainingYamls } from './core/merge';
import { DataFileError } from './core/errors';
import { extractToDataset } from './core/extractToDataset';
import { LabellingPanels } from './editor/labellingPanel';
import { ModelSharing } from './editor/models';
import { askVoxelSizes, pickDatasetFolder, pickVolume } from './editor/pickers';
import { applyEngineDirSetting, requireTrust } from './editor/settings';
import { ENGINE_DIR_ENV } from './engine/engineLayout';
import { classifyBrainsOnSlurm } from './editor/classifyJobs';
import { registerSidebar, type SidebarItem, type WorkspaceIndex } from './editor/sidebar';
import { Training } from './editor/training';
import { EngineSetupError, setupEngine } from './engine/engineSetup';

let log: vscode.OutputChannel;

/** What a sidebar command is invoked with: the clicked item, or nothing from the command palette. */
type ItemArgument = SidebarItem | undefined;

export function activate(context: vscode.ExtensionContext): void {
  log = vscode.window.createOutputChannel('Cellfinder');
  const engineDirStartedWith = process.env[ENGINE_DIR_ENV];
  applyEngineDirSetting(engineDirStartedWith);
  context.subscriptions.push(vscode.workspace.onDidChangeConfiguration((change) => change.affectsConfiguration('cellfinder.engineDir') && applyEngineDirSetting(engineDirStartedWith)));
  const index = registerSidebar(context);
  const labelling = new LabellingPanels(context, index, log);
  const training = new Training(context, index);
  const models = new ModelSharing(context, index);
  const command = (id: string, run: (item: ItemArgument) => Promise<void> | void) =>
    vscode.commands.registerCommand(id, (item: ItemArgument) => runReportingErrors(async () => run(item)));
  context.subscriptions.push(
    log,
    command('cellfinder.retrainNetwork', () => training.retrain()),
    command('cellfinder.retrainOnDataset', (item) => training.retrain(datasetOf(item))),
    command('cellfinder.labelCandidates', () => labelling.labelCandidates()),
    command('cellfinder.chooseCandidates', () => labelling.chooseCandidates()),
    command('cellfinder.labelDataset', async (item) => labelling.labelDataset(datasetOf(item) ?? (await pickDatasetFolder('Label into which training dataset?', index.datasetRoots(), 'training-data')) ?? '')),
    command('cellfinder.reviewDataset', (item) => labelling.reviewDataset(datasetOf(item) ?? '')),
    command('cellfinder.addCandidates', (item) => labelling.labelDataset(datasetOf(item) ?? '', true)),
    command('cellfinder.createTrainingDataset', () => createTrainingDataset(index)),
    command('cellfinder.extractCubes', () => extractCubesCommand(index)),
    command('cellfinder.classify', () => training.classifyWith(undefined)),
    command('cellfinder.classifyWithModel', (item) => training.classifyWith(modelOf(item))),
    command('cellfinder.classifyBrainsOnSlurm', (item) => classifyBrainsOnSlurm(context, modelOf(item))),
    command('cellfinder.showModelCard', (item) => models.showCard(modelOf(item))),
    command('cellfinder.writeModelCard', (item) => models.writeCard(modelOf(item))),
    command('cellfinder.exportForHub', (item) => models.exportModel('hub', modelOf(item))),
    command('cellfinder.exportForBioimageio', (item) => models.exportModel('bioimageio', modelOf(item))),
    command('cellfinder.publishToHub', (item) => models.publish(modelOf(item))),
    command('cellfinder.fetchModel', () => models.fetch()),
    command('cellfinder.setUpEngine', setUpEngineCommand),
    command('cellfinder.refresh', () => index.refresh()),
    command('cellfinder.validateDataset', (item) => validateDataset(index, item)),
    command('cellfinder.mergeDatasets', (item) => mergeDatasets(index, item)),
    command('cellfinder.reveal', (item) => {
      const target = item?.kind === 'dataset' ? item.dataset.root : item?.kind === 'model' ? item.file : undefined;
      if (target) void vscode.commands.executeCommand('revealInExplorer', vscode.Uri.file(target));
    }),
    command('cellfinder.openRun', async (item) => {
      const outputDir = item?.kind === 'run' ? item.run.outputDir : await pickRun(index);
      if (outputDir) training.show(outputDir);
    }),
    command('cellfinder.cancelRun', (item) => (item?.kind === 'run' ? training.cancel(item.run.outputDir) : undefined)),
    command('cellfinder.resumeRun', (item) => (item?.kind === 'run' ? training.resume(item.run.outputDir) : undefined)),
  );
}

export function deactivate(): void {}

function datasetOf(item: ItemArgument): string | undefined {
  return item?.kind === 'dataset' ? item.dataset.root : undefined;
}

function modelOf(item: ItemArgument): string | undefined {
  return item?.kind === 'model' ? item.file : undefined;
}

async function pickRun(index: WorkspaceIndex): Promise<string | undefined> {
  const runs = index.runItems().flatMap((item) => (item.kind === 'run' ? [{ label: path.basename(item.run.outputDir), description: item.run.status, detail: item.run.outputDir }] : []));
  if (!runs.length) throw new Error('no training runs in this workspace yet: use "Retrain Network"');
  return (await vscode.window.showQuickPick(runs, { title: 'Training run' }))?.detail;
}

/** Checks every cube the way cellfinder_train will need it; problems appear under the dataset in the sidebar. */
async function validateDataset(index: WorkspaceIndex, item: ItemArgument): Promise<void> {
  if (item?.kind !== 'dataset' || !item.dataset.yamlFile) return;
  const yamlFile = item.dataset.yamlFile;
  const result = await vscode.window.withProgress({ location: vscode.ProgressLocation.Notification, title: `Cellfinder: validating ${path.basename(item.dataset.root)}` }, () => validateTrainingYaml(yamlFile));
  index.validation.set(item.dataset.root, [...result.problems, ...result.warnings]);
  for (const p of [...result.problems, ...result.warnings]) log.appendLine(`validate: ${p.file}: ${p.problem}. ${p.fix}`);
  index.refreshSoon();
  const counts = `${result.summary.cells} cells, ${result.summary.nonCells} non-cells`;
  if (result.problems.length) void vscode.window.showWarningMessage(`Cellfinder: ${result.problems.length} problem(s) in ${yamlFile} (${counts}); listed under the dataset and in the Cellfinder output.`);
  else void vscode.window.showInformationMessage(`Cellfinder: ${yamlFile} is valid: ${counts}${result.warnings.length ? `, ${result.warnings.length} warning(s)` : ''}.`);
}

/** Pools this dataset with others into a new one, de-duplicating by source volume and position. */
async function mergeDatasets(index: WorkspaceIndex, item: ItemArgument): Promise<void> {
  if (item?.kind !== 'dataset' || !item.dataset.yamlFile) return;
  const others = await vscode.window.showOpenDialog({ title: 'training.yaml files to merge with this one', canSelectMany: true, filters: { 'training.yaml': ['yaml', 'yml'] } });
  if (!others?.length) return;
  const outputDir = await pickDatasetFolder('Empty folder for the merged dataset', [], 'merged-training-data');
  if (!outputDir) return;
  const report = await mergeTrainingYamls([item.dataset.yamlFile, ...others.map((u) => u.fsPath)], outputDir);
  index.refreshSoon();
  for (const c of report.conflicts) log.appendLine(`merge conflict at x=${c.position.x} y=${c.position.y} z=${c.position.z}: kept ${c.kept.label} (${c.kept.yamlFile}), dropped ${c.dropped.label} (${c.dropped.yamlFile})`);
  void vscode.window.showInformationMessage(`Cellfinder: merged ${report.copied} cubes into ${report.yamlFile} (${report.duplicates} duplicates, ${report.conflicts.length} conflicts listed in the Cellfinder output).`);
}

async function runReportingErrors(command: () => Promise<void>): Promise<void> {
  try {
    await command();
  } catch (error) {
    if (error instanceof vscode.CancellationError) return;
    const message = error instanceof DataFileError ? error.message : `Cellfinder: ${(error as Error).message ?? String(error)}`;
    void vscode.window.showErrorMessage(message);
  }
}

async function createTrainingDataset(index: WorkspaceIndex): Promise<void> {
  requireTrust('Creating a dataset');
  const folder = await pickDatasetFolder('Folder for the new training dataset', [], 'training-data');
  if (!folder) return;
  const dataset = await vscode.window.withProgress(
    { location: vscode.ProgressLocation.Notification, title: 'Cellfinder: creating training dataset', cancellable: false },
    () => TrainingDataset.create(folder),
  );
  index.refreshSoon();
  void vscode.window.showInformationMessage(`Cellfinder: training dataset ready in ${dataset.root}`);
  await vscode.window.showTextDocument(vscode.Uri.file(dataset.yamlFile), { preview: true });
}

async function extractCubesCommand(index: WorkspaceIndex): Promise<void> {
  requireTrust('Extracting cubes');
  const signal = await pickVolume('Signal channel: folder of z-planes or multi-page TIFF');
  if (!signal) return;
  const background = await pickVolume('Background channel (cancel for a signal-only dataset)');
  const points = await vscode.window.showOpenDialog({ title: 'Candidate points (Cell Counter XML)', canSelectMany: false, filters: { 'Cell Counter XML': ['xml'] } });
  if (!points?.[0]) return;
  const voxelSizes = await askVoxelSizes();
  if (voxelSizes === undefined) return;
  const outputDir = await pickDatasetFolder('Save the cubes into which training dataset?', index.datasetRoots(), 'training-data');
  if (!outputDir) return;

  const report = await vscode.window.withProgress(
    { location: vscode.ProgressLocation.Notification, title: 'Cellfinder: extracting cubes', cancellable: true },
    async (progress, token) => {
      const abort = new AbortController();
      token.onCancellationRequested(() => abort.abort());
      let reported = 0;
      return extractToDataset({
        signal,
        background,
        points: points[0].fsPath,
        outputDir,
        voxelSizes: voxelSizes ?? undefined,
        abortSignal: abort.signal,
        onProgress: (done, total) => {
          const percent = total === 0 ? 100 : (100 * done) / total;
          progress.report({ increment: percent - reported, message: `${done}/${total} cubes` });
          reported = percent;
          // The tree counts the cubes as they land; told directly, not left to the file
          // watcher, which VS Code may not have (inotify limits on shared machines).
          index.refreshSoon();
        },
      });
    },
  );
  index.refreshSoon();
  for (const warning of report.warnings) log.appendLine(`warning: ${warning}`);
  for (const s of report.skipped) log.appendLine(`skipped x=${s.point.x} y=${s.point.y} z=${s.point.z}: ${s.reason}`);
  const skipped = report.skipped.length ? `, ${report.skipped.length} skipped near the edge (listed in the Cellfinder output)` : '';
  const choice = await vscode.window.showInformationMessage(
    `Cellfinder: ${report.added} cube(s) added to ${path.basename(path.dirname(report.yamlFile))} (${report.cells} cells, ${report.nonCells} non-cells)${skipped}.`,
    'Open training.yaml',
  );
  if (choice) await vscode.window.showTextDocument(vscode.Uri.file(report.yamlFile));
}

/**
 * Builds the native TensorFlow engine, for the CPU or for an NVIDIA GPU
 * (downloads TensorFlow's wheel, and for the GPU the CUDA libraries, from
 * PyPI once, or uses what the user has). It is loaded only by the training
 * worker process, never in the extension host.
 */
async function setUpEngineCommand(): Promise<void> {
  requireTrust('Setting up the engine');
  const pick = await vscode.window.showQuickPick(
    [
      { label: 'CPU engine', description: "TensorFlow's C library (270 MB download, about 20 s)", variant: 'cpu' as const },
      { label: 'GPU engine (NVIDIA, CUDA 12)', description: "TensorFlow's CUDA build (570 MB) and, unless found on this machine, the CUDA libraries (1.5 GB)", variant: 'gpu' as const },
    ],
    { title: 'Cellfinder: which training engine?' },
  );
  if (!pick) return;
  const result = await vscode.window.withProgress(
    { location: vscode.ProgressLocation.Notification, title: `Cellfinder: setting up the ${pick.variant === 'gpu' ? 'GPU' : 'native'} training engine`, cancellable: true },
    async (progress, token) => {
      const abort = new AbortController();
      token.onCancellationRequested(() => abort.abort());
      try {
        return await setupEngine({
          variant: pick.variant,
          signal: abort.signal,
          onProgress: (step) => {
            log.appendLine(step.message);
            progress.report({ message: step.message });
          },
        });
      } catch (error) {
        if (error instanceof EngineSetupError && error.logFile) log.appendLine(`log: ${error.logFile}`);
        throw error;
      }
    },
  );
  const gpu = result.gpu;
  void vscode.window.showInformationMessage(
    pick.variant === 'cpu'
      ? `Cellfinder: native engine ready (${result.engineDir}). Training now runs on TensorFlow's C library.`
      : gpu?.usingGpu
        ? `Cellfinder: GPU engine ready (${result.engineDir}). Training now runs on ${gpu.devices.map((d) => d.name).join(', ')}.`
        : `Cellfinder: GPU engine built (${result.engineDir}), but TensorFlow finds no usable GPU here: ${gpu?.reason ?? 'see the Cellfinder output'}.`,
  );
}

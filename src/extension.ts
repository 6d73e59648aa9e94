/**
 * Extension entry: thin glue between VS Code and the core. Every command asks
 * for its inputs, runs a core job under a cancellable progress notification,
 * and reports the result; no domain logic lives here.
 */
import * as path from 'node:path';
import * as vscode from 'vscode';
import { TrainingDataset } from './core/dataset';
import { DataFileError } from './core/errors';
import { extractToDataset } from './core/extractToDataset';
import type { VoxelSizes } from './core/extraction';
import { EngineSetupError, setupEngine } from './training/native/engineSetup';

let log: vscode.OutputChannel;

export function activate(context: vscode.ExtensionContext): void {
  log = vscode.window.createOutputChannel('Cellfinder');
  context.subscriptions.push(
    log,
    vscode.commands.registerCommand('cellfinder.createTrainingDataset', () => runReportingErrors(createTrainingDataset)),
    vscode.commands.registerCommand('cellfinder.extractCubes', () => runReportingErrors(extractCubesCommand)),
    vscode.commands.registerCommand('cellfinder.setUpEngine', () => runReportingErrors(setUpEngineCommand)),
  );
}

export function deactivate(): void {}

async function runReportingErrors(command: () => Promise<void>): Promise<void> {
  try {
    await command();
  } catch (error) {
    if (error instanceof vscode.CancellationError) return;
    const message = error instanceof DataFileError ? error.message : `Cellfinder: ${(error as Error).message ?? String(error)}`;
    void vscode.window.showErrorMessage(message);
  }
}

async function pickFolder(title: string): Promise<string | undefined> {
  const picked = await vscode.window.showOpenDialog({ title, canSelectFolders: true, canSelectFiles: false, canSelectMany: false, defaultUri: vscode.workspace.workspaceFolders?.[0]?.uri });
  return picked?.[0]?.fsPath;
}

async function pickVolume(title: string): Promise<string | undefined> {
  const picked = await vscode.window.showOpenDialog({
    title,
    canSelectFolders: true,
    canSelectFiles: true,
    canSelectMany: false,
    filters: { 'TIFF stack or plane list': ['tif', 'tiff', 'txt'] },
    defaultUri: vscode.workspace.workspaceFolders?.[0]?.uri,
  });
  return picked?.[0]?.fsPath;
}

async function createTrainingDataset(): Promise<void> {
  const folder = await pickFolder('Folder for the new training dataset');
  if (!folder) return;
  const dataset = await vscode.window.withProgress(
    { location: vscode.ProgressLocation.Notification, title: 'Cellfinder: creating training dataset', cancellable: false },
    () => TrainingDataset.create(folder),
  );
  void vscode.window.showInformationMessage(`Cellfinder: training dataset ready in ${dataset.root}`);
  await vscode.window.showTextDocument(vscode.Uri.file(dataset.yamlFile), { preview: true });
}

function parseVoxelSizes(text: string): VoxelSizes | undefined {
  const sizes = text.trim().split(/[\s,]+/).map(Number);
  return sizes.length === 3 && sizes.every((s) => Number.isFinite(s) && s > 0) ? (sizes as unknown as VoxelSizes) : undefined;
}

async function extractCubesCommand(): Promise<void> {
  const signal = await pickVolume('Signal channel: folder of z-planes or multi-page TIFF');
  if (!signal) return;
  const background = await pickVolume('Background channel (cancel for a signal-only dataset)');
  const points = await vscode.window.showOpenDialog({ title: 'Candidate points (Cell Counter XML)', canSelectMany: false, filters: { 'Cell Counter XML': ['xml'] } });
  if (!points?.[0]) return;
  const voxelText = await vscode.window.showInputBox({
    title: 'Data voxel sizes in µm (z y x)',
    prompt: 'The network works at 5, 1, 1 µm; cubes are rescaled from these sizes. Leave empty if your data is already at 5 1 1.',
    placeHolder: '5 2 2',
    validateInput: (text) => (text.trim() === '' || parseVoxelSizes(text) ? undefined : 'Three positive numbers: z y x'),
  });
  if (voxelText === undefined) return;
  const outputDir = await pickFolder('Output folder for the training dataset');
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
        voxelSizes: voxelText.trim() === '' ? undefined : parseVoxelSizes(voxelText),
        abortSignal: abort.signal,
        onProgress: (done, total) => {
          const percent = total === 0 ? 100 : (100 * done) / total;
          progress.report({ increment: percent - reported, message: `${done}/${total} cubes` });
          reported = percent;
        },
      });
    },
  );
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
 * Builds the native TensorFlow engine (downloads TensorFlow's wheel from PyPI
 * once, or uses a wheel or Python TensorFlow the user has). It is loaded only
 * by the training worker process, never in the extension host.
 */
async function setUpEngineCommand(): Promise<void> {
  const result = await vscode.window.withProgress(
    { location: vscode.ProgressLocation.Notification, title: 'Cellfinder: setting up the native training engine', cancellable: true },
    async (progress, token) => {
      const abort = new AbortController();
      token.onCancellationRequested(() => abort.abort());
      try {
        return await setupEngine({
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
  void vscode.window.showInformationMessage(`Cellfinder: native engine ready (${result.engineDir}). Training now runs on TensorFlow's C library.`);
}

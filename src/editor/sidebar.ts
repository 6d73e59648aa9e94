/**
 * The Cellfinder sidebar: Datasets, Models and Runs, from one scan of the
 * workspace that a file watcher keeps current (rate-limited) as files change.
 */
import { promises as fs } from 'node:fs';
import * as path from 'node:path';
import * as vscode from 'vscode';
import { summarizeTrainingYaml, type ValidationProblem } from '../core/dataset';
import { scanWorkspace, type FoundDataset, type WorkspaceContents } from '../core/workspaceScan';
import { describeModelFile, type ModelDescription } from '../training/modelFiles';
import { describeJob, readRunWithJob, type RunWithJob } from '../cluster/clusterRuns';
import { jobIsActive } from '../cluster/slurm';
import type { RunRecord } from '../training/runs';

/** How often SLURM is asked about runs whose job is queued or running. */
const JOB_REFRESH_MS = 15_000;
/** At most one rescan per this interval while files keep changing (a training run appends to its log several times a second). */
const REFRESH_INTERVAL_MS = 500;

const isCheckpoint = (file: string) => path.basename(file).startsWith('model-epoch.');

export type SidebarItem =
  | { kind: 'dataset'; dataset: FoundDataset; cells?: number; nonCells?: number; error?: string }
  | { kind: 'problem'; problem: ValidationProblem; severity: 'problem' | 'warning' }
  | { kind: 'model'; file: string; run?: RunRecord; description?: ModelDescription | { error: string } }
  | { kind: 'checkpoints'; folder: string; models: SidebarItem[] }
  | { kind: 'run'; run: RunRecord; /** Its SLURM job's state, for a run submitted to SLURM. */ job?: string };

/** The scan and what was read for each item, shared by the three views. */
export class WorkspaceIndex implements vscode.Disposable {
  private contents: WorkspaceContents = { datasets: [], models: [], runs: [] };
  private runs = new Map<string, RunWithJob>();
  private datasetItems: SidebarItem[] = [];
  /** What each model file holds, read once per version of the file (its size and time). */
  private readonly modelDescriptions = new Map<string, { version: string; description: ModelDescription | { error: string } }>();
  /** Problems from the last "Validate" of each dataset, shown under it. */
  readonly validation = new Map<string, ValidationProblem[]>();
  private readonly changed = new vscode.EventEmitter<void>();
  readonly onDidChange = this.changed.event;
  private timer: ReturnType<typeof setTimeout> | undefined;
  private jobTimer: ReturnType<typeof setTimeout> | undefined;
  private refreshPending = false;
  private refreshRunning = false;
  private lastRefreshStart = 0;
  private readonly watcher: vscode.FileSystemWatcher;

  constructor() {
    this.watcher = vscode.workspace.createFileSystemWatcher('**/{training.yaml,*.keras,*.h5,training-events.jsonl,*.tif,cells,non_cells}');
    for (const event of [this.watcher.onDidCreate, this.watcher.onDidChange, this.watcher.onDidDelete]) event(() => this.refreshSoon());
    vscode.workspace.onDidChangeWorkspaceFolders(() => this.refreshSoon());
  }

  dispose(): void {
    clearTimeout(this.timer);
    clearTimeout(this.jobTimer);
    this.watcher.dispose();
    this.changed.dispose();
  }

  /**
   * Rescans at once after a change when the last rescan is older than the
   * interval, else when the interval is up; rescans never overlap. Not a
   * debounce, which would wait for quiet and so starve while a training run
   * keeps appending to its log; not a plain delay, which would make every
   * new cube wait the whole interval before the tree shows it.
   */
  refreshSoon(): void {
    this.refreshPending = true;
    if (this.refreshRunning || this.timer) return;
    const wait = Math.max(0, this.lastRefreshStart + REFRESH_INTERVAL_MS - Date.now());
    this.timer = setTimeout(() => {
      this.timer = undefined;
      void this.runPendingRefresh();
    }, wait);
  }

  private async runPendingRefresh(): Promise<void> {
    if (!this.refreshPending) return;
    this.refreshPending = false;
    this.refreshRunning = true;
    this.lastRefreshStart = Date.now();
    try {
      await this.refresh();
    } finally {
      this.refreshRunning = false;
      if (this.refreshPending) this.refreshSoon();
    }
  }

  async refresh(): Promise<void> {
    const roots = (vscode.workspace.workspaceFolders ?? []).map((folder) => folder.uri.fsPath);
    this.contents = await scanWorkspace(roots);
    this.runs = new Map(await Promise.all(this.contents.runs.map(async (run) => [run, await readRunWithJob(run)] as const)));
    // A queued job writes nothing the watcher would see: while a SLURM run's job is active, SLURM is asked again.
    clearTimeout(this.jobTimer);
    if ([...this.runs.values()].some((run) => jobIsActive(run.jobState))) this.jobTimer = setTimeout(() => this.refreshSoon(), JOB_REFRESH_MS);
    this.datasetItems = await Promise.all(
      this.contents.datasets.map(async (dataset): Promise<SidebarItem> => {
        if (!dataset.yamlFile) return { kind: 'dataset', dataset, error: 'no training.yaml: cellfinder_train needs one (use "Create Training Dataset" on this folder)' };
        try {
          const summary = await summarizeTrainingYaml(dataset.yamlFile);
          return { kind: 'dataset', dataset, cells: summary.cells, nonCells: summary.nonCells };
        } catch (error) {
          return { kind: 'dataset', dataset, error: (error as Error).message };
        }
      }),
    );
    await Promise.all(this.contents.models.map((file) => this.describeModel(file)));
    void vscode.commands.executeCommand('setContext', 'cellfinder.hasDatasets', this.contents.datasets.length > 0);
    this.changed.fire();
  }

  datasets(): SidebarItem[] {
    return this.datasetItems;
  }

  /** The folders of the datasets with a training.yaml, which commands can add cubes to. */
  datasetRoots(): string[] {
    return this.datasetItems.flatMap((item) => (item.kind === 'dataset' && item.dataset.yamlFile ? [item.dataset.root] : []));
  }

  private async describeModel(file: string): Promise<void> {
    const stat = await fs.stat(file).catch(() => undefined);
    if (!stat) return;
    const version = `${stat.size}:${stat.mtimeMs}`;
    if (this.modelDescriptions.get(file)?.version === version) return;
    const description = await describeModelFile(file).catch((error: Error) => ({ error: error.message }));
    this.modelDescriptions.set(file, { version, description });
  }

  /** Every model file: final models first, then the per-epoch checkpoints (cellfinder names them model-epoch.NN-...). */
  models(): SidebarItem[] {
    const ordered = [...this.contents.models.filter((f) => !isCheckpoint(f)), ...this.contents.models.filter(isCheckpoint)];
    return ordered.map((file) => this.modelItem(file));
  }

  /** The Models view: final models, and each folder's checkpoints folded into one collapsed row (a run writes one per epoch). */
  modelTree(): SidebarItem[] {
    const checkpointFolders = new Map<string, SidebarItem[]>();
    for (const file of this.contents.models.filter(isCheckpoint)) {
      const folder = path.dirname(file);
      checkpointFolders.set(folder, [...(checkpointFolders.get(folder) ?? []), this.modelItem(file)]);
    }
    const finals = this.contents.models.filter((file) => !isCheckpoint(file)).map((file) => this.modelItem(file));
    return [...finals, ...[...checkpointFolders].map(([folder, models]): SidebarItem => ({ kind: 'checkpoints', folder, models }))];
  }

  private modelItem(file: string): SidebarItem {
    return { kind: 'model', file, run: this.runs.get(path.dirname(file))?.run, description: this.modelDescriptions.get(file)?.description };
  }

  runItems(): SidebarItem[] {
    return [...this.runs.values()].sort((a, b) => (b.run.startedAt ?? 0) - (a.run.startedAt ?? 0)).map((listing) => ({ kind: 'run', run: listing.run, job: describeJob(listing) }));
  }

  /** The run and its SLURM job as last read; undefined for a folder not (yet) scanned. */
  runWithJob(outputDir: string): RunWithJob | undefined {
    return this.runs.get(outputDir);
  }
}

const RUN_ICONS: Record<RunRecord['status'], string> = { running: 'sync~spin', finished: 'pass', cancelled: 'debug-pause', failed: 'error', interrupted: 'warning' };

function percent(value: number): string {
  return `${(100 * value).toFixed(1)}%`;
}

export function treeItem(item: SidebarItem, validation: ReadonlyMap<string, ValidationProblem[]>): vscode.TreeItem {
  switch (item.kind) {
    case 'dataset': {
      const problems = validation.get(item.dataset.root) ?? [];
      const tree = new vscode.TreeItem(path.basename(item.dataset.root), problems.length || item.error ? vscode.TreeItemCollapsibleState.Expanded : vscode.TreeItemCollapsibleState.None);
      tree.description = item.error ? 'cannot be read' : `${item.cells} cells · ${item.nonCells} non-cells`;
      tree.tooltip = new vscode.MarkdownString(`**${item.dataset.root}**\n\n${item.error ?? `${item.cells} cells, ${item.nonCells} non-cells`}`);
      tree.iconPath = new vscode.ThemeIcon(item.error || problems.length ? 'warning' : 'database');
      tree.contextValue = item.dataset.yamlFile ? 'dataset' : 'bareDataset';
      tree.resourceUri = vscode.Uri.file(item.dataset.root);
      tree.id = `dataset:${item.dataset.root}`;
      return tree;
    }
    case 'problem': {
      const tree = new vscode.TreeItem(path.basename(item.problem.file), vscode.TreeItemCollapsibleState.None);
      tree.description = item.problem.problem;
      tree.tooltip = `${item.problem.file}: ${item.problem.problem}. ${item.problem.fix}`;
      tree.iconPath = new vscode.ThemeIcon(item.severity === 'problem' ? 'error' : 'warning');
      tree.command = { command: 'revealInExplorer', title: 'Reveal', arguments: [vscode.Uri.file(item.problem.file)] };
      return tree;
    }
    case 'model': {
      const tree = new vscode.TreeItem(path.basename(item.file), vscode.TreeItemCollapsibleState.None);
      const described = item.description;
      const problem = described && 'error' in described ? described.error : undefined;
      const model = described && !('error' in described) ? `ResNet-${described.depth}, ${described.channels} ch` : undefined;
      const accuracy = item.run?.valAccuracy !== undefined ? `val. accuracy ${percent(item.run.valAccuracy)}` : undefined;
      tree.description = problem ? 'not a cellfinder model' : [model, accuracy, item.run ? `run ${path.basename(item.run.outputDir)}` : undefined].filter(Boolean).join(' · ');
      tree.tooltip = problem ? `${item.file}\n${problem}` : `${item.file}\nClick: its model card`;
      tree.iconPath = new vscode.ThemeIcon(problem ? 'warning' : 'symbol-class');
      // Export and publish need the architecture a .keras holds; a weights file has none.
      tree.contextValue = item.file.endsWith('.keras') ? 'model-keras' : 'model-weights';
      tree.command = { command: 'cellfinder.showModelCard', title: 'Show Model Card', arguments: [item] };
      tree.resourceUri = vscode.Uri.file(item.file);
      tree.id = `model:${item.file}`;
      return tree;
    }
    case 'checkpoints': {
      const tree = new vscode.TreeItem(`${item.models.length} checkpoint${item.models.length === 1 ? '' : 's'}`, vscode.TreeItemCollapsibleState.Collapsed);
      tree.description = path.basename(item.folder);
      tree.tooltip = item.folder;
      tree.iconPath = new vscode.ThemeIcon('history');
      tree.id = `checkpoints:${item.folder}`;
      return tree;
    }
    case 'run': {
      const run = item.run;
      const tree = new vscode.TreeItem(path.basename(run.outputDir), vscode.TreeItemCollapsibleState.None);
      const epochs = run.events.filter((e) => e.type === 'epoch').length;
      tree.description = `${run.status} · ${epochs} epoch(s)${run.valAccuracy !== undefined ? ` · val. accuracy ${percent(run.valAccuracy)}` : ''}${item.job ? ` · ${item.job}` : ''}`;
      tree.tooltip = item.job ? `${run.outputDir}\n${item.job}` : run.outputDir;
      tree.iconPath = new vscode.ThemeIcon(RUN_ICONS[run.status]);
      tree.contextValue = `run-${run.status}${run.resumable ? '-resumable' : ''}`;
      tree.command = { command: 'cellfinder.openRun', title: 'Open Training Panel', arguments: [item] };
      tree.id = `run:${run.outputDir}`;
      return tree;
    }
  }
}

class SidebarView implements vscode.TreeDataProvider<SidebarItem> {
  private readonly changed = new vscode.EventEmitter<void>();
  readonly onDidChangeTreeData = this.changed.event;

  constructor(
    private readonly index: WorkspaceIndex,
    private readonly roots: () => SidebarItem[],
  ) {
    index.onDidChange(() => this.changed.fire());
  }

  getTreeItem(item: SidebarItem): vscode.TreeItem {
    return treeItem(item, this.index.validation);
  }

  getChildren(item?: SidebarItem): SidebarItem[] {
    if (!item) return this.roots();
    if (item.kind === 'checkpoints') return item.models;
    if (item.kind !== 'dataset') return [];
    const problems: SidebarItem[] = (this.index.validation.get(item.dataset.root) ?? []).map((problem) => ({ kind: 'problem', problem, severity: 'problem' }));
    if (item.error) problems.unshift({ kind: 'problem', problem: { file: item.dataset.yamlFile ?? item.dataset.root, problem: item.error, fix: '' }, severity: 'warning' });
    return problems;
  }
}

export function registerSidebar(context: vscode.ExtensionContext): WorkspaceIndex {
  const index = new WorkspaceIndex();
  context.subscriptions.push(
    index,
    vscode.window.registerTreeDataProvider('cellfinder.datasets', new SidebarView(index, () => index.datasets())),
    vscode.window.registerTreeDataProvider('cellfinder.models', new SidebarView(index, () => index.modelTree())),
    vscode.window.registerTreeDataProvider('cellfinder.runs', new SidebarView(index, () => index.runItems())),
  );
  void index.refresh();
  return index;
}

/**
 * The Models view's sharing commands: a model's card (rendered by VS Code's
 * own Markdown preview), export for the Hugging Face Hub and the BioImage
 * Model Zoo, publishing to the Hub, and fetching a model. Each asks for its
 * inputs here and runs the CLI request controllers/modelSharing.ts builds in
 * a child process, with progress: hashing, exporting and uploading never run
 * in the extension host.
 */
import { existsSync, promises as fs } from 'node:fs';
import * as path from 'node:path';
import * as vscode from 'vscode';
import { runCliJson } from '../controllers/cliProcess';
import { cellfinderModelOfFile, exportRequest, fetchRequest, modelCardRequest, publishRequest, type CliRequest, type FetchSource } from '../controllers/modelSharing';
import { parseHubTarget } from '../sharing/hubPublish';
import { cardWithoutFrontMatter, findModelCard } from '../sharing/modelCard';
import { CELLFINDER_MODELS, cellfinderModelsFolder, hubModelsFolder, parseHubRepo, type FetchedFile } from '../sharing/modelFetch';
import { runConfigOf } from '../training/trainConfig';
import { cliLocation, requireTrust } from './settings';
import type { WorkspaceIndex } from './sidebar';

/** The card preview's documents: `cellfinder-card:/path/to/model.keras.card.md` is that file without its front matter. */
const CARD_SCHEME = 'cellfinder-card';
/** SecretStorage key of the Hugging Face token (kept by VS Code in the system keychain, never in settings or files). */
const HF_TOKEN_SECRET = 'cellfinder.huggingFaceToken';
const LAST_HUB_TARGET_KEY = 'cellfinder.lastHubTarget';

export class ModelSharing {
  /** Tells VS Code to read a card again: it keeps a virtual document's text until told (a card is rewritten by Write Model Card). */
  private readonly cardChanged = new vscode.EventEmitter<vscode.Uri>();

  constructor(
    private readonly context: vscode.ExtensionContext,
    private readonly index: WorkspaceIndex,
  ) {
    context.subscriptions.push(
      this.cardChanged,
      vscode.workspace.registerTextDocumentContentProvider(CARD_SCHEME, {
        onDidChange: this.cardChanged.event,
        provideTextDocumentContent: async (uri) => cardWithoutFrontMatter(await fs.readFile(uri.fsPath, 'utf8')),
      }),
    );
  }

  /** Opens the model's card rendered; a model without one is offered `model card`. */
  async showCard(modelFile: string | undefined): Promise<void> {
    const file = modelFile ?? (await this.pickModel('Show the card of which model?', false));
    if (!file) return;
    const card = await findModelCard(file);
    if (card) return this.openCard(card);
    const write = await vscode.window.showInformationMessage(
      `Cellfinder: ${path.basename(file)} has no model card (${path.basename(file)}.card.md). Write one from its training run (or from the file alone when it has none)?`,
      'Write Model Card',
    );
    if (write) await this.writeCard(file);
  }

  /** `model card MODEL` (again: a card of the same model bytes is replaced, say after an evaluation), then shows it. */
  async writeCard(modelFile: string | undefined): Promise<void> {
    requireTrust('Writing a model card');
    const file = modelFile ?? (await this.pickModel('Write the card of which model?', false));
    if (!file) return;
    const written = await this.run<{ card: string; fromRun: boolean }>(`writing the model card of ${path.basename(file)}`, modelCardRequest(file));
    if (!written.fromRun) void vscode.window.showWarningMessage(`Cellfinder: ${path.basename(written.card)} is written from the model file alone: no training run folder is with it, so it cannot say what the model was trained on.`);
    await this.openCard(written.card);
  }

  private async openCard(card: string): Promise<void> {
    const uri = vscode.Uri.file(card).with({ scheme: CARD_SCHEME });
    this.cardChanged.fire(uri);
    await vscode.commands.executeCommand('markdown.showPreview', uri);
  }

  /** `model export --hub|--bioimageio OUT MODEL`: asks the folder, then offers to reveal it. */
  async exportModel(kind: 'hub' | 'bioimageio', modelFile: string | undefined): Promise<void> {
    requireTrust('Exporting a model');
    const what = kind === 'hub' ? 'the Hugging Face Hub' : 'the BioImage Model Zoo';
    const file = modelFile ?? (await this.pickModel(`Export which model for ${what}?`, true));
    if (!file) return;
    const stem = path.basename(file).replace(/\.keras$/, '');
    const outDir = await vscode.window.showInputBox({
      title: `Folder for the ${kind === 'hub' ? 'Hub' : 'BioImage Model Zoo'} export of ${path.basename(file)}`,
      prompt: 'Created if missing',
      value: path.join(path.dirname(file), `${stem}-${kind}`),
      validateInput: (value) => (value.trim() ? undefined : 'Give a folder'),
    });
    if (!outDir) return;
    const force = await this.confirmReplace(outDir.trim());
    if (force === undefined) return;
    let request: CliRequest;
    if (kind === 'hub') request = exportRequest({ kind, modelFile: file, outDir: outDir.trim(), card: await this.cardFor(file), force });
    else {
      const dataset = (await runConfigOf(file))?.yamlFiles?.length ? undefined : await this.pickDatasetForTestCubes(file);
      if (dataset === null) return;
      request = exportRequest({ kind, modelFile: file, outDir: outDir.trim(), dataset, force });
    }
    const exported = await this.run<{ folder: string }>(`exporting ${path.basename(file)} for ${what}`, request);
    const reveal = await vscode.window.showInformationMessage(`Cellfinder: ${path.basename(file)} exported for ${what} into ${exported.folder}`, 'Reveal Folder');
    if (reveal) await vscode.commands.executeCommand('revealFileInOS', vscode.Uri.file(exported.folder));
  }

  /** `model publish MODEL --to hf://ORG/NAME`, the token from SecretStorage into the child's HF_TOKEN only. */
  async publish(modelFile: string | undefined): Promise<void> {
    requireTrust('Publishing a model');
    const file = modelFile ?? (await this.pickModel('Publish which model to the Hugging Face Hub?', true));
    if (!file) return;
    const target = await vscode.window.showInputBox({
      title: `Publish ${path.basename(file)} to the Hugging Face Hub`,
      prompt: 'The model repository, created when missing (needs a token with write access to ORG)',
      placeHolder: 'hf://ORG/NAME',
      value: this.context.workspaceState.get<string>(LAST_HUB_TARGET_KEY, ''),
      validateInput: (value) => problemOf(() => parseHubTarget(value.trim())),
    });
    if (!target) return;
    await this.context.workspaceState.update(LAST_HUB_TARGET_KEY, target.trim());
    const token = await this.huggingFaceToken();
    if (!token) return;
    const request = publishRequest({ modelFile: file, target, token, card: await this.cardFor(file) });
    let published: { url: string };
    try {
      published = await this.run<{ url: string }>(`publishing ${path.basename(file)} to ${target.trim()}`, request);
    } catch (error) {
      const forget = await vscode.window.showErrorMessage(`Cellfinder: ${(error as Error).message}`, 'Forget the Stored Token');
      if (forget) await this.context.secrets.delete(HF_TOKEN_SECRET);
      return;
    }
    const open = await vscode.window.showInformationMessage(`Cellfinder: published ${path.basename(file)}: ${published.url}`, 'Open in Browser');
    if (open) await vscode.env.openExternal(vscode.Uri.parse(published.url));
  }

  /** The stored token, or one asked for once (password box) and stored in SecretStorage. */
  private async huggingFaceToken(): Promise<string | undefined> {
    const stored = await this.context.secrets.get(HF_TOKEN_SECRET);
    if (stored) return stored;
    const token = await vscode.window.showInputBox({
      title: 'Hugging Face access token',
      prompt: 'A token with write access (huggingface.co/settings/tokens). Kept in VS Code\'s secret storage and given only to the upload process.',
      password: true,
      ignoreFocusOut: true,
      validateInput: (value) => (value.trim() ? undefined : 'Paste the token (it starts with hf_)'),
    });
    if (!token?.trim()) return undefined;
    await this.context.secrets.store(HF_TOKEN_SECRET, token.trim());
    return token.trim();
  }

  /** `model fetch`: cellfinder's networks, a Hub repository, or a local copy of either. */
  async fetch(): Promise<void> {
    requireTrust('Fetching a model');
    type Choice = vscode.QuickPickItem & { source: FetchSource | 'hub' | 'local' };
    const choices: Choice[] = [
      { label: '$(cloud-download) cellfinder\'s pre-trained network', description: `${CELLFINDER_MODELS.resnet50_tv.fileName}, signal + background`, detail: `From cellfinder's own URL, checked against its SHA-256, into ${cellfinderModelsFolder()} (shared with cellfinder)`, source: { kind: 'cellfinder', model: 'resnet50_tv' } },
      { label: '$(cloud-download) cellfinder\'s signal-only network', description: CELLFINDER_MODELS.resnet50_1ch.fileName, detail: `For data without a background channel, into ${cellfinderModelsFolder()}`, source: { kind: 'cellfinder', model: 'resnet50_1ch' } },
      { label: '$(repo) A Hugging Face repository…', description: 'hf://ORG/NAME', detail: `Every file, each checked against the hash the Hub lists, into ${hubModelsFolder()}`, source: 'hub' },
      { label: '$(folder-opened) A local copy…', description: 'offline: a file or folder', detail: 'cellfinder\'s network file (or its folder), or a downloaded copy of a Hub repository, checked the same way', source: 'local' },
    ];
    const choice = await vscode.window.showQuickPick(choices, { title: 'Cellfinder: fetch which model?' });
    if (!choice) return;
    const source = choice.source === 'hub' ? await this.askHubRepo() : choice.source === 'local' ? await this.askLocalCopy() : choice.source;
    if (!source) return;
    const fetched = await this.run<{ files: FetchedFile[] }>(source.kind === 'hub' ? `fetching hf://${source.repo}` : `fetching cellfinder's ${source.model}`, fetchRequest(source));
    const added = fetched.files.filter((file) => file.status === 'fetched').length;
    const where = path.dirname(fetched.files[0].file);
    const next = await vscode.window.showInformationMessage(
      `Cellfinder: ${added ? `fetched ${added} file(s)` : 'already fetched, unchanged'} into ${where}; each verified (${[...new Set(fetched.files.map((file) => file.verified))].join(', ')}). Retrain Network offers it as a starting point.`,
      'Retrain Network',
    );
    if (next) await vscode.commands.executeCommand('cellfinder.retrainNetwork');
  }

  private async askHubRepo(from?: string): Promise<FetchSource | undefined> {
    const spec = await vscode.window.showInputBox({
      title: from ? `Which Hugging Face repository is ${path.basename(from)} a copy of?` : 'Fetch a Hugging Face model repository',
      placeHolder: 'hf://ORG/NAME',
      prompt: from ? `Its files go to ${hubModelsFolder()}/ORG/NAME, checked against a model card in the copy when it holds one` : 'Public repositories only: no token is sent',
      validateInput: (value) => problemOf(() => parseHubRepo(value.trim())),
    });
    return spec ? { kind: 'hub', repo: parseHubRepo(spec.trim()), from } : undefined;
  }

  /** A file is cellfinder's network (by its file name); a folder holding one is too; any other folder is a copy of a Hub repository. */
  private async askLocalCopy(): Promise<FetchSource | undefined> {
    const picked = await vscode.window.showOpenDialog({ title: 'Local copy: cellfinder\'s network file, or a folder', canSelectFiles: true, canSelectFolders: true, canSelectMany: false });
    const from = picked?.[0]?.fsPath;
    if (!from) return undefined;
    if (!(await fs.stat(from)).isDirectory()) return { kind: 'cellfinder', model: cellfinderModelOfFile(from), from };
    const held = Object.values(CELLFINDER_MODELS).find((model) => existsSync(path.join(from, model.fileName)));
    return held ? { kind: 'cellfinder', model: cellfinderModelOfFile(held.fileName), from } : this.askHubRepo(from);
  }

  /** The model's card for an export, written first when it has none: an upload without one says nothing of the model. */
  private async cardFor(modelFile: string): Promise<string> {
    return (await findModelCard(modelFile)) ?? (await this.run<{ card: string }>(`writing the model card of ${path.basename(modelFile)}`, modelCardRequest(modelFile))).card;
  }

  /** `--force` for the export: false when the folder is missing or empty, true when the user agreed to replace what it holds, undefined when not. */
  private async confirmReplace(outDir: string): Promise<boolean | undefined> {
    const entries = await fs.readdir(outDir).catch(() => []);
    if (entries.length === 0) return false;
    const replace = await vscode.window.showWarningMessage(`Cellfinder: ${outDir} already holds ${entries.length} file(s). Replace them with the export?`, { modal: true }, 'Replace');
    return replace ? true : undefined;
  }

  /** The dataset the zoo's test cubes are cut from, for a model whose folder has no training-config.json naming it; null: cancelled. */
  private async pickDatasetForTestCubes(modelFile: string): Promise<string | null> {
    const datasets = this.index.datasets().flatMap((item) => (item.kind === 'dataset' && item.dataset.yamlFile ? [item.dataset.yamlFile] : []));
    type Choice = vscode.QuickPickItem & { yamlFile?: string };
    const choices: Choice[] = [...datasets.map((yamlFile) => ({ label: path.basename(path.dirname(yamlFile)), description: vscode.workspace.asRelativePath(yamlFile), yamlFile })), { label: '$(folder-opened) Browse for a training.yaml…' }];
    const choice = await vscode.window.showQuickPick(choices, { title: `The package's test cubes come from the model's own dataset: ${path.basename(modelFile)}'s folder does not name it. Which one?` });
    if (!choice) return null;
    if (choice.yamlFile) return choice.yamlFile;
    const picked = await vscode.window.showOpenDialog({ title: 'training.yaml of the model\'s dataset', canSelectMany: false, filters: { 'training.yaml': ['yaml', 'yml'] } });
    return picked?.[0]?.fsPath ?? null;
  }

  /** A model of the workspace, for a command run from the palette; `kerasOnly` for exports (a weights file has no architecture). */
  private async pickModel(title: string, kerasOnly: boolean): Promise<string | undefined> {
    const models = this.index.models().flatMap((item) => (item.kind === 'model' && (!kerasOnly || item.file.endsWith('.keras')) ? [item.file] : []));
    if (!models.length) throw new Error(kerasOnly ? 'no .keras model in this workspace: retrain one, or open the folder that holds it' : 'no model file in this workspace: retrain one, or fetch one with "Fetch a Model…"');
    const picked = await vscode.window.showQuickPick(models.map((file) => ({ label: path.basename(file), description: vscode.workspace.asRelativePath(file), file })), { title });
    return picked?.file;
  }

  /** Runs a CLI request in its child process with a cancellable notification that shows its progress lines. */
  private run<T>(title: string, request: CliRequest): Promise<T> {
    return Promise.resolve(
      vscode.window.withProgress({ location: vscode.ProgressLocation.Notification, title: `Cellfinder: ${title}`, cancellable: true }, (progress, cancel) => {
        const abort = new AbortController();
        cancel.onCancellationRequested(() => abort.abort());
        return runCliJson<T>(cliLocation(this.context), request.args, { onStderrLine: (line) => progress.report({ message: line }), signal: abort.signal, environment: request.environment });
      }),
    ).finally(() => this.index.refreshSoon());
  }
}

/** A validator's message: the error a parser throws for the value, or undefined when it parses. */
function problemOf(parse: () => unknown): string | undefined {
  try {
    parse();
    return undefined;
  } catch (error) {
    return (error as Error).message;
  }
}

/** The file, folder and voxel-size questions several commands ask. */
import { promises as fs } from 'node:fs';
import * as path from 'node:path';
import * as vscode from 'vscode';
import { voxelSizeProblem, type VoxelSizes } from '../core/extraction';

export async function pickFile(title: string, filters: Record<string, string[]>, folders = false): Promise<string | undefined> {
  const picked = await vscode.window.showOpenDialog({ title, canSelectFiles: true, canSelectFolders: folders, canSelectMany: false, filters, defaultUri: vscode.workspace.workspaceFolders?.[0]?.uri });
  return picked?.[0]?.fsPath;
}

async function pickFolder(title: string): Promise<string | undefined> {
  const picked = await vscode.window.showOpenDialog({ title, canSelectFolders: true, canSelectFiles: false, canSelectMany: false, defaultUri: vscode.workspace.workspaceFolders?.[0]?.uri });
  return picked?.[0]?.fsPath;
}

/**
 * Where a command writes a training dataset: one of the workspace's datasets
 * (when the command can add to one), a new folder in the workspace typed by
 * name, or any existing folder from the open dialog. The typed option exists
 * because an open dialog cannot name a folder that does not exist yet
 * (code-server's answers "Please enter a path that exists").
 */
export async function pickDatasetFolder(title: string, datasets: string[], suggestedName: string): Promise<string | undefined> {
  const workspaceRoot = vscode.workspace.workspaceFolders?.[0]?.uri.fsPath;
  type Choice = vscode.QuickPickItem & { folder?: string; action?: 'new' | 'browse' };
  const choices: Choice[] = [
    ...datasets.map((folder): Choice => ({ label: `$(database) ${path.basename(folder)}`, description: workspaceRoot ? path.relative(workspaceRoot, folder) : folder, folder })),
    ...(workspaceRoot ? [{ label: '$(new-folder) New folder in the workspace…', action: 'new' } as Choice] : []),
    { label: '$(folder-opened) Browse for a folder…', action: 'browse' },
  ];
  const choice = choices.length === 1 ? choices[0] : await vscode.window.showQuickPick(choices, { title, placeHolder: datasets.length ? 'A dataset of this workspace, or a new folder' : 'A new folder, or an existing one' });
  if (!choice) return undefined;
  if (choice.folder) return choice.folder;
  if (choice.action === 'browse' || !workspaceRoot) return pickFolder(title);
  const name = await vscode.window.showInputBox({
    title,
    prompt: `A new folder, relative to ${workspaceRoot}`,
    value: await unusedName(workspaceRoot, suggestedName),
    validateInput: async (value) => {
      if (!value.trim()) return 'A folder name';
      const entries = await fs.readdir(path.resolve(workspaceRoot, value.trim())).catch(() => undefined);
      return entries?.length ? `${value.trim()} already exists and is not empty: choose a new name, or pick it with "Browse"` : undefined;
    },
  });
  return name === undefined ? undefined : path.resolve(workspaceRoot, name.trim());
}

/** `name`, or `name-2`, `name-3`, … whichever does not exist yet in `folder`. */
async function unusedName(folder: string, name: string): Promise<string> {
  const taken = new Set(await fs.readdir(folder).catch(() => [] as string[]));
  let candidate = name;
  for (let n = 2; taken.has(candidate); n++) candidate = `${name}-${n}`;
  return candidate;
}

/** A volume: a folder of z-planes, a plane list or a multi-page TIFF. */
export function pickVolume(title: string): Promise<string | undefined> {
  return pickFile(title, { 'TIFF stack or plane list': ['tif', 'tiff', 'txt'] }, true);
}

function parseVoxelSizes(text: string): VoxelSizes | undefined {
  const sizes = text.trim().split(/[\s,]+/).map(Number);
  return sizes.length === 3 && sizes.every((s) => Number.isFinite(s) && s > 0) ? (sizes as unknown as VoxelSizes) : undefined;
}

/** Data voxel sizes: `null` when the data is already at the network's 5, 1, 1 µm, undefined when cancelled. */
export async function askVoxelSizes(): Promise<VoxelSizes | null | undefined> {
  const text = await vscode.window.showInputBox({
    title: 'Data voxel sizes in µm (z y x)',
    prompt: 'The network works at 5, 1, 1 µm; cubes are rescaled from these sizes. Leave empty if your data is already at 5 1 1.',
    placeHolder: '5 2 2',
    validateInput: (value) => {
      if (value.trim() === '') return undefined;
      const sizes = parseVoxelSizes(value);
      return sizes ? voxelSizeProblem(sizes) : 'Three positive numbers: z y x';
    },
  });
  if (text === undefined) return undefined;
  return text.trim() === '' ? null : (parseVoxelSizes(text) as VoxelSizes);
}

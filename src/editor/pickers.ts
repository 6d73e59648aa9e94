/** The file, folder and voxel-size questions several commands ask. */
import * as vscode from 'vscode';
import type { VoxelSizes } from '../core/extraction';

export async function pickFile(title: string, filters: Record<string, string[]>, folders = false): Promise<string | undefined> {
  const picked = await vscode.window.showOpenDialog({ title, canSelectFiles: true, canSelectFolders: folders, canSelectMany: false, filters, defaultUri: vscode.workspace.workspaceFolders?.[0]?.uri });
  return picked?.[0]?.fsPath;
}

export async function pickFolder(title: string): Promise<string | undefined> {
  const picked = await vscode.window.showOpenDialog({ title, canSelectFolders: true, canSelectFiles: false, canSelectMany: false, defaultUri: vscode.workspace.workspaceFolders?.[0]?.uri });
  return picked?.[0]?.fsPath;
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
    validateInput: (value) => (value.trim() === '' || parseVoxelSizes(value) ? undefined : 'Three positive numbers: z y x'),
  });
  if (text === undefined) return undefined;
  return text.trim() === '' ? null : (parseVoxelSizes(text) as VoxelSizes);
}

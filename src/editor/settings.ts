/** The extension's `cellfinder.*` settings and where its bundled scripts are. */
import * as path from 'node:path';
import * as vscode from 'vscode';
import type { CliLocation } from '../controllers/cliProcess';
import { ENGINE_DIR_ENV } from '../engine/engineLayout';
import type { DeviceChoice } from '../engine/gpuEnvironment';

export function setting<T>(key: string, fallback: T): T {
  return vscode.workspace.getConfiguration('cellfinder').get<T>(key, fallback);
}

/**
 * The Node.js that runs training and classification. Not the editor's own
 * runtime: the native engine is a Node addon built for the system Node.js.
 */
export function nodePath(): string {
  return setting('nodePath', 'node') || 'node';
}

/** Where training and classification run: `cellfinder.training.device`. */
export function trainingDevice(): DeviceChoice {
  return setting<DeviceChoice>('training.device', 'auto');
}

export function cliLocation(context: vscode.ExtensionContext): CliLocation {
  return { nodePath: nodePath(), cliScript: path.join(context.extensionPath, 'bin', 'cellfinder-retrain.js'), device: trainingDevice() };
}

export function workerScript(context: vscode.ExtensionContext): string {
  return path.join(context.extensionPath, 'dist', 'worker.js');
}

/** Commands that write files or run code need a trusted workspace; browsing does not. */
export function requireTrust(action: string): void {
  if (!vscode.workspace.isTrusted) throw new Error(`${action} needs a trusted workspace (it writes files and runs the training engine). Use "Manage Workspace Trust" to trust this folder.`);
}

/**
 * `cellfinder.engineDir`: where the engines are, e.g. a shared filesystem the
 * cluster's nodes see. Set in the extension host's own environment, so the
 * in-editor engine setup, every process it starts (training, classify, the
 * CLI) and the SLURM jobs those submit all find the same folder; empty: the
 * environment's CELLFINDER_RETRAIN_ENGINE_DIR as VS Code was started with, or
 * the user's cache.
 */
export function applyEngineDirSetting(startedWith: string | undefined): void {
  const folder = setting('engineDir', '').trim();
  if (folder) process.env[ENGINE_DIR_ENV] = folder;
  else if (startedWith === undefined) delete process.env[ENGINE_DIR_ENV];
  else process.env[ENGINE_DIR_ENV] = startedWith;
}

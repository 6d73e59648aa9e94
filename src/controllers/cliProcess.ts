/**
 * Runs a `cellfinder-retrain` CLI command (bin/cellfinder-retrain.js) in a separate Node
 * process and returns its `--json` output: classification and evaluation
 * load TensorFlow and keep a core busy, so they never run in the extension
 * host.
 */
import { spawn } from 'node:child_process';
import type { SlurmRequest } from '../cluster/slurm';
import type { VoxelSizes } from '../core/extraction';
import { DEVICE_ENV, type DeviceChoice } from '../engine/gpuEnvironment';
import { runConfigOf, TRAIN_CONFIG_FILE } from '../training/trainConfig';

export interface CliLocation {
  nodePath: string;
  cliScript: string;
  /** Told to the CLI through its environment; it starts itself again with the GPU libraries when it needs them. */
  device: DeviceChoice;
}

export interface CliRunOptions {
  /** Each line the command writes to stderr (its progress), as it comes. */
  onStderrLine?: (line: string) => void;
  signal?: AbortSignal;
  /**
   * The command's working directory; the extension host's otherwise (the
   * folder the editor happened to start in). A SLURM job runs there too, so
   * a submission gives a folder the cluster's nodes see.
   */
  cwd?: string;
  /**
   * Added to the child's own environment: the way to hand it a secret (a
   * Hugging Face token), which on its command line would be visible to every
   * user of the machine (`ps`) and end up in error messages that quote it.
   */
  environment?: Readonly<Record<string, string>>;
}

export function runCliJson<T>(cli: CliLocation, args: readonly string[], { onStderrLine, signal, cwd, environment }: CliRunOptions = {}): Promise<T> {
  return new Promise<T>((resolve, reject) => {
    const child = spawn(cli.nodePath, [cli.cliScript, ...args, '--json'], { stdio: ['ignore', 'pipe', 'pipe'], signal, cwd, env: { ...process.env, [DEVICE_ENV]: cli.device, ...environment } });
    let stdout = '';
    let stderr = '';
    child.stdout.on('data', (chunk: Buffer) => (stdout += chunk.toString()));
    child.stderr.on('data', (chunk: Buffer) => {
      const text = chunk.toString();
      stderr += text;
      for (const line of text.split('\n')) if (line.trim()) onStderrLine?.(line.trim());
    });
    child.once('error', (error) => reject(new Error(`cannot run ${cli.nodePath} ${cli.cliScript}: ${error.message}`)));
    child.once('close', (code) => {
      if (code !== 0) {
        const lines = stderr.trim().split('\n');
        reject(new Error(lines.filter((line) => line.startsWith('error')).pop() ?? lines.pop() ?? `cellfinder-retrain ${args[0]} exited with ${code}`));
        return;
      }
      try {
        resolve(JSON.parse(stdout) as T);
      } catch {
        reject(new Error(`cellfinder-retrain ${args[0]} printed no JSON result`));
      }
    });
  });
}

export interface ClassifyRequest {
  model: string;
  points: string;
  signal: string;
  background?: string;
  voxelSizes?: VoxelSizes | null;
  outputDir: string;
  /** A dataset whose candidate cache may hold these candidates' cubes (classify --cache). */
  cacheOf?: string;
}

/**
 * The `classify` arguments for the editor's classify and predict commands.
 * A model's own file does not say whether it was trained on normalised
 * channels; its run's settings do, and then it is classified the same way
 * (`note` says so, for the user). Otherwise cellfinder's default: off.
 */
export async function classifyArgs(request: ClassifyRequest): Promise<{ args: string[]; note?: string }> {
  const { model } = request;
  const args = ['classify', model.endsWith('.keras') ? '--trained-model' : '--model-weights', model, '--signal', request.signal, '--points', request.points, '-o', request.outputDir];
  if (request.background) args.push('--background', request.background);
  if (request.voxelSizes) args.push('--voxel-sizes', ...request.voxelSizes.map(String));
  if (request.cacheOf) args.push('--cache', request.cacheOf);
  if (!(await runConfigOf(model))?.normalizeChannels) return { args };
  args.push('--normalize-channels');
  return { args, note: `channels normalised (--normalize-channels), as the model's run trained (its ${TRAIN_CONFIG_FILE})` };
}

/** The CLI's SLURM options for `request` (what `train --slurm` reads back into it). */
export function slurmArgs(request: SlurmRequest): string[] {
  const args = ['--slurm'];
  const valued: Array<[string, string | number | undefined]> = [
    ['--partition', request.partition],
    ['--gres', request.gres],
    ['--cpus', request.cpus],
    ['--mem', request.mem],
    ['--time', request.time],
    ['--account', request.account],
  ];
  for (const [flag, value] of valued) if (value !== undefined && value !== '') args.push(flag, String(value));
  for (const line of request.extraLines ?? []) args.push(`--sbatch-line=${line}`);
  if (request.requeue) args.push('--requeue');
  return args;
}

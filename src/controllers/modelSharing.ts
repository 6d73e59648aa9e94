/**
 * The CLI requests behind the Models view's sharing commands (card, export,
 * publish, fetch). Built here, without VS Code, so that the tests check
 * exactly what the editor runs; the editor asks for the inputs and runs each
 * request with runCliJson, in a child process.
 */
import * as path from 'node:path';
import { HF_TOKEN_ENV, parseHubTarget } from '../sharing/hubPublish';
import { CELLFINDER_MODELS, parseHubRepo, type CellfinderModelName } from '../sharing/modelFetch';

export interface CliRequest {
  args: string[];
  /** Added to the child's environment (runCliJson's `environment`): secrets go here, never into `args`. */
  environment?: Record<string, string>;
}

/** `model card MODEL`: the card from the model's run folder, or from the file alone. */
export function modelCardRequest(modelFile: string): CliRequest {
  return { args: ['model', 'card', modelFile] };
}

export type ExportRequest =
  | { kind: 'hub'; modelFile: string; outDir: string; /** The model's card, to become the folder's README.md. */ card?: string; force?: boolean }
  | { kind: 'bioimageio'; modelFile: string; outDir: string; /** The dataset to cut the test cubes from, when the model's run does not name it. */ dataset?: string; force?: boolean };

export function exportRequest(request: ExportRequest): CliRequest {
  const args = ['model', 'export', request.kind === 'hub' ? '--hub' : '--bioimageio', request.outDir, request.modelFile];
  if (request.kind === 'hub' && request.card) args.push('--card', request.card);
  if (request.kind === 'bioimageio' && request.dataset) args.push('--dataset', request.dataset);
  if (request.force) args.push('--force');
  return { args };
}

/**
 * `model publish MODEL --to hf://ORG/NAME`, the token in the child's
 * HF_TOKEN. The name is checked first (a HubPublishError saying what Hugging
 * Face would refuse), so a bad one never starts a process.
 */
export function publishRequest(request: { modelFile: string; target: string; token: string; card?: string }): CliRequest {
  const repository = parseHubTarget(request.target.trim());
  const args = ['model', 'publish', request.modelFile, '--to', `hf://${repository.namespace}/${repository.name}`];
  if (request.card) args.push('--card', request.card);
  return { args, environment: { [HF_TOKEN_ENV]: request.token } };
}

export type FetchSource =
  | { kind: 'cellfinder'; model: CellfinderModelName; /** A local copy: the file, or the folder holding it under cellfinder's name. */ from?: string }
  | { kind: 'hub'; repo: string; /** A downloaded copy of the repository's folder. */ from?: string };

export function fetchRequest(source: FetchSource): CliRequest {
  const args = source.kind === 'cellfinder' ? ['model', 'fetch', '--model', source.model] : ['model', 'fetch', `hf://${parseHubRepo(source.repo.trim())}`];
  if (source.from !== undefined) args.push('--from', source.from);
  return { args };
}

/** Which of cellfinder's networks a local copy is, by cellfinder's file names; its default (resnet50_tv) otherwise. */
export function cellfinderModelOfFile(file: string): CellfinderModelName {
  const name = path.basename(file);
  const match = (Object.keys(CELLFINDER_MODELS) as CellfinderModelName[]).find((model) => CELLFINDER_MODELS[model].fileName === name);
  return match ?? 'resnet50_tv';
}

/**
 * `model publish --to hf://ORG/NAME`: uploads an exported Hub folder (see
 * hubExport.ts) with Hugging Face's own JavaScript library, as Keras' own
 * `hf://` upload does with the Python one: create the model repository if it
 * is missing, then one commit with every file of the folder.
 *
 * Everything up to the library call (the repository name, checked as Hugging
 * Face checks it; the token; the file list; the commit message) is built by
 * planHubUpload, so it can be tested without a network. The token is only
 * ever passed to the library: never written to a file or a message.
 */
import { promises as fs } from 'node:fs';
import * as path from 'node:path';
import { pathToFileURL } from 'node:url';
import { DataFileError } from '../core/errors';
import { KERAS_MEMBERS } from './kerasArchive';

/** The environment variable the token is read from (the editor sets it from its secret storage). */
export const HF_TOKEN_ENV = 'HF_TOKEN';

export class HubPublishError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'HubPublishError';
  }
}

export interface HubRepository {
  namespace: string;
  name: string;
}

/**
 * A part of a repository id as huggingface_hub's `validate_repo_id` and the
 * Hub accept it: letters, digits, '-', '_', '.'; starting and ending with a
 * letter, digit or '_'; the name at most 96 characters; no '--' or '..'; not
 * ending in '.git'.
 */
const REPO_PART = /^[A-Za-z0-9_](?:[A-Za-z0-9_.-]*[A-Za-z0-9_])?$/;
const MAX_NAME_LENGTH = 96;

function partProblem(part: string, what: string): string | undefined {
  if (part.length === 0) return `the ${what} is empty`;
  if (!REPO_PART.test(part)) return `the ${what} "${part}" may use only letters, digits, '-', '_' and '.', and may not start or end with '-' or '.'`;
  if (part.includes('--') || part.includes('..')) return `the ${what} "${part}" may not contain '--' or '..'`;
  if (part.endsWith('.git')) return `the ${what} "${part}" may not end in '.git'`;
  return undefined;
}

/** `hf://ORG/NAME` (or `ORG/NAME`) as a repository, or a HubPublishError saying what Hugging Face would refuse. */
export function parseHubTarget(target: string): HubRepository {
  const id = target.startsWith('hf://') ? target.slice('hf://'.length) : target;
  const parts = id.split('/');
  const refuse = (problem: string) => new HubPublishError(`"${target}" is not a Hugging Face model repository Hugging Face would accept: ${problem}. Give it as hf://ORG/NAME, e.g. hf://brainglobe/cellfinder-resnet50-mylab`);
  if (parts.length !== 2) throw refuse('it must be an organisation or user name and a model name, ORG/NAME');
  const [namespace, name] = parts;
  const problem = partProblem(namespace, 'organisation or user name') ?? partProblem(name, 'model name');
  if (problem) throw refuse(problem);
  if (name.length > MAX_NAME_LENGTH) throw refuse(`the model name is ${name.length} characters long, at most ${MAX_NAME_LENGTH} are allowed`);
  return { namespace, name };
}

export interface HubUploadPlan {
  repo: { type: 'model'; name: string };
  /** Each file of the folder, by its path in the repository. */
  files: Array<{ path: string; content: URL }>;
  commitTitle: string;
  accessToken: string;
}

async function listFiles(folder: string, prefix = ''): Promise<string[]> {
  const entries = await fs.readdir(path.join(folder, prefix), { withFileTypes: true });
  const nested = await Promise.all(
    entries.map(async (entry) => {
      const relative = prefix ? `${prefix}/${entry.name}` : entry.name;
      return entry.isDirectory() ? listFiles(folder, relative) : [relative];
    }),
  );
  return nested.flat().sort();
}

/**
 * What publishing `folder` to `target` sends: checked before anything is
 * uploaded. The folder must be a Hub export (config.json, metadata.json,
 * model.weights.h5); the token comes from `environment.HF_TOKEN`.
 */
export async function planHubUpload(folder: string, target: string, environment: NodeJS.ProcessEnv = process.env): Promise<HubUploadPlan> {
  const repository = parseHubTarget(target);
  const accessToken = environment[HF_TOKEN_ENV]?.trim();
  if (!accessToken) {
    throw new HubPublishError(
      `no Hugging Face token: set ${HF_TOKEN_ENV} to an access token with write permission (huggingface.co/settings/tokens); it is only passed to the upload, never saved`,
    );
  }
  let files: string[];
  try {
    files = await listFiles(folder);
  } catch (error) {
    throw new DataFileError(folder, `cannot be read (${(error as Error).message})`, 'Export the model first: model export --hub OUT');
  }
  const missing = KERAS_MEMBERS.filter((member) => !files.includes(member));
  if (missing.length > 0) throw new DataFileError(folder, `is not a Hub export (no ${missing.join(', ')})`, 'Export the model first with model export --hub OUT, and publish that folder');
  return {
    repo: { type: 'model', name: `${repository.namespace}/${repository.name}` },
    files: files.map((file) => ({ path: file, content: pathToFileURL(path.join(folder, file)) })),
    commitTitle: `Upload cellfinder model (${path.basename(path.resolve(folder))}) with cellfinder-retrain`,
    accessToken,
  };
}

/** The two calls of @huggingface/hub a publish makes (the library itself, or a stand-in in tests). */
export interface HubClient {
  createRepo(params: { repo: HubUploadPlan['repo']; accessToken: string }): Promise<unknown>;
  repoExists(params: { repo: HubUploadPlan['repo']; accessToken: string }): Promise<boolean>;
  uploadFiles(params: { repo: HubUploadPlan['repo']; accessToken: string; files: HubUploadPlan['files']; commitTitle: string }): Promise<unknown>;
}

/** Uploads as planned; returns the repository's address. Library errors keep their message, without the token. */
export async function publishToHub(plan: HubUploadPlan, client?: HubClient): Promise<string> {
  const hub: HubClient = client ?? (await import('@huggingface/hub'));
  const { repo, accessToken } = plan;
  try {
    if (!(await hub.repoExists({ repo, accessToken }))) await hub.createRepo({ repo, accessToken });
    await hub.uploadFiles({ repo, accessToken, files: plan.files, commitTitle: plan.commitTitle });
  } catch (error) {
    throw new HubPublishError(`uploading to hf://${repo.name} failed: ${String((error as Error)?.message ?? error).split(accessToken).join('<token>')}`);
  }
  return `https://huggingface.co/${repo.name}`;
}

/**
 * `model export` and `model publish`: a trained model as the folder Keras 3
 * uploads to the Hugging Face Hub, as a BioImage Model Zoo package, and the
 * Hub folder's upload.
 */
import { existsSync } from 'node:fs';
import { mkdtemp, readFile, rm, stat } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import * as path from 'node:path';
import { DataFileError } from '../core/errors';
import { loadTensorFlow } from '../engine/backend';
import { exportForBioimageio, PACKAGE_ZIP, testWithBioimageio, validationFromRun } from '../sharing/bioimageio';
import { exportForHub } from '../sharing/hubExport';
import { modelCardPath } from '../sharing/modelCard';
import { HubPublishError, planHubUpload, publishToHub } from '../sharing/hubPublish';
import { runConfigOf } from '../training/trainConfig';
import { loadSamples } from '../training/trainingData';
import { parseArgs, UsageError } from './args';

interface Io {
  out: (text: string) => void;
  err: (text: string) => void;
}

export const EXPORT_USAGE = `  model export --hub <out> <model.keras> [--card <README.md>] [--force] [--json]
      The folder Keras 3 uploads for model.save("hf://ORG/NAME"): config.json,
      metadata.json, model.weights.h5 and the model card as README.md (--card,
      else the model's own <model>.card.md, else a short placeholder).
      keras.saving.load_model loads it.
  model export --bioimageio <out> <model.keras> [--run <run dir>] [--dataset <training.yaml|dir>]
               [--author NAME]... [--license SPDX] [--test-with <bioimageio>] [--force] [--json]
      A BioImage Model Zoo package (format 0.5.12): rdf.yaml, the model as
      keras_v3 weights, test tensors cut from the model's own dataset (from its
      run's training-config.json, or --dataset), a cover image, README.md with
      the run's validation figures (--run, default the model's folder), and
      package.zip. --test-with runs that bioimageio command's test on it.
      An <out> that already holds files is refused unless --force (then
      replaced once the new export is complete). --json: what was written, as JSON.`;

export const PUBLISH_USAGE = `  model publish <hub folder|model.keras> --to hf://ORG/NAME [--card <README.md>] [--json]
      Uploads a Hub folder (or exports the .keras first) with the token in
      HF_TOKEN; the token is never written anywhere. --json: the address, as JSON.`;

/** The card for the Hub's README.md: --card, else the model's own card (written by its run or `model card`), else none. */
async function readCard(flags: Map<string, string[]>, modelFile: string): Promise<string | undefined> {
  const file = flags.get('card')?.[0] ?? modelCardPath(modelFile);
  if (!flags.has('card') && !existsSync(file)) return undefined;
  return readFile(file, 'utf8').catch((error: Error) => {
    throw new DataFileError(file, `cannot be read (${error.message})`, 'Give the model card\'s Markdown file');
  });
}

/** The training.yaml files: --dataset (a YAML or a folder holding training.yaml), else the run's. */
async function datasetYamls(dataset: string | undefined, runDir: string): Promise<{ yamlFiles: string[]; normalise: boolean }> {
  const config = await runConfigOf(path.join(runDir, 'model.keras'));
  const normalise = Boolean(config?.normalizeChannels);
  if (dataset !== undefined) {
    const isFolder = (await stat(dataset).catch(() => undefined))?.isDirectory();
    return { yamlFiles: [isFolder ? path.join(dataset, 'training.yaml') : dataset], normalise };
  }
  if (config?.yamlFiles?.length) return { yamlFiles: config.yamlFiles, normalise };
  throw new DataFileError(runDir, 'has no training-config.json naming the dataset the model was trained on', 'Give the dataset with --dataset <training.yaml|dir> (the test tensors are cut from its cubes)');
}

/** `model export --hub OUT MODEL | --bioimageio OUT MODEL ...` */
export async function exportModelCommand(argv: readonly string[], io: Io): Promise<number> {
  const { flags, positionals } = parseArgs(argv, [
    { name: 'hub', values: 1 },
    { name: 'bioimageio', values: 1 },
    { name: 'card', values: 1 },
    { name: 'run', values: 1 },
    { name: 'dataset', values: 1 },
    { name: 'author', values: 1, verbatim: true },
    { name: 'license', values: 1 },
    { name: 'test-with', values: 1 },
    { name: 'force', values: 0 },
    { name: 'json', values: 0 },
  ]);
  if (positionals.length !== 1) throw new UsageError('model export takes one model file (a .keras)');
  const [modelFile] = positionals;
  const hub = flags.get('hub')?.[0];
  const bioimageio = flags.get('bioimageio')?.[0];
  if ((hub === undefined) === (bioimageio === undefined)) throw new UsageError('model export needs one of --hub <out> or --bioimageio <out>');
  const force = flags.has('force');
  const json = flags.has('json');
  if (hub !== undefined) {
    const folder = await exportForHub(modelFile, hub, { card: await readCard(flags, modelFile), force });
    io.out(json ? JSON.stringify({ folder }) : `Hub folder: ${folder} (upload it with: model publish ${folder} --to hf://ORG/NAME)`);
    return 0;
  }
  const runDir = flags.get('run')?.[0] ?? path.dirname(modelFile);
  const { yamlFiles, normalise } = await datasetYamls(flags.get('dataset')?.[0], runDir);
  // Four test cubes: the CPU is enough, and needs no GPU libraries on the loader's path.
  const runtime = await loadTensorFlow('cpu');
  const rdf = await exportForBioimageio(runtime.tf, modelFile, bioimageio as string, {
    samples: await loadSamples(yamlFiles),
    normalise,
    validation: await validationFromRun(runDir),
    authors: flags.get('author'),
    license: flags.get('license')?.[0],
    force,
  });
  const zip = path.join(path.dirname(rdf), PACKAGE_ZIP);
  if (!json) io.out(`BioImage Model Zoo package: ${rdf} (zip: ${zip})`);
  const bioimageioCommand = flags.get('test-with')?.[0];
  if (bioimageioCommand !== undefined) {
    await testWithBioimageio(rdf, bioimageioCommand);
    if (!json) io.out('bioimageio test: passed');
  }
  if (json) io.out(JSON.stringify({ folder: path.dirname(rdf), rdf, zip, tested: bioimageioCommand !== undefined }));
  return 0;
}

/** `model publish FOLDER|MODEL --to hf://ORG/NAME` */
export async function publishModelCommand(argv: readonly string[], io: Io): Promise<number> {
  const { flags, positionals } = parseArgs(argv, [
    { name: 'to', values: 1 },
    { name: 'card', values: 1 },
    { name: 'json', values: 0 },
  ]);
  if (positionals.length !== 1) throw new UsageError('model publish takes one Hub folder (from model export --hub) or .keras model');
  const target = flags.get('to')?.[0];
  if (target === undefined) throw new UsageError('--to hf://ORG/NAME is required');
  const [source] = positionals;
  const isFolder = (await stat(source).catch(() => undefined))?.isDirectory();
  const exported = isFolder ? undefined : await mkdtemp(path.join(tmpdir(), 'cellfinder-retrain-hub-'));
  try {
    const folder = exported ? await exportForHub(source, path.join(exported, 'hub'), { card: await readCard(flags, source) }) : source;
    const plan = await planHubUpload(folder, target);
    io.err(`Uploading ${plan.files.length} files to hf://${plan.repo.name}...`);
    const url = await publishToHub(plan);
    io.out(flags.has('json') ? JSON.stringify({ url }) : `Published: ${url}`);
    return 0;
  } catch (error) {
    // A refused name, a missing token or a failed upload: one line, exit 1, like a file problem.
    if (!(error instanceof HubPublishError)) throw error;
    io.err(`error: ${error.message}`);
    return 1;
  } finally {
    if (exported) await rm(exported, { recursive: true, force: true });
  }
}

/**
 * The models `model fetch` has brought in, as starting points for a
 * retraining: cellfinder's own networks in `~/.brainglobe/cellfinder/models/`
 * (under cellfinder's file names) and every model file of each Hugging Face
 * repository in `~/.brainglobe/cellfinder/models/hf/ORG/NAME/` (a Keras Hub
 * export holds `model.weights.h5`; other repositories may hold `.keras` or
 * `.h5` files of any name).
 */
import { promises as fs } from 'node:fs';
import { homedir } from 'node:os';
import * as path from 'node:path';
import { describeModelFile, type ModelDescription } from '../training/modelFiles';
import { CELLFINDER_MODELS, cellfinderModelsFolder, hubModelFolder, hubModelsFolder, type CellfinderModelName } from './modelFetch';

export type FetchedModel = {
  file: string;
  /** What the file's head says (depth, channels), or why it is not a cellfinder model. */
  description: ModelDescription | { error: string };
} & ({ origin: 'cellfinder'; name: CellfinderModelName } | { origin: 'hub'; repo: string });

const MODEL_FILE = /\.(keras|h5)$/;

/** Model files under `folder`, at any depth; hidden entries (a fetch's temporary files among them) are skipped. */
async function modelFilesUnder(folder: string): Promise<string[]> {
  const entries = await fs.readdir(folder, { withFileTypes: true }).catch(() => []);
  const nested = await Promise.all(
    entries
      .filter((entry) => !entry.name.startsWith('.'))
      .map(async (entry) => {
        const file = path.join(folder, entry.name);
        if (entry.isDirectory()) return modelFilesUnder(file);
        return entry.isFile() && MODEL_FILE.test(entry.name) ? [file] : [];
      }),
  );
  return nested.flat().sort();
}

async function subfolders(folder: string): Promise<string[]> {
  const entries = await fs.readdir(folder, { withFileTypes: true }).catch(() => []);
  return entries.filter((entry) => entry.isDirectory() && !entry.name.startsWith('.')).map((entry) => entry.name).sort();
}

async function describe(file: string): Promise<FetchedModel['description']> {
  return describeModelFile(file).catch((error: Error) => ({ error: error.message }));
}

/** cellfinder's fetched networks first (in CELLFINDER_MODELS' order), then each Hub repository's files by name. */
export async function listFetchedModels(home: string = homedir()): Promise<FetchedModel[]> {
  const found: FetchedModel[] = [];
  for (const [name, model] of Object.entries(CELLFINDER_MODELS) as Array<[CellfinderModelName, (typeof CELLFINDER_MODELS)[CellfinderModelName]]>) {
    const file = path.join(cellfinderModelsFolder(home), model.fileName);
    if (await fs.stat(file).then((stat) => stat.isFile(), () => false)) found.push({ origin: 'cellfinder', name, file, description: await describe(file) });
  }
  const hubRoot = hubModelsFolder(home);
  for (const org of await subfolders(hubRoot)) {
    for (const name of await subfolders(path.join(hubRoot, org))) {
      const repo = `${org}/${name}`;
      for (const file of await modelFilesUnder(hubModelFolder(repo, home))) found.push({ origin: 'hub', repo, file, description: await describe(file) });
    }
  }
  return found;
}

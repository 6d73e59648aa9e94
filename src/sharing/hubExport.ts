/**
 * The folder Keras 3 uploads for `model.save("hf://user/repo")`
 * (keras/src/saving/saving_lib.py, `_upload_model_to_hf`): config.json,
 * metadata.json and model.weights.h5 side by side (`_save_model_to_dir`, the
 * `.keras` members unzipped) plus the model card as README.md. Keras loads an
 * `hf://` model by downloading the repository and reading that folder
 * (`_load_model_from_dir`), so `keras.saving.load_model` on this folder, or on
 * the repository once it is uploaded, rebuilds the same model.
 */
import { promises as fs } from 'node:fs';
import * as path from 'node:path';
import { writeExportFolder, type ExportFolderOptions } from './exportFolder';
import { describeKerasModel, KERAS_MEMBERS, readKerasMember } from './kerasArchive';

export const HUB_CARD_FILE = 'README.md';

export interface HubExportOptions extends ExportFolderOptions {
  /** The model card (Markdown with YAML front matter), written as README.md. */
  card?: string;
}

/**
 * What README.md says without a model card: the front matter the Hub reads
 * (`library_name: keras` makes it show Keras' loading snippet) and where the
 * model came from.
 */
function placeholderCard(modelFile: string, depth: number, channels: number): string {
  return [
    '---',
    'library_name: keras',
    'tags:',
    '- cellfinder',
    '- brainglobe',
    '---',
    '',
    `# cellfinder ResNet-${depth} cube classifier`,
    '',
    `Exported from \`${path.basename(modelFile)}\` by cellfinder-retrain, without a model card: what it was trained on is not recorded here.`,
    '',
    `Input: cubes of (y, x, z) = (50, 50, 20) voxels at (1, 1, 5) µm with ${channels === 2 ? 'two channels (signal, background)' : 'one channel (signal)'}; output: softmax [non_cell, cell].`,
    '',
    "Load it with `keras.saving.load_model('hf://ORG/NAME')`.",
    '',
  ].join('\n');
}

/** Writes the Hub folder for the `.keras` model `modelFile` into `outDir`; returns the folder. */
export async function exportForHub(modelFile: string, outDir: string, options: HubExportOptions = {}): Promise<string> {
  const { depth, channels } = await describeKerasModel(modelFile);
  return writeExportFolder(
    outDir,
    async (folder) => {
      for (const member of KERAS_MEMBERS) await fs.writeFile(path.join(folder, member), await readKerasMember(modelFile, member));
      await fs.writeFile(path.join(folder, HUB_CARD_FILE), options.card ?? placeholderCard(modelFile, depth, channels));
    },
    options,
  );
}

/**
 * The three members of a `.keras` model (Keras 3's `model.save`), taken out
 * of the zip: the Hugging Face folder holds them as plain files.
 */
import { describeModelFile, readZipMember, type ModelDescription } from '../training/modelFiles';
import { DataFileError } from '../core/errors';

export const KERAS_MEMBERS = ['config.json', 'metadata.json', 'model.weights.h5'] as const;
export type KerasMember = (typeof KERAS_MEMBERS)[number];

const NEEDS_KERAS_FIX = 'Export a .keras model (what training writes as model.keras); a weights-only file (.weights.h5, .h5) has no architecture for Keras to rebuild';

/** The model's depth and channels, refusing anything but a `.keras` of cellfinder's network. */
export async function describeKerasModel(modelFile: string): Promise<ModelDescription> {
  const description = await describeModelFile(modelFile);
  if (description.format !== 'keras') throw new DataFileError(modelFile, `is a ${description.format} weights file, not a .keras model`, NEEDS_KERAS_FIX);
  return description;
}

export async function readKerasMember(modelFile: string, member: KerasMember): Promise<Uint8Array> {
  let data: Uint8Array | undefined;
  try {
    data = await readZipMember(modelFile, member);
  } catch (error) {
    throw new DataFileError(modelFile, `is a damaged zip archive (${(error as Error).message})`, NEEDS_KERAS_FIX);
  }
  if (!data) throw new DataFileError(modelFile, `has no ${member}, which every Keras 3 .keras model holds`, NEEDS_KERAS_FIX);
  return data;
}

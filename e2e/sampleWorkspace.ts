/** The workspace the end-to-end journey and the editor bench open in code-server. */
import { promises as fs } from 'node:fs';
import * as path from 'node:path';
import { CELLS_FOLDER, NON_CELLS_FOLDER, TrainingDataset } from '../src/core/dataset';
import { saveCandidateSet } from '../src/core/labelling';
import { SAMPLE } from '../test/helpers';

/**
 * cellfinder's test volume and candidates (`sample/`), a dataset of
 * cellfinder's own labelled cubes (`labelled/`), and a dataset to label the
 * candidates into that remembers them, as "Label Candidates" leaves it
 * (`round1/`).
 */
export async function sampleWorkspace(root: string): Promise<string> {
  const workspace = path.join(root, 'workspace');
  await fs.cp(SAMPLE, path.join(workspace, 'sample'), { recursive: true });
  const labelled = await TrainingDataset.create(path.join(workspace, 'labelled'));
  for (const folder of [CELLS_FOLDER, NON_CELLS_FOLDER]) {
    await fs.cp(path.join(SAMPLE, 'training', folder), path.join(labelled.root, folder), { recursive: true });
  }
  const toLabel = await TrainingDataset.create(path.join(workspace, 'round1'));
  await saveCandidateSet(toLabel.root, {
    points: path.join(workspace, 'sample', 'candidates', 'candidates.xml'),
    signal: path.join(workspace, 'sample', 'signal'),
    background: path.join(workspace, 'sample', 'background'),
    voxelSizes: [5, 2, 2],
  });
  return workspace;
}

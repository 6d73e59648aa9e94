/**
 * An export is a folder of files that belong together (a Hub repository's
 * files, a BioImage Model Zoo package). It is written whole into a hidden
 * sibling folder and renamed into place at the end, so an interrupted export
 * never leaves a half-filled folder that looks finished. An output folder that
 * already holds files is refused unless the caller asks to replace it
 * (--force); then it is swapped out only once the new one is complete.
 */
import { randomBytes } from 'node:crypto';
import { promises as fs } from 'node:fs';
import * as path from 'node:path';
import { DataFileError, writeErrorFor } from '../core/errors';

export interface ExportFolderOptions {
  /** Replace an output folder that already holds files. */
  force?: boolean;
}

async function folderEntries(folder: string): Promise<string[] | undefined> {
  try {
    return await fs.readdir(folder);
  } catch (error) {
    const code = (error as NodeJS.ErrnoException).code;
    if (code === 'ENOENT') return undefined;
    if (code === 'ENOTDIR') throw new DataFileError(folder, 'is a file, not a folder', 'Choose a folder to export into');
    throw writeErrorFor(folder, error);
  }
}

/**
 * Runs `fill` on an empty temporary folder beside `outDir`, then puts that
 * folder at `outDir`. Returns `outDir`.
 */
export async function writeExportFolder(outDir: string, fill: (folder: string) => Promise<void>, options: ExportFolderOptions = {}): Promise<string> {
  const target = path.resolve(outDir);
  const existing = await folderEntries(target);
  if (existing && existing.length > 0 && !options.force) {
    throw new DataFileError(target, `already holds ${existing.length} file(s); nothing was changed`, 'Choose a new or empty output folder, or add --force to replace this one');
  }
  const parent = path.dirname(target);
  await fs.mkdir(parent, { recursive: true }).catch((error: unknown) => {
    throw writeErrorFor(target, error);
  });
  const suffix = `${process.pid}-${randomBytes(4).toString('hex')}`;
  const temp = path.join(parent, `.${path.basename(target)}.partial-${suffix}`);
  try {
    await fs.mkdir(temp);
    await fill(temp);
    if (existing) {
      // Swapped, not deleted first: until the rename, the old export stays whole.
      const old = path.join(parent, `.${path.basename(target)}.replaced-${suffix}`);
      await fs.rename(target, old);
      await fs.rename(temp, target);
      await fs.rm(old, { recursive: true, force: true });
    } else {
      await fs.rename(temp, target);
    }
  } catch (error) {
    await fs.rm(temp, { recursive: true, force: true });
    if (error instanceof DataFileError) throw error;
    throw writeErrorFor(target, error);
  }
  return target;
}

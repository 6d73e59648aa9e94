/**
 * Atomic, non-clobbering file writes. A label is precious: a crash, a full
 * disk or a second writer must never leave a half-written cube or replace one
 * that is already saved.
 */
import { randomBytes } from 'node:crypto';
import { promises as fs } from 'node:fs';
import type { FileHandle } from 'node:fs/promises';
import * as path from 'node:path';
import { DataFileError, writeErrorFor } from './errors';

export interface AtomicWriteOptions {
  /** Replace an existing file. Off by default: existing files are never touched. */
  overwrite?: boolean;
}

/** Thrown when a file exists already and the caller did not ask to overwrite it. */
export class FileExistsError extends DataFileError {
  constructor(file: string) {
    super(file, 'already exists', 'Nothing was overwritten; remove or rename it first if you mean to replace it');
    this.name = 'FileExistsError';
  }
}

function tempNameFor(file: string): string {
  return path.join(path.dirname(file), `.${path.basename(file)}.${process.pid}.${randomBytes(4).toString('hex')}.tmp`);
}

/**
 * Writes `data` (or what the function writes to the open temporary file) to
 * `file` so that readers see either nothing or the whole file.
 * The data goes to a temporary file in the same folder, is flushed to disk,
 * then moved into place: with `link` when not overwriting, because link fails
 * if the target exists (no race between checking and moving), with `rename`
 * when overwriting.
 */
export async function writeFileAtomic(file: string, data: Uint8Array | string | ((handle: FileHandle) => Promise<void>), options: AtomicWriteOptions = {}): Promise<void> {
  const temp = tempNameFor(file);
  try {
    const handle = await fs.open(temp, 'wx');
    try {
      // A function streams large contents (a model archive) in instead of holding them in memory.
      if (typeof data === 'function') await data(handle);
      else await handle.writeFile(data);
      await handle.sync();
    } finally {
      await handle.close();
    }
    if (options.overwrite) {
      await fs.rename(temp, file);
      return;
    }
    await moveWithoutOverwrite(temp, file);
  } catch (error) {
    await fs.rm(temp, { force: true });
    if (error instanceof DataFileError) throw error;
    throw writeErrorFor(file, error);
  }
}

async function moveWithoutOverwrite(temp: string, file: string): Promise<void> {
  try {
    await fs.link(temp, file);
  } catch (error) {
    const code = (error as NodeJS.ErrnoException).code;
    if (code === 'EEXIST') throw new FileExistsError(file);
    // Some file systems (FAT, some network mounts) have no hard links: fall
    // back to check-then-rename, which is atomic for readers but can race with
    // another writer; acceptable there, as nothing better exists.
    if (code !== 'EPERM' && code !== 'ENOTSUP' && code !== 'EOPNOTSUPP' && code !== 'ENOSYS') throw error;
    if (await exists(file)) throw new FileExistsError(file);
    await fs.rename(temp, file);
    return;
  }
  await fs.rm(temp, { force: true });
}

/**
 * Moves `from` to `to` without ever replacing an existing `to`.
 * Used to relabel a cube (cells/ <-> non_cells/) without rewriting its bytes.
 */
export async function moveFileNoClobber(from: string, to: string): Promise<void> {
  try {
    await moveWithoutOverwrite(from, to);
  } catch (error) {
    if (error instanceof DataFileError) throw error;
    throw writeErrorFor(to, error);
  }
}

/** Appends one line (a record of a decision) and flushes it to disk. */
export async function appendLineDurably(file: string, line: string): Promise<void> {
  try {
    const handle = await fs.open(file, 'a');
    try {
      await handle.write(line.endsWith('\n') ? line : `${line}\n`);
      await handle.sync();
    } finally {
      await handle.close();
    }
  } catch (error) {
    throw writeErrorFor(file, error);
  }
}

export async function exists(file: string): Promise<boolean> {
  try {
    await fs.access(file);
    return true;
  } catch {
    return false;
  }
}

/**
 * The records of a newline-delimited JSON log written with appendLineDurably.
 * A line that does not parse (the last one, cut short by a crash or still
 * being written) is left out: the log is append-only, so nothing after it is lost.
 */
export function parseJsonLines<T>(text: string): T[] {
  const records: T[] = [];
  for (const line of text.split('\n')) {
    if (line.trim() === '') continue;
    try {
      records.push(JSON.parse(line) as T);
    } catch {
      // incomplete line
    }
  }
  return records;
}

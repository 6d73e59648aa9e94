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

/** `.name.<pid>.<8 hex>.tmp`: the writer's pid, so a later process can tell a dead writer's leftovers. */
function tempNameFor(file: string): string {
  return path.join(path.dirname(file), `.${path.basename(file)}.${process.pid}.${randomBytes(4).toString('hex')}.tmp`);
}

const TEMP_NAME = /^\..+\.(\d+)\.[0-9a-f]{8}\.tmp$/;

/** Whether a process with this pid runs on this machine (EPERM: it does, as another user). */
export function processIsAlive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (error) {
    return (error as NodeJS.ErrnoException).code === 'EPERM';
  }
}

/**
 * Removes the temporary files that writers killed mid-write (kill -9, power
 * cut) left in `folder`: only ours (by name), only of processes no longer
 * running. Returns the files removed.
 */
export function removeStaleTempFiles(folder: string): Promise<string[]> {
  return removeFilesOfDeadProcesses(folder, TEMP_NAME);
}

/**
 * Removes the files in `folder` whose names match `pattern` (its first group
 * is the pid of the process that made them) and whose process no longer runs.
 */
export async function removeFilesOfDeadProcesses(folder: string, pattern: RegExp): Promise<string[]> {
  let names: string[];
  try {
    names = await fs.readdir(folder);
  } catch {
    return [];
  }
  const removed: string[] = [];
  for (const name of names) {
    const match = pattern.exec(name);
    if (!match || Number(match[1]) === process.pid || processIsAlive(Number(match[1]))) continue;
    await fs.rm(path.join(folder, name), { force: true });
    removed.push(path.join(folder, name));
  }
  return removed;
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
  const prepared = await prepareFile(file, data);
  try {
    if (options.overwrite) await fs.rename(prepared.temp, file);
    else await moveWithoutOverwrite(prepared.temp, file);
  } catch (error) {
    await fs.rm(prepared.temp, { force: true });
    if (error instanceof DataFileError) throw error;
    throw writeErrorFor(file, error);
  }
}

/** A file's contents written and flushed under a temporary name beside it, not yet in place. */
export interface PreparedFile {
  file: string;
  temp: string;
}

/**
 * The first half of an atomic write: `data` in a flushed temporary file.
 * Several files prepared at once flush in parallel; `placeFile` then puts
 * each in place in the order that matters.
 */
export async function prepareFile(file: string, data: Uint8Array | string | ((handle: FileHandle) => Promise<void>)): Promise<PreparedFile> {
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
    return { file, temp };
  } catch (error) {
    await fs.rm(temp, { force: true });
    throw writeErrorFor(file, error);
  }
}

/** Drops a prepared file that will not be placed. */
export async function discardFile(prepared: PreparedFile): Promise<void> {
  await fs.rm(prepared.temp, { force: true });
}

/** What `writeFileOnce` found. */
export type WriteOnceResult = 'written' | 'identical';

/** Thrown when a file exists already with other bytes than the ones to write. */
export class FileDiffersError extends DataFileError {
  constructor(file: string) {
    super(file, 'already exists with different content', 'Nothing was overwritten; remove it first if the new one should replace it');
    this.name = 'FileDiffersError';
  }
}

/**
 * Writes `data` atomically unless `file` already holds exactly these bytes:
 * a re-run after a crash, or a second process writing the same file at the
 * same time, is then not an error. A file with other bytes is never replaced.
 */
export async function writeFileOnce(file: string, data: Uint8Array): Promise<WriteOnceResult> {
  return placeFileOnce(await prepareFile(file, data), data);
}

/** Puts a prepared file in place as `writeFileOnce` does; its temporary file is gone afterwards either way. */
export async function placeFileOnce(prepared: PreparedFile, data: Uint8Array): Promise<WriteOnceResult> {
  try {
    await moveWithoutOverwrite(prepared.temp, prepared.file);
    return 'written';
  } catch (error) {
    await discardFile(prepared);
    if (!(error instanceof FileExistsError)) throw error instanceof DataFileError ? error : writeErrorFor(prepared.file, error);
    if (await holdsBytes(prepared.file, data)) return 'identical';
    throw new FileDiffersError(prepared.file);
  }
}

/** Whether `file` exists and holds exactly `data`. */
export async function holdsBytes(file: string, data: Uint8Array): Promise<boolean> {
  const onDisk = await fs.readFile(file).catch(() => undefined);
  return onDisk !== undefined && Buffer.from(data.buffer, data.byteOffset, data.byteLength).equals(onDisk);
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

/**
 * `mkdir -p` that fails with the real reason: Node's recursive mkdir reports
 * ENOENT ("does not exist") for a read-only file system. On ENOENT the first
 * missing level is made on its own, which fails with EROFS, EACCES, ...
 */
export async function makeFolder(folder: string): Promise<void> {
  try {
    await fs.mkdir(folder, { recursive: true });
  } catch (error) {
    if ((error as NodeJS.ErrnoException).code !== 'ENOENT') throw error;
    let missing = folder;
    while (path.dirname(missing) !== missing && !(await exists(path.dirname(missing)))) missing = path.dirname(missing);
    await fs.mkdir(missing);
    throw error;
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

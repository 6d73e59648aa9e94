/**
 * A problem with one of the user's files, told the way a user can act on it:
 * which file, what is wrong with it, and what to do about it.
 *
 * Every reader and writer in the core throws this (never a bare library error)
 * so the CLI and the extension can show one clear line per problem.
 */
export class DataFileError extends Error {
  constructor(
    readonly file: string,
    readonly problem: string,
    readonly fix: string,
  ) {
    super(`${file}: ${problem}. ${fix}`);
    this.name = 'DataFileError';
  }
}

/** Turns an operating-system error from writing `file` into a DataFileError with a fix. */
export function writeErrorFor(file: string, error: unknown): DataFileError {
  const code = (error as NodeJS.ErrnoException)?.code;
  switch (code) {
    case 'ENOSPC':
    case 'EDQUOT':
      return new DataFileError(file, 'the disk is full', 'Free some space or choose another output folder; files already saved were not changed');
    case 'EACCES':
    case 'EPERM':
    case 'EROFS':
      return new DataFileError(file, 'the folder is not writable', 'Choose an output folder you can write to, or fix its permissions');
    case 'ENOENT':
      return new DataFileError(file, 'its folder does not exist', 'Create the folder first or choose an existing output folder');
    case 'ENOTDIR':
      return new DataFileError(file, 'a part of its path is a file, not a folder', 'Choose an output path made of folders');
    default:
      return new DataFileError(file, `could not be written (${(error as Error)?.message ?? String(error)})`, 'Check the output folder and try again');
  }
}

/**
 * The run's event log: every training event appended to
 * `<output>/training-events.jsonl`, so a run started by one editor window or
 * the CLI can be followed (and shown after it ends) by any other. The first
 * line of each process names its pid, for watching and cancelling.
 */
import { appendFileSync, mkdirSync } from 'node:fs';
import * as path from 'node:path';
import { DataFileError, writeErrorFor } from '../core/errors';
import { EVENTS_FILE } from '../core/runFiles';
import type { TrainingEvent } from './events';

/** Opens the log of the run in `outputDir` and returns the function that appends one event. */
export function openRunLog(outputDir: string, mode: 'train' | 'resume'): (event: TrainingEvent) => void {
  try {
    mkdirSync(outputDir, { recursive: true });
  } catch (error) {
    const code = (error as NodeJS.ErrnoException).code;
    if (code === 'EEXIST' || code === 'ENOTDIR') throw new DataFileError(outputDir, 'is a file, not a folder', 'Give a folder for the run\'s output (-o): a new one, or a run to resume');
    throw writeErrorFor(outputDir, error);
  }
  const file = path.join(outputDir, EVENTS_FILE);
  const append = (event: TrainingEvent) => appendFileSync(file, `${JSON.stringify(event)}\n`);
  append({ type: 'launched', pid: process.pid, mode, time: Date.now() });
  return append;
}

/**
 * The background training process. The extension host (or the CLI) starts
 * it with a JSON config file, reads newline-delimited JSON events from its
 * stdout, and may write `{"command":"cancel"}` to its stdin (or send SIGTERM
 * / SIGINT) to stop it at the next batch boundary with a resumable
 * checkpoint. Never run in the extension host: training blocks its thread.
 * Every event also goes to `<output>/training-events.jsonl`, so a run started
 * by one editor window (or the CLI) can be followed and shown by another.
 * The device (CELLFINDER_RETRAIN_DEVICE) and, for the GPU, the CUDA library
 * path come in its environment, from startWorker.
 *
 *   node dist/worker.js train <config.json>     start a run
 *   node dist/worker.js resume <output-dir>     continue an interrupted run
 */
import { promises as fs } from 'node:fs';
import * as path from 'node:path';
import * as readline from 'node:readline';
import { DataFileError } from '../core/errors';
import { loadTensorFlow } from '../engine/backend';
import type { TrainingEvent } from './events';
import { OutOfMemoryError } from './outOfMemory';
import { openRunLog } from './runLog';
import { TRAIN_DEFAULTS, type TrainConfig } from './trainConfig';
import { train } from './trainer';

let logEvent: ((event: TrainingEvent) => void) | undefined;

function emit(event: TrainingEvent): void {
  process.stdout.write(`${JSON.stringify(event)}\n`);
  logEvent?.(event);
}

export async function runWorker(argv: readonly string[]): Promise<number> {
  const [mode, target] = argv;
  let cancelled = false;
  const cancel = () => {
    cancelled = true;
  };
  process.on('SIGTERM', cancel);
  process.on('SIGINT', cancel);
  const input = readline.createInterface({ input: process.stdin });
  input.on('line', (line) => {
    try {
      if ((JSON.parse(line) as { command?: string }).command === 'cancel') cancel();
    } catch {
      // not a command: ignore
    }
  });
  try {
    if ((mode !== 'train' && mode !== 'resume') || !target) throw new Error('usage: worker train <config.json> | resume <output-dir>');
    const config: TrainConfig =
      mode === 'train' ? { ...TRAIN_DEFAULTS, ...(JSON.parse(await fs.readFile(target, 'utf8')) as Partial<TrainConfig>) } as TrainConfig : ({ ...TRAIN_DEFAULTS, yamlFiles: [], outputDir: target } as TrainConfig);
    logEvent = openRunLog(path.resolve(config.outputDir), mode);
    const runtime = await loadTensorFlow();
    const result = await train(runtime.tf, runtime, config, emit, { cancelRequested: () => cancelled }, mode === 'resume');
    return result.status === 'finished' ? 0 : 3;
  } catch (error) {
    if (error instanceof DataFileError) emit({ type: 'error', message: error.message, file: error.file, fix: error.fix });
    else if (error instanceof OutOfMemoryError) emit({ type: 'error', message: error.problem, fix: error.fix, suggestedBatchSize: error.suggestedBatchSize });
    else emit({ type: 'error', message: (error as Error)?.message ?? String(error) });
    return 1;
  } finally {
    input.close();
  }
}

if (require.main === module) {
  void runWorker(process.argv.slice(2)).then((code) => {
    process.exitCode = code;
  });
}

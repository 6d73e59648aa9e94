/**
 * Batches assembled on a worker thread. The native train step is one
 * synchronous call that holds the main thread for the whole step, so a batch
 * prepared there "in the background" is really prepared between steps. On
 * its own thread, reading, normalising, augmenting and packing the next batch
 * overlaps the step.
 *
 * Plans (with their augmentation already drawn, see `planBatch`) go to the
 * thread; batches come back with their buffers transferred, not copied.
 */
import { existsSync } from 'node:fs';
import * as path from 'node:path';
import { Worker } from 'node:worker_threads';
import { DataFileError } from '../core/errors';
import type { Batch, BatchPlan } from './trainingData';

/** The thread's script: next to this module, in dist/ as in the compiled tests. */
const THREAD_SCRIPT = path.join(__dirname, 'batchThreadEntry.js');

export interface BatchRequest {
  id: number;
  plan: BatchPlan;
}

/** A failure on the thread, as plain data: a DataFileError keeps its file and fix. */
export type ThreadError = { message: string } | { file: string; problem: string; fix: string };

export type BatchReply = { id: number; batch: Batch } | { id: number; error: ThreadError };

export function threadErrorOf(error: unknown): ThreadError {
  if (error instanceof DataFileError) return { file: error.file, problem: error.problem, fix: error.fix };
  return { message: (error as Error)?.message ?? String(error) };
}

function errorFromThread(error: ThreadError): Error {
  return 'file' in error ? new DataFileError(error.file, error.problem, error.fix) : new Error(error.message);
}

export class BatchThread {
  // geotiff's web-worker shim, loaded on any worker thread, takes the thread
  // for one of its own unless workerData is an object without its `mod`
  // (undefined makes it throw at load).
  private readonly thread: Worker;
  private readonly waiting = new Map<number, { resolve: (batch: Batch) => void; reject: (error: Error) => void }>();
  private nextId = 0;
  private closed = false;

  constructor(script = THREAD_SCRIPT) {
    // Checked here: a missing script would otherwise surface as Node's "Cannot find module" from the thread.
    if (!existsSync(script)) throw new DataFileError(script, 'is missing, so training cannot assemble its batches', 'Reinstall the extension (in a source checkout: npm run build)');
    this.thread = new Worker(script, { workerData: {} });
    this.thread.on('message', (reply: BatchReply) => {
      const waiter = this.waiting.get(reply.id);
      this.waiting.delete(reply.id);
      if ('error' in reply) waiter?.reject(errorFromThread(reply.error));
      else waiter?.resolve(reply.batch);
    });
    // The thread itself failed (not a batch): every batch still asked for fails with it.
    this.thread.on('error', (error) => this.failAll(error));
    this.thread.on('exit', (code) => this.failAll(new Error(`the batch-assembly thread stopped (exit code ${code})`)));
  }

  assemble(plan: BatchPlan): Promise<Batch> {
    if (this.closed) return Promise.reject(new Error('the batch-assembly thread is closed'));
    const id = this.nextId++;
    const batch = new Promise<Batch>((resolve, reject) => this.waiting.set(id, { resolve, reject }));
    this.thread.postMessage({ id, plan } satisfies BatchRequest);
    // A batch asked for ahead may never be awaited (the run was cancelled or
    // failed first); its error must not then end the process as unhandled.
    // Whoever awaits it still gets the error.
    batch.catch(() => undefined);
    return batch;
  }

  /**
   * The batches of `plans` in order, each asked for one ahead, so that the
   * next batch is assembled while the caller works on this one. Plans are
   * taken from the iterable one at a time, in order.
   */
  async *inOrder(plans: Iterable<BatchPlan>): AsyncGenerator<Batch> {
    let ahead: Promise<Batch> | undefined;
    for (const plan of plans) {
      const current = ahead;
      ahead = this.assemble(plan);
      if (current) yield await current;
    }
    if (ahead) yield await ahead;
  }

  /** Stops the thread; batches not yet delivered are dropped. */
  async close(): Promise<void> {
    this.closed = true;
    this.waiting.clear();
    await this.thread.terminate();
  }

  private failAll(error: Error): void {
    for (const { reject } of this.waiting.values()) reject(error);
    this.waiting.clear();
  }
}

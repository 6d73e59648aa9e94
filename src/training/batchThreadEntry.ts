/**
 * The batch-assembly thread's script (see batchThread.ts): assembles each
 * planned batch it is sent and sends it back, its buffers transferred.
 * Bundled on its own as dist/batchThreadEntry.js.
 */
import { parentPort } from 'node:worker_threads';
import { threadErrorOf, type BatchReply, type BatchRequest } from './batchThread';
import { assembleBatch } from './trainingData';

const port = parentPort;
if (!port) throw new Error('batchThreadEntry runs as a worker thread (see batchThread.ts)');
port.on('message', ({ id, plan }: BatchRequest) => {
  assembleBatch(plan).then(
    (batch) => port.postMessage({ id, batch } satisfies BatchReply, [batch.inputs.buffer, batch.labels.buffer]),
    (error: unknown) => port.postMessage({ id, error: threadErrorOf(error) } satisfies BatchReply),
  );
});

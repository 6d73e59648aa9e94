/**
 * Running out of memory while training, told as something a user can act on.
 *
 * What it looks like when it happens:
 * - TensorFlow's allocators (the GPU's BFC allocator, the CPU's) refuse a
 *   tensor: status RESOURCE_EXHAUSTED (8), which the native engine's addon
 *   throws as "Invalid TF_Status: 8\nMessage: OOM when allocating tensor with
 *   shape[16,64,25,25,10] and type float on
 *   /job:localhost/replica:0/task:0/device:GPU:0 by allocator GPU_0_bfc";
 * - cuDNN or cuBLAS cannot get their workspace (CUDNN_STATUS_ALLOC_FAILED,
 *   CUBLAS_STATUS_ALLOC_FAILED, CUDA_ERROR_OUT_OF_MEMORY);
 * - V8 cannot allocate a batch's array buffer ("Array buffer allocation failed").
 */

export interface OutOfMemory {
  /** Where memory ran out: a TensorFlow device (GPU:0, CPU:0), or the host for JavaScript's own buffers. */
  device: string;
  /** The tensor that could not be allocated, when TensorFlow names it. */
  shape?: number[];
  dtype?: string;
  /** The library's own words, one line. */
  detail: string;
}

const TF_OOM = /OOM when allocating (?:temporary )?tensor (?:with|of) shape\s*\[([\d,\s]*)\](?: and type (\w+))?(?: on \S*?device:(\w+:\d+))?/;
const OTHER_GPU_OOM = /RESOURCE_EXHAUSTED|CUDNN_STATUS_ALLOC_FAILED|CUBLAS_STATUS_ALLOC_FAILED|CUDA_ERROR_OUT_OF_MEMORY|out of memory/i;

/** Reads an error thrown while training; undefined when it is not about memory. */
export function readOutOfMemory(error: unknown): OutOfMemory | undefined {
  const message = String((error as Error)?.message ?? error);
  const detail = message.replace(/^Invalid TF_Status: \d+\s*Message:\s*/, '').split('\n')[0].trim();
  const tensor = TF_OOM.exec(message);
  if (tensor) {
    return { device: tensor[3] ?? 'unknown device', shape: tensor[1].split(',').map((n) => Number(n.trim())), dtype: tensor[2], detail };
  }
  // The addon's status code 8 is RESOURCE_EXHAUSTED.
  if (/^Invalid TF_Status: 8\b/.test(message) || OTHER_GPU_OOM.test(message)) return { device: /GPU:\d+/.exec(message)?.[0] ?? (/cu(DNN|BLAS|DA)/i.test(message) ? 'GPU' : 'unknown device'), detail };
  if (error instanceof RangeError && /Array buffer allocation failed/.test(message)) return { device: 'host', detail };
  return undefined;
}

const BYTES_PER_ELEMENT: Record<string, number> = { float: 4, int32: 4, half: 2, bfloat16: 2, double: 8, int64: 8 };

/** Training stopped because memory ran out: what happened, what to do, and a batch size that fits. */
export class OutOfMemoryError extends Error {
  constructor(
    readonly problem: string,
    readonly fix: string,
    /** The batch size that did not fit. */
    readonly batchSize: number,
    /** A batch size that fits (tried), or half when none could be tried; absent when even one cube does not fit. */
    readonly suggestedBatchSize?: number,
  ) {
    super(`${problem}. ${fix}`);
    this.name = 'OutOfMemoryError';
  }
}

/**
 * The error to report. `fits` is the largest batch size that was tried and
 * fitted (a training step's gradients computed), 0 when even one cube did
 * not fit, undefined when none was tried (then half is suggested).
 */
export function outOfMemoryError(oom: OutOfMemory, context: { batchSize: number; networkDepth: number; fits?: number }): OutOfMemoryError {
  const { batchSize, networkDepth, fits } = context;
  const where = oom.device === 'host' ? "this computer's memory" : /GPU/.test(oom.device) ? `GPU memory (${oom.device})` : `memory (TensorFlow device ${oom.device})`;
  const size = oom.shape ? oom.shape.reduce((a, b) => a * b, 1) * (BYTES_PER_ELEMENT[oom.dtype ?? 'float'] ?? 4) : undefined;
  const what = oom.shape
    ? `TensorFlow could not allocate a ${oom.dtype ?? ''} tensor of shape [${oom.shape.join(', ')}]${size ? ` (${(size / 2 ** 20).toFixed(0)} MiB)` : ''}`.replace('  ', ' ')
    : oom.detail;
  const problem = `Out of ${where} training ResNet-${networkDepth} at batch size ${batchSize}: ${what}`;
  if (fits === 0) {
    const onGpu = /GPU/.test(oom.device);
    const smaller = [18, 34, 50, 101].filter((depth) => depth < networkDepth);
    const options = [
      ...(smaller.length ? [`use a smaller network (--network-depth ${smaller.join(' or ')})`] : []),
      onGpu ? "free the GPU's memory (nvidia-smi lists the processes holding it)" : 'close other programs to free memory',
      onGpu ? 'train on the CPU (--device cpu)' : 'train on a GPU (cellfinder-retrain engine setup --gpu)',
    ];
    return new OutOfMemoryError(problem, `Even one cube does not fit: ${options.join(', or ')}`, batchSize);
  }
  const suggested = fits ?? Math.max(1, Math.floor(batchSize / 2));
  const how = fits === undefined ? `Try batch size ${suggested} (half)` : `Batch size ${suggested} fits (tried just now)`;
  return new OutOfMemoryError(problem, `${how}: start the run again with --batch-size ${suggested} (in the editor: Retrain Network with batch size ${suggested})`, batchSize, suggested);
}

/** Smaller batch sizes to try after `batchSize` did not fit: halving down to 1. */
export function smallerBatchSizes(batchSize: number): number[] {
  const sizes: number[] = [];
  for (let size = Math.floor(batchSize / 2); size >= 1; size = Math.floor(size / 2)) sizes.push(size);
  return sizes;
}

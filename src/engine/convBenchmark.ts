/**
 * Conv3D throughput of the native TensorFlow backend vs the pure-JS cpu
 * backend, on a ResNet-like layer: input (batch, 50, 50, 20, 64), 3x3x3
 * kernel, 64 filters, stride 1, 'same' (a residual unit 2 convolution at the
 * full cube size is the upper bound of what the network does).
 *
 * Run (after `tsc -p tsconfig.test.json`):
 *   node out/src/engine/convBenchmark.js [--batch 8] [--cpu-batch 1] [--reps 3] [--backends tensorflow,cpu] [--json]
 * The cpu backend needs about a minute per batch-1 pass, so it runs a
 * smaller batch by default; GFLOP/s does not depend on the batch size.
 */
import type * as tfType from '@tensorflow/tfjs';
import { loadNativeBackend } from './nativeBackend';

type Tf = typeof tfType;

export interface ConvBenchmarkOptions {
  batch?: number;
  /** (y, x, z) */
  spatial?: [number, number, number];
  channels?: number;
  filters?: number;
  kernel?: number;
  reps?: number;
}

export interface ConvBenchmarkResult {
  backend: string;
  batch: number;
  inputShape: number[];
  filterShape: number[];
  /** Milliseconds per forward pass. */
  forwardMs: number;
  /** Milliseconds per backward pass (gradients for input and filter; measured forward+backward minus forward). */
  backwardMs: number;
  forwardGflops: number;
  backwardGflops: number;
}

/** Times forward and forward+backward of one Conv3D on `backend` (median of `reps` after one warm-up). */
export async function benchmarkConv3d(tf: Tf, backend: string, options: ConvBenchmarkOptions = {}): Promise<ConvBenchmarkResult> {
  const { batch = 8, spatial = [50, 50, 20], channels = 64, filters = 64, kernel = 3, reps = 3 } = options;
  await tf.setBackend(backend);
  const inputShape: [number, number, number, number, number] = [batch, ...spatial, channels];
  const filterShape: [number, number, number, number, number] = [kernel, kernel, kernel, channels, filters];
  const x = tf.randomNormal(inputShape, 0, 1, 'float32', 1) as tfType.Tensor5D;
  const w = tf.randomNormal(filterShape, 0, 0.05, 'float32', 2) as tfType.Tensor5D;
  // dataSync() inside: the work is done when it returns. Nothing is returned from tidy
  // (it would walk a returned typed array element by element).
  const forward = () =>
    tf.tidy(() => {
      tf.conv3d(x, w, 1, 'same').dataSync();
    });
  const both = () =>
    tf.tidy(() => {
      const [dx, dw] = tf.grads((a: tfType.Tensor, b: tfType.Tensor) => tf.sum(tf.conv3d(a as tfType.Tensor5D, b as tfType.Tensor5D, 1, 'same')))([x, w]);
      dx.dataSync();
      dw.dataSync();
    });
  const time = (work: () => unknown) => {
    work(); // warm-up: kernel selection, allocations
    const samples: number[] = [];
    for (let i = 0; i < reps; i++) {
      const start = performance.now();
      work();
      samples.push(performance.now() - start);
    }
    return samples.sort((a, b) => a - b)[Math.floor(samples.length / 2)];
  };
  const forwardMs = time(forward);
  const bothMs = time(both);
  x.dispose();
  w.dispose();
  // Multiply-adds per output element: kernel^3 * channels; 'same' keeps the spatial size.
  const flops = 2 * batch * spatial[0] * spatial[1] * spatial[2] * filters * kernel ** 3 * channels;
  const backwardMs = Math.max(bothMs - forwardMs, 1e-9);
  return {
    backend,
    batch,
    inputShape,
    filterShape,
    forwardMs,
    backwardMs,
    forwardGflops: flops / forwardMs / 1e6,
    // Backward computes two convolution-sized products (input and filter gradients).
    backwardGflops: (2 * flops) / backwardMs / 1e6,
  };
}

export function formatConvBenchmark(results: ConvBenchmarkResult[]): string {
  const lines = ['backend      batch  forward ms  GFLOP/s  backward ms  GFLOP/s'];
  for (const r of results) {
    lines.push(`${r.backend.padEnd(12)} ${String(r.batch).padStart(5)} ${r.forwardMs.toFixed(0).padStart(11)} ${r.forwardGflops.toFixed(2).padStart(8)} ${r.backwardMs.toFixed(0).padStart(12)} ${r.backwardGflops.toFixed(2).padStart(8)}`);
  }
  const native = results.find((r) => r.backend === 'tensorflow');
  const cpu = results.find((r) => r.backend === 'cpu');
  if (native && cpu) {
    lines.push(`speed-up native/cpu: forward ${(native.forwardGflops / cpu.forwardGflops).toFixed(0)}x, backward ${(native.backwardGflops / cpu.backwardGflops).toFixed(0)}x`);
  }
  return lines.join('\n');
}

async function main(argv: string[]): Promise<void> {
  const flag = (name: string, fallback: string) => {
    const i = argv.indexOf(`--${name}`);
    return i >= 0 && i + 1 < argv.length ? argv[i + 1] : fallback;
  };
  // Loaded here, not at the top, so importing this module costs nothing.
  const tf = require('@tensorflow/tfjs') as Tf;
  const backends = flag('backends', 'tensorflow,cpu').split(',');
  const reps = Number(flag('reps', '3'));
  const results: ConvBenchmarkResult[] = [];
  for (const backend of backends) {
    if (backend === 'tensorflow') {
      const loaded = await loadNativeBackend(tf);
      if (!loaded.ok) {
        process.stderr.write(`native backend skipped: ${loaded.reason}\n`);
        continue;
      }
      process.stderr.write(`native: TensorFlow ${loaded.info.tensorflowVersion} from ${loaded.info.libraryDir}\n`);
    }
    const batch = Number(backend === 'cpu' ? flag('cpu-batch', '1') : flag('batch', '8'));
    process.stderr.write(`timing ${backend}, batch ${batch}...\n`);
    results.push(await benchmarkConv3d(tf, backend, { batch, reps: backend === 'cpu' ? 1 : reps }));
  }
  process.stdout.write(argv.includes('--json') ? `${JSON.stringify(results, null, 2)}\n` : `${formatConvBenchmark(results)}\n`);
}

if (require.main === module) {
  main(process.argv.slice(2)).catch((error) => {
    process.stderr.write(`${(error as Error).stack ?? error}\n`);
    process.exitCode = 1;
  });
}

/**
 * Gradient checks for the operations cellfinder's ResNet uses (see
 * resnet.ts): each case's analytic gradients (tf.grads) on a backend are
 * compared with
 *   - the same gradients on the pure-JS 'cpu' backend (the reference
 *     implementation), and
 *   - central finite differences on that backend, in float32, at sampled
 *     coordinates (the largest gradients plus random ones).
 * The scalar checked is sum(output * R), R a fixed random tensor, so every
 * output element contributes with its own weight (a plain sum would make
 * e.g. batch normalisation's and softmax's gradients trivially zero).
 *
 * Inputs are deterministic. Piecewise-linear ops (relu, max pool) get inputs
 * whose values are spaced further apart than twice the finite-difference
 * step, so no step crosses a kink or changes which element is the maximum.
 *
 * Errors are reported relative to the largest gradient magnitude of the
 * input (elementwise relative errors are meaningless near zero).
 */
import type * as tfType from '@tensorflow/tfjs';
import { batchNormWithBatchStatistics, convolution, relu } from './resnet';

type Tf = typeof tfType;
type T = tfType.Tensor;

/** How a case's input values are drawn. */
type InputKind = 'normal' | 'distinct' | 'positive';

export interface GradCase {
  name: string;
  /** What it stands for in the network. */
  op: string;
  inputs: Array<{ name: string; shape: number[]; kind?: InputKind; scale?: number }>;
  f: (tf: Tf, ...inputs: T[]) => T;
  /** Finite-difference step (default 1e-2). */
  step?: number;
}

/** Errors relative to the scale of the reference (max |reference|). */
export interface ErrorStats {
  maxAbs: number;
  maxRel: number;
}

export interface GradCheckResult {
  name: string;
  op: string;
  backend: string;
  /** Backend's forward output vs cpu's (absent when the backend is cpu). */
  forwardVsCpu?: ErrorStats;
  /** Analytic gradients vs cpu's, over all inputs (absent when the backend is cpu). */
  gradientVsCpu?: ErrorStats;
  /** Analytic vs central finite differences, over the sampled coordinates. */
  gradientVsFiniteDifference: ErrorStats & { samples: number };
  passed: boolean;
  failures: string[];
}

/** Float32 tolerances. Agreement between two float32 implementations vs float32 finite differences with step 1e-2. */
export const TOLERANCE = { forwardVsCpu: 1e-5, gradientVsCpu: 1e-4, gradientVsFiniteDifference: 1e-2 } as const;

/** mulberry32: small, deterministic. */
function random(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

function normal(next: () => number): number {
  return Math.sqrt(-2 * Math.log(1 - next())) * Math.cos(2 * Math.PI * next());
}

/**
 * Deterministic input values. 'distinct': a shuffled ramp with spacing 0.05
 * (and no value within 0.025 of zero), so a 1e-2 step never crosses a relu
 * kink or a max-pool tie.
 */
export function inputValues(shape: number[], kind: InputKind, seed: number, scale = 1): Float32Array {
  const size = shape.reduce((a, b) => a * b, 1);
  const next = random(seed);
  const values = new Float32Array(size);
  if (kind === 'distinct') {
    const order = Array.from({ length: size }, (_, i) => i);
    for (let i = size - 1; i > 0; i--) {
      const j = Math.floor(next() * (i + 1));
      [order[i], order[j]] = [order[j], order[i]];
    }
    for (let i = 0; i < size; i++) values[i] = (order[i] - size / 2 + 0.5) * 0.05 * scale;
  } else {
    for (let i = 0; i < size; i++) values[i] = kind === 'positive' ? (0.5 + next()) * scale : normal(next) * scale;
  }
  return values;
}

/** The operations (and their combinations) the ResNet's training step differentiates. */
export function resnetGradientCases(): GradCase[] {
  const conv = (kernel: [number, number, number], strides: number, padding: 'same' | 'valid', x: number[], cout: number, op: string): GradCase => ({
    name: `conv3d ${kernel.join('x')} stride ${strides} ${padding}`,
    op,
    inputs: [
      { name: 'x', shape: x },
      { name: 'filter', shape: [...kernel, x[4], cout], scale: 0.3 },
    ],
    f: (tf, input, filter) => tf.conv3d(input as tfType.Tensor5D, filter as tfType.Tensor5D, strides, padding),
  });
  const oneHot = (tf: Tf, rows: number) => tf.oneHot(tf.tensor1d(Array.from({ length: rows }, (_, i) => i % 2), 'int32'), 2);
  return [
    {
      name: 'zero padding 3 + conv3d 7x7x3 stride 2 valid',
      op: 'stem conv1 (ZeroPadding3D(3) + Conv3D 7x7x3 /2)',
      inputs: [
        { name: 'x', shape: [2, 9, 9, 6, 2] },
        { name: 'filter', shape: [7, 7, 3, 2, 4], scale: 0.2 },
      ],
      f: (tf, x, filter) =>
        tf.conv3d(
          tf.pad(x, [
            [0, 0],
            [3, 3],
            [3, 3],
            [3, 3],
            [0, 0],
          ]) as tfType.Tensor5D,
          filter as tfType.Tensor5D,
          2,
          'valid',
        ),
    },
    conv([7, 7, 3], 2, 'same', [2, 9, 9, 6, 2], 4, 'Conv3D 7x7x3 /2, same padding'),
    conv([3, 3, 3], 1, 'same', [2, 6, 6, 4, 3], 4, 'residual Conv3D 3x3x3 /1'),
    conv([3, 3, 3], 2, 'same', [2, 7, 7, 5, 3], 4, 'Conv3D 3x3x3 /2, same padding (odd sizes: asymmetric)'),
    conv([3, 3, 3], 2, 'valid', [2, 7, 7, 5, 3], 4, 'downsampling Conv3D 3x3x3 /2 (after ZeroPadding3D(1))'),
    conv([1, 1, 1], 2, 'valid', [2, 6, 6, 4, 4], 6, 'shortcut / bottleneck Conv3D 1x1x1 /2'),
    conv([1, 1, 1], 1, 'same', [2, 5, 5, 3, 4], 6, 'bottleneck Conv3D 1x1x1 /1'),
    {
      name: 'maxPool3d 3x3x2 stride 2 valid',
      op: 'stem MaxPooling3D (3,3,2) /2',
      inputs: [{ name: 'x', shape: [2, 9, 9, 6, 2], kind: 'distinct' }],
      f: (tf, x) => tf.maxPool3d(x as tfType.Tensor5D, [3, 3, 2], 2, 'valid'),
    },
    {
      name: 'moments over (0,1,2,4) + scale/shift',
      op: "BatchNormalization(axis=3), training mode, as resnet.ts computes it",
      inputs: [
        { name: 'x', shape: [2, 4, 4, 5, 3] },
        { name: 'gamma', shape: [5], kind: 'positive' },
        { name: 'beta', shape: [5] },
      ],
      f: (tf, x, gamma, beta) => {
        const { mean, variance } = tf.moments(x, [0, 1, 2, 4]);
        const scale = tf.mul(gamma, tf.rsqrt(tf.add(variance, 1e-5)));
        const shift = tf.sub(beta, tf.mul(mean, scale));
        return tf.add(tf.mul(x, scale.reshape([1, 1, 1, 5, 1])), shift.reshape([1, 1, 1, 5, 1]));
      },
    },
    {
      name: 'moments + tf.batchNorm on a rank-4 reshape',
      op: 'batch normalisation via tf.batchNorm (rank <= 4)',
      inputs: [
        { name: 'x', shape: [2, 4, 4, 5, 3] },
        { name: 'gamma', shape: [3], kind: 'positive' },
        { name: 'beta', shape: [3] },
      ],
      f: (tf, x, gamma, beta) => {
        const x4 = x.reshape([8, 4, 5, 3]) as tfType.Tensor4D;
        const { mean, variance } = tf.moments(x4, [0, 1, 2]);
        return tf.batchNorm4d(x4, mean as tfType.Tensor1D, variance as tfType.Tensor1D, beta as tfType.Tensor1D, gamma as tfType.Tensor1D, 1e-5);
      },
    },
    {
      name: 'relu',
      op: 'Activation relu',
      inputs: [{ name: 'x', shape: [2, 4, 4, 3, 4], kind: 'distinct' }],
      f: (tf, x) => tf.relu(x),
    },
    {
      name: 'add + relu',
      op: 'residual Add + relu',
      inputs: [
        { name: 'a', shape: [2, 3, 3, 2, 4], kind: 'distinct' },
        { name: 'b', shape: [2, 3, 3, 2, 4], kind: 'distinct', scale: 0.01 },
      ],
      f: (tf, a, b) => tf.relu(tf.add(a, b)),
    },
    {
      name: 'mean over (1,2,3)',
      op: 'global average pooling',
      inputs: [{ name: 'x', shape: [2, 3, 3, 2, 5] }],
      f: (tf, x) => tf.mean(x, [1, 2, 3]),
    },
    {
      name: 'matMul + bias',
      op: 'Dense',
      inputs: [
        { name: 'x', shape: [4, 6] },
        { name: 'kernel', shape: [6, 2] },
        { name: 'bias', shape: [2] },
      ],
      f: (tf, x, kernel, bias) => tf.add(tf.matMul(x as tfType.Tensor2D, kernel as tfType.Tensor2D), bias),
    },
    {
      name: 'softmax cross-entropy (tf.losses)',
      op: 'loss: tf.losses.softmaxCrossEntropy on logits',
      inputs: [{ name: 'logits', shape: [4, 2] }],
      f: (tf, logits) => tf.losses.softmaxCrossEntropy(oneHot(tf, 4), logits),
    },
    {
      name: 'softmax + categorical cross-entropy',
      op: 'loss: -mean(sum(y * log(softmax(logits))))',
      inputs: [{ name: 'logits', shape: [4, 2] }],
      f: (tf, logits) => tf.neg(tf.mean(tf.sum(tf.mul(oneHot(tf, 4), tf.log(tf.softmax(logits))), -1))),
    },
    {
      name: 'mini ResNet: pad, conv /2, batch norm, relu, max pool, residual block, average pool, dense, cross-entropy',
      op: 'all of the above chained, as one training step',
      step: 1e-3,
      inputs: [
        { name: 'x', shape: [2, 12, 12, 8, 1] },
        { name: 'conv1', shape: [7, 7, 3, 1, 4], scale: 0.2 },
        { name: 'conv2', shape: [3, 3, 3, 4, 4], scale: 0.2 },
        { name: 'dense', shape: [4, 2] },
      ],
      f: (tf, x, w1, w2, dense) => {
        // Batch norm over axis 3 (z), as resnet.ts does, without gamma/beta.
        const batchNorm = (t: T) => {
          const size = t.shape[3] as number;
          const { mean, variance } = tf.moments(t, [0, 1, 2, 4]);
          return tf.mul(tf.sub(t, mean.reshape([1, 1, 1, size, 1])), tf.rsqrt(tf.add(variance, 1e-5)).reshape([1, 1, 1, size, 1]));
        };
        const pad = (t: T, p: number) => tf.pad(t, [[0, 0], [p, p], [p, p], [p, p], [0, 0]]) as tfType.Tensor5D;
        let h: T = tf.conv3d(pad(x, 3), w1 as tfType.Tensor5D, 2, 'valid'); // (2, 6, 6, 6, 4)
        h = tf.relu(batchNorm(h));
        h = tf.maxPool3d(h as tfType.Tensor5D, [3, 3, 2], 2, 'valid'); // (2, 2, 2, 3, 4)
        const y = batchNorm(tf.conv3d(pad(h, 1), w2 as tfType.Tensor5D, 1, 'valid'));
        h = tf.relu(tf.add(y, h));
        const logits = tf.matMul(tf.mean(h, [1, 2, 3]) as tfType.Tensor2D, dense as tfType.Tensor2D);
        return tf.losses.softmaxCrossEntropy(oneHot(tf, 2), logits);
      },
    },
    // The network's own functions from resnet.ts, which use kernels of their
    // own on the native engine and tfjs ops on cpu (appended: a case's inputs
    // are seeded by its position).
    {
      name: 'network batch norm, training',
      op: 'resnet.ts batchNormWithBatchStatistics (native: our kernels on the CPU, TensorFlow ops on a GPU)',
      inputs: [
        { name: 'x', shape: [2, 4, 4, 5, 3] },
        { name: 'gamma', shape: [5], kind: 'positive' },
        { name: 'beta', shape: [5] },
      ],
      f: (tf, x, gamma, beta) => batchNormWithBatchStatistics(tf, x as tfType.Tensor5D, gamma as tfType.Tensor1D, beta as tfType.Tensor1D).output,
    },
    {
      name: 'network relu',
      op: 'resnet.ts relu (native: ReluGrad)',
      inputs: [{ name: 'x', shape: [2, 4, 4, 3, 4], kind: 'distinct' }],
      f: (tf, x) => relu(tf, x),
    },
    ...([
      [[2, 4, 4, 3, 3], "'same' Conv3D"],
      [[2, 2, 2, 1, 5], 'native: patches x kernel, z taps left out (ResNet unit 5)'],
      [[2, 2, 2, 2, 3], 'native: patches x kernel, all 27 taps'],
    ] as Array<[number[], string]>).map(
      ([x, how]): GradCase => ({
        name: `network conv 3x3x3 /1 pad 1, ${x.slice(1, 4).join('x')}`,
        op: `resnet.ts convolution: ZeroPadding3D(1) + Conv3D 3x3x3 /1 (${how})`,
        inputs: [
          { name: 'x', shape: x },
          { name: 'filter', shape: [3, 3, 3, x[4], 4], scale: 0.3 },
        ],
        f: (tf, input, filter) => convolution(tf, input as tfType.Tensor5D, filter as tfType.Tensor5D, [1, 1, 1], 1),
      }),
    ),
    ...([
      [3, 1, 'ZeroPadding3D(1) + Conv3D 3x3x3 /2 (ResNet unit 5 entry)'],
      [1, 0, 'Conv3D 1x1x1 /2 (its shortcut)'],
    ] as Array<[number, number, string]>).map(
      ([k, padding, what]): GradCase => ({
        name: `network conv ${k}x${k}x${k} /2 pad ${padding}, 3x3x2 -> 2x2x1`,
        op: `resnet.ts convolution: ${what} (native: windows x kernel)`,
        inputs: [
          { name: 'x', shape: [2, 3, 3, 2, 3] },
          { name: 'filter', shape: [k, k, k, 3, 4], scale: 0.3 },
        ],
        f: (tf, input, filter) => convolution(tf, input as tfType.Tensor5D, filter as tfType.Tensor5D, [2, 2, 2], padding),
      }),
    ),
  ];
}

/** The fixed random weights R of the checked scalar sum(output * R). */
function projectionFor(shape: number[]): Float32Array {
  const size = shape.reduce((a, b) => a * b, 1);
  return inputValues(shape, 'normal', 991, 1 / Math.sqrt(Math.max(1, size)));
}

/** Loss, output and analytic gradients of one case on the current backend. */
function evaluate(tf: Tf, testCase: GradCase, values: Float32Array[]): { output: Float32Array; outputShape: number[]; gradients: Float32Array[] } {
  return tf.tidy(() => {
    const inputs = testCase.inputs.map((input, i) => tf.tensor(values[i], input.shape, 'float32'));
    const output = testCase.f(tf, ...inputs);
    const weights = projectionFor(output.shape);
    const loss = (...xs: T[]) => tf.sum(tf.mul(testCase.f(tf, ...xs), tf.tensor(weights, output.shape, 'float32'))) as tfType.Scalar;
    const gradients = tf.grads(loss)(inputs).map((g) => g.dataSync() as Float32Array);
    return { output: output.dataSync() as Float32Array, outputShape: output.shape, gradients };
  });
}

function lossAt(tf: Tf, testCase: GradCase, values: Float32Array[], projection: Float32Array, shape: number[]): number {
  return tf.tidy(() => {
    const inputs = testCase.inputs.map((input, i) => tf.tensor(values[i], input.shape, 'float32'));
    return tf.sum(tf.mul(testCase.f(tf, ...inputs), tf.tensor(projection, shape, 'float32'))).dataSync()[0];
  });
}

function compare(values: Float32Array[], reference: Float32Array[]): ErrorStats {
  let maxAbs = 0;
  let maxRel = 0;
  values.forEach((v, k) => {
    const ref = reference[k];
    let scale = 0;
    for (let i = 0; i < ref.length; i++) scale = Math.max(scale, Math.abs(ref[i]));
    let abs = 0;
    for (let i = 0; i < ref.length; i++) abs = Math.max(abs, Math.abs(v[i] - ref[i]));
    maxAbs = Math.max(maxAbs, abs);
    maxRel = Math.max(maxRel, abs / Math.max(scale, 1e-12));
  });
  return { maxAbs, maxRel };
}

/** Coordinates to difference: the largest gradients, then random ones. */
function sampleCoordinates(gradient: Float32Array, count: number, seed: number): number[] {
  const bySize = Array.from(gradient.keys()).sort((a, b) => Math.abs(gradient[b]) - Math.abs(gradient[a]));
  const chosen = new Set(bySize.slice(0, Math.min(3, gradient.length)));
  const next = random(seed);
  while (chosen.size < Math.min(count, gradient.length)) chosen.add(Math.floor(next() * gradient.length));
  return [...chosen];
}

/**
 * Runs every case on `backend` (which must be registered) and, unless it is
 * 'cpu' itself, on 'cpu' for reference. Leaves `tf` on `backend`.
 */
export async function runGradientChecks(tf: Tf, backend: string, options: { cases?: GradCase[]; samplesPerInput?: number } = {}): Promise<GradCheckResult[]> {
  const cases = options.cases ?? resnetGradientCases();
  const samples = options.samplesPerInput ?? 12;
  const results: GradCheckResult[] = [];
  for (const [index, testCase] of cases.entries()) {
    const values = testCase.inputs.map((input, i) => inputValues(input.shape, input.kind ?? 'normal', 1000 * index + i + 1, input.scale));
    let reference: ReturnType<typeof evaluate> | undefined;
    if (backend !== 'cpu') {
      await tf.setBackend('cpu');
      reference = evaluate(tf, testCase, values);
    }
    await tf.setBackend(backend);
    const result = evaluate(tf, testCase, values);
    const projection = projectionFor(result.outputShape);

    // Central differences in float32 on the backend under test.
    const step = testCase.step ?? 1e-2;
    let fdAbs = 0;
    let fdRel = 0;
    let count = 0;
    testCase.inputs.forEach((_, k) => {
      const gradient = result.gradients[k];
      // Errors relative to this input's largest gradient component.
      const scale = gradient.reduce((m, g) => Math.max(m, Math.abs(g)), 0);
      for (const c of sampleCoordinates(gradient, samples, 77 + k)) {
        const shifted = values.map((v) => v.slice());
        shifted[k][c] = values[k][c] + step;
        const up = lossAt(tf, testCase, shifted, projection, result.outputShape);
        shifted[k][c] = values[k][c] - step;
        const down = lossAt(tf, testCase, shifted, projection, result.outputShape);
        const error = Math.abs((up - down) / (2 * step) - gradient[c]);
        fdAbs = Math.max(fdAbs, error);
        fdRel = Math.max(fdRel, error / Math.max(scale, 1e-12));
        count++;
      }
    });
    const gradientVsFiniteDifference = { maxAbs: fdAbs, maxRel: fdRel, samples: count };
    const forwardVsCpu = reference ? compare([result.output], [reference.output]) : undefined;
    const gradientVsCpu = reference ? compare(result.gradients, reference.gradients) : undefined;
    const failures: string[] = [];
    if (forwardVsCpu && !(forwardVsCpu.maxRel <= TOLERANCE.forwardVsCpu)) failures.push(`forward differs from cpu by ${forwardVsCpu.maxRel.toExponential(2)} (> ${TOLERANCE.forwardVsCpu})`);
    if (gradientVsCpu && !(gradientVsCpu.maxRel <= TOLERANCE.gradientVsCpu)) failures.push(`gradients differ from cpu by ${gradientVsCpu.maxRel.toExponential(2)} (> ${TOLERANCE.gradientVsCpu})`);
    if (!(gradientVsFiniteDifference.maxRel <= TOLERANCE.gradientVsFiniteDifference)) {
      failures.push(`gradients differ from finite differences by ${gradientVsFiniteDifference.maxRel.toExponential(2)} (> ${TOLERANCE.gradientVsFiniteDifference})`);
    }
    results.push({ name: testCase.name, op: testCase.op, backend, forwardVsCpu, gradientVsCpu, gradientVsFiniteDifference, passed: failures.length === 0, failures });
  }
  return results;
}

/** One line per case, for logs and the test report. */
export function formatGradientChecks(results: GradCheckResult[]): string {
  const e = (x?: number) => (x === undefined ? '      -' : x.toExponential(1).padStart(7));
  const lines = [`${'case'.padEnd(44)} ${'fwd/cpu'.padStart(7)} ${'grad/cpu'.padStart(8)} ${'abs'.padStart(7)} ${'grad/FD'.padStart(7)} ${'abs'.padStart(7)}  ok`];
  for (const r of results) {
    lines.push(
      `${r.name.slice(0, 44).padEnd(44)} ${e(r.forwardVsCpu?.maxRel)} ${e(r.gradientVsCpu?.maxRel).padStart(8)} ${e(r.gradientVsCpu?.maxAbs)} ${e(r.gradientVsFiniteDifference.maxRel)} ${e(r.gradientVsFiniteDifference.maxAbs)}  ${r.passed ? 'yes' : 'NO'}`,
    );
  }
  return lines.join('\n');
}

export interface TinyFitResult {
  backend: string;
  lossBefore: number;
  /** Loss fit() reported for its one batch. */
  fitLoss: number;
  lossAfter: number;
  weights: Float32Array[];
}

/**
 * Builds a tiny tfjs-layers model (Conv3D, MaxPooling3D, Flatten, Dense),
 * sets deterministic weights, fits one batch of 4 with SGD and returns the
 * losses and updated weights, for comparing backends.
 */
export async function tinyModelFit(tf: Tf, backend: string): Promise<TinyFitResult> {
  await tf.setBackend(backend);
  const model = tf.sequential({
    layers: [
      tf.layers.conv3d({ inputShape: [8, 8, 4, 1], filters: 4, kernelSize: 3, padding: 'same', activation: 'relu' }),
      tf.layers.maxPooling3d({ poolSize: 2, strides: 2 }),
      tf.layers.flatten(),
      tf.layers.dense({ units: 2, activation: 'softmax' }),
    ],
  });
  model.compile({ optimizer: tf.train.sgd(0.02), loss: 'categoricalCrossentropy' });
  model.setWeights(model.getWeights().map((w, i) => tf.tensor(inputValues(w.shape, 'normal', 500 + i, 0.1), w.shape)));
  const x = tf.tensor(inputValues([4, 8, 8, 4, 1], 'normal', 7), [4, 8, 8, 4, 1]);
  const y = tf.oneHot(tf.tensor1d([0, 1, 1, 0], 'int32'), 2);
  const lossOf = () => tf.tidy(() => (model.evaluate(x, y, { batchSize: 4 }) as tfType.Scalar).dataSync()[0]);
  const lossBefore = lossOf();
  const history = await model.fit(x, y, { batchSize: 4, epochs: 1, shuffle: false, verbose: 0 });
  const lossAfter = lossOf();
  const weights = model.getWeights().map((w) => w.dataSync() as Float32Array);
  model.dispose();
  x.dispose();
  y.dispose();
  return { backend, lossBefore, fitLoss: Number(history.history.loss[0]), lossAfter, weights };
}

/** How far a backend's one-batch fit is from the cpu backend's: relative loss differences and the largest weight difference. */
export function compareTinyFits(fit: TinyFitResult, reference: TinyFitResult, tolerance = 1e-5): { passed: boolean; fitLossRel: number; lossAfterRel: number; weightMaxAbs: number } {
  const fitLossRel = Math.abs(fit.fitLoss - reference.fitLoss) / Math.abs(reference.fitLoss);
  const lossAfterRel = Math.abs(fit.lossAfter - reference.lossAfter) / Math.abs(reference.lossAfter);
  let weightMaxAbs = 0;
  fit.weights.forEach((w, i) => w.forEach((v, j) => (weightMaxAbs = Math.max(weightMaxAbs, Math.abs(v - reference.weights[i][j])))));
  return { passed: fit.lossAfter < fit.lossBefore && fitLossRel <= tolerance && lossAfterRel <= tolerance && weightMaxAbs <= tolerance, fitLossRel, lossAfterRel, weightMaxAbs };
}

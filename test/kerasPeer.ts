/**
 * The real peer our model files are checked against: Keras 3 running
 * cellfinder's own build_model on the JAX CPU backend
 * (test/python/keras_peer.py in the .venv that scripts/python-env.sh makes),
 * and our own loader on the same real cubes.
 */
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import * as path from 'node:path';
import * as tf from '@tensorflow/tfjs';
import type { NetworkDepth } from '../src/training/resnet';
import { loadNetwork, predict } from '../src/training/inference';
import { assembleBatch, planBatch } from '../src/training/trainingData';
import { REPO_ROOT, SAMPLE } from './helpers';

export const PEER_PYTHON = path.join(REPO_ROOT, '.venv', 'bin', 'python');
const PEER = path.join(REPO_ROOT, 'test', 'python', 'keras_peer.py');

/** Signal cubes of the bundled sample (background beside each as Ch1): two extracted by cellfinder, one cell and one non-cell it was trained on. */
export const PEER_CUBES = [
  'cube_extract/cubes/pCellz10y522x392Ch0.tif',
  'cube_extract/cubes/pCellz15y1004x340Ch0.tif',
  'training/cells/pCellz1132y413x1896Ch0.tif',
  'training/non_cells/pCellz1137y278x1616Ch0.tif',
].map((file) => path.join(SAMPLE, file));

export interface PeerPrediction {
  ok: boolean;
  load_error?: string;
  checks?: Record<string, unknown>;
  predictions?: { cubes: Array<{ probabilities: [number, number] }> };
  /** Softmax outputs and, in float64, the logits before it. */
  cubes?: Array<{ probabilities: [number, number]; logits: [number, number] }>;
  /** With --normalise-by: cellfinder's statistics of each volume. */
  channel_statistics?: Array<{ mean: number; std: number }>;
}

/** Runs keras_peer.py with `args`; fails the test if it exits non-zero. */
export function peer(args: string[]): PeerPrediction {
  const run = spawnSync(PEER_PYTHON, [PEER, ...args], { encoding: 'utf8', maxBuffer: 64 * 2 ** 20, env: { ...process.env, KERAS_BACKEND: 'jax' } });
  assert.equal(run.status, 0, `keras_peer ${args[0]} failed:\n${run.stdout.slice(-3000)}\n${run.stderr.slice(-3000)}`);
  return JSON.parse(run.stdout) as PeerPrediction;
}

/** Keras' p(cell) for PEER_CUBES with the weights in `file`, loaded into cellfinder's network. */
export function kerasCellProbabilities(file: string, depth: NetworkDepth, channels: 1 | 2): number[] {
  const result = peer(['predict', '--depth', String(depth), '--channels', String(channels), '--weights', file, '--cubes', ...PEER_CUBES]);
  assert.ok(result.ok, `${file}: ${result.load_error ?? JSON.stringify(result.checks)}`);
  return (result.cubes ?? []).map((cube) => cube.probabilities[1]);
}

/** Our p(cell) for PEER_CUBES with the weights in `file`, on tfjs' current backend. */
export async function ourCellProbabilities(file: string, depth: NetworkDepth, channels: 1 | 2): Promise<number[]> {
  const network = await loadNetwork(tf, file, depth, channels);
  const samples = PEER_CUBES.map((ch0) => ({ files: channels === 2 ? [ch0, ch0.replace(/Ch0\.tif$/, 'Ch1.tif')] : [ch0], label: 0 as const, position: { x: 0, y: 0, z: 0 } }));
  const batch = await assembleBatch(planBatch(samples, { channels, normalise: false }));
  return Array.from(predict(tf, network, batch.inputs, batch.size, channels).probabilities.filter((_, i) => i % 2 === 1));
}

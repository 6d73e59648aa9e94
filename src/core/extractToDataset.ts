/**
 * The "extract" job shared by the CLI and the extension: candidate points +
 * signal/background volumes -> labelled cubes in a training dataset.
 */
import * as path from 'node:path';
import { readCellCounterXml, CellType, type CellCounterPoint } from './cellCounterXml';
import { summarizeTrainingYaml, TrainingDataset } from './dataset';
import { countNonFinite, NETWORK_VOXEL_SIZES } from './cube';
import { DataFileError } from './errors';
import { extractCubes, planExtraction, type SkippedPoint, type VoxelSizes } from './extraction';
import type { CubeLabel } from './trainingYaml';
import { openChannels } from './volume';

export interface ExtractToDatasetOptions {
  signal: string;
  /** Omitted: a single-channel dataset (bg_channel -1). */
  background?: string;
  points: string;
  outputDir: string;
  /** Data voxel sizes (z, y, x) µm; omitted = already at the network's (5, 1, 1). */
  voxelSizes?: VoxelSizes;
  /**
   * Label for every point; by default each point's Cell Counter type decides
   * (2 -> cell, 1 or -1 -> no_cell), as cellfinder reads labelled XML.
   */
  label?: CubeLabel;
  /** Write absolute cube_dir paths in a new training.yaml (default: relative to it). */
  absolutePaths?: boolean;
  onProgress?: (done: number, total: number) => void;
  abortSignal?: AbortSignal;
}

export interface ExtractToDatasetReport {
  yamlFile: string;
  added: number;
  alreadyPresent: number;
  /** Cubes that were there with a channel file missing (an interrupted earlier save), now complete. */
  repaired: number;
  skipped: SkippedPoint<CellCounterPoint>[];
  /** Points of types other than 1, 2, -1, left out because their label is unknown. */
  unlabelledTypes: number;
  warnings: string[];
  cells: number;
  nonCells: number;
}

export function labelForType(type: number): CubeLabel | undefined {
  if (type === CellType.CELL) return 'cell';
  if (type === CellType.NO_CELL || type === CellType.ARTIFACT) return 'no_cell';
  return undefined;
}

export async function extractToDataset(options: ExtractToDatasetOptions): Promise<ExtractToDatasetReport> {
  const { points, warnings } = await readCellCounterXml(options.points);
  const volumes = await openChannels(options.signal, options.background);
  try {
    const labelled = points.filter((point) => options.label ?? labelForType(point.type));
    const plan = planExtraction({ points: labelled, channels: volumes, dataVoxelSizes: options.voxelSizes });
    if (plan.extractable.length === 0 && plan.skipped.every((s) => s.reason === 'outside the volume') && plan.skipped.length > 0) {
      throw new DataFileError(
        options.points,
        `none of its ${labelled.length} points lies inside the volume ${options.signal} (${plan.volumeShape.join('x')} z, y, x)`,
        'Check that the points belong to this volume (same coordinates, not atlas or downsampled space)',
      );
    }
    const dataset = await TrainingDataset.create(options.outputDir, { backgroundChannel: volumes.length > 1, absolutePaths: options.absolutePaths });
    let added = 0;
    let alreadyPresent = 0;
    let repaired = 0;
    const total = plan.extractable.length;
    options.onProgress?.(0, total);
    const skipped = [...plan.skipped];
    for await (const cube of extractCubes(plan, volumes, options.abortSignal)) {
      const nonFinite = cube.channels.reduce((sum, channel) => sum + countNonFinite(channel), 0);
      if (nonFinite > 0) {
        // A float volume with NaN (no data) there: such a cube would make training's loss NaN.
        skipped.push({ point: cube.point, index: cube.index, reason: `its cube holds ${nonFinite} NaN or infinite voxel(s) (the volume has no valid data there)` });
        options.onProgress?.(added + alreadyPresent + repaired + skipped.length - plan.skipped.length, total);
        continue;
      }
      const label = options.label ?? (labelForType(cube.point.type) as CubeLabel);
      const result = await dataset.addCube({ position: cube.point, label, channels: cube.channels, source: path.resolve(options.signal), voxelSizes: options.voxelSizes ?? NETWORK_VOXEL_SIZES });
      if (result === 'added') added++;
      else if (result === 'repaired') repaired++;
      else alreadyPresent++;
      options.onProgress?.(added + alreadyPresent + repaired + skipped.length - plan.skipped.length, total);
    }
    const summary = await summarizeTrainingYaml(dataset.yamlFile, dataset.root);
    return {
      yamlFile: dataset.yamlFile,
      added,
      alreadyPresent,
      repaired,
      skipped,
      unlabelledTypes: points.length - labelled.length,
      warnings,
      cells: summary.cells,
      nonCells: summary.nonCells,
    };
  } finally {
    await Promise.all(volumes.map((volume) => volume.close()));
  }
}

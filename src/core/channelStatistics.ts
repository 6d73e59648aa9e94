/**
 * Channel normalisation (`--normalize-channels`) with cellfinder's meaning.
 *
 * Statistics, as cellfinder's classification and napari curation compute them
 * (`dataset_mean_std` in `core/tools/image_processing.py`, cellfinder 1.11):
 * the mean and the sample standard deviation (n - 1) of every voxel of every
 * `int(planes / 50)`-th plane from plane 0 (every plane when there are 50 or
 * fewer), in float64. At whole-brain scale that is about 50 planes per
 * channel, read here in bands of rows so that memory stays bounded whatever
 * the plane size (cellfinder holds a float64 copy of each whole plane).
 *
 * Each cube channel is then (x - mean) / std in float32, as
 * `CuboidArrayDataset.get_points_data` does on its float32 tensor (training
 * cubes likewise, with the YAML's signal_mean/std and bg_mean/std).
 */
import { DataFileError } from './errors';
import { bytesPerPixel, type PixelArray } from './tiff';
import type { Volume } from './volume';

/** cellfinder's `normalization_n_sampling_planes` default. */
export const NORMALISATION_SAMPLING_PLANES = 50;

export interface ChannelStatistics {
  mean: number;
  /** Sample standard deviation (divided by n - 1), as numpy's std(ddof=1). */
  std: number;
}

/** The planes cellfinder samples out of `depth`: 0, step, 2 step, ... with step int(depth / 50), or 1 for 50 planes or fewer. */
export function sampledPlanes(depth: number, samplingPlanes = NORMALISATION_SAMPLING_PLANES): number[] {
  const step = samplingStep(depth, samplingPlanes);
  const planes: number[] = [];
  for (let z = 0; z < depth; z += step) planes.push(z);
  return planes;
}

function samplingStep(depth: number, samplingPlanes: number): number {
  return depth <= samplingPlanes ? 1 : Math.trunc(depth / samplingPlanes);
}

/** Bytes of rows read at once: a 8000x10000 uint16 plane is read in 5 bands, not held whole. */
const STATISTICS_BAND_BYTES = 32 * 2 ** 20;

export const NORMALISE_FIX = 'Check that this is the right volume for the channel, or classify without --normalize-channels';

/**
 * The channel's mean and standard deviation over cellfinder's sampled planes,
 * read band by band (the next band is read while this one is summed).
 * Checked: an error names the volume when they cannot normalise (a constant
 * channel has std 0; NaN or infinite voxels give no mean).
 */
export async function channelStatistics(volume: Volume, options: { onProgress?: (planesDone: number, planes: number) => void; signal?: AbortSignal } = {}): Promise<ChannelStatistics> {
  const planes = sampledPlanes(volume.shape[0]);
  const [, height, width] = volume.shape;
  const rowsPerRead = Math.max(1, Math.min(height, Math.floor(STATISTICS_BAND_BYTES / (width * bytesPerPixel(volume.pixelType)))));
  const reads = planes.flatMap((z, plane) => {
    const bands = [];
    for (let y0 = 0; y0 < height; y0 += rowsPerRead) bands.push({ z, plane, y0, y1: Math.min(height, y0 + rowsPerRead) });
    return bands;
  });
  const read = (index: number, reuse?: ArrayBuffer) => {
    const { z, y0, y1 } = reads[index];
    const rows = volume.readRows(z, y0, y1, reuse);
    // Read ahead: a failure is thrown where it is awaited, never left unhandled.
    rows.catch(() => undefined);
    return rows;
  };
  // Chan et al.'s merge of each band's exact (two-pass) mean and sum of squares: the same quantity
  // as cellfinder's per-plane update, equal to it up to float64 rounding.
  let count = 0;
  let mean = 0;
  let squares = 0;
  let next: Promise<PixelArray> | undefined = read(0);
  let spare: ArrayBuffer | undefined;
  for (let index = 0; index < reads.length; index++) {
    options.signal?.throwIfAborted();
    const rows = await (next as Promise<PixelArray>);
    next = index + 1 < reads.length ? read(index + 1, spare) : undefined;
    let sum = 0;
    for (let i = 0; i < rows.length; i++) sum += rows[i];
    const bandMean = sum / rows.length;
    let bandSquares = 0;
    for (let i = 0; i < rows.length; i++) {
      const d = rows[i] - bandMean;
      bandSquares += d * d;
    }
    const total = count + rows.length;
    const delta = bandMean - mean;
    mean += (delta * rows.length) / total;
    squares += bandSquares + (delta * delta * count * rows.length) / total;
    count = total;
    spare = rows.buffer as ArrayBuffer;
    if (index + 1 === reads.length || reads[index + 1].plane !== reads[index].plane) options.onProgress?.(reads[index].plane + 1, planes.length);
  }
  const step = samplingStep(volume.shape[0], NORMALISATION_SAMPLING_PLANES);
  const planesNote = `the ${planes.length} plane(s) sampled for --normalize-channels (${step === 1 ? 'all' : `every ${step}th`} of ${volume.shape[0]}, as cellfinder samples them)`;
  if (count <= 1) throw new DataFileError(volume.source, `has ${count} voxel(s) in ${planesNote}: too few for a standard deviation`, NORMALISE_FIX);
  const std = Math.sqrt(squares / (count - 1));
  if (!Number.isFinite(mean) || !Number.isFinite(std)) {
    throw new DataFileError(volume.source, `has NaN or infinite voxels in ${planesNote}, so its mean and standard deviation are not numbers`, 'Replace the NaN/infinite voxels (e.g. with 0) when exporting the planes, or classify without --normalize-channels');
  }
  // The division happens in float32: a deviation that rounds to 0 there divides by zero.
  if (Math.fround(std) === 0) {
    throw new DataFileError(volume.source, `has the same value (${mean}) in every voxel of ${planesNote}: its standard deviation is 0, so (x - mean) / std is undefined`, `${NORMALISE_FIX} (an empty or saturated channel cannot be normalised)`);
  }
  return { mean, std };
}

/** (x - mean) / std in place, in float32 arithmetic as cellfinder's torch tensors compute it. */
export function normaliseChannel(data: Float32Array, mean: number, std: number): Float32Array {
  const mean32 = Math.fround(mean);
  const std32 = Math.fround(std);
  // A float32 difference, then a float32 quotient (the Float32Array store rounds the double quotient, which is exact enough to round correctly).
  for (let i = 0; i < data.length; i++) data[i] = Math.fround(data[i] - mean32) / std32;
  return data;
}

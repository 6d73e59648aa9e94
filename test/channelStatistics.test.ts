/**
 * Channel statistics for --normalize-channels on input they cannot come from
 * (cellfinder's own statistics are checked against ours in
 * kerasInterop.test.ts): each gives an error naming the volume and the fix.
 */
import assert from 'node:assert/strict';
import { promises as fs } from 'node:fs';
import * as path from 'node:path';
import { test } from 'node:test';
import { channelStatistics } from '../src/core/channelStatistics';
import { encodeStack } from '../src/core/tiffWriter';
import { openVolume } from '../src/core/volume';
import { SAMPLE, scratch } from './helpers';

async function statisticsOf(source: string) {
  const volume = await openVolume(source);
  try {
    return await channelStatistics(volume);
  } finally {
    await volume.close();
  }
}

test('a constant channel (std 0), NaN voxels, or a truncated plane: an error naming the volume and what to do', async (t) => {
  const dir = scratch(t);
  const [depth, height, width] = [3, 40, 30];
  const constant = path.join(dir, 'empty-background.tif');
  await fs.writeFile(constant, encodeStack(new Float32Array(depth * height * width).fill(7), depth, height, width));
  await assert.rejects(statisticsOf(constant), (error: Error) => {
    assert.match(error.message, /empty-background\.tif: has the same value \(7\) in every voxel of the 3 plane\(s\) sampled for --normalize-channels \(all of 3, as cellfinder samples them\): its standard deviation is 0/);
    assert.match(error.message, /Check that this is the right volume for the channel, or classify without --normalize-channels/);
    return true;
  });

  const withNaN = new Float32Array(depth * height * width).map((_, i) => i % 97);
  withNaN[1234] = Number.NaN;
  const nanFile = path.join(dir, 'nan.tif');
  await fs.writeFile(nanFile, encodeStack(withNaN, depth, height, width));
  await assert.rejects(statisticsOf(nanFile), /nan\.tif: has NaN or infinite voxels in the 3 plane\(s\) sampled.*Replace the NaN\/infinite voxels/);

  // Real planes, the last one cut short (a copy that did not finish).
  const planes = path.join(dir, 'planes');
  await fs.mkdir(planes);
  const names = ['signal_ch000010.tif', 'signal_ch000011.tif', 'signal_ch000012.tif'];
  for (const name of names) await fs.copyFile(path.join(SAMPLE, 'signal', name), path.join(planes, name));
  const cut = path.join(planes, names[2]);
  await fs.truncate(cut, (await fs.stat(cut)).size - 5000);
  await assert.rejects(statisticsOf(planes), (error: Error) => error.message.startsWith(`${cut}: is truncated`));
});

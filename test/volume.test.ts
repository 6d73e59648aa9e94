import assert from 'node:assert/strict';
import { promises as fs } from 'node:fs';
import * as path from 'node:path';
import { test } from 'node:test';
import { encodeFloat32Stack } from '../src/core/tiffWriter';
import { naturalSort } from '../src/core/naturalSort';
import { openVolume } from '../src/core/volume';
import { SAMPLE, scratch } from './helpers';

test('natural order as natsort: numbers by value, then text', () => {
  assert.deepEqual(naturalSort(['p10.tif', 'p9.tif', 'p100.tif', 'p1.tif']), ['p1.tif', 'p9.tif', 'p10.tif', 'p100.tif']);
  assert.deepEqual(naturalSort(['b2', 'a10', 'a2']), ['a2', 'a10', 'b2']);
});

test('a folder of real big-endian uint16 planes reads lazily in plane order', async () => {
  const volume = await openVolume(path.join(SAMPLE, 'signal'));
  assert.deepEqual(volume.shape, [26, 1116, 627]);
  assert.equal(volume.pixelType, 'uint16');
  const plane = await volume.readPlane(10);
  assert.equal(plane.length, 1116 * 627);
  assert.equal(plane[0], 6); // first pixel of signal_ch000010.tif, read independently with tifffile
});

test('a multi-page TIFF and a plane list give the same planes as the folder', async (t) => {
  const dir = scratch(t);
  const folder = await openVolume(path.join(SAMPLE, 'background'));
  const planes = [];
  for (let z = 0; z < 3; z++) planes.push(Float32Array.from(await folder.readPlane(z)));
  const stack = new Float32Array(3 * 1116 * 627);
  planes.forEach((plane, z) => stack.set(plane, z * plane.length));
  const stackFile = path.join(dir, 'stack.tif');
  await fs.writeFile(stackFile, encodeFloat32Stack(stack, 3, 1116, 627));
  const volume = await openVolume(stackFile);
  assert.deepEqual(volume.shape, [3, 1116, 627]);
  assert.deepEqual(Float32Array.from(await volume.readPlane(2)), planes[2]);
  await volume.close();

  const list = path.join(dir, 'planes.txt');
  const names = (await fs.readdir(path.join(SAMPLE, 'background'))).map((name) => path.join(SAMPLE, 'background', name));
  await fs.writeFile(list, names.reverse().join('\n'));
  const listed = await openVolume(list);
  assert.deepEqual(Float32Array.from(await listed.readPlane(1)), Float32Array.from(await folder.readPlane(1)));
});

test('a plane of another size or a corrupt plane is named in the error', async (t) => {
  const dir = scratch(t);
  for (const name of ['plane_0.tif', 'plane_1.tif']) await fs.copyFile(path.join(SAMPLE, 'signal', 'signal_ch000000.tif'), path.join(dir, name));
  await fs.writeFile(path.join(dir, 'plane_2.tif'), encodeFloat32Stack(new Float32Array(4), 1, 2, 2));
  await fs.writeFile(path.join(dir, 'plane_3.tif'), 'garbage');
  const volume = await openVolume(dir);
  await assert.rejects(volume.readPlane(2), /plane_2.tif: is 2x2 float32, but the first plane is 627x1116 uint16/);
  await assert.rejects(volume.readPlane(3), /plane_3.tif: is not a TIFF file/);
  await assert.rejects(openVolume(path.join(dir, 'nothing-here')), /does not exist/);
});

test('rows of a plane equal the same rows of the whole plane: strips of the real big-endian planes, a stack, compressed and tiled planes', async (t) => {
  const dir = scratch(t);
  const folder = await openVolume(path.join(SAMPLE, 'signal'));
  const plane = await folder.readPlane(7);
  const width = folder.shape[2];
  // Ranges inside one strip, across strip boundaries, the first and the last rows.
  for (const [y0, y1] of [[0, 1], [5, 6], [3, 70], [500, 612], [1000, 1116], [0, 1116]]) {
    assert.deepEqual(Array.from(await folder.readRows(7, y0, y1)), Array.from(plane.subarray(y0 * width, y1 * width)), `rows ${y0}..${y1}`);
  }
  await assert.rejects(folder.readRows(7, 10, 1117), /outside 0..1116/);
  const stackFile = path.join(dir, 'stack.tif');
  const stack = new Float32Array(2 * 1116 * 627);
  stack.set(plane, 1116 * 627);
  await fs.writeFile(stackFile, encodeFloat32Stack(stack, 2, 1116, 627));
  const stackVolume = await openVolume(stackFile);
  assert.deepEqual(Array.from(await stackVolume.readRows(1, 500, 612)), Array.from(plane.subarray(500 * width, 612 * width)));
  await stackVolume.close();
  await folder.close();
});

import assert from 'node:assert/strict';
import { promises as fs } from 'node:fs';
import * as path from 'node:path';
import { test } from 'node:test';
import { CUBE_VOXELS, cubeFileName, pointFromCubeFileName, readCube, siblingChannelFile, writeCube } from '../src/core/cube';
import { DataFileError } from '../src/core/errors';
import { encodeFloat32Stack } from '../src/core/tiffWriter';
import { SAMPLE, scratch } from './helpers';

const GOLDEN = path.join(SAMPLE, 'cube_extract', 'cubes');

test('reads the uint16 cubes cellfinder wrote, 20 pages of 50x50', async () => {
  const cube = await readCube(path.join(GOLDEN, 'pCellz10y522x392Ch0.tif'));
  assert.equal(cube.storedAs, 'uint16');
  assert.equal(cube.data.length, CUBE_VOXELS);
  // First value checked independently with geotiff's page 0 read and tifffile (281).
  assert.equal(cube.data[0], 281);
  assert.ok(cube.data.every((v) => Number.isInteger(v) && v >= 0 && v <= 65535));
});

test('names cubes as cellfinder does and reads positions back like brainglobe-utils', () => {
  assert.equal(cubeFileName({ x: 392, y: 522, z: 10 }, 0), 'pCellz10y522x392Ch0.tif');
  assert.deepEqual(pointFromCubeFileName('pCellz10y522x392Ch0.tif'), { x: 392, y: 522, z: 10 });
  // brainglobe-utils takes the last x/y/z group of the lower-cased name.
  assert.deepEqual(pointFromCubeFileName('/data/xy9/PCELLZ1132Y413X1896CH1.TIF'), { x: 1896, y: 413, z: 1132 });
  assert.equal(pointFromCubeFileName('notes.tif'), undefined);
  assert.equal(siblingChannelFile('/a/pCellz1y2x3Ch0.tif', 1), '/a/pCellz1y2x3Ch1.tif');
});

test('float32 cubes we write read back bit for bit, in both byte orders of the reader', async (t) => {
  const dir = scratch(t);
  const data = new Float32Array(CUBE_VOXELS).map((_, i) => Math.fround(Math.sin(i) * 1000 + i / 7));
  data[5] = -0;
  data[6] = 3.4028234663852886e38; // largest float32
  const file = path.join(dir, cubeFileName({ x: 1, y: 2, z: 3 }, 0));
  await writeCube(file, data);
  const back = await readCube(file);
  assert.equal(back.storedAs, 'float32');
  assert.deepEqual(Buffer.from(back.data.buffer), Buffer.from(data.buffer));
});

test('writing never replaces an existing cube unless asked', async (t) => {
  const dir = scratch(t);
  const file = path.join(dir, 'pCellz1y2x3Ch0.tif');
  const first = new Float32Array(CUBE_VOXELS).fill(1);
  await writeCube(file, first);
  await assert.rejects(writeCube(file, new Float32Array(CUBE_VOXELS).fill(2)), (error: DataFileError) => {
    assert.match(error.message, /already exists/);
    assert.equal(error.file, file);
    return true;
  });
  assert.equal((await readCube(file)).data[0], 1);
  await writeCube(file, new Float32Array(CUBE_VOXELS).fill(2), { overwrite: true });
  assert.equal((await readCube(file)).data[0], 2);
  // No temporary files are left behind.
  assert.deepEqual(await fs.readdir(dir), ['pCellz1y2x3Ch0.tif']);
});

test('bad cube files get an error naming the file and the fix', async (t) => {
  const dir = scratch(t);
  const notTiff = path.join(dir, 'pCellz1y1x1Ch0.tif');
  await fs.writeFile(notTiff, 'this is a text file, not an image\n');
  await assert.rejects(readCube(notTiff), (e: DataFileError) => e.file === notTiff && /not a TIFF/.test(e.message));

  const golden = await fs.readFile(path.join(GOLDEN, 'pCellz10y522x392Ch0.tif'));
  const truncated = path.join(dir, 'pCellz2y2x2Ch0.tif');
  await fs.writeFile(truncated, golden.subarray(0, 30000));
  await assert.rejects(readCube(truncated), (e: DataFileError) => e.file === truncated && /truncated|corrupt|cannot be read/.test(e.message));

  const wrongSize = path.join(dir, 'pCellz3y3x3Ch0.tif');
  await fs.writeFile(wrongSize, encodeFloat32Stack(new Float32Array(10 * 40 * 40), 10, 40, 40));
  await assert.rejects(readCube(wrongSize), (e: DataFileError) => e.file === wrongSize && /is 10x40x40 \(z, y, x\); a cube must be 20x50x50/.test(e.message));

  const missing = path.join(dir, 'pCellz4y4x4Ch1.tif');
  await assert.rejects(readCube(missing), (e: DataFileError) => e.file === missing && /does not exist/.test(e.message));
});

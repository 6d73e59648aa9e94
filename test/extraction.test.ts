import assert from 'node:assert/strict';
import { existsSync, promises as fs, readdirSync } from 'node:fs';
import * as path from 'node:path';
import { test } from 'node:test';
import { readCellCounterXml } from '../src/core/cellCounterXml';
import { cubeFileName, readCube } from '../src/core/cube';
import { bandRows, cuboidRange, cuboidShape, cutCube, dataCuboidVoxels, extractCubes, planExtraction, roundHalfEven, type VoxelSizes } from '../src/core/extraction';
import { resizeTrilinear } from '../src/core/rescale';
import { openVolume, RowBuffers, type Volume } from '../src/core/volume';
import { RESCALED_FIXTURES, SAMPLE } from './helpers';

async function sampleVolumes(): Promise<Volume[]> {
  return [await openVolume(path.join(SAMPLE, 'signal')), await openVolume(path.join(SAMPLE, 'background'))];
}

test('rounding and cuboid sizes follow cellfinder (Python round, half to even)', () => {
  assert.deepEqual([0.5, 1.5, 2.5, -0.5, -1.5, 2.4999, 12.5].map(roundHalfEven), [0, 2, 2, -0, -2, 2, 12]);
  assert.deepEqual(cuboidShape(), [20, 50, 50]);
  assert.deepEqual(cuboidShape([5, 2, 2]), [20, 25, 25]);
  assert.deepEqual(cuboidShape([7.25, 2, 2]), [14, 25, 25]);
  // 50 * 1 / 0.8 = 62.5 exactly in binary floating point: Python rounds to 62.
  assert.equal(dataCuboidVoxels(50, 1, 0.8), 62);
  // x and y: round(pos - n/2); z: int(pos - n//2).
  assert.deepEqual(cuboidRange(100, 25, 'x'), [88, 113]); // round(87.5) = 88
  assert.deepEqual(cuboidRange(101, 25, 'y'), [88, 113]); // round(88.5) = 88
  assert.deepEqual(cuboidRange(15, 20, 'z'), [5, 25]);
  assert.deepEqual(cuboidRange(15, 25, 'z'), [3, 28]);
});

test('without rescaling, cubes equal cellfinder\'s golden cubes (cube_extract/cubes) exactly', async () => {
  const { points } = await readCellCounterXml(path.join(SAMPLE, 'cube_extract', 'cells.xml'));
  const volumes = await sampleVolumes();
  const plan = planExtraction({ points, channels: volumes });
  assert.equal(plan.skipped.length, 0);
  let compared = 0;
  for await (const cube of extractCubes(plan, volumes)) {
    for (const [channel, data] of cube.channels.entries()) {
      const golden = await readCube(path.join(SAMPLE, 'cube_extract', 'cubes', cubeFileName(cube.point, channel)));
      assert.deepEqual(Array.from(data), Array.from(golden.data), `${cubeFileName(cube.point, channel)} differs`);
      compared++;
    }
  }
  assert.equal(compared, 4);
});

test('points too near the edge are reported with the reason, never silently dropped', async () => {
  const { points } = await readCellCounterXml(path.join(SAMPLE, 'candidates', 'candidates.xml'));
  const volumes = await sampleVolumes();
  const plan = planExtraction({ points, channels: volumes, dataVoxelSizes: [5, 2, 2] });
  // candidates/README.md: 13 of the 38 fit, those with 10 <= z <= 16.
  assert.equal(plan.extractable.length, 13);
  assert.equal(plan.skipped.length, 25);
  assert.ok(plan.extractable.every(({ point }) => point.z >= 10 && point.z <= 16));
  assert.ok(plan.skipped.every((s) => /too near the edge \(cuboid reaches z [<>]/.test(s.reason)));
  const outside = planExtraction({ points: [{ x: 5000, y: 10, z: 10, type: 1 }], channels: volumes });
  assert.equal(outside.skipped[0].reason, 'outside the volume');
});

test('extraction reads each plane once per band of rows, never a whole plane, in one pass', async () => {
  const volumes = await sampleVolumes();
  const reads = new Map<string, number>();
  const counting: Volume[] = volumes.map((volume, channel) => ({
    source: volume.source,
    shape: volume.shape,
    pixelType: volume.pixelType,
    close: () => volume.close(),
    readPlane: () => Promise.reject(new Error('extraction reads bands of rows, not whole planes')),
    readRows: async (z: number, y0: number, y1: number) => {
      const key = `${channel}:${z}:${y0}`;
      reads.set(key, (reads.get(key) ?? 0) + 1);
      return volume.readRows(z, y0, y1);
    },
  }));
  const { points } = await readCellCounterXml(path.join(SAMPLE, 'candidates', 'candidates.xml'));
  const plan = planExtraction({ points, channels: counting, dataVoxelSizes: [5, 2, 2] });
  // The sample's planes fit the byte budget whole: one band.
  assert.equal(bandRows(plan, 2), 1116);
  // Bands of 256 rows, as on planes 8 times wider: the 13 cuboids start in several.
  const rowsPerBand = 256;
  const alone = await sampleVolumes();
  let cubes = 0;
  for await (const cube of extractCubes(plan, counting, undefined, rowsPerBand)) {
    const cut = await cutCube(cube.point, alone, [5, 2, 2]);
    cube.channels.forEach((channel, c) => assert.ok(Buffer.from(channel.buffer).equals(Buffer.from(cut[c].buffer)), `cube ${cube.index} channel ${c} equals the cube cut alone`));
    cubes++;
  }
  assert.equal(cubes, 13);
  assert.ok([...reads.values()].every((count) => count === 1), 'no plane band read twice');
  // Each band's reads start at the first row its cuboids need.
  const bandStarts = new Map<number, number>();
  for (const { bounds } of plan.extractable) {
    const band = Math.floor(bounds.y[0] / rowsPerBand);
    bandStarts.set(band, Math.min(bandStarts.get(band) ?? Infinity, bounds.y[0]));
  }
  assert.ok(bandStarts.size >= 3);
  assert.deepEqual(new Set([...reads.keys()].map((key) => Number(key.split(':')[2]))), new Set(bandStarts.values()));
  await Promise.all(alone.map((volume) => volume.close()));
});

test('trilinear resize matches torch align_corners=False on hand-checked cases, infinities included', () => {
  // 1-D along x: in [0, 10] -> 4 samples at (i + 0.5) * 0.5 - 0.5 = -0.25 (clamped 0), 0.25, 0.75, 1.25 (upper clamped).
  const out = resizeTrilinear(new Float32Array([0, 10]), [1, 1, 2], [1, 1, 4]);
  assert.deepEqual(Array.from(out), [0, 2.5, 7.5, 10]);
  // Downsampling 4 -> 2: positions 0.5 and 2.5.
  const down = resizeTrilinear(new Float32Array([0, 1, 2, 3]), [1, 1, 4], [1, 1, 2]);
  assert.deepEqual(Array.from(down), [0.5, 2.5]);
  const same = new Float32Array([1, 2, 3]);
  assert.equal(resizeTrilinear(same, [1, 1, 3], [1, 1, 3]), same);
  // An infinity, as torch treats it: a blend that reads it is infinite (NaN
  // where its weight is 0: inf * 0), and a pass along a kept axis (here y and
  // z, of size 1) blends each voxel with itself at weight 0, so NaN.
  const withInfinity = resizeTrilinear(new Float32Array([0, Infinity, 2, 3]), [1, 1, 4], [1, 1, 8]);
  assert.deepEqual(Array.from(withInfinity), [NaN, NaN, NaN, NaN, NaN, 2.25, 2.75, 3]);
  // No axis kept: the infinity stays one.
  assert.deepEqual(Array.from(resizeTrilinear(new Float32Array([Infinity, 0, 0, 0, 0, 0, 0, 0]), [2, 2, 2], [1, 1, 1])), [Infinity]);
});

/** Reference cubes made by the real cellfinder (see test/fixtures/cellfinder-rescaled/PROVENANCE.md). */
const rescaledSets = existsSync(RESCALED_FIXTURES) ? readdirSync(RESCALED_FIXTURES).filter((name) => name.startsWith('z')) : [];

for (const set of rescaledSets) {
  test(`rescaled cubes match the real cellfinder within float32 rounding: voxel sizes ${set}`, async () => {
    const folder = path.join(RESCALED_FIXTURES, set);
    const info = JSON.parse(await fs.readFile(path.join(folder, 'points.json'), 'utf8')) as {
      data_voxel_sizes_zyx_um: number[];
      points: Array<{ x: number; y: number; z: number; type: number; extracted: boolean }>;
    };
    const voxelSizes = info.data_voxel_sizes_zyx_um as unknown as VoxelSizes;
    const volumes = await sampleVolumes();
    const plan = planExtraction({ points: info.points, channels: volumes, dataVoxelSizes: voxelSizes });
    // We report exactly the points cellfinder dropped.
    assert.deepEqual(
      plan.extractable.map((e) => e.index).sort((a, b) => a - b),
      info.points.flatMap((p, i) => (p.extracted ? [i] : [])),
    );
    let worst = 0;
    let differing = 0;
    let compared = 0;
    for await (const cube of extractCubes(plan, volumes)) {
      for (const [channel, data] of cube.channels.entries()) {
        const reference = await readCube(path.join(folder, cubeFileName(cube.point, channel)));
        assert.equal(reference.storedAs, 'float32');
        for (let i = 0; i < data.length; i++) {
          const difference = Math.abs(data[i] - reference.data[i]) / Math.max(1, Math.abs(reference.data[i]));
          if (difference > 0) differing++;
          worst = Math.max(worst, difference);
        }
        compared++;
      }
    }
    assert.ok(compared > 0, 'the fixture holds cubes');
    // Same float32 operations as torch: expected bit-identical; one float32 step (2^-24) allowed
    // for the double-rounding tie of an emulated fused multiply-add.
    assert.ok(worst <= 2 ** -24, `worst relative difference ${worst}`);
    console.log(`# ${set}: ${compared} cube files, ${differing} voxels differ, worst relative difference ${worst.toExponential(2)}`);
  });
}

test('a cube cut alone from its rows (labelling) equals the one the z-ordered extraction gives, at every candidate, with row buffers reused across cubes cut one after another and at once', async () => {
  const volumes = [await openVolume(path.join(SAMPLE, 'signal')), await openVolume(path.join(SAMPLE, 'background'))];
  const { points } = await readCellCounterXml(path.join(SAMPLE, 'candidates', 'candidates.xml'));
  // One set of buffers throughout, as a labelling session keeps it: a buffer handed back while still in use would show as a wrong cube.
  const buffers = new RowBuffers();
  for (const voxelSizes of [[5, 2, 2], [7.25, 2, 2], undefined] as const) {
    const plan = planExtraction({ points, channels: volumes, dataVoxelSizes: voxelSizes });
    const extracted = [];
    for await (const cube of extractCubes(plan, volumes)) extracted.push(cube);
    const inTurn: Float32Array[][] = [];
    for (const cube of extracted) inTurn.push(await cutCube(cube.point, volumes, voxelSizes, buffers));
    // As the labelling page asks for the candidates ahead: several cut at once from the same buffers.
    const atOnce = await Promise.all(extracted.map((cube) => cutCube(cube.point, volumes, voxelSizes, buffers)));
    extracted.forEach((cube, i) => {
      for (const alone of [inTurn[i], atOnce[i]]) {
        alone.forEach((channel, c) => assert.ok(Buffer.from(channel.buffer).equals(Buffer.from(cube.channels[c].buffer)), `channel ${c} at ${JSON.stringify(cube.point)}`));
      }
    });
    assert.equal(extracted.length, plan.extractable.length);
    assert.ok(extracted.length > 0);
  }
  await Promise.all(volumes.map((v) => v.close()));
});

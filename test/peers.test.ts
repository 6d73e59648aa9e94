/**
 * Our files read by the real peers: tifffile, brainglobe-utils and
 * cellfinder's own cube lister (test/python/check_peers.py, in .venv made by
 * scripts/python-env.sh, which `npm test` runs first).
 */
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { existsSync, promises as fs } from 'node:fs';
import * as path from 'node:path';
import { test } from 'node:test';
import { writeCellCounterXml } from '../src/core/cellCounterXml';
import { readCube } from '../src/core/cube';
import { summarizeTrainingYaml } from '../src/core/dataset';
import { extractToDataset } from '../src/core/extractToDataset';
import { writeTrainingYaml } from '../src/core/trainingYaml';
import { openVolume } from '../src/core/volume';
import { REPO_ROOT, SAMPLE, scratch } from './helpers';

const PYTHON = path.join(REPO_ROOT, '.venv', 'bin', 'python');

test('cellfinder\'s readers read our cubes, XML and training.yaml as we meant them', async (t) => {
  assert.ok(existsSync(PYTHON), 'the peer venv is missing: run scripts/python-env.sh (npm test runs it)');
  const root = scratch(t);
  const datasetDir = path.join(root, 'dataset');
  await extractToDataset({
    signal: path.join(SAMPLE, 'signal'),
    background: path.join(SAMPLE, 'background'),
    points: path.join(SAMPLE, 'candidates', 'candidates.xml'),
    outputDir: datasetDir,
    voxelSizes: [7.25, 2, 2],
    label: 'cell',
  });
  const summary = await summarizeTrainingYaml(path.join(datasetDir, 'training.yaml'));

  const cubes = [];
  for (const { cubes: listed } of summary.entries) {
    for (const cube of listed) {
      for (const file of cube.files) {
        const expected = `${file}.expected.bin`;
        const { data } = await readCube(file);
        await fs.writeFile(expected, Buffer.from(data.buffer));
        cubes.push({ file, expected_float32_le: expected });
      }
    }
  }
  assert.equal(cubes.length, 2 * 16, '16 candidates fit at 7.25, 2, 2 µm, as the real cellfinder found');

  const xmlFile = path.join(root, 'points.xml');
  const points = [
    { x: 340, y: 1004, z: 15, type: 2 },
    { x: 392, y: 522, z: 10, type: 1 },
    { x: 0, y: 5, z: 7, type: 2 },
    { x: 9, y: 9, z: 9, type: 5 },
  ];
  await writeCellCounterXml(xmlFile, points);

  // The same cubes under a YAML with absolute paths and normalisation stats, elsewhere.
  const absoluteYaml = path.join(root, 'elsewhere', 'training.yaml');
  await fs.mkdir(path.dirname(absoluteYaml));
  await writeTrainingYaml(
    absoluteYaml,
    summary.entries.map(({ entry }) => ({ ...entry, cubeDir: entry.cubeDirPath, signalMean: 241.31, signalStd: 154.92, bgMean: 1e-5, bgStd: 1e16 })),
    { absolutePaths: true },
  );
  const expectedEntries = summary.entries.map(({ entry, cubes: listed }) => ({ type: entry.type, positions: listed.map((c) => [c.position.x, c.position.y, c.position.z]) }));
  const manifest = {
    cubes,
    // brainglobe-utils groups markers by type, ascending; x 0 is written as 1.
    xml: [{ file: xmlFile, expected_points: [...points].sort((a, b) => a.type - b.type).map((p) => [Math.max(1, p.x), p.y, p.z, p.type]) }],
    yaml: [
      // Relative cube_dir (our default): cellfinder_train run from the dataset folder, as the README says.
      { file: path.join(datasetDir, 'training.yaml'), run_from: datasetDir, expected_entries: expectedEntries },
      // Absolute cube_dir: works from anywhere.
      { file: absoluteYaml, run_from: '/', expected_entries: expectedEntries.map((e) => ({ ...e, signal_mean: 241.31, signal_std: 154.92, bg_mean: 1e-5, bg_std: 1e16 })) },
    ],
  };
  const manifestFile = path.join(root, 'manifest.json');
  await fs.writeFile(manifestFile, JSON.stringify(manifest));
  const run = spawnSync(PYTHON, [path.join(REPO_ROOT, 'test', 'python', 'check_peers.py'), manifestFile], { encoding: 'utf8' });
  assert.equal(run.status, 0, `${run.stdout}\n${run.stderr}`);
  assert.match(run.stdout, /^0 failure\(s\)$/m);
  const checks = run.stdout.split('\n').filter((line) => line.startsWith('ok ')).length;
  assert.ok(checks >= 4 * cubes.length + 1 + 2, `ran ${checks} checks`);
});

test('planes tifffile writes compressed (deflate, tiled) read the same as the originals', async (t) => {
  assert.ok(existsSync(PYTHON), 'the peer venv is missing: run scripts/python-env.sh (npm test runs it)');
  const root = scratch(t);
  const script = [
    'import sys, tifffile',
    'src, out = sys.argv[1], sys.argv[2]',
    'a = tifffile.imread(src)',
    "tifffile.imwrite(out + '/deflate.tif', a, compression='zlib')",
    "tifffile.imwrite(out + '/tiled.tif', a, compression='zlib', tile=(256, 256))",
    "tifffile.imwrite(out + '/bigendian.tif', a, byteorder='>')",
  ].join('\n');
  const original = path.join(SAMPLE, 'signal', 'signal_ch000010.tif');
  const run = spawnSync(PYTHON, ['-c', script, original, root], { encoding: 'utf8' });
  assert.equal(run.status, 0, run.stderr);
  const originalVolume = await openVolume(original);
  const expected = Array.from(await originalVolume.readPlane(0));
  await originalVolume.close();
  for (const name of ['deflate.tif', 'tiled.tif', 'bigendian.tif']) {
    const volume = await openVolume(path.join(root, name));
    assert.deepEqual(Array.from(await volume.readPlane(0)), expected, name);
    // A window of rows, decoded from only the strips or tiles that hold it.
    const width = volume.shape[2];
    assert.deepEqual(Array.from(await volume.readRows(0, 300, 377)), expected.slice(300 * width, 377 * width), `${name}, rows 300..376`);
    await volume.close();
  }
});

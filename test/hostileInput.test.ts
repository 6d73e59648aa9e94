/**
 * Faults a real user meets, reproduced: TIFFs cut short or with forged
 * headers (written by tifffile, as microscopes' software and cellfinder write
 * them, then damaged here), voxel sizes in the wrong unit, NaN cubes. Each
 * must be a clear error naming the file (or a reported skip), never a wrong
 * cube saved with exit 0.
 */
import assert from 'node:assert/strict';
import { execFileSync, spawnSync } from 'node:child_process';
import { existsSync, promises as fs } from 'node:fs';
import * as path from 'node:path';
import { test } from 'node:test';
import { main } from '../src/cli/main';
import { CUBE_VOXELS, encodeCube, readCube } from '../src/core/cube';
import { TrainingDataset, validateTrainingYaml } from '../src/core/dataset';
import { DataFileError } from '../src/core/errors';
import { planExtraction, voxelSizeProblem } from '../src/core/extraction';
import { extractToDataset } from '../src/core/extractToDataset';
import { encodeFloat32Stack } from '../src/core/tiffWriter';
import { openVolume } from '../src/core/volume';
import { REPO_ROOT, SAMPLE, scratch, tinyDataset } from './helpers';

const PYTHON = path.join(REPO_ROOT, '.venv', 'bin', 'python');

/** Runs Python with numpy and tifffile (the peer venv) to write TIFFs exactly as tifffile lays them out. */
function tifffile(script: string, ...args: string[]): void {
  assert.ok(existsSync(PYTHON), 'the peer venv is missing: run scripts/python-env.sh (npm test runs it)');
  const run = spawnSync(PYTHON, ['-c', `import sys, numpy as np, tifffile\n${script}`, ...args], { encoding: 'utf8' });
  assert.equal(run.status, 0, run.stderr);
}

/** A uint16 plane of `height` x `width` with no zero pixel, written by tifffile (compression: none or zlib). */
function writePlane(file: string, height: number, width: number, compression = 'None'): void {
  tifffile(`rng = np.random.default_rng(1)\ntifffile.imwrite(sys.argv[1], rng.integers(1, 60000, size=(${height}, ${width}), dtype=np.uint16), compression=${compression === 'None' ? 'None' : `'${compression}'`})`, file);
}

async function run(argv: string[]): Promise<{ code: number; out: string; err: string }> {
  let out = '';
  let err = '';
  const code = await main(argv, { out: (text) => (out += `${text}\n`), err: (text) => (err += `${text}\n`) });
  return { code, out, err };
}

/** Sets a SHORT or LONG tag of the first page of a little-endian classic TIFF (as tifffile writes). */
async function forgeTag(file: string, tag: number, value: number): Promise<void> {
  const bytes = await fs.readFile(file);
  assert.equal(bytes.toString('latin1', 0, 2), 'II');
  const ifd = bytes.readUInt32LE(4);
  const entries = bytes.readUInt16LE(ifd);
  for (let i = 0; i < entries; i++) {
    const at = ifd + 2 + 12 * i;
    if (bytes.readUInt16LE(at) !== tag) continue;
    if (bytes.readUInt16LE(at + 2) === 3) bytes.writeUInt16LE(value, at + 8);
    else bytes.writeUInt32LE(value, at + 8);
    await fs.writeFile(file, bytes);
    return;
  }
  assert.fail(`tag ${tag} not in ${file}`);
}

async function truncateTo(file: string, fraction: number): Promise<void> {
  const { size } = await fs.stat(file);
  await fs.truncate(file, Math.floor(size * fraction));
}

test('a plane cut short inside its pixel data is an error naming it, not a plane of zeros', async (t) => {
  const dir = scratch(t);
  for (const name of ['plane_0.tif', 'plane_1.tif']) writePlane(path.join(dir, name), 300, 400);
  await truncateTo(path.join(dir, 'plane_1.tif'), 0.6);
  const volume = await openVolume(dir);
  assert.equal((await volume.readPlane(0)).length, 300 * 400);
  await assert.rejects(volume.readPlane(1), (error: DataFileError) => {
    assert.equal(error.file, path.join(dir, 'plane_1.tif'));
    assert.match(error.message, /is truncated: its pixel data runs to byte \d+ but the file has \d+ bytes.*Copy or export the file again/);
    return true;
  });
  // The same plane compressed (geotiff decodes it): cut short is refused the same way.
  writePlane(path.join(dir, 'zlib.tif'), 300, 400, 'zlib');
  await truncateTo(path.join(dir, 'zlib.tif'), 0.6);
  const single = await openVolume(dir + '/zlib.tif');
  await assert.rejects(single.readPlane(0), /zlib.tif: is truncated/);
  await single.close();
});

test('a plane cut inside its header directory says it is truncated, not "0-bit pixels"', async (t) => {
  const dir = scratch(t);
  const file = path.join(dir, 'plane.tif');
  writePlane(file, 30, 40);
  const bytes = await fs.readFile(file);
  const directory = bytes.readUInt32LE(4);
  // Cut right after the header, inside the directory's entry count, and inside its entries.
  for (const size of [directory, directory + 1, directory + 40]) {
    await fs.writeFile(file, bytes.subarray(0, size));
    await assert.rejects(
      (async () => {
        const volume = await openVolume(file);
        await volume.readPlane(0).finally(() => volume.close());
      })(),
      (error: DataFileError) => {
        assert.equal(error.file, file);
        assert.match(error.message, /truncated or corrupt/, `cut at ${size} bytes`);
        assert.doesNotMatch(error.message, /0-bit/);
        return true;
      },
    );
  }
});

test('a header declaring more pixels than the file holds is refused before any buffer of that size', async (t) => {
  const dir = scratch(t);
  const plain = path.join(dir, 'plain.tif');
  writePlane(plain, 100, 100);
  await forgeTag(plain, 256, 4000);
  await forgeTag(plain, 257, 4000);
  const volume = await openVolume(plain);
  assert.deepEqual(volume.shape, [1, 4000, 4000]);
  await assert.rejects(volume.readPlane(0), /plain.tif: is truncated or corrupt: its header declares 4000x4000 uint16 pixels \(32000000 bytes\) but its strips hold 20000 bytes/);
  await volume.close();

  // Compressed, 30000 x 30000: 1.8 GB declared in a few kB of deflate (at most ~1000:1).
  const packed = path.join(dir, 'packed.tif');
  writePlane(packed, 100, 100, 'zlib');
  await forgeTag(packed, 256, 30000);
  await forgeTag(packed, 257, 30000);
  const before = process.memoryUsage().rss;
  const forged = await openVolume(packed);
  await assert.rejects(forged.readPlane(0), /packed.tif: is corrupt: its header declares 30000x30000 pixels \(1800000000 bytes\), more than its \d+ bytes of data can hold/);
  await forged.close();
  assert.ok(process.memoryUsage().rss - before < 200e6, 'nothing near the declared size was allocated');
});

test('a multi-page stack cut short is an error, not a shorter volume', async (t) => {
  const dir = scratch(t);
  const stack = path.join(dir, 'stack.tif');
  tifffile('tifffile.imwrite(sys.argv[1], np.arange(1, 1 + 8 * 50 * 60, dtype=np.uint16).reshape(8, 50, 60))', stack);
  const intact = await openVolume(stack);
  assert.deepEqual(intact.shape, [8, 50, 60]);
  await intact.close();
  await truncateTo(stack, 0.7);
  await assert.rejects(
    (async () => {
      const volume = await openVolume(stack);
      // Whichever way the cut falls (in a directory or in pixel data), reading every plane must fail.
      try {
        for (let z = 0; z < volume.shape[0]; z++) await volume.readPlane(z);
      } finally {
        await volume.close();
      }
    })(),
    (error: DataFileError) => error.file === stack && /truncated/.test(error.message),
  );
});

test('extraction from a volume with a plane cut short exits 1 naming the plane; any cube saved is the right one', async (t) => {
  const dir = scratch(t);
  const signal = path.join(dir, 'signal');
  await fs.cp(path.join(SAMPLE, 'signal'), signal, { recursive: true });
  const damaged = path.join(signal, 'signal_ch000012.tif');
  await truncateTo(damaged, 0.5);
  const points = path.join(SAMPLE, 'candidates', 'candidates.xml');
  const args = (output: string, volume: string) => ['extract', '--signal', volume, '--background', path.join(SAMPLE, 'background'), '--points', points, '--output-dir', output, '--label', 'cell'];
  const result = await run(args(path.join(dir, 'out'), signal));
  assert.equal(result.code, 1);
  assert.match(result.err, new RegExp(`${damaged}: is truncated`));
  const clean = path.join(dir, 'clean');
  assert.equal((await run(args(clean, path.join(SAMPLE, 'signal')))).code, 0);
  for (const name of await fs.readdir(path.join(dir, 'out', 'cells'))) {
    assert.deepEqual(await fs.readFile(path.join(dir, 'out', 'cells', name)), await fs.readFile(path.join(clean, 'cells', name)), `${name} equals the cube cut from the intact volume`);
  }
});

test('voxel sizes in the wrong unit are refused before any cube is cut (CLI usage error, core error naming the volume)', async (t) => {
  assert.equal(voxelSizeProblem([5, 2, 2]), undefined);
  assert.equal(voxelSizeProblem([4, 0.8, 0.8]), undefined);
  assert.match(voxelSizeProblem([5000, 2000, 2000]) as string, /span 0x0x0 data voxels.*look like nanometres/);
  assert.match(voxelSizeProblem([0.005, 0.002, 0.002]) as string, /look like millimetres/);
  const out = scratch(t);
  const result = await run(['extract', '--signal', path.join(SAMPLE, 'signal'), '--points', path.join(SAMPLE, 'candidates', 'candidates.xml'), '--output-dir', out, '--voxel-sizes', '5000', '2000', '2000']);
  assert.equal(result.code, 2);
  assert.match(result.err, /--voxel-sizes: voxel sizes 5000, 2000, 2000 µm .* look like nanometres.*Give the voxel sizes in µm/);
  assert.deepEqual(await fs.readdir(out), [], 'nothing written');
  const volume = await openVolume(path.join(SAMPLE, 'signal'));
  assert.throws(() => planExtraction({ points: [{ x: 300, y: 500, z: 10 }], channels: [volume], dataVoxelSizes: [5000, 2000, 2000] }), (error: DataFileError) => error.file === path.join(SAMPLE, 'signal'));
  await volume.close();
});

test('signal and background of different depths: an error naming the background, not a stack trace', async (t) => {
  const dir = scratch(t);
  const background = path.join(dir, 'background');
  await fs.cp(path.join(SAMPLE, 'background'), background, { recursive: true });
  await fs.rm(path.join(background, 'background_ch010025.tif'));
  const result = await run(['extract', '--signal', path.join(SAMPLE, 'signal'), '--background', background, '--points', path.join(SAMPLE, 'candidates', 'candidates.xml'), '--output-dir', path.join(dir, 'out')]);
  assert.equal(result.code, 1);
  assert.match(result.err, new RegExp(`error: ${background}: is 25x1116x627 \\(z, y, x\\) but the signal .* is 26x1116x627\\. Signal and background must have the same shape`));
  assert.doesNotMatch(result.err, /\n\s+at /, 'no stack trace');
});

test('NaN or infinite cubes: refused when saved, named by validate and by training, skipped (with the reason) by extraction', async (t) => {
  const root = scratch(t);
  const yaml = await tinyDataset(root);
  const cellsFolder = path.join(root, 'cells');
  const [signalName] = (await fs.readdir(cellsFolder)).filter((name) => name.endsWith('Ch0.tif'));
  const poisoned = new Float32Array(CUBE_VOXELS).fill(3);
  poisoned[17] = Number.NaN;
  poisoned[99] = Number.POSITIVE_INFINITY;
  const nanFile = path.join(cellsFolder, signalName);
  await fs.writeFile(nanFile, encodeCube(poisoned));
  await assert.rejects(readCube(nanFile), /holds 2 NaN or infinite value\(s\); training on it would make the loss NaN/);
  const validation = await validateTrainingYaml(yaml);
  assert.deepEqual(validation.problems.map((p) => p.file), [nanFile]);

  const dataset = await TrainingDataset.open(root);
  await assert.rejects(dataset.addCube({ position: { x: 5, y: 5, z: 5 }, label: 'cell', channels: [poisoned, new Float32Array(CUBE_VOXELS)] }), /was not saved: the cube holds 2 NaN or infinite value\(s\)/);
  assert.ok(!existsSync(path.join(cellsFolder, 'pCellz5y5x5Ch0.tif')));

  const trained = await run(['train', '-y', yaml, '-o', path.join(root, 'run'), '--network-depth', '18', '--epochs', '1', '--batch-size', '2', '--test-fraction', '0']);
  assert.equal(trained.code, 1);
  assert.match(trained.err, new RegExp(`${nanFile}: holds 2 NaN or infinite value`));

  // A float32 volume with NaN where it has no data: that point is skipped with the reason, the others extracted.
  const stackFile = path.join(root, 'float-stack.tif');
  const signal = await openVolume(path.join(SAMPLE, 'signal'));
  const [depth, height, width] = signal.shape;
  const stack = new Float32Array(depth * height * width);
  for (let z = 0; z < depth; z++) stack.set(await signal.readPlane(z), z * height * width);
  await signal.close();
  for (let z = 0; z < depth; z++) for (let y = 0; y < 400; y++) stack.fill(Number.NaN, (z * height + y) * width, (z * height + y) * width + 200);
  await fs.writeFile(stackFile, encodeFloat32Stack(stack, depth, height, width));
  const points = path.join(root, 'points.xml');
  await fs.writeFile(points, cellCounterXml([{ x: 100, y: 200, z: 13 }, { x: 400, y: 700, z: 13 }]));
  const report = await extractToDataset({ signal: stackFile, points, outputDir: path.join(root, 'nan-volume'), label: 'cell' });
  assert.equal(report.added, 1);
  assert.deepEqual(report.skipped.map((s) => [s.point.x, s.reason]), [[100, 'its cube holds 50000 NaN or infinite voxel(s) (the volume has no valid data there)']]);
});

function cellCounterXml(points: Array<{ x: number; y: number; z: number }>): string {
  const markers = points.map((p) => `<Marker><MarkerX>${p.x}</MarkerX><MarkerY>${p.y}</MarkerY><MarkerZ>${p.z}</MarkerZ></Marker>`).join('');
  return `<?xml version="1.0" encoding="UTF-8"?><CellCounter_Marker_File><Image_Properties><Image_Filename>x</Image_Filename></Image_Properties><Marker_Data><Current_Type>1</Current_Type><Marker_Type><Type>2</Type>${markers}</Marker_Type></Marker_Data></CellCounter_Marker_File>`;
}

test('a stray non-TIFF file among the planes is named when the channels disagree', async (t) => {
  const dir = scratch(t);
  const background = path.join(dir, 'background');
  await fs.cp(path.join(SAMPLE, 'background'), background, { recursive: true });
  const stray = path.join(background, 'background_ch010026.tif');
  await fs.writeFile(stray, 'Thumbs.db-like bytes, not a plane');
  const result = await run(['extract', '--signal', path.join(SAMPLE, 'signal'), '--background', background, '--points', path.join(SAMPLE, 'candidates', 'candidates.xml'), '--output-dir', path.join(dir, 'out')]);
  assert.equal(result.code, 1);
  assert.match(result.err, new RegExp(`is 27x1116x627 .* not TIFF files: ${stray}\\. Move the files that are not planes out of the folder`));
});

test('messages name the problem, never "undefined": an empty XML, a YAML entry missing keys, a cell_def that is not XML', async (t) => {
  const dir = scratch(t);
  const empty = path.join(dir, 'empty.xml');
  await fs.writeFile(empty, '');
  const noPoints = await run(['extract', '--signal', path.join(SAMPLE, 'signal'), '--points', empty, '--output-dir', path.join(dir, 'out')]);
  assert.equal(noPoints.code, 1);
  assert.match(noPoints.err, /empty.xml: is empty \(0 bytes\), not a Cell Counter XML file/);
  const cut = path.join(dir, 'cut.xml');
  await fs.writeFile(cut, '<?xml version="1.0"?>\n<CellCounter_Marker_File><Marker_Data>');
  assert.doesNotMatch((await run(['extract', '--signal', path.join(SAMPLE, 'signal'), '--points', cut, '--output-dir', path.join(dir, 'out')])).err, /undefined/);

  await fs.mkdir(path.join(dir, 'cells'));
  const yaml = path.join(dir, 'training.yaml');
  await fs.writeFile(yaml, 'data:\n- cube_dir: cells\n  type: cell\n');
  const missingKeys = await run(['dataset', 'validate', yaml]);
  assert.equal(missingKeys.code, 1);
  assert.match(missingKeys.err, /data\[0\]: "signal_channel" is missing; it must be a channel number/);
  assert.doesNotMatch(missingKeys.err, /undefined/);
  await fs.writeFile(yaml, 'data:\n- cube_dir: cells\n  signal_channel: 0\n  bg_channel: 1\n');
  assert.match((await run(['dataset', 'validate', yaml])).err, /data\[0\]: "type" is missing; it must be "cell" or "no_cell"/);

  const notes = path.join(dir, 'notes.txt');
  await fs.writeFile(notes, 'cells I liked');
  await fs.writeFile(yaml, 'data:\n- cube_dir: cells\n  cell_def: notes.txt\n  signal_channel: 0\n  bg_channel: 1\n  type: cell\n');
  const cellDef = await run(['dataset', 'validate', yaml]);
  assert.equal(cellDef.code, 1);
  assert.match(cellDef.err, /notes.txt: is the cell_def of the training.yaml entry for cells \(type cell\) and is not well-formed XML at line 1, column 1.*Make cell_def a Cell Counter XML file/);
});

test('the same folder listed twice in a training.yaml is counted (and trained) once, with a warning', async (t) => {
  const root = scratch(t);
  const yaml = await tinyDataset(root);
  const text = await fs.readFile(yaml, 'utf8');
  await fs.writeFile(yaml, text + text.slice('data:\n'.length, text.indexOf('- bg_channel', 10)));
  const result = await validateTrainingYaml(yaml);
  assert.deepEqual([result.summary.cells, result.summary.nonCells], [2, 2]);
  assert.deepEqual(result.problems, []);
  assert.match(result.warnings.map((w) => w.problem).join('\n'), /data\[2\] repeats an earlier entry \(cube_dir cells, type cell\); its cubes are counted once/);
});

test('train: an output path that is a file, a damaged resume state, a missing channel and one class only are told before training', { timeout: 5 * 60_000 }, async (t) => {
  const root = scratch(t);
  const yaml = await tinyDataset(root);
  const file = path.join(root, 'not-a-folder');
  await fs.writeFile(file, 'x');
  const toFile = await run(['train', '-y', yaml, '-o', file, '--network-depth', '18', '--epochs', '1']);
  assert.equal(toFile.code, 1);
  assert.match(toFile.err, /not-a-folder: is a file, not a folder\. Give a folder for the run's output/);
  assert.doesNotMatch(toFile.err, /\n\s+at /);

  const damaged = path.join(root, 'damaged-run');
  await fs.mkdir(path.join(damaged, '.resume'), { recursive: true });
  await fs.writeFile(path.join(damaged, '.resume', 'state.json'), '{"config": {"yamlFiles": [');
  const resumed = await run(['train', '--resume', damaged]);
  assert.equal(resumed.code, 1);
  assert.match(resumed.err, /state.json: is not valid JSON \(damaged\)\. The run cannot be resumed: start it again/);
  assert.doesNotMatch(resumed.err, /\n\s+at /);

  const [background] = (await fs.readdir(path.join(root, 'non_cells'))).filter((name) => name.endsWith('Ch1.tif'));
  await fs.rename(path.join(root, 'non_cells', background), path.join(root, background));
  const missing = await run(['train', '-y', yaml, '-o', path.join(root, 'run'), '--network-depth', '18', '--epochs', '1', '--json']);
  assert.equal(missing.code, 1);
  assert.match(missing.err, new RegExp(`${background}: is missing: its cube has no file for this channel`));
  assert.doesNotMatch(missing.out, /"type":"batch"/, 'found before the first batch');
  await fs.rename(path.join(root, background), path.join(root, 'non_cells', background));

  // Cells only: the run goes ahead, and says what it will learn.
  await fs.writeFile(yaml, (await fs.readFile(yaml, 'utf8')).replace(/- bg_channel: 1\n  cell_def: ''\n  cube_dir: non_cells[^]*$/, ''));
  const oneClass = await run(['train', '-y', yaml, '-o', path.join(root, 'cells-only'), '--network-depth', '18', '--epochs', '1', '--batch-size', '2', '--test-fraction', '0']);
  assert.equal(oneClass.code, 0, oneClass.err);
  assert.match(oneClass.out, /warning: the training data holds only cells \(2\), no non-cells: the network will learn to call everything a cell/);
});

test('output piped into a reader that stops early: no EPIPE stack trace', () => {
  const cli = path.join(REPO_ROOT, 'bin', 'cellfinder-retrain.js');
  const piped = spawnSync('bash', ['-c', `node ${cli} help | true; echo "status \${PIPESTATUS[0]}" >&2`], { encoding: 'utf8' });
  assert.doesNotMatch(piped.stderr, /EPIPE|\n\s+at /);
  assert.match(piped.stderr, /status 0/);
});

test('merging into a read-only folder says it is not writable', async (t) => {
  if (process.getuid?.() !== 0) {
    t.skip('needs root to mount a read-only tmpfs (CI runs as root)');
    return;
  }
  const root = scratch(t);
  const yaml = await tinyDataset(path.join(root, 'a'));
  const mount = path.join(root, 'read-only');
  await fs.mkdir(mount);
  execFileSync('mount', ['-t', 'tmpfs', '-o', 'ro,size=64k', 'tmpfs', mount]);
  try {
    const result = await run(['dataset', 'merge', '-y', yaml, yaml, '-o', path.join(mount, 'merged')]);
    assert.equal(result.code, 1);
    assert.match(result.err, /merged: the folder is not writable\. Choose an output folder you can write to/);
  } finally {
    execFileSync('umount', [mount]);
  }
});

test('commands that load TensorFlow print no "install our node backend" banner, before a data error or otherwise', (t) => {
  const cli = path.join(REPO_ROOT, 'bin', 'cellfinder-retrain.js');
  const dir = scratch(t);
  const run = spawnSync(process.execPath, [cli, 'train', '-y', path.join(dir, 'no-such-training.yaml'), '-o', path.join(dir, 'run')], { encoding: 'utf8' });
  assert.equal(run.status, 1);
  assert.match(run.stderr, /no-such-training.yaml: does not exist/);
  assert.doesNotMatch(run.stderr + run.stdout, /install our node backend|Hi, looks like you are running TensorFlow.js/);
});

import assert from 'node:assert/strict';
import { promises as fs } from 'node:fs';
import * as path from 'node:path';
import { test } from 'node:test';
import { summarizeTrainingYaml } from '../src/core/dataset';
import { DataFileError } from '../src/core/errors';
import { formatTrainingYaml, parseTrainingYaml, pythonFloat, readTrainingYaml, writeTrainingYaml } from '../src/core/trainingYaml';
import { BRAINGLOBE_FIXTURES, SAMPLE, scratch } from './helpers';

const TRAINING = path.join(SAMPLE, 'training');

test('reads the three real training.yaml variants cellfinder\'s tests use', async () => {
  const two = parseTrainingYaml(await fs.readFile(path.join(TRAINING, 'training.yaml'), 'utf8'), 'training.yaml');
  assert.deepEqual(two[0], { cubeDir: 'tests/data/integration/training/cells', cellDef: '', type: 'cell', signalChannel: 0, bgChannel: 1 });
  assert.equal(two[1].type, 'no_cell');
  const single = parseTrainingYaml(await fs.readFile(path.join(TRAINING, 'training_single_channel.yaml'), 'utf8'), 'x.yaml');
  assert.equal(single[0].bgChannel, -1);
  const stats = parseTrainingYaml(await fs.readFile(path.join(TRAINING, 'training_with_stats.yaml'), 'utf8'), 'x.yaml');
  assert.deepEqual([stats[1].signalMean, stats[1].signalStd, stats[1].bgMean, stats[1].bgStd], [231.28, 79.6, 836.21, 348.35]);
});

test('relative cube_dir: the YAML\'s folder first, then the working directory, and says which matched', async (t) => {
  const root = scratch(t);
  // The real YAML's paths are relative to the cellfinder repository root (its working directory).
  const repo = path.join(root, 'cellfinder');
  await fs.mkdir(path.join(repo, 'tests/data/integration/training'), { recursive: true });
  await fs.cp(path.join(TRAINING, 'cells'), path.join(repo, 'tests/data/integration/training/cells'), { recursive: true });
  const yamlFile = path.join(root, 'elsewhere', 'training.yaml');
  await fs.mkdir(path.dirname(yamlFile));
  await fs.copyFile(path.join(TRAINING, 'training.yaml'), yamlFile);
  const fromCwd = await readTrainingYaml(yamlFile, repo);
  assert.equal(fromCwd.entries[0].resolvedAgainst, 'working-directory');
  assert.equal(fromCwd.entries[0].cubeDirPath, path.join(repo, 'tests/data/integration/training/cells'));

  // Next to the YAML wins over the working directory.
  await fs.cp(path.join(TRAINING, 'cells'), path.join(root, 'elsewhere', 'tests/data/integration/training/cells'), { recursive: true });
  const fromYaml = await readTrainingYaml(yamlFile, repo);
  assert.equal(fromYaml.entries[0].resolvedAgainst, 'yaml-folder');
  assert.equal(fromYaml.entries[0].cubeDirPath, path.join(root, 'elsewhere', 'tests/data/integration/training/cells'));
});

test('a missing cube folder is an error naming the entry and where we looked', async (t) => {
  const root = scratch(t);
  const yamlFile = path.join(root, 'training.yaml');
  await fs.writeFile(yamlFile, 'data:\n- bg_channel: 1\n  cell_def: \'\'\n  cube_dir: nowhere/cells\n  signal_channel: 0\n  type: cell\n');
  await assert.rejects(readTrainingYaml(yamlFile, root), (e: DataFileError) => {
    assert.equal(e.file, yamlFile);
    assert.match(e.message, /data\[0\] \(type cell\): cube_dir "nowhere\/cells" is not a folder/);
    return true;
  });
});

test('malformed YAML and wrong fields get specific errors', () => {
  assert.throws(() => parseTrainingYaml('data:\n  - cube_dir: [unclosed\n', 'bad.yaml'), /bad.yaml: is not valid YAML at line \d+/);
  assert.throws(() => parseTrainingYaml('cubes: []\n', 'bad.yaml'), /has no "data:" section/);
  assert.throws(() => parseTrainingYaml('data:\n- cube_dir: a\n  type: maybe\n  signal_channel: 0\n  bg_channel: 1\n', 'bad.yaml'), /data\[0\]: "type" is "maybe"; it must be "cell" or "no_cell"/);
  assert.throws(() => parseTrainingYaml('data:\n- cube_dir: a\n  type: cell\n  signal_channel: 0\n', 'bad.yaml'), /data\[0\]: "bg_channel" is missing/);
  assert.throws(() => parseTrainingYaml('data:\n- cube_dir: a\n  type: cell\n  signal_channel: 0\n  bg_channel: 1\n  signal_mean: lots\n', 'bad.yaml'), /"signal_mean" is "lots"/);
});

test('writes cube_dir relative to the YAML by default, absolute on request, and keeps unknown keys', async (t) => {
  const root = scratch(t);
  const yamlFile = path.join(root, 'set', 'training.yaml');
  await fs.mkdir(path.join(root, 'set', 'cells'), { recursive: true });
  const entries = [
    { cubeDir: path.join(root, 'set', 'cells'), cellDef: '', type: 'cell' as const, signalChannel: 0, bgChannel: 1, signalMean: 241.31, signalStd: 154.92, extra: { comment: 'round 2' } },
  ];
  const relative = formatTrainingYaml(yamlFile, entries);
  assert.equal(relative, "data:\n- bg_channel: 1\n  cell_def: ''\n  comment: round 2\n  cube_dir: cells\n  signal_channel: 0\n  signal_mean: 241.31\n  signal_std: 154.92\n  type: cell\n");
  assert.match(formatTrainingYaml(yamlFile, entries, { absolutePaths: true }), new RegExp(`cube_dir: ${path.join(root, 'set', 'cells')}\\n`));
  await writeTrainingYaml(yamlFile, entries);
  const back = await readTrainingYaml(yamlFile, '/');
  assert.equal(back.entries[0].resolvedAgainst, 'yaml-folder');
  assert.deepEqual(back.entries[0].extra, { comment: 'round 2' });
  await assert.rejects(writeTrainingYaml(yamlFile, entries), /already exists/);
});

test('byte for byte what brainglobe-utils save_yaml wrote (napari curation layout), and Python float repr', async () => {
  for (const name of ['training.yaml', 'training_single_channel.yaml']) {
    const file = path.join(BRAINGLOBE_FIXTURES, name);
    const golden = await fs.readFile(file, 'utf8');
    const entries = parseTrainingYaml(golden, file);
    assert.equal(formatTrainingYaml(file, entries, { absolutePaths: true }), golden, name);
  }
  // test/fixtures/brainglobe-utils/training_float_edge_cases.yaml
  assert.deepEqual([1e-5, 1e16, 100, 12345678901234.5, 411.6390313291045].map(pythonFloat), ['1.0e-05', '1.0e+16', '100.0', '12345678901234.5', '411.6390313291045']);
});

test('cell_def limits an entry to the cubes it names (XML or folder), resolved like cube_dir', async (t) => {
  const root = scratch(t);
  await fs.cp(path.join(TRAINING, 'cells'), path.join(root, 'cubes'), { recursive: true });
  await fs.writeFile(
    path.join(root, 'chosen.xml'),
    '<CellCounter_Marker_File><Marker_Data><Marker_Type><Type>2</Type><Marker><MarkerX>1896</MarkerX><MarkerY>413</MarkerY><MarkerZ>1132</MarkerZ></Marker></Marker_Type></Marker_Data></CellCounter_Marker_File>',
  );
  const yamlFile = path.join(root, 'training.yaml');
  await fs.writeFile(yamlFile, "data:\n- bg_channel: 1\n  cell_def: chosen.xml\n  cube_dir: cubes\n  signal_channel: 0\n  type: cell\n");
  const summary = await summarizeTrainingYaml(yamlFile, '/');
  assert.deepEqual(summary.entries[0].cubes.map((c) => c.position), [{ x: 1896, y: 413, z: 1132 }]);
  await fs.writeFile(yamlFile, "data:\n- bg_channel: 1\n  cell_def: missing.xml\n  cube_dir: cubes\n  signal_channel: 0\n  type: cell\n");
  await assert.rejects(summarizeTrainingYaml(yamlFile, '/'), /data\[0\] \(type cell\): cell_def "missing.xml" does not exist/);
});

/**
 * Writers interrupted (kill -9 at chosen and random points, a full disk) and
 * writers side by side: a cube is in a dataset with all its channels or not
 * at all, and running the same command again completes what was cut short.
 */
import assert from 'node:assert/strict';
import { execFileSync, spawn, spawnSync } from 'node:child_process';
import { existsSync, promises as fs } from 'node:fs';
import * as path from 'node:path';
import { test } from 'node:test';
import { parseJsonLines } from '../src/core/atomicFile';
import { validateTrainingYaml, type ProvenanceRecord } from '../src/core/dataset';
import { DataFileError } from '../src/core/errors';
import { extractToDataset } from '../src/core/extractToDataset';
import { MERGE_MARKER, mergeTrainingYamls } from '../src/core/merge';
import { REPO_ROOT, SAMPLE, scratch, tinyDataset } from './helpers';

const CLI = path.join(REPO_ROOT, 'bin', 'cellfinder-retrain.js');
const POINTS = path.join(SAMPLE, 'candidates', 'candidates.xml');
const EXTRACT_OPTIONS = { signal: path.join(SAMPLE, 'signal'), background: path.join(SAMPLE, 'background'), points: POINTS, voxelSizes: [5, 2, 2] as [number, number, number], label: 'cell' as const };
const EXTRACT_ARGS = ['extract', '--signal', EXTRACT_OPTIONS.signal, '--background', EXTRACT_OPTIONS.background, '--points', POINTS, '--voxel-sizes', '5', '2', '2', '--label', 'cell'];

/** The 13 cubes the sample gives, extracted once without interruption, as name -> bytes. */
async function referenceCubes(root: string): Promise<Map<string, Buffer>> {
  const folder = path.join(root, 'reference');
  await extractToDataset({ ...EXTRACT_OPTIONS, outputDir: folder });
  const cubes = new Map<string, Buffer>();
  for (const name of await fs.readdir(path.join(folder, 'cells'))) cubes.set(name, await fs.readFile(path.join(folder, 'cells', name)));
  return cubes;
}

/** Every cube complete and equal to the reference, no leftovers, one add record per cube. */
async function assertComplete(dataset: string, reference: Map<string, Buffer>): Promise<void> {
  const names = (await fs.readdir(path.join(dataset, 'cells'))).sort();
  assert.deepEqual(names, [...reference.keys()].sort(), 'exactly the reference cubes, every channel');
  for (const name of names) assert.ok((await fs.readFile(path.join(dataset, 'cells', name))).equals(reference.get(name) as Buffer), `${name} has the reference bytes`);
  const validation = await validateTrainingYaml(path.join(dataset, 'training.yaml'));
  assert.deepEqual(validation.problems, []);
  const records = parseJsonLines<ProvenanceRecord>(await fs.readFile(path.join(dataset, 'provenance.jsonl'), 'utf8'));
  const added = new Set(records.filter((r) => r.action === 'add').map((r) => `${r.position.z},${r.position.y},${r.position.x}`));
  assert.equal(added.size, reference.size / 2, 'every cube has its provenance line');
}

test('a cube whose background file is missing (an interrupted save) is completed by extracting again', async (t) => {
  const root = scratch(t);
  const reference = await referenceCubes(root);
  const dataset = path.join(root, 'set');
  await extractToDataset({ ...EXTRACT_OPTIONS, outputDir: dataset });
  const [someBackground] = [...reference.keys()].filter((name) => name.endsWith('Ch1.tif'));
  await fs.rm(path.join(dataset, 'cells', someBackground));
  assert.equal((await validateTrainingYaml(path.join(dataset, 'training.yaml'))).problems.length, 1);
  const again = await extractToDataset({ ...EXTRACT_OPTIONS, outputDir: dataset });
  assert.deepEqual([again.added, again.repaired, again.alreadyPresent], [0, 1, 12]);
  await assertComplete(dataset, reference);
});

test('a background file left without its signal (killed between the two) is invisible, and replaced by the next save', async (t) => {
  const root = scratch(t);
  const reference = await referenceCubes(root);
  const dataset = path.join(root, 'set');
  await extractToDataset({ ...EXTRACT_OPTIONS, outputDir: dataset });
  const [signalName] = [...reference.keys()].filter((name) => name.endsWith('Ch0.tif'));
  const backgroundName = signalName.replace('Ch0.tif', 'Ch1.tif');
  // The state a kill between the two links leaves: the background is there, the signal not.
  await fs.rm(path.join(dataset, 'cells', signalName));
  // ... and a remnant of a different cube at the same place (another volume's) is moved aside, not kept.
  const stranger = path.join(root, 'stranger.tif');
  await fs.copyFile(path.join(dataset, 'cells', [...reference.keys()].find((n) => n.endsWith('Ch1.tif') && n !== backgroundName) as string), stranger);
  await fs.rm(path.join(dataset, 'cells', backgroundName));
  await fs.copyFile(stranger, path.join(dataset, 'cells', backgroundName));
  const summary = await validateTrainingYaml(path.join(dataset, 'training.yaml'));
  assert.equal(summary.summary.cells, 12, 'the remnant is not a cube to cellfinder (listed by its signal file)');
  const again = await extractToDataset({ ...EXTRACT_OPTIONS, outputDir: dataset });
  assert.deepEqual([again.added, again.alreadyPresent], [1, 12]);
  await assertComplete(dataset, reference);
  const trash = path.join(dataset, '.trash');
  const [moved] = await fs.readdir(trash);
  assert.ok((await fs.readFile(path.join(trash, moved, backgroundName))).equals(await fs.readFile(stranger)), 'the remnant is in .trash, not deleted');
});

test('a cube saved without its provenance line gets the line when extracted again; dead writers\' temporary files are removed', async (t) => {
  const root = scratch(t);
  const reference = await referenceCubes(root);
  const dataset = path.join(root, 'set');
  await extractToDataset({ ...EXTRACT_OPTIONS, outputDir: dataset });
  const log = path.join(dataset, 'provenance.jsonl');
  const lines = (await fs.readFile(log, 'utf8')).trimEnd().split('\n');
  await fs.writeFile(log, `${lines.slice(0, -1).join('\n')}\n`);
  // A temporary file of a writer that died (its pid no longer runs) and one of a live writer.
  const dead = spawnSync(process.execPath, ['-e', 'process.stdout.write(String(process.pid))'], { encoding: 'utf8' }).stdout;
  const deadTemp = path.join(dataset, 'cells', `.pCellz1y1x1Ch0.tif.${dead}.0badc0de.tmp`);
  const liveTemp = path.join(dataset, 'cells', `.pCellz1y1x1Ch0.tif.${process.ppid}.0badc0de.tmp`);
  await fs.writeFile(deadTemp, '');
  await fs.writeFile(liveTemp, '');
  await extractToDataset({ ...EXTRACT_OPTIONS, outputDir: dataset });
  assert.ok(!existsSync(deadTemp), 'the dead writer\'s temporary file is removed');
  assert.ok(existsSync(liveTemp), 'a running writer\'s temporary file is left alone');
  await fs.rm(liveTemp);
  await assertComplete(dataset, reference);
});

test('kill -9 at random points of an extraction: running it again always ends with every cube complete and logged', { timeout: 5 * 60_000 }, async (t) => {
  const root = scratch(t);
  const reference = await referenceCubes(root);
  for (let trial = 0; trial < 8; trial++) {
    const dataset = path.join(root, `killed-${trial}`);
    // Kill after the trial-th cube was reported, a few hundred microseconds to milliseconds later: inside the next save.
    const child = spawn(process.execPath, [CLI, ...EXTRACT_ARGS, '--output-dir', dataset], { stdio: ['ignore', 'ignore', 'pipe'] });
    const exited = new Promise<void>((resolve) => child.on('exit', () => resolve()));
    let killed = false;
    child.stderr.on('data', (chunk: Buffer) => {
      const done = /extracting cubes: (\d+)\//.exec(chunk.toString());
      if (!killed && done && Number(done[1]) >= trial + 1) {
        killed = true;
        setTimeout(() => child.kill('SIGKILL'), trial % 3);
      }
    });
    await exited;
    const rerun = spawnSync(process.execPath, [CLI, ...EXTRACT_ARGS, '--output-dir', dataset], { encoding: 'utf8' });
    assert.equal(rerun.status, 0, rerun.stderr);
    await assertComplete(dataset, reference);
    const hidden = (await fs.readdir(path.join(dataset, 'cells'))).filter((name) => name.startsWith('.'));
    assert.deepEqual(hidden, [], 'no temporary files left');
  }
});

test('two extractions into one dataset at the same time both succeed and the data is whole', { timeout: 5 * 60_000 }, async (t) => {
  const root = scratch(t);
  const reference = await referenceCubes(root);
  for (let trial = 0; trial < 3; trial++) {
    const dataset = path.join(root, `shared-${trial}`);
    const runs = [0, 1].map(
      () =>
        new Promise<{ code: number | null; err: string }>((resolve) => {
          const child = spawn(process.execPath, [CLI, ...EXTRACT_ARGS, '--output-dir', dataset], { stdio: ['ignore', 'ignore', 'pipe'] });
          let err = '';
          child.stderr.on('data', (chunk) => (err += chunk));
          child.on('exit', (code) => resolve({ code, err }));
        }),
    );
    for (const result of await Promise.all(runs)) assert.equal(result.code, 0, result.err);
    await assertComplete(dataset, reference);
  }
});

test('a merge stopped by a full disk is finished by running it again into the same folder', async (t) => {
  if (process.getuid?.() !== 0) {
    t.skip('needs root to mount a tiny tmpfs (CI runs as root)');
    return;
  }
  const root = scratch(t);
  const first = await tinyDataset(path.join(root, 'a'));
  const second = await tinyDataset(path.join(root, 'b'), 3);
  const mount = path.join(root, 'small-disk');
  await fs.mkdir(mount);
  // Room for a few of the 16 cubes (2 x 200 kB each) only.
  execFileSync('mount', ['-t', 'tmpfs', '-o', 'size=1200k', 'tmpfs', mount]);
  try {
    await mergeAfterAFullDisk(first, second, mount);
  } finally {
    execFileSync('umount', [mount]);
  }
});

async function mergeAfterAFullDisk(first: string, second: string, mount: string): Promise<void> {
  const output = path.join(mount, 'merged');
  await assert.rejects(mergeTrainingYamls([first, second], output), (error: DataFileError) => /the disk is full/.test(error.message));
  assert.ok(!existsSync(path.join(output, 'training.yaml')));
  assert.ok(existsSync(path.join(output, MERGE_MARKER)));
  // Other sources into the unfinished folder are refused.
  await assert.rejects(mergeTrainingYamls([second, first], output), /holds an unfinished merge of other datasets/);
  execFileSync('mount', ['-o', 'remount,size=8m', mount]);
  const report = await mergeTrainingYamls([first, second], output);
  assert.equal(report.copied, 16);
  assert.ok(!existsSync(path.join(output, MERGE_MARKER)));
  const validation = await validateTrainingYaml(report.yamlFile);
  assert.deepEqual(validation.problems, []);
  assert.deepEqual([validation.summary.cells, validation.summary.nonCells], [8, 8]);
  const records = parseJsonLines<ProvenanceRecord>(await fs.readFile(path.join(output, 'provenance.jsonl'), 'utf8'));
  assert.equal(new Set(records.map((r) => r.id)).size, records.length, 'no log line twice');
  assert.equal(records.length, 16);
  // Every merged cube file is byte for byte one of the sources' (none half-copied).
  const sourceBytes = new Set<string>();
  for (const yaml of [first, second]) {
    for (const folder of ['cells', 'non_cells']) for (const name of await fs.readdir(path.join(path.dirname(yaml), folder))) sourceBytes.add((await fs.readFile(path.join(path.dirname(yaml), folder, name))).toString('base64'));
  }
  for (const { cubes } of validation.summary.entries) {
    for (const cube of cubes) for (const file of cube.files) assert.ok(sourceBytes.has((await fs.readFile(file)).toString('base64')), file);
  }
}

import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { promises as fs } from 'node:fs';
import * as path from 'node:path';
import { test } from 'node:test';
import { main } from '../src/cli/main';
import { PROVENANCE_LOG, type ProvenanceRecord } from '../src/core/dataset';
import { modelCardPath } from '../src/sharing/modelCard';
import { REPO_ROOT, SAMPLE, scratch } from './helpers';

async function run(argv: string[]): Promise<{ code: number; out: string; err: string }> {
  let out = '';
  let err = '';
  const code = await main(argv, { out: (text) => (out += `${text}\n`), err: (text) => (err += `${text}\n`) });
  return { code, out, err };
}

const EXTRACT = ['extract', '--signal', path.join(SAMPLE, 'signal'), '--background', path.join(SAMPLE, 'background'), '--points', path.join(SAMPLE, 'candidates', 'candidates.xml')];

test('extract --json: cubes + training.yaml, edge points listed, progress on stderr', async (t) => {
  const out = scratch(t);
  const result = await run([...EXTRACT, '--output-dir', out, '--voxel-sizes', '5', '2', '2', '--label', 'cell', '--json']);
  assert.equal(result.code, 0, result.err);
  const report = JSON.parse(result.out);
  assert.equal(report.added, 13);
  assert.equal(report.skipped.length, 25);
  assert.deepEqual([report.cells, report.nonCells], [13, 0]);
  assert.match(result.err, /extracting cubes: 13\/13 \(100%\)/);
  assert.equal((await fs.readdir(path.join(out, 'cells'))).length, 26);
  // Running again adds nothing and overwrites nothing.
  const again = JSON.parse((await run([...EXTRACT, '--output-dir', out, '--voxel-sizes', '5', '2', '2', '--label', 'cell', '--json'])).out);
  assert.deepEqual([again.added, again.alreadyPresent], [0, 13]);

  // Each cube's record says the voxel sizes it was cut at, and a model card of a run on the dataset says them.
  const records = (await fs.readFile(path.join(out, PROVENANCE_LOG), 'utf8')).trim().split('\n').map((line) => JSON.parse(line) as ProvenanceRecord);
  assert.deepEqual([...new Set(records.map((record) => `${record.action} ${record.voxelSizes?.join(',')}`))], ['add 5,2,2']);
  const runFolder = path.join(out, 'run');
  const trained = await run(['train', '-y', path.join(out, 'training.yaml'), '-o', runFolder, '--network-depth', '18', '--epochs', '1', '--batch-size', '13', '--test-fraction', '0', '--no-save-checkpoints']);
  assert.equal(trained.code, 0, trained.err);
  const card = await fs.readFile(modelCardPath(path.join(runFolder, 'model.keras')), 'utf8');
  assert.ok(card.includes(`| \`${path.join(out, 'training.yaml')}\` | 13 | 0 | 5, 2, 2 (rescaled to 5, 1, 1) |`), card);

  const info = await run(['dataset', 'info', out, '--json']);
  assert.equal(JSON.parse(info.out).cells, 13);
  const valid = await run(['dataset', 'validate', path.join(out, 'training.yaml')]);
  assert.equal(valid.code, 0);
  assert.match(valid.out, /Valid: every cube has all its channels/);
});

test('exit codes: 2 for usage errors, 1 for data problems, with the file named', async (t) => {
  const out = scratch(t);
  const usage = await run(['extract', '--signal', 'x']);
  assert.equal(usage.code, 2);
  assert.match(usage.err, /--points is required/);
  assert.equal((await run(['extract', '--bogus'])).code, 2);
  assert.equal((await run(['dataset', 'merge', '-y', 'a.yaml'])).code, 2);

  const badXml = path.join(out, 'bad.xml');
  await fs.writeFile(badXml, '<CellCounter_Marker_File><Marker_Data>');
  const bad = await run(['extract', '--signal', path.join(SAMPLE, 'signal'), '--points', badXml, '--output-dir', path.join(out, 'set')]);
  assert.equal(bad.code, 1);
  assert.match(bad.err, /bad.xml: is not well-formed XML/);

  // Whole-brain coordinates (cells/cells.xml) do not lie in this small volume.
  const outside = await run(['extract', '--signal', path.join(SAMPLE, 'signal'), '--points', path.join(SAMPLE, 'cells', 'cells.xml'), '--output-dir', path.join(out, 'set2')]);
  assert.equal(outside.code, 1);
  assert.match(outside.err, /none of its 65 points lies inside the volume/);

  const broken = path.join(out, 'broken');
  await run(['dataset', 'create', broken]);
  await fs.writeFile(path.join(broken, 'cells', 'pCellz1y1x1Ch0.tif'), 'x');
  const invalid = await run(['dataset', 'validate', broken]);
  assert.equal(invalid.code, 1);
  assert.match(invalid.out, /problem: .*pCellz1y1x1Ch0.tif: is not a TIFF file/);
});

test('the built CLI runs through bin/ (as npx cellfinder-retrain does)', () => {
  const help = spawnSync(process.execPath, [path.join(REPO_ROOT, 'bin', 'cellfinder-retrain.js'), 'help'], { encoding: 'utf8' });
  assert.equal(help.status, 0, help.stderr);
  assert.match(help.stdout, /cellfinder-retrain: build and check cellfinder training data/);
  const none = spawnSync(process.execPath, [path.join(REPO_ROOT, 'bin', 'cellfinder-retrain.js')], { encoding: 'utf8' });
  assert.equal(none.status, 2);
});

test('--absolute-paths writes absolute cube_dir; the default is relative to the YAML', async (t) => {
  const root = scratch(t);
  await run(['dataset', 'create', path.join(root, 'relative')]);
  await run(['dataset', 'create', path.join(root, 'absolute'), '--absolute-paths']);
  assert.match(await fs.readFile(path.join(root, 'relative', 'training.yaml'), 'utf8'), /cube_dir: cells\n/);
  assert.match(await fs.readFile(path.join(root, 'absolute', 'training.yaml'), 'utf8'), new RegExp(`cube_dir: ${path.join(root, 'absolute', 'cells')}\\n`));
});

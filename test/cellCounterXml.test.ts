import assert from 'node:assert/strict';
import { promises as fs } from 'node:fs';
import * as path from 'node:path';
import { test } from 'node:test';
import { formatCellCounterXml, parseCellCounterXml, readCellCounterXml, writeCellCounterXml } from '../src/core/cellCounterXml';
import { BRAINGLOBE_FIXTURES, SAMPLE, scratch } from './helpers';

test('reads cellfinder\'s candidates: 38 points of type 1, in file order', async () => {
  const { points, warnings } = await readCellCounterXml(path.join(SAMPLE, 'candidates', 'candidates.xml'));
  assert.equal(points.length, 38);
  assert.deepEqual(points[0], { x: 132, y: 315, z: 1, type: 1 });
  assert.ok(points.every((p) => p.type === 1));
  assert.deepEqual(warnings, []);
});

test('writes byte for byte what brainglobe-utils wrote (real files round trip)', async () => {
  for (const file of [path.join(SAMPLE, 'candidates', 'candidates.xml'), path.join(SAMPLE, 'cube_extract', 'cells.xml'), path.join(SAMPLE, 'cells', 'cells.xml')]) {
    const original = await fs.readFile(file, 'utf8');
    const { points } = parseCellCounterXml(original, file);
    assert.equal(formatCellCounterXml(points).text, original, file);
  }
});

test('types: ascending Marker_Types, artifacts kept as type 1, other types kept', () => {
  const { text, warnings } = formatCellCounterXml([
    { x: 5, y: 6, z: 7, type: 2 },
    { x: 1, y: 2, z: 3, type: -1 },
    { x: 8, y: 9, z: 10, type: 1 },
    { x: 11, y: 12, z: 13, type: 4 },
  ]);
  const types = [...text.matchAll(/<Type>(-?\d+)<\/Type>/g)].map((m) => Number(m[1]));
  assert.deepEqual(types, [1, 2, 4]);
  const back = parseCellCounterXml(text, 'x.xml').points;
  // Type-1 group: the type-1 point first, then the artifact (brainglobe-utils appends them).
  assert.deepEqual(back.map((p) => [p.x, p.type]), [[8, 1], [1, 1], [5, 2], [11, 4]]);
  assert.match(warnings.join('\n'), /1 artifact point\(s\) \(type -1\) written as type 1/);
});

test('coordinates below 1 are written as 1 with a warning; fractions are truncated with a warning', async (t) => {
  const dir = scratch(t);
  const file = path.join(dir, 'points.xml');
  const warnings = await writeCellCounterXml(file, [{ x: 0, y: 12, z: 3, type: 2 }]);
  assert.match(warnings[0], /MarkerX 0 written as 1/);
  assert.deepEqual((await readCellCounterXml(file)).points, [{ x: 1, y: 12, z: 3, type: 2 }]);
  const read = parseCellCounterXml(
    '<CellCounter_Marker_File><Marker_Data><Marker_Type><Type>2</Type><Marker><MarkerX>12.7</MarkerX><MarkerY>3</MarkerY><MarkerZ>4</MarkerZ></Marker></Marker_Type></Marker_Data></CellCounter_Marker_File>',
    'f.xml',
  );
  assert.deepEqual(read.points, [{ x: 12, y: 3, z: 4, type: 2 }]);
  assert.match(read.warnings[0], /MarkerX 12.7 truncated to 12/);
});

test('malformed XML gets an error with the file and the place', () => {
  assert.throws(() => parseCellCounterXml('<CellCounter_Marker_File><Marker_Data>', 'broken.xml'), /broken.xml: is not well-formed XML at line 1/);
  assert.throws(() => parseCellCounterXml('<Other/>', 'other.xml'), /other.xml: has no <CellCounter_Marker_File> root element/);
  assert.throws(
    () => parseCellCounterXml('<CellCounter_Marker_File><Marker_Data><Marker_Type><Type>1</Type><Marker><MarkerX>1</MarkerX><MarkerY>2</MarkerY></Marker></Marker_Type></Marker_Data></CellCounter_Marker_File>', 'noz.xml'),
    /noz.xml: marker #1 of type 1 has no valid MarkerZ \(missing\)/,
  );
  assert.throws(() => parseCellCounterXml('<CellCounter_Marker_File><Marker_Data><Current_Type>1</Current_Type></Marker_Data></CellCounter_Marker_File>', 'empty.xml'), /contains no markers/);
});

test('byte for byte what brainglobe-utils save_cells wrote for mixed types, fractions, zeros and artifacts', async () => {
  // The inputs of test/fixtures/brainglobe-utils/README.md (a), in order.
  const points = [
    { x: 10, y: 20, z: 30, type: 2 },
    { x: 12.7, y: 0, z: 5, type: 1 },
    { x: 300, y: 400.99, z: 2, type: 1 },
    { x: -3.7, y: 45, z: 1, type: 2 },
    { x: 100, y: 200, z: 3, type: -1 },
    { x: 7, y: 8, z: 0, type: -1 },
    { x: 55, y: 66, z: 77, type: 2 },
    { x: 1, y: 1, z: 1, type: 1 },
    { x: 12.7, y: 0.9, z: 3.5, type: 2 },
  ];
  const golden = await fs.readFile(path.join(BRAINGLOBE_FIXTURES, 'cells_mixed_types.xml'), 'utf8');
  const { text, warnings } = formatCellCounterXml(points);
  assert.equal(text, golden);
  // brainglobe-utils printed 4 clamp warnings; we report the same 4, plus the artifacts.
  assert.equal(warnings.filter((w) => /written as 1 \(Cell Counter/.test(w)).length, 4);
});

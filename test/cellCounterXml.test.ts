import assert from 'node:assert/strict';
import { promises as fs } from 'node:fs';
import * as path from 'node:path';
import { test } from 'node:test';
import { formatCellCounterXml, parseCellCounterXml, readCellCounterXml, writeCellCounterXml } from '../src/core/cellCounterXml';
import { XmlScanner } from '../src/core/xmlScanner';
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

test('the streaming scanner gives the same elements and text whatever the chunks, and reads a file as it streams', async (t) => {
  const file = path.join(SAMPLE, 'cells', 'cells.xml');
  const text = `\uFEFF<?xml version="1.0"?>\n<!-- a comment with <tags> -->\n${(await fs.readFile(file, 'utf8')).replace('<?xml version="1.0" encoding="UTF-8"?>', '').replace('<Image_Filename>', '<Image_Filename a="1 > 0" b=\'x\'><![CDATA[name & <more>]]>&amp;&#65;&#x42;')}`;
  const record = (chunks: string[]) => {
    const events: string[] = [];
    // Text may come in pieces: neighbouring pieces are joined before comparing.
    const text = (piece: string) => (events.at(-1)?.startsWith('=') ? (events[events.length - 1] += piece) : events.push(`=${piece}`));
    const scanner = new XmlScanner({ open: (name) => events.push(`<${name}`), close: (name) => events.push(`>${name}`), text });
    for (const chunk of chunks) scanner.write(chunk);
    scanner.end();
    return events.join('\n');
  };
  const whole = record([text]);
  assert.match(whole, /<Image_Filename\n=name & <more>&ABplaceholder.tif\n>Image_Filename/);
  for (const size of [1, 2, 3, 7, 64, 1000]) {
    const chunks = [];
    for (let at = 0; at < text.length; at += size) chunks.push(text.slice(at, at + size));
    assert.ok(record(chunks) === whole, `chunks of ${size} give the same events`);
  }
  // A file larger than one read chunk (4 MB): 40,000 points round trip through the streaming reader.
  const many = Array.from({ length: 40_000 }, (_, i) => ({ x: 1 + (i % 4000), y: 1 + ((i * 7) % 5000), z: 1 + (i % 120), type: i % 3 === 0 ? 2 : 1 }));
  const big = path.join(scratch(t), 'big.xml');
  await writeCellCounterXml(big, many);
  const read = await readCellCounterXml(big);
  const byType = [...many.filter((p) => p.type === 1), ...many.filter((p) => p.type === 2)];
  assert.deepEqual(read.points, byType);
});

test('not well-formed: the file, the line and column, and what is wrong', () => {
  const cases: Array<[string, RegExp]> = [
    ['<CellCounter_Marker_File>\n  <Marker_Data>\n</CellCounter_Marker_File>', /at line 3, column 1: <\/CellCounter_Marker_File> where <\/Marker_Data> was expected/],
    ['<CellCounter_Marker_File><Marker_Data>', /at line 1, column 39: <Marker_Data> is not closed before the end of the file/],
    ['x<CellCounter_Marker_File/>', /at line 1, column 1: text before the root element \(start tag expected\)/],
    ['<CellCounter_Marker_File/><CellCounter_Marker_File/>', /<CellCounter_Marker_File> after the root element has closed \(a second root\)/],
    ['<CellCounter_Marker_File><Marker_Data>a & b</Marker_Data></CellCounter_Marker_File>', /an "&" that starts no entity/],
    ['<CellCounter_Marker_File><Marker_Data x=1></Marker_Data></CellCounter_Marker_File>', /the attributes of <Marker_Data> are malformed/],
    ['<CellCounter_Marker_File>\n<Marker_Data><!-- never closed', /at line 2, column 14: a tag, comment or declaration is not finished before the end of the file/],
    ['<CellCounter_Marker_File></CellCounter_Marker_File></Extra>', /<\/Extra> closes no open element/],
  ];
  for (const [text, expected] of cases) {
    assert.throws(() => parseCellCounterXml(text, 'bad.xml'), (error: Error) => {
      assert.match(error.message, /^bad.xml: is not well-formed XML at line \d+, column \d+: /);
      assert.match(error.message, expected);
      return true;
    });
  }
  // Type after its markers, as some tools write it, still gives the markers that type.
  const late = parseCellCounterXml('<CellCounter_Marker_File><Marker_Data><Marker_Type><Marker><MarkerX>1</MarkerX><MarkerY>2</MarkerY><MarkerZ>3</MarkerZ></Marker><Type>2</Type></Marker_Type></Marker_Data></CellCounter_Marker_File>', 'late.xml');
  assert.deepEqual(late.points, [{ x: 1, y: 2, z: 3, type: 2 }]);
  assert.throws(() => parseCellCounterXml('<CellCounter_Marker_File><Marker_Data><Marker_Type><Type>x</Type></Marker_Type></Marker_Data></CellCounter_Marker_File>', 't.xml'), /Marker_Type #1 has type "x", not an integer/);
  assert.throws(() => parseCellCounterXml('<CellCounter_Marker_File><Image_Properties/></CellCounter_Marker_File>', 'nomd.xml'), /nomd.xml: has no <Marker_Data> element/);
});

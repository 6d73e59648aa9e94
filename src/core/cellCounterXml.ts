/**
 * ImageJ Cell Counter XML (`CellCounter_Marker_File`), read and written exactly
 * as brainglobe-utils (`IO/cells.py`) does, because cellfinder and its napari
 * plugin read our files through it.
 */
import { promises as fs } from 'node:fs';
import type { FileHandle } from 'node:fs/promises';
import { writeFileAtomic, type AtomicWriteOptions } from './atomicFile';
import { DataFileError } from './errors';
import { XmlScanner, XmlSyntaxError, type XmlHandler } from './xmlScanner';

/** brainglobe-utils' Cell types. NO_CELL and UNKNOWN share 1. */
export const CellType = { ARTIFACT: -1, UNKNOWN: 1, NO_CELL: 1, CELL: 2 } as const;

/** A marker: whole-voxel, 0-based array indices (x = column, y = row, z = plane). */
export interface CellCounterPoint {
  x: number;
  y: number;
  z: number;
  /** Any integer: types other than 1 and 2 (e.g. ImageJ's 3-8) are kept as they are. */
  type: number;
}

export interface CellCounterRead {
  points: CellCounterPoint[];
  /** Where brainglobe-utils would silently change the data (here: fractional coordinates truncated). */
  warnings: string[];
}

const FIX_XML = 'Export the points again as Cell Counter XML (from cellfinder, napari or ImageJ Cell Counter)';

/** Parses Cell Counter XML held in memory (a small file, a test). */
export function parseCellCounterXml(text: string, file: string): CellCounterRead {
  if (text.trim() === '') throw new DataFileError(file, `is empty (${text.length} bytes), not a Cell Counter XML file`, FIX_XML);
  const reader = new CellCounterReader(file);
  scanning(file, () => {
    const scanner = new XmlScanner(reader);
    scanner.write(text);
    scanner.end();
  });
  return reader.finish();
}

/**
 * Reads a Cell Counter XML file as it streams from disk, in chunks: a
 * detection's million markers (about 125 MB) are read without holding the
 * text or a document tree, only the points.
 */
export async function readCellCounterXml(file: string): Promise<CellCounterRead> {
  let handle: FileHandle;
  try {
    handle = await fs.open(file, 'r');
  } catch (error) {
    throw new DataFileError(file, (error as NodeJS.ErrnoException).code === 'ENOENT' ? 'does not exist' : `cannot be read (${(error as Error).message})`, 'Check the path');
  }
  const reader = new CellCounterReader(file);
  try {
    const scanner = new XmlScanner(reader);
    const decoder = new TextDecoder('utf-8');
    const chunk = Buffer.alloc(CHUNK_BYTES);
    let total = 0;
    let blank = true;
    for (;;) {
      const { bytesRead } = await handle.read(chunk, 0, CHUNK_BYTES, null);
      if (bytesRead === 0) break;
      total += bytesRead;
      const text = decoder.decode(chunk.subarray(0, bytesRead), { stream: true });
      blank &&= text.trim() === '';
      scanning(file, () => scanner.write(text));
    }
    if (blank) throw new DataFileError(file, `is empty (${total} bytes), not a Cell Counter XML file`, FIX_XML);
    scanning(file, () => {
      scanner.write(decoder.decode());
      scanner.end();
    });
  } catch (error) {
    if (error instanceof DataFileError) throw error;
    throw new DataFileError(file, `cannot be read (${(error as Error).message})`, 'Check the path');
  } finally {
    await handle.close();
  }
  return reader.finish();
}

const CHUNK_BYTES = 4 << 20;

/** Runs the scanner, turning a syntax error into one that names the file. */
function scanning(file: string, scan: () => void): void {
  try {
    scan();
  } catch (error) {
    if (error instanceof XmlSyntaxError) throw new DataFileError(file, `is not well-formed XML at line ${error.line}, column ${error.column}: ${error.reason}`, FIX_XML);
    throw error;
  }
}

type Axis = 'X' | 'Y' | 'Z';

const ELEMENT_CHAIN = ['CellCounter_Marker_File', 'Marker_Data', 'Marker_Type', 'Marker'];

/**
 * Builds the points from the scanner's events, as brainglobe-utils reads
 * them: every Marker of every Marker_Type under Marker_Data, its type from
 * the Marker_Type's Type, coordinates parsed as floats and truncated.
 */
class CellCounterReader implements XmlHandler {
  readonly points: CellCounterPoint[] = [];
  private readonly warnings: string[] = [];
  /** Open elements, root first. */
  private readonly path: string[] = [];
  private characters = '';
  private sawMarkerData = false;
  private typeIndex = 0;
  /** The current Marker_Type's Type text ("a,b" when it has several), and its value once valid. */
  private typeText: string | undefined;
  private type: number | undefined;
  private markerIndex = 0;
  private marker: Partial<Record<Axis, string>> = {};
  /** Markers of the current Marker_Type that came before its Type. */
  private waiting: Array<{ index: number; marker: Partial<Record<Axis, string>> }> = [];

  constructor(private readonly file: string) {}

  open(name: string): void {
    const depth = this.path.length;
    this.path.push(name);
    this.characters = '';
    if (depth === 0 && name !== 'CellCounter_Marker_File') throw new DataFileError(this.file, 'has no <CellCounter_Marker_File> root element', FIX_XML);
    if (this.current(1, 'Marker_Data')) this.sawMarkerData = true;
    else if (this.current(2, 'Marker_Type')) {
      this.typeIndex++;
      this.typeText = undefined;
      this.type = undefined;
      this.markerIndex = 0;
      this.waiting = [];
    } else if (this.current(3, 'Marker')) {
      this.markerIndex++;
      this.marker = {};
    }
  }

  text(text: string): void {
    this.characters += text;
  }

  close(): void {
    const value = this.characters.trim();
    this.characters = '';
    if (this.current(3, 'Type')) {
      this.typeText = this.typeText === undefined ? value : `${this.typeText},${value}`;
      this.type = this.checkedType();
      for (const { index, marker } of this.waiting) this.addPoint(index, marker);
      this.waiting = [];
    } else if (this.current(4, 'MarkerX', 'MarkerY', 'MarkerZ')) {
      const axis = (this.path[4] as string).slice(-1) as Axis;
      this.marker[axis] = this.marker[axis] === undefined ? value : `${this.marker[axis]},${value}`;
    } else if (this.current(3, 'Marker')) {
      if (this.type === undefined) this.waiting.push({ index: this.markerIndex, marker: this.marker });
      else this.addPoint(this.markerIndex, this.marker);
    } else if (this.current(2, 'Marker_Type') && this.type === undefined) {
      this.type = this.checkedType();
    }
    this.path.pop();
  }

  finish(): CellCounterRead {
    if (!this.sawMarkerData) throw new DataFileError(this.file, 'has no <Marker_Data> element', FIX_XML);
    if (this.points.length === 0) throw new DataFileError(this.file, 'contains no markers', 'Choose a Cell Counter XML file with at least one point');
    return { points: this.points, warnings: this.warnings };
  }

  /**
   * Whether the innermost open element is one of `names`, `depth` levels
   * below the root, inside the chain root > Marker_Data > Marker_Type > Marker.
   */
  private current(depth: number, ...names: string[]): boolean {
    if (this.path.length !== depth + 1) return false;
    for (let level = 0; level < depth; level++) if (this.path[level] !== ELEMENT_CHAIN[level]) return false;
    return names.includes(this.path[depth] as string);
  }

  private checkedType(): number {
    const typeText = this.typeText ?? '';
    const type = Number(typeText);
    if (typeText === '' || !Number.isInteger(type)) {
      throw new DataFileError(this.file, `Marker_Type #${this.typeIndex} has type "${typeText}", not an integer`, FIX_XML);
    }
    return type;
  }

  private addPoint(index: number, marker: Partial<Record<Axis, string>>): void {
    const type = this.type as number;
    const where = `marker #${index} of type ${type}`;
    const coordinate = (axis: Axis): number => {
      const raw = marker[axis];
      const value = Number(raw);
      if (raw === undefined || raw === '' || !Number.isFinite(value)) {
        throw new DataFileError(this.file, `${where} has no valid Marker${axis} (${raw === undefined ? 'missing' : JSON.stringify(raw)})`, FIX_XML);
      }
      // brainglobe-utils parses a float and keeps int() of it (truncation).
      const whole = Math.trunc(value);
      if (whole !== value) this.warnings.push(`${this.file}: ${where} Marker${axis} ${raw} truncated to ${whole}, as cellfinder does`);
      return whole;
    };
    this.points.push({ x: coordinate('X'), y: coordinate('Y'), z: coordinate('Z'), type });
  }
}

export interface CellCounterFormatted {
  text: string;
  /** Where the written file differs from the points given (brainglobe-utils' rules), one line each. */
  warnings: string[];
}

/**
 * Formats points byte-for-byte as brainglobe-utils' `save_cells` (defaults):
 * one Marker_Type per type present, ascending; artifacts (-1) kept as type 1
 * after the type-1 points; coordinates `int()`-ed and values below 1 written
 * as 1, which brainglobe-utils does silently and we report.
 */
export function formatCellCounterXml(points: CellCounterPoint[]): CellCounterFormatted {
  const warnings: string[] = [];
  const byType = new Map<number, CellCounterPoint[]>();
  for (const type of [...new Set(points.map((p) => p.type))].sort((a, b) => a - b)) {
    byType.set(type, points.filter((p) => p.type === type));
  }
  const artifacts = byType.get(CellType.ARTIFACT);
  if (artifacts) {
    byType.delete(CellType.ARTIFACT);
    byType.set(CellType.UNKNOWN, [...(byType.get(CellType.UNKNOWN) ?? []), ...artifacts]);
    warnings.push(`${artifacts.length} artifact point(s) (type -1) written as type 1, as brainglobe-utils does`);
  }
  const types = [...byType.keys()].sort((a, b) => a - b);
  const lines = [
    '<?xml version="1.0" encoding="UTF-8"?>',
    '<CellCounter_Marker_File>',
    '  <Image_Properties>',
    '    <Image_Filename>placeholder.tif</Image_Filename>',
    '  </Image_Properties>',
    '  <Marker_Data>',
    '    <Current_Type>1</Current_Type>',
  ];
  for (const type of types) {
    lines.push('    <Marker_Type>', `      <Type>${type}</Type>`);
    for (const point of byType.get(type) ?? []) {
      lines.push('      <Marker>');
      for (const axis of ['X', 'Y', 'Z'] as const) {
        const value = Math.trunc(point[axis.toLowerCase() as 'x' | 'y' | 'z']);
        const written = value < 1 ? 1 : value;
        if (written !== value) warnings.push(`point (x=${point.x}, y=${point.y}, z=${point.z}): Marker${axis} ${value} written as 1 (Cell Counter XML from brainglobe-utils cannot hold coordinates below 1)`);
        lines.push(`        <Marker${axis}>${written}</Marker${axis}>`);
      }
      lines.push('      </Marker>');
    }
    lines.push('    </Marker_Type>');
  }
  lines.push('  </Marker_Data>', '</CellCounter_Marker_File>', '');
  return { text: lines.join('\n'), warnings };
}

/** Writes points as Cell Counter XML atomically; returns brainglobe-utils' silent changes as warnings. */
export async function writeCellCounterXml(file: string, points: CellCounterPoint[], options: AtomicWriteOptions = {}): Promise<string[]> {
  const { text, warnings } = formatCellCounterXml(points);
  await writeFileAtomic(file, text, options);
  return warnings;
}

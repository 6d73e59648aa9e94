/**
 * ImageJ Cell Counter XML (`CellCounter_Marker_File`), read and written exactly
 * as brainglobe-utils (`IO/cells.py`) does, because cellfinder and its napari
 * plugin read our files through it.
 */
import { promises as fs } from 'node:fs';
import { XMLParser, XMLValidator } from 'fast-xml-parser';
import { writeFileAtomic, type AtomicWriteOptions } from './atomicFile';
import { DataFileError } from './errors';

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

export function parseCellCounterXml(text: string, file: string): CellCounterRead {
  if (text.trim() === '') throw new DataFileError(file, `is empty (${text.length} bytes), not a Cell Counter XML file`, FIX_XML);
  const valid = XMLValidator.validate(text);
  if (valid !== true) {
    const where = valid.err.col === undefined ? `line ${valid.err.line}` : `line ${valid.err.line}, column ${valid.err.col}`;
    throw new DataFileError(file, `is not well-formed XML at ${where}: ${valid.err.msg.replace(/\.+$/, '')}`, FIX_XML);
  }
  const parser = new XMLParser({
    ignoreAttributes: true,
    parseTagValue: false,
    trimValues: true,
    isArray: (name) => name === 'Marker_Type' || name === 'Marker',
  });
  const root = parser.parse(text) as Record<string, unknown>;
  const counter = root.CellCounter_Marker_File as Record<string, unknown> | undefined;
  if (!counter || typeof counter !== 'object') {
    throw new DataFileError(file, 'has no <CellCounter_Marker_File> root element', FIX_XML);
  }
  const markerData = counter.Marker_Data as Record<string, unknown> | undefined;
  if (!markerData || typeof markerData !== 'object') {
    throw new DataFileError(file, 'has no <Marker_Data> element', FIX_XML);
  }
  const points: CellCounterPoint[] = [];
  const warnings: string[] = [];
  const markerTypes = (markerData.Marker_Type ?? []) as Array<Record<string, unknown>>;
  markerTypes.forEach((markerType, typeIndex) => {
    const typeText = String(markerType.Type ?? '');
    const type = Number(typeText);
    if (typeText === '' || !Number.isInteger(type)) {
      throw new DataFileError(file, `Marker_Type #${typeIndex + 1} has type "${typeText}", not an integer`, FIX_XML);
    }
    const markers = (markerType.Marker ?? []) as Array<Record<string, unknown>>;
    markers.forEach((marker, markerIndex) => {
      const where = `marker #${markerIndex + 1} of type ${type}`;
      const coordinate = (axis: 'X' | 'Y' | 'Z'): number => {
        const raw = marker[`Marker${axis}`];
        const value = Number(raw);
        if (raw === undefined || raw === '' || !Number.isFinite(value)) {
          throw new DataFileError(file, `${where} has no valid Marker${axis} (${raw === undefined ? 'missing' : JSON.stringify(raw)})`, FIX_XML);
        }
        // brainglobe-utils parses a float and keeps int() of it (truncation).
        const whole = Math.trunc(value);
        if (whole !== value) warnings.push(`${file}: ${where} Marker${axis} ${raw} truncated to ${whole}, as cellfinder does`);
        return whole;
      };
      points.push({ x: coordinate('X'), y: coordinate('Y'), z: coordinate('Z'), type });
    });
  });
  if (points.length === 0) {
    throw new DataFileError(file, 'contains no markers', 'Choose a Cell Counter XML file with at least one point');
  }
  return { points, warnings };
}

export async function readCellCounterXml(file: string): Promise<CellCounterRead> {
  let text: string;
  try {
    text = await fs.readFile(file, 'utf8');
  } catch (error) {
    throw new DataFileError(file, (error as NodeJS.ErrnoException).code === 'ENOENT' ? 'does not exist' : `cannot be read (${(error as Error).message})`, 'Check the path');
  }
  return parseCellCounterXml(text, file);
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

/**
 * Reading TIFF pages through geotiff (well kept, handles both byte orders,
 * strips and tiles, BigTIFF and the usual compressions), with its errors
 * turned into messages that name the file and say what to do.
 */
import { promises as fs } from 'node:fs';
import { fromArrayBuffer, fromFile, type GeoTIFF, type GeoTIFFImage } from 'geotiff';
import { DataFileError } from './errors';

/** Pixel types cellfinder accepts: those whose every value float32 holds exactly. */
export type PixelType = 'uint8' | 'int8' | 'uint16' | 'int16' | 'float32';
export type PixelArray = Uint8Array | Int8Array | Uint16Array | Int16Array | Float32Array;

export interface TiffPageInfo {
  width: number;
  height: number;
  pixelType: PixelType;
}

const NOT_A_TIFF_FIX = 'Check that the file is an uncorrupted TIFF (re-export or re-extract it)';

/** Opens a TIFF lazily from disk; pages are only read when asked for. */
export async function openTiffFile(file: string): Promise<GeoTIFF> {
  try {
    return await fromFile(file);
  } catch (error) {
    throw tiffReadError(file, error);
  }
}

/** Reads a small TIFF (a cube) into memory in one go and opens it. */
export async function openTiffBytes(file: string): Promise<GeoTIFF> {
  let bytes: Buffer;
  try {
    bytes = await fs.readFile(file);
  } catch (error) {
    const code = (error as NodeJS.ErrnoException).code;
    throw new DataFileError(file, code === 'ENOENT' ? 'does not exist' : `cannot be opened (${(error as Error).message})`, 'Check the path');
  }
  if (bytes.length < 8) throw new DataFileError(file, `is not a TIFF file (only ${bytes.length} bytes)`, NOT_A_TIFF_FIX);
  const magic = bytes.toString('latin1', 0, 2);
  if (magic !== 'II' && magic !== 'MM') throw new DataFileError(file, 'is not a TIFF file (no TIFF header)', NOT_A_TIFF_FIX);
  try {
    return await fromArrayBuffer(bytes.buffer.slice(bytes.byteOffset, bytes.byteOffset + bytes.byteLength) as ArrayBuffer);
  } catch (error) {
    throw tiffReadError(file, error);
  }
}

export function tiffReadError(file: string, error: unknown): DataFileError {
  if (error instanceof DataFileError) return error;
  const message = (error as Error)?.message ?? String(error);
  if ((error as NodeJS.ErrnoException)?.code === 'ENOENT') return new DataFileError(file, 'does not exist', 'Check the path');
  if (/byte order|invalid magic|not a tiff/i.test(message)) return new DataFileError(file, 'is not a TIFF file', NOT_A_TIFF_FIX);
  if (/offset|outside the bounds|out of bounds|RangeError|beyond/i.test(message) || error instanceof RangeError) {
    return new DataFileError(file, 'is truncated or corrupt (its data ends before the TIFF says it should)', NOT_A_TIFF_FIX);
  }
  return new DataFileError(file, `cannot be read as a TIFF (${message})`, NOT_A_TIFF_FIX);
}

export async function pageCount(tiff: GeoTIFF, file: string): Promise<number> {
  try {
    return await tiff.getImageCount();
  } catch (error) {
    throw tiffReadError(file, error);
  }
}

export function pageInfo(image: GeoTIFFImage, file: string): TiffPageInfo {
  if (image.getSamplesPerPixel() !== 1) {
    throw new DataFileError(file, `has ${image.getSamplesPerPixel()} samples per pixel (RGB or multi-channel)`, 'Save each channel as its own single-channel (greyscale) TIFF');
  }
  return { width: image.getWidth(), height: image.getHeight(), pixelType: pixelTypeOf(image, file) };
}

function pixelTypeOf(image: GeoTIFFImage, file: string): PixelType {
  const bits = image.getBitsPerSample(0);
  const sampleFormat = image.getSampleFormat(0);
  const key = `${sampleFormat}:${bits}`;
  const types: Record<string, PixelType> = { '1:8': 'uint8', '2:8': 'int8', '1:16': 'uint16', '2:16': 'int16', '3:32': 'float32' };
  const type = types[key];
  if (!type) {
    const name = ({ 1: 'unsigned integer', 2: 'signed integer', 3: 'floating point' } as Record<number, string>)[sampleFormat] ?? `sample format ${sampleFormat}`;
    throw new DataFileError(
      file,
      `holds ${bits}-bit ${name} pixels, which float32 cannot hold exactly (cellfinder rejects them too)`,
      'Convert the images to 8- or 16-bit integers or 32-bit float',
    );
  }
  return type;
}

/** Reads one page's pixels in its own type, row-major (y, x). */
export async function readPage(image: GeoTIFFImage, file: string): Promise<PixelArray> {
  try {
    const raster = await image.readRasters({ interleave: true });
    return raster as unknown as PixelArray;
  } catch (error) {
    throw tiffReadError(file, error);
  }
}

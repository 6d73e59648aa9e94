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
  const info = pageInfo(image, file);
  try {
    const raw = await readUncompressedStrips(image, info);
    if (raw) return raw;
    const raster = await image.readRasters({ interleave: true });
    return raster as unknown as PixelArray;
  } catch (error) {
    throw tiffReadError(file, error);
  }
}

const HOST_IS_LITTLE_ENDIAN = new Uint8Array(new Uint16Array([1]).buffer)[0] === 1;

/**
 * Fast path for the common microscopy layout (uncompressed strips): the
 * strips' bytes are read as they are and viewed as the pixel type, swapping
 * bytes only when the file's byte order differs from the machine's.
 * geotiff decodes pixel by pixel, about ten times slower on large planes.
 * Returns undefined for any other layout (compressed, tiled), which geotiff reads.
 */
async function readUncompressedStrips(image: GeoTIFFImage, info: TiffPageInfo): Promise<PixelArray | undefined> {
  const directory = image.fileDirectory;
  if (image.isTiled || (directory.getValue('Compression') ?? 1) !== 1) return undefined;
  const offsets = (await directory.loadValue('StripOffsets')) as ArrayLike<number> | undefined;
  const counts = (await directory.loadValue('StripByteCounts')) as ArrayLike<number> | undefined;
  if (!offsets || !counts || offsets.length !== counts.length) return undefined;
  const bytesPerPixel = info.pixelType === 'uint8' || info.pixelType === 'int8' ? 1 : info.pixelType === 'float32' ? 4 : 2;
  const total = info.width * info.height * bytesPerPixel;
  const slices: Array<{ offset: number; length: number }> = [];
  let planned = 0;
  for (let i = 0; i < offsets.length && planned < total; i++) {
    const length = Math.min(Number(counts[i]), total - planned);
    slices.push({ offset: Number(offsets[i]), length });
    planned += length;
  }
  if (planned < total) throw new RangeError(`the strips hold ${planned} bytes, the image needs ${total}`);
  const pieces = await image.source.fetch(slices);
  const bytes = new Uint8Array(total);
  let at = 0;
  pieces.forEach((piece, i) => {
    if (piece.byteLength < slices[i].length) throw new RangeError('strip beyond the end of the file');
    bytes.set(new Uint8Array(piece, 0, slices[i].length), at);
    at += slices[i].length;
  });
  if (bytesPerPixel > 1 && image.littleEndian !== HOST_IS_LITTLE_ENDIAN) swapBytes(bytes, bytesPerPixel);
  switch (info.pixelType) {
    case 'uint8':
      return bytes;
    case 'int8':
      return new Int8Array(bytes.buffer);
    case 'uint16':
      return new Uint16Array(bytes.buffer);
    case 'int16':
      return new Int16Array(bytes.buffer);
    case 'float32':
      return new Float32Array(bytes.buffer);
  }
}

function swapBytes(bytes: Uint8Array, width: number): void {
  for (let i = 0; i < bytes.length; i += width) {
    for (let a = i, b = i + width - 1; a < b; a++, b--) {
      const t = bytes[a];
      bytes[a] = bytes[b];
      bytes[b] = t;
    }
  }
}

/**
 * Reading TIFF pages through geotiff (well kept, handles both byte orders,
 * strips and tiles, BigTIFF and the usual compressions), with its errors
 * turned into messages that name the file and say what to do.
 */
import { promises as fs } from 'node:fs';
import type { FileHandle } from 'node:fs/promises';
import { GeoTIFF, type GeoTIFFImage } from 'geotiff';
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

/**
 * Where geotiff reads a TIFF's bytes from (it calls fetch() and close() only),
 * with the file's size and a read straight into a page's buffer.
 */
interface TiffByteSource {
  readonly fileSize: number;
  fetch(slices: ReadonlyArray<{ offset: number; length: number }>): Promise<ArrayBuffer[]>;
  /** Reads `length` bytes at `offset` into `target`; returns how many the file had. */
  readInto(target: Uint8Array, targetOffset: number, offset: number, length: number): Promise<number>;
  close(): Promise<void>;
}

function geotiffFrom(source: TiffByteSource): Promise<GeoTIFF> {
  return GeoTIFF.fromSource(source as unknown as Parameters<typeof GeoTIFF.fromSource>[0]);
}

/** A small TIFF (a cube) held in memory. */
class BytesSource implements TiffByteSource {
  constructor(private readonly bytes: Uint8Array) {}

  get fileSize(): number {
    return this.bytes.length;
  }

  async fetch(slices: ReadonlyArray<{ offset: number; length: number }>): Promise<ArrayBuffer[]> {
    // A copy of each slice (Buffer's own slice() would be a view of a shared pool).
    return slices.map(({ offset, length }) => new Uint8Array(this.bytes.subarray(offset, offset + length)).buffer);
  }

  async readInto(target: Uint8Array, targetOffset: number, offset: number, length: number): Promise<number> {
    const piece = this.bytes.subarray(offset, offset + length);
    target.set(piece, targetOffset);
    return piece.length;
  }

  async close(): Promise<void> {}
}

/**
 * The bytes of a TIFF on disk, for geotiff. Why not geotiff's own `fromFile`:
 * its file source (3.0.5) ignores how many bytes a read returned and hands
 * back zero-filled buffers past the end of the file, so a truncated plane
 * reads as pixels of 0 and a truncated stack as a shorter one. This source
 * returns only the bytes that exist, as geotiff's in-memory source does:
 * geotiff's parser then fails on a directory cut short, and `readPage`
 * compares what the strips need with what the file holds.
 */
class CheckedFileSource implements TiffByteSource {
  private constructor(
    private readonly handle: FileHandle,
    /** Size when opened: a file that shrinks later reads short, which is caught too. */
    readonly fileSize: number,
  ) {}

  static async open(file: string): Promise<CheckedFileSource> {
    const handle = await fs.open(file, 'r');
    try {
      return new CheckedFileSource(handle, (await handle.stat()).size);
    } catch (error) {
      await handle.close();
      throw error;
    }
  }

  /** The bytes of each slice, shorter where the file ends. */
  async fetch(slices: ReadonlyArray<{ offset: number; length: number }>): Promise<ArrayBuffer[]> {
    return Promise.all(
      slices.map(async ({ offset, length }) => {
        const buffer = new Uint8Array(Math.max(0, Math.min(length, this.fileSize - offset)));
        const read = await this.readInto(buffer, 0, offset, buffer.length);
        return (read === buffer.length ? buffer : buffer.slice(0, read)).buffer;
      }),
    );
  }

  async readInto(target: Uint8Array, targetOffset: number, offset: number, length: number): Promise<number> {
    let done = 0;
    while (done < length) {
      const { bytesRead } = await this.handle.read(target, targetOffset + done, length - done, offset + done);
      if (bytesRead === 0) break;
      done += bytesRead;
    }
    return done;
  }

  async close(): Promise<void> {
    await this.handle.close();
  }
}

/** Opens a TIFF lazily from disk; pages are only read when asked for. */
export async function openTiffFile(file: string): Promise<GeoTIFF> {
  let source: CheckedFileSource | undefined;
  try {
    source = await CheckedFileSource.open(file);
    if (source.fileSize < 8) throw new DataFileError(file, `is not a TIFF file (only ${source.fileSize} bytes)`, NOT_A_TIFF_FIX);
    return await geotiffFrom(source);
  } catch (error) {
    await source?.close();
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
    return await geotiffFrom(new BytesSource(bytes));
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
  if (!bits) {
    throw new DataFileError(file, 'is truncated or corrupt (its header gives no bits per pixel)', NOT_A_TIFF_FIX);
  }
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

export function bytesPerPixel(type: PixelType): number {
  return type === 'uint8' || type === 'int8' ? 1 : type === 'float32' ? 4 : 2;
}

/**
 * The most a compressed page can expand: deflate's limit is about 1032:1.
 * A header declaring more pixels than that from the bytes it has is forged
 * or corrupt, and is refused before a buffer of its size is allocated.
 */
const MAX_EXPANSION = 1100;

/** Reads one page's pixels in its own type, row-major (y, x). */
export function readPage(image: GeoTIFFImage, file: string): Promise<PixelArray> {
  return readPageRows(image, file, 0, image.getHeight());
}

/**
 * Reads rows [y0, y1) of a page, full width, row-major. For uncompressed
 * strips only the strips holding those rows are read: a cube's 50-100 rows of
 * a 10,000-row plane cost 1% of the plane; they are read into `reuse` when
 * it is large enough.
 */
export async function readPageRows(image: GeoTIFFImage, file: string, y0: number, y1: number, reuse?: ArrayBuffer): Promise<PixelArray> {
  const info = pageInfo(image, file);
  if (!(Number.isInteger(y0) && Number.isInteger(y1) && 0 <= y0 && y0 < y1 && y1 <= info.height)) throw new RangeError(`rows ${y0}..${y1} are outside 0..${info.height}`);
  try {
    const blocks = await dataBlocks(image);
    checkBlocksInFile(blocks, sourceOf(image).fileSize, file);
    const needed = info.width * info.height * bytesPerPixel(info.pixelType);
    const held = blocks.lengths.reduce((sum, length) => sum + length, 0);
    const uncompressedStrips = !image.isTiled && (image.fileDirectory.getValue('Compression') ?? 1) === 1;
    // A forged or corrupt size is refused before a buffer of that size is allocated.
    if (uncompressedStrips && held < needed) {
      throw new DataFileError(
        file,
        `is truncated or corrupt: its header declares ${info.width}x${info.height} ${info.pixelType} pixels (${needed} bytes) but its strips hold ${held} bytes`,
        NOT_A_TIFF_FIX,
      );
    }
    if (needed > held * MAX_EXPANSION + 1_000_000) {
      throw new DataFileError(
        file,
        `is corrupt: its header declares ${info.width}x${info.height} pixels (${needed} bytes), more than its ${held} bytes of data can hold`,
        NOT_A_TIFF_FIX,
      );
    }
    if (uncompressedStrips) return await readUncompressedRows(image, info, blocks, y0, y1, file, reuse);
    const raster = await image.readRasters({ interleave: true, window: [0, y0, info.width, y1] });
    return raster as unknown as PixelArray;
  } catch (error) {
    throw tiffReadError(file, error);
  }
}

interface DataBlocks {
  offsets: number[];
  lengths: number[];
}

/** Where a page's strips or tiles lie in the file. */
async function dataBlocks(image: GeoTIFFImage): Promise<DataBlocks> {
  const directory = image.fileDirectory;
  const offsets = (await directory.loadValue(image.isTiled ? 'TileOffsets' : 'StripOffsets')) as ArrayLike<number> | undefined;
  const lengths = (await directory.loadValue(image.isTiled ? 'TileByteCounts' : 'StripByteCounts')) as ArrayLike<number> | undefined;
  if (!offsets || !lengths || offsets.length !== lengths.length) throw new RangeError('the strip offsets and byte counts are missing or disagree');
  return { offsets: Array.from(offsets, Number), lengths: Array.from(lengths, Number) };
}

/** Refuses a page whose strips or tiles run past the end of the file (cut short), before reading any. */
function checkBlocksInFile(blocks: DataBlocks, fileSize: number, file: string): void {
  for (let i = 0; i < blocks.offsets.length; i++) {
    const end = blocks.offsets[i] + blocks.lengths[i];
    if (end > fileSize) {
      throw new DataFileError(
        file,
        `is truncated: its pixel data runs to byte ${end} but the file has ${fileSize} bytes (cut short while copying or writing?)`,
        'Copy or export the file again',
      );
    }
  }
}

/** Every GeoTIFF here is opened from one of our sources. */
function sourceOf(image: GeoTIFFImage): TiffByteSource {
  return image.source as unknown as TiffByteSource;
}

const HOST_IS_LITTLE_ENDIAN = new Uint8Array(new Uint16Array([1]).buffer)[0] === 1;

/**
 * Fast path for the common microscopy layout (uncompressed strips): the bytes
 * of the rows asked for are read into the result as they are (adjacent
 * pieces in one read) and viewed as the pixel type, swapping bytes only when
 * the file's byte order differs from the machine's. geotiff decodes pixel by
 * pixel, about ten times slower on large planes.
 */
async function readUncompressedRows(image: GeoTIFFImage, info: TiffPageInfo, blocks: DataBlocks, y0: number, y1: number, file: string, reuse?: ArrayBuffer): Promise<PixelArray> {
  const rowBytes = info.width * bytesPerPixel(info.pixelType);
  const rowsPerStrip = Math.min(Number(image.fileDirectory.getValue('RowsPerStrip') ?? info.height), info.height);
  const length = (y1 - y0) * rowBytes;
  const bytes = reuse && reuse.byteLength >= length ? new Uint8Array(reuse, 0, length) : new Uint8Array(length);
  const source = sourceOf(image);
  // Pieces of strips to read, as (file offset, length, offset in `bytes`), adjacent ones joined.
  const pieces: Array<{ offset: number; length: number; at: number }> = [];
  for (let strip = Math.floor(y0 / rowsPerStrip); strip * rowsPerStrip < y1; strip++) {
    const first = Math.max(y0, strip * rowsPerStrip);
    const last = Math.min(y1, (strip + 1) * rowsPerStrip);
    const offset = blocks.offsets[strip] + (first - strip * rowsPerStrip) * rowBytes;
    const length = (last - first) * rowBytes;
    if (strip >= blocks.offsets.length || (first - strip * rowsPerStrip) * rowBytes + length > blocks.lengths[strip]) {
      throw new DataFileError(file, `is truncated or corrupt: strip ${strip} does not hold rows ${first}..${last - 1}`, NOT_A_TIFF_FIX);
    }
    const previous = pieces[pieces.length - 1];
    if (previous && previous.offset + previous.length === offset) previous.length += length;
    else pieces.push({ offset, length, at: (first - y0) * rowBytes });
  }
  for (const { offset, length, at } of pieces) {
    const read = await source.readInto(bytes, at, offset, length);
    if (read < length) {
      throw new DataFileError(file, `is truncated: its pixel data ends ${length - read} bytes early (the file shrank or was cut short)`, 'Copy or export the file again');
    }
  }
  const width = bytesPerPixel(info.pixelType);
  if (width > 1 && image.littleEndian !== HOST_IS_LITTLE_ENDIAN) swapBytes(bytes, width);
  switch (info.pixelType) {
    case 'uint8':
      return bytes;
    case 'int8':
      return new Int8Array(bytes.buffer, 0, length);
    case 'uint16':
      return new Uint16Array(bytes.buffer, 0, length / 2);
    case 'int16':
      return new Int16Array(bytes.buffer, 0, length / 2);
    case 'float32':
      return new Float32Array(bytes.buffer, 0, length / 4);
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

/**
 * A minimal writer for the one TIFF layout cellfinder needs from us: a stack of
 * single-channel float32 pages, uncompressed, little-endian, one strip per page.
 *
 * Why our own: no maintained npm package writes multi-page float32 greyscale
 * TIFF (UTIF writes 8-bit RGBA, geotiff's writer makes single-image GeoTIFFs).
 * The layout mirrors what cellfinder's `tifffile.imwrite` produces for a cube,
 * including tifffile's JSON `{"shape": [...]}` description on the first page so
 * tifffile reads the file back as one (z, y, x) series. Tests read our files
 * with tifffile itself.
 */

const TAG = {
  ImageWidth: 256,
  ImageLength: 257,
  BitsPerSample: 258,
  Compression: 259,
  PhotometricInterpretation: 262,
  ImageDescription: 270,
  StripOffsets: 273,
  SamplesPerPixel: 277,
  RowsPerStrip: 278,
  StripByteCounts: 279,
  SampleFormat: 339,
} as const;

const TYPE_ASCII = 2;
const TYPE_SHORT = 3;
const TYPE_LONG = 4;

interface IfdEntry {
  tag: number;
  type: number;
  count: number;
  /** Inline value (SHORT/LONG) or, for ASCII, the offset of the text. */
  value: number;
}

/**
 * Encodes `pixels` (depth * height * width float32 values, z-major then rows)
 * as a multi-page TIFF. Offsets are 32-bit, so a stack must stay under 4 GiB,
 * which a cube (200 kB) always does.
 */
export function encodeFloat32Stack(pixels: Float32Array, depth: number, height: number, width: number): Uint8Array {
  return encodeStack(pixels, depth, height, width);
}

/**
 * The same layout for float32 or uint16 pixels (uint16: a microscope's plane,
 * as the scale bench writes them).
 */
export function encodeStack(pixels: Float32Array | Uint16Array, depth: number, height: number, width: number): Uint8Array {
  if (pixels.length !== depth * height * width) {
    throw new Error(`encodeStack: ${pixels.length} values do not fill ${depth}x${height}x${width}`);
  }
  const layout = stackLayout(pixels instanceof Float32Array ? 'float32' : 'uint16', depth, height, width);
  const data = pageBytes(pixels);
  const bytes = new Uint8Array(layout.header.length + data.length + layout.tail.length);
  bytes.set(layout.header, 0);
  bytes.set(data, layout.header.length);
  bytes.set(layout.tail, layout.header.length + data.length);
  return bytes;
}

export interface StackLayout {
  /** The 8-byte TIFF header (pointing at the first directory, in the tail). */
  header: Uint8Array;
  /** After the pages' pixels, in page order: the description and the page directories. */
  tail: Uint8Array;
}

/**
 * The bytes around the pixel data of a stack of `depth` pages: header first,
 * then each page's pixels (`pageBytes`), then the tail. Written in that order
 * a page at a time, a stack of any size (under 4 GiB) never has to be in memory.
 */
export function stackLayout(type: 'float32' | 'uint16', depth: number, height: number, width: number): StackLayout {
  const float = type === 'float32';
  const sampleBytes = float ? 4 : 2;
  const planeBytes = height * width * sampleBytes;
  const description = `{"shape": [${depth}, ${height}, ${width}]}\0`;
  const dataStart = 8;
  const descriptionStart = dataStart + depth * planeBytes;
  if (descriptionStart + description.length + depth * 200 >= 2 ** 32) throw new Error(`a ${depth}x${height}x${width} ${type} stack is over 4 GiB, more than 32-bit TIFF offsets reach`);
  // IFDs start on a word boundary, as the TIFF specification asks.
  const ifdStart = alignTo2(descriptionStart + description.length);
  const pageEntries = (page: number): IfdEntry[] => [
    { tag: TAG.ImageWidth, type: TYPE_LONG, count: 1, value: width },
    { tag: TAG.ImageLength, type: TYPE_LONG, count: 1, value: height },
    { tag: TAG.BitsPerSample, type: TYPE_SHORT, count: 1, value: sampleBytes * 8 },
    { tag: TAG.Compression, type: TYPE_SHORT, count: 1, value: 1 },
    { tag: TAG.PhotometricInterpretation, type: TYPE_SHORT, count: 1, value: 1 },
    ...(page === 0 ? [{ tag: TAG.ImageDescription, type: TYPE_ASCII, count: description.length, value: descriptionStart }] : []),
    { tag: TAG.StripOffsets, type: TYPE_LONG, count: 1, value: dataStart + page * planeBytes },
    { tag: TAG.SamplesPerPixel, type: TYPE_SHORT, count: 1, value: 1 },
    { tag: TAG.RowsPerStrip, type: TYPE_LONG, count: 1, value: height },
    { tag: TAG.StripByteCounts, type: TYPE_LONG, count: 1, value: planeBytes },
    // 3 = IEEE float, 1 = unsigned integer.
    { tag: TAG.SampleFormat, type: TYPE_SHORT, count: 1, value: float ? 3 : 1 },
  ];
  const ifdBytes = (entries: number) => 2 + entries * 12 + 4;
  let tailEnd = ifdStart;
  for (let page = 0; page < depth; page++) tailEnd += ifdBytes(pageEntries(page).length);

  const header = new Uint8Array(8);
  const headerView = new DataView(header.buffer);
  header[0] = 0x49; // 'I'
  header[1] = 0x49; // 'I': little-endian
  headerView.setUint16(2, 42, true);
  headerView.setUint32(4, ifdStart, true);

  // The tail is addressed by file offsets; `at` turns one into a tail index.
  const tail = new Uint8Array(tailEnd - descriptionStart);
  const view = new DataView(tail.buffer);
  const at = (offset: number) => offset - descriptionStart;
  for (let i = 0; i < description.length; i++) tail[at(descriptionStart) + i] = description.charCodeAt(i);
  let ifdOffset = ifdStart;
  for (let page = 0; page < depth; page++) {
    const entries = pageEntries(page);
    view.setUint16(at(ifdOffset), entries.length, true);
    entries.forEach((entry, i) => {
      const entryAt = at(ifdOffset) + 2 + i * 12;
      view.setUint16(entryAt, entry.tag, true);
      view.setUint16(entryAt + 2, entry.type, true);
      view.setUint32(entryAt + 4, entry.count, true);
      // SHORT values sit in the first two bytes of the value field.
      if (entry.type === TYPE_SHORT) view.setUint16(entryAt + 8, entry.value, true);
      else view.setUint32(entryAt + 8, entry.value, true);
    });
    const next = page === depth - 1 ? 0 : ifdOffset + ifdBytes(entries.length);
    view.setUint32(at(ifdOffset) + 2 + entries.length * 12, next, true);
    ifdOffset += ifdBytes(entries.length);
  }
  return { header, tail };
}

/** Pixels as the layout stores them: little-endian whatever the host's byte order. */
export function pageBytes(pixels: Float32Array | Uint16Array): Uint8Array {
  const bytes = new Uint8Array(pixels.byteLength);
  const view = new DataView(bytes.buffer);
  if (pixels instanceof Float32Array) for (let i = 0; i < pixels.length; i++) view.setFloat32(i * 4, pixels[i], true);
  else for (let i = 0; i < pixels.length; i++) view.setUint16(i * 2, pixels[i], true);
  return bytes;
}

function alignTo2(offset: number): number {
  return offset + (offset % 2);
}

/**
 * Takes what the native engine needs out of a TensorFlow Python package: the
 * two shared libraries (tensorflow/libtensorflow_cc.so.2 and
 * tensorflow/libtensorflow_framework.so.2, about 850 MB unpacked) and the few
 * C API headers the addon's sources include (about 20 of the package's
 * 13,000 headers), from either a wheel (a zip file) or an installed package
 * folder.
 *
 * Why our own zip reader instead of fflate (which the project already ships):
 * fflate's `unzipSync` holds the whole 270 MB wheel and the 790 MB library
 * in memory at once, and its streaming `Unzip` must read the whole wheel
 * front to back. Reading the zip's central directory and streaming just the
 * wanted entries through Node's built-in zlib takes constant memory, reads
 * only what is extracted, and is several times faster (native zlib). Every
 * extracted file is checked against the CRC-32 and size in the zip.
 */
import { createReadStream, createWriteStream, promises as fs } from 'node:fs';
import * as path from 'node:path';
import { Readable, Transform } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import * as zlib from 'node:zlib';

export interface ZipEntry {
  name: string;
  /** 0 stored, 8 deflate. */
  method: number;
  crc32: number;
  compressedSize: number;
  size: number;
  localHeaderOffset: number;
}

/** A malformed or unsupported zip file. */
export class ZipError extends Error {
  constructor(file: string, problem: string) {
    super(`${file}: ${problem}`);
    this.name = 'ZipError';
  }
}

const EOCD_SIGNATURE = 0x06054b50;
const ZIP64_LOCATOR_SIGNATURE = 0x07064b50;
const ZIP64_EOCD_SIGNATURE = 0x06064b50;
const CENTRAL_SIGNATURE = 0x02014b50;
const LOCAL_SIGNATURE = 0x04034b50;

async function readAt(handle: fs.FileHandle, position: number, length: number): Promise<Buffer> {
  const buffer = Buffer.alloc(length);
  const { bytesRead } = await handle.read(buffer, 0, length, position);
  return buffer.subarray(0, bytesRead);
}

/** Reads a zip file's central directory (zip64 included). */
export async function readZipDirectory(file: string): Promise<Map<string, ZipEntry>> {
  const handle = await fs.open(file, 'r');
  try {
    const { size } = await handle.stat();
    // The end-of-central-directory record is in the last 22 + 65535 (comment) bytes.
    const tailLength = Math.min(size, 22 + 0xffff);
    const tail = await readAt(handle, size - tailLength, tailLength);
    let eocd = -1;
    for (let i = tail.length - 22; i >= 0; i--) {
      if (tail.readUInt32LE(i) === EOCD_SIGNATURE) {
        eocd = i;
        break;
      }
    }
    if (eocd < 0) throw new ZipError(file, 'is not a zip file (no end of central directory); the download may be incomplete');
    let entryCount = tail.readUInt16LE(eocd + 10);
    let directorySize = tail.readUInt32LE(eocd + 12);
    let directoryOffset = tail.readUInt32LE(eocd + 16);
    if (eocd >= 20 && tail.readUInt32LE(eocd - 20) === ZIP64_LOCATOR_SIGNATURE) {
      const zip64Offset = Number(tail.readBigUInt64LE(eocd - 20 + 8));
      const record = await readAt(handle, zip64Offset, 56);
      if (record.readUInt32LE(0) !== ZIP64_EOCD_SIGNATURE) throw new ZipError(file, 'has a broken zip64 directory record');
      entryCount = Number(record.readBigUInt64LE(32));
      directorySize = Number(record.readBigUInt64LE(40));
      directoryOffset = Number(record.readBigUInt64LE(48));
    }
    const directory = await readAt(handle, directoryOffset, directorySize);
    if (directory.length !== directorySize) throw new ZipError(file, 'is truncated (central directory past the end of the file)');
    const entries = new Map<string, ZipEntry>();
    let p = 0;
    for (let n = 0; n < entryCount; n++) {
      if (directory.readUInt32LE(p) !== CENTRAL_SIGNATURE) throw new ZipError(file, `has a broken central directory (entry ${n})`);
      const nameLength = directory.readUInt16LE(p + 28);
      const extraLength = directory.readUInt16LE(p + 30);
      const commentLength = directory.readUInt16LE(p + 32);
      const entry: ZipEntry = {
        name: directory.toString('utf8', p + 46, p + 46 + nameLength),
        method: directory.readUInt16LE(p + 10),
        crc32: directory.readUInt32LE(p + 16),
        compressedSize: directory.readUInt32LE(p + 20),
        size: directory.readUInt32LE(p + 24),
        localHeaderOffset: directory.readUInt32LE(p + 42),
      };
      // Sizes and offsets that do not fit 32 bits are in the zip64 extra field (id 1), in this order.
      let extra = p + 46 + nameLength;
      const extraEnd = extra + extraLength;
      while (extra + 4 <= extraEnd) {
        const id = directory.readUInt16LE(extra);
        const length = directory.readUInt16LE(extra + 2);
        if (id === 0x0001) {
          let q = extra + 4;
          if (entry.size === 0xffffffff) (entry.size = Number(directory.readBigUInt64LE(q))), (q += 8);
          if (entry.compressedSize === 0xffffffff) (entry.compressedSize = Number(directory.readBigUInt64LE(q))), (q += 8);
          if (entry.localHeaderOffset === 0xffffffff) entry.localHeaderOffset = Number(directory.readBigUInt64LE(q));
        }
        extra += 4 + length;
      }
      entries.set(entry.name, entry);
      p = extraEnd + commentLength;
    }
    return entries;
  } finally {
    await handle.close();
  }
}

/** Where an entry's data starts: after its local header, whose name/extra lengths may differ from the directory's. */
async function dataOffset(file: string, entry: ZipEntry): Promise<number> {
  const handle = await fs.open(file, 'r');
  try {
    const header = await readAt(handle, entry.localHeaderOffset, 30);
    if (header.length < 30 || header.readUInt32LE(0) !== LOCAL_SIGNATURE) throw new ZipError(file, `has a broken local header for ${entry.name}`);
    return entry.localHeaderOffset + 30 + header.readUInt16LE(26) + header.readUInt16LE(28);
  } finally {
    await handle.close();
  }
}

/** CRC-32 (zip's), incremental. zlib.crc32 exists from Node 20.15; the table version is the fallback. */
let crcTable: Uint32Array | undefined;
function crc32(chunk: Buffer, previous: number): number {
  const native = (zlib as { crc32?: (data: Buffer, value?: number) => number }).crc32;
  if (native) return native(chunk, previous);
  if (!crcTable) {
    crcTable = new Uint32Array(256);
    for (let n = 0; n < 256; n++) {
      let c = n;
      for (let k = 0; k < 8; k++) c = c & 1 ? 0xedb88320 ^ (c >>> 1) : c >>> 1;
      crcTable[n] = c >>> 0;
    }
  }
  let crc = ~previous >>> 0;
  for (let i = 0; i < chunk.length; i++) crc = crcTable[(crc ^ chunk[i]) & 0xff] ^ (crc >>> 8);
  return ~crc >>> 0;
}

/** Reads a small entry into memory (headers, METADATA). */
export async function readZipEntry(file: string, entry: ZipEntry): Promise<Buffer> {
  const chunks: Buffer[] = [];
  await streamEntry(file, entry, async (source: AsyncIterable<Buffer>) => {
    for await (const chunk of source) chunks.push(chunk);
  });
  return Buffer.concat(chunks);
}

/**
 * Streams one entry, inflated and CRC-checked, into `sink`. `onBytes` is
 * called with the number of uncompressed bytes passed so far.
 */
async function streamEntry(
  file: string,
  entry: ZipEntry,
  sink: NodeJS.WritableStream | ((source: AsyncIterable<Buffer>) => Promise<void>),
  onBytes?: (done: number) => void,
  signal?: AbortSignal,
): Promise<void> {
  if (entry.method !== 0 && entry.method !== 8) throw new ZipError(file, `${entry.name} uses compression method ${entry.method}; only stored and deflate are supported`);
  const start = await dataOffset(file, entry);
  let crc = 0;
  let bytes = 0;
  const check = new Transform({
    transform(chunk: Buffer, _encoding, callback) {
      crc = crc32(chunk, crc);
      bytes += chunk.length;
      onBytes?.(bytes);
      callback(null, chunk);
    },
    flush(callback) {
      if (bytes !== entry.size || crc !== entry.crc32) callback(new ZipError(file, `${entry.name} is corrupt (size or CRC-32 mismatch); delete the file and download it again`));
      else callback();
    },
  });
  // An empty stored entry has no data bytes; a read stream cannot express an empty range.
  const source = entry.compressedSize === 0 ? Readable.from([]) : createReadStream(file, { start, end: start + entry.compressedSize - 1, highWaterMark: 1 << 20 });
  const stages: NodeJS.ReadWriteStream[] = entry.method === 8 ? [zlib.createInflateRaw({ chunkSize: 1 << 20 }), check] : [check];
  // pipeline's typings cannot spread a variable number of stages; the call itself is standard.
  await (pipeline as unknown as (...args: unknown[]) => Promise<void>)(source, ...stages, sink, { signal });
}

/** Extracts one entry to `destination` (written as .partial, then renamed). */
export async function extractZipEntry(file: string, entry: ZipEntry, destination: string, onBytes?: (done: number) => void, signal?: AbortSignal): Promise<void> {
  const partial = `${destination}.partial`;
  await fs.mkdir(path.dirname(destination), { recursive: true });
  try {
    await streamEntry(file, entry, createWriteStream(partial, { mode: 0o755 }), onBytes, signal);
    await fs.rename(partial, destination);
  } catch (error) {
    await fs.rm(partial, { force: true });
    throw error;
  }
}

/**
 * A TensorFlow Python package, as a wheel or as an installed folder (the
 * folder that holds `tensorflow/`, i.e. site-packages). Paths are relative
 * to the package root, with forward slashes: `tensorflow/libtensorflow_cc.so.2`.
 */
export interface TensorFlowPackage {
  /** For messages: the wheel file or the site-packages folder. */
  readonly location: string;
  has(relative: string): boolean;
  size(relative: string): number;
  read(relative: string): Promise<Buffer>;
  /** Copies one file out (hard link or copy for folders, extraction for wheels). */
  copyTo(relative: string, destination: string, onBytes?: (done: number) => void, signal?: AbortSignal): Promise<void>;
}

/** Opens a wheel: reads only its central directory. */
export async function openWheel(file: string): Promise<TensorFlowPackage & { entries: Map<string, ZipEntry> }> {
  const entries = await readZipDirectory(file);
  const get = (relative: string) => {
    const entry = entries.get(relative);
    if (!entry) throw new ZipError(file, `has no ${relative}`);
    return entry;
  };
  return {
    location: file,
    entries,
    has: (relative) => entries.has(relative),
    size: (relative) => get(relative).size,
    read: (relative) => readZipEntry(file, get(relative)),
    copyTo: (relative, destination, onBytes, signal) => extractZipEntry(file, get(relative), destination, onBytes, signal),
  };
}

/**
 * Opens an installed package: `sitePackages` holds `tensorflow/`. Lists the
 * files under tensorflow/include once (for the header search).
 */
export async function openInstalledPackage(sitePackages: string): Promise<TensorFlowPackage> {
  const files = new Map<string, number>();
  const walk = async (relative: string): Promise<void> => {
    let items: import('node:fs').Dirent[];
    try {
      items = await fs.readdir(path.join(sitePackages, relative), { withFileTypes: true });
    } catch {
      return;
    }
    for (const item of items) {
      const child = `${relative}/${item.name}`;
      if (item.isDirectory()) await walk(child);
      else files.set(child, -1);
    }
  };
  await walk('tensorflow/include');
  const absolute = (relative: string) => path.join(sitePackages, ...relative.split('/'));
  const exists = async (relative: string) => fs.stat(absolute(relative)).then((s) => s.isFile(), () => false);
  for (const library of ['tensorflow/libtensorflow_cc.so.2', 'tensorflow/libtensorflow_framework.so.2']) {
    if (await exists(library)) files.set(library, (await fs.stat(absolute(library))).size);
  }
  return {
    location: sitePackages,
    has: (relative) => files.has(relative),
    size: (relative) => files.get(relative) ?? 0,
    read: (relative) => fs.readFile(absolute(relative)),
    async copyTo(relative, destination, onBytes) {
      await fs.mkdir(path.dirname(destination), { recursive: true });
      await fs.rm(destination, { force: true });
      // A hard link costs no space and survives the Python package being upgraded
      // or removed (pip unlinks files, it never rewrites them in place).
      try {
        await fs.link(absolute(relative), destination);
      } catch {
        await fs.copyFile(absolute(relative), destination, fs.constants.COPYFILE_FICLONE);
      }
      onBytes?.(files.get(relative) ?? 0);
    },
  };
}

const INCLUDE_ROOT = 'tensorflow/include/';
const INCLUDE_LINE = /^\s*#\s*include\s*[<"]([^>"]+)[>"]/gm;

/** The `#include` targets named in C/C++ source text. */
export function includesOf(source: string): string[] {
  return [...source.matchAll(INCLUDE_LINE)].map((match) => match[1]);
}

/**
 * The headers (relative to tensorflow/include) reachable from `seeds` by
 * following `#include`s that exist in the package; system and Node headers
 * are not in the package and are skipped. The package ships 13,000 headers
 * (270 MB); the addon needs about twenty.
 */
export async function headerClosure(pkg: TensorFlowPackage, seeds: string[]): Promise<string[]> {
  const found = new Set<string>();
  const queue = seeds.filter((header) => pkg.has(INCLUDE_ROOT + header));
  while (queue.length > 0) {
    const header = queue.pop() as string;
    if (found.has(header)) continue;
    found.add(header);
    for (const include of includesOf((await pkg.read(INCLUDE_ROOT + header)).toString('utf8'))) {
      if (!found.has(include) && pkg.has(INCLUDE_ROOT + include)) queue.push(include);
    }
  }
  return [...found].sort();
}

/** Copies headers (relative to tensorflow/include) into `includeDir`. */
export async function copyHeaders(pkg: TensorFlowPackage, headers: string[], includeDir: string): Promise<void> {
  for (const header of headers) {
    const destination = path.join(includeDir, ...header.split('/'));
    await fs.mkdir(path.dirname(destination), { recursive: true });
    await fs.writeFile(destination, await pkg.read(INCLUDE_ROOT + header));
  }
}

/** Name and version from a wheel's `*.dist-info/METADATA` (e.g. tensorflow-cpu 2.21.0). */
export async function wheelMetadata(wheel: Awaited<ReturnType<typeof openWheel>>): Promise<{ name: string; version: string } | undefined> {
  const metadata = [...wheel.entries.keys()].find((name) => /^[^/]+\.dist-info\/METADATA$/.test(name));
  if (!metadata) return undefined;
  const text = (await wheel.read(metadata)).toString('utf8');
  const name = /^Name:\s*(.+)$/m.exec(text)?.[1]?.trim();
  const version = /^Version:\s*(.+)$/m.exec(text)?.[1]?.trim();
  return name && version ? { name, version } : undefined;
}

/**
 * Unpacks what the GPU engine needs from an nvidia-* wheel into `destination`,
 * laid out as in site-packages: the shared libraries (nvidia/<package>/lib/)
 * and the dist-info's METADATA, which says the package's version.
 */
export async function extractCudaWheel(file: string, destination: string, signal?: AbortSignal): Promise<void> {
  const entries = await readZipDirectory(file);
  const wanted = [...entries.values()].filter((entry) => /^nvidia\/[^/]+\/lib\/[^/]+\.so[.\d]*$/.test(entry.name) || /^[^/]+\.dist-info\/METADATA$/.test(entry.name));
  if (!wanted.some((entry) => entry.name.startsWith('nvidia/'))) throw new ZipError(file, 'holds no nvidia/<package>/lib/ libraries: it is not an NVIDIA CUDA wheel');
  for (const entry of wanted) await extractZipEntry(file, entry, path.join(destination, ...entry.name.split('/')), undefined, signal);
}

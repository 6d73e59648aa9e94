/**
 * Writes a zip archive of uncompressed ("stored") members straight to an open
 * file, streaming members that live in files. A `.keras` model is a zip of
 * config.json, metadata.json and the weights HDF5; for a ResNet-50 with its
 * Adam state that HDF5 is 550 MB, which an in-memory zip would copy twice
 * and checksum in JavaScript (about 6 s and 1.1 GB extra per checkpoint).
 * Here the checksum is zlib's native CRC-32 and the weights pass through in
 * 4 MiB chunks.
 *
 * Plain zip only (no ZIP64): every member and the archive must stay under
 * 4 GiB, which the largest cellfinder network (ResNet-152 with Adam state,
 * about 0.7 GB) does.
 */
import type { FileHandle } from 'node:fs/promises';
import { promises as fs } from 'node:fs';
import { crc32 } from 'node:zlib';

export type ZipMember = { name: string; data: Uint8Array } | { name: string; file: string };

const CHUNK = 4 * 2 ** 20;
const ZIP_LIMIT = 0xffffffff;
const VERSION_NEEDED = 20;
/** General-purpose flag bit 11: names are UTF-8. */
const UTF8_NAMES = 0x0800;

interface WrittenMember {
  name: Buffer;
  crc: number;
  size: number;
  offset: number;
}

/** MS-DOS time and date fields, as zip stores modification times. */
function dosDateTime(date: Date): { time: number; date: number } {
  return {
    time: (date.getHours() << 11) | (date.getMinutes() << 5) | Math.floor(date.getSeconds() / 2),
    date: ((date.getFullYear() - 1980) << 9) | ((date.getMonth() + 1) << 5) | date.getDate(),
  };
}

/**
 * The fields a local header (from byte 4) and a central directory entry
 * (from byte 6) share, in the same order: version needed, flags, method,
 * time, date, CRC-32, compressed and uncompressed size, name length.
 */
function writeSharedFields(target: Buffer, at: number, member: WrittenMember, stamp: { time: number; date: number }): void {
  target.writeUInt16LE(VERSION_NEEDED, at);
  target.writeUInt16LE(UTF8_NAMES, at + 2);
  target.writeUInt16LE(0, at + 4); // stored
  target.writeUInt16LE(stamp.time, at + 6);
  target.writeUInt16LE(stamp.date, at + 8);
  target.writeUInt32LE(member.crc, at + 10);
  target.writeUInt32LE(member.size, at + 14);
  target.writeUInt32LE(member.size, at + 18);
  target.writeUInt16LE(member.name.length, at + 22);
}

function localHeader(member: WrittenMember, stamp: { time: number; date: number }): Buffer {
  const header = Buffer.alloc(30 + member.name.length);
  header.writeUInt32LE(0x04034b50, 0);
  writeSharedFields(header, 4, member, stamp);
  member.name.copy(header, 30);
  return header;
}

function centralEntry(member: WrittenMember, stamp: { time: number; date: number }): Buffer {
  const entry = Buffer.alloc(46 + member.name.length);
  entry.writeUInt32LE(0x02014b50, 0);
  entry.writeUInt16LE(VERSION_NEEDED, 4); // version made by
  writeSharedFields(entry, 6, member, stamp);
  entry.writeUInt32LE(member.offset, 42);
  member.name.copy(entry, 46);
  return entry;
}

/** Writes `members`, in order, as a zip archive from the start of `handle`. */
export async function writeStoredZip(handle: FileHandle, members: ZipMember[], modified = new Date()): Promise<void> {
  const stamp = dosDateTime(modified);
  const written: WrittenMember[] = [];
  let position = 0;
  const write = async (bytes: Uint8Array) => {
    await handle.write(bytes, 0, bytes.length, position);
    position += bytes.length;
  };
  for (const member of members) {
    const entry: WrittenMember = { name: Buffer.from(member.name, 'utf8'), crc: 0, size: 0, offset: position };
    // The header goes first with a zero CRC and size, and is rewritten in place once the data is through.
    const headerLength = localHeader(entry, stamp).length;
    position += headerLength;
    if ('data' in member) {
      entry.crc = crc32(member.data);
      entry.size = member.data.length;
      await write(member.data);
    } else {
      const source = await fs.open(member.file, 'r');
      try {
        const buffer = Buffer.alloc(CHUNK);
        for (;;) {
          const { bytesRead } = await source.read(buffer, 0, CHUNK, null);
          if (bytesRead === 0) break;
          const chunk = buffer.subarray(0, bytesRead);
          entry.crc = crc32(chunk, entry.crc);
          entry.size += bytesRead;
          await write(chunk);
        }
      } finally {
        await source.close();
      }
    }
    if (entry.size >= ZIP_LIMIT || position >= ZIP_LIMIT) throw new Error(`${member.name} makes the archive larger than 4 GiB, which plain zip cannot hold`);
    await handle.write(localHeader(entry, stamp), 0, headerLength, entry.offset);
    written.push(entry);
  }
  const directoryOffset = position;
  for (const entry of written) await write(centralEntry(entry, stamp));
  const end = Buffer.alloc(22);
  end.writeUInt32LE(0x06054b50, 0);
  end.writeUInt16LE(written.length, 8);
  end.writeUInt16LE(written.length, 10);
  end.writeUInt32LE(position - directoryOffset, 12);
  end.writeUInt32LE(directoryOffset, 16);
  await write(end);
}

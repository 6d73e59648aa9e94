/**
 * The symbol versions a Linux shared object requires of the libraries it
 * links (its ELF `.gnu.version_r` section: "GLIBC_2.14 from libc.so.6",
 * "GLIBCXX_3.4.21 from libstdc++.so.6"), and whether they stay within what
 * a manylinux platform tag promises.
 *
 * The addon we ship is compiled once, on our build machine, and loaded on the
 * user's: the dynamic loader refuses it there when it requires a newer
 * glibc or libstdc++ symbol version than the system has. TensorFlow's wheel
 * is tagged manylinux_2_27, so wherever TensorFlow loads, an addon within
 * manylinux_2_27 loads too. Read here, in code, rather than with binutils'
 * `readelf -V`: the build and the tests then need no binutils output format.
 */
import { readFileSync } from 'node:fs';

/** One library the object links and the versions of it that its symbols need. */
export interface VersionNeed {
  file: string;
  versions: string[];
}

const SHT_GNU_VERNEED = 0x6ffffffe;

/** Reads a 64-bit little-endian ELF file's version needs (x86-64, aarch64). */
export function readVersionNeeds(file: string): VersionNeed[] {
  const elf = readFileSync(file);
  if (elf.length < 64 || elf.readUInt32BE(0) !== 0x7f454c46) throw new Error(`${file} is not an ELF file`);
  if (elf[4] !== 2 || elf[5] !== 1) throw new Error(`${file} is not a 64-bit little-endian ELF file`);
  const sectionsAt = Number(elf.readBigUInt64LE(0x28));
  const sectionSize = elf.readUInt16LE(0x3a);
  const sectionCount = elf.readUInt16LE(0x3c);
  const section = (index: number) => {
    const at = sectionsAt + index * sectionSize;
    return { type: elf.readUInt32LE(at + 4), offset: Number(elf.readBigUInt64LE(at + 0x18)), link: elf.readUInt32LE(at + 0x28), info: elf.readUInt32LE(at + 0x2c) };
  };
  const needs: VersionNeed[] = [];
  for (let index = 0; index < sectionCount; index++) {
    const verneed = section(index);
    if (verneed.type !== SHT_GNU_VERNEED) continue;
    const strings = section(verneed.link).offset;
    const text = (at: number) => elf.toString('latin1', strings + at, elf.indexOf(0, strings + at));
    // Elf64_Verneed {vn_version, vn_cnt: u16; vn_file, vn_aux, vn_next: u32}, each with vn_cnt
    // Elf64_Vernaux {vna_hash: u32; vna_flags, vna_other: u16; vna_name, vna_next: u32}.
    let entry = verneed.offset;
    for (let n = 0; n < verneed.info; n++) {
      const versions: string[] = [];
      let aux = entry + elf.readUInt32LE(entry + 8);
      for (let k = 0; k < elf.readUInt16LE(entry + 2); k++) {
        versions.push(text(elf.readUInt32LE(aux + 8)));
        aux += elf.readUInt32LE(aux + 12);
      }
      needs.push({ file: text(elf.readUInt32LE(entry + 4)), versions: versions.sort(compareVersions) });
      entry += elf.readUInt32LE(entry + 12);
    }
  }
  return needs;
}

/**
 * The newest version of each runtime symbol family a platform tag allows
 * (auditwheel 6.8's policy/manylinux-policy.json, x86_64). Families not
 * listed (e.g. "tensorflow" from libtensorflow_cc.so.2) come with the wheel.
 */
export const MANYLINUX_2_27: Readonly<Record<string, string>> = {
  GLIBC: '2.27',
  GLIBCXX: '3.4.24',
  CXXABI: '1.3.11',
  GCC: '7.0.0',
};
/** Non-numeric versions the policy lists (libstdc++'s transactional-memory and float128 ABIs). */
const ALLOWED_NAMED = new Set(['CXXABI_TM_1', 'CXXABI_FLOAT128']);

/** The required versions that the policy does not allow, e.g. ["GLIBCXX_3.4.29 (libstdc++.so.6)"]. */
export function versionsBeyond(needs: readonly VersionNeed[], policy: Readonly<Record<string, string>>): string[] {
  const beyond: string[] = [];
  for (const { file, versions } of needs) {
    for (const version of versions) {
      const match = /^([A-Z]+)_(.+)$/.exec(version);
      const newest = match && policy[match[1]];
      if (!match || !newest || ALLOWED_NAMED.has(version)) continue;
      if (!/^\d+(\.\d+)*$/.test(match[2]) || compareNumbers(match[2], newest) > 0) beyond.push(`${version} (${file})`);
    }
  }
  return beyond;
}

function compareNumbers(a: string, b: string): number {
  const x = a.split('.').map(Number);
  const y = b.split('.').map(Number);
  for (let i = 0; i < Math.max(x.length, y.length); i++) if ((x[i] ?? 0) !== (y[i] ?? 0)) return (x[i] ?? 0) - (y[i] ?? 0);
  return 0;
}

/** GLIBC_2.2.5 < GLIBC_2.14; different families by name. */
function compareVersions(a: string, b: string): number {
  const [familyA, numberA = ''] = a.split('_');
  const [familyB, numberB = ''] = b.split('_');
  if (familyA !== familyB) return familyA < familyB ? -1 : 1;
  return /^[\d.]+$/.test(numberA) && /^[\d.]+$/.test(numberB) ? compareNumbers(numberA, numberB) : numberA < numberB ? -1 : 1;
}

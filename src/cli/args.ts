/**
 * A small argument parser for cellfinder-style flags: `--flag value`,
 * `--flag=value`, boolean switches, and flags taking several values
 * (`--voxel-sizes 5 2 2`, `-y a.yaml b.yaml`), as cellfinder's argparse has.
 */
import { VOXEL_SIZE_FIX, voxelSizeProblem } from '../core/extraction';

export interface FlagSpec {
  /** Long name without dashes. */
  name: string;
  short?: string;
  /** Number of values: 0 = switch, 1 = one value, '+' = one or more. */
  values: 0 | 1 | 3 | '+';
  /** One value taken as it is, even when it starts with '-' or holds commas: an option for another program (sbatch). */
  verbatim?: boolean;
}

export interface ParsedArgs {
  flags: Map<string, string[]>;
  positionals: string[];
}

export class UsageError extends Error {}

export function parseArgs(argv: readonly string[], specs: readonly FlagSpec[]): ParsedArgs {
  const flags = new Map<string, string[]>();
  const positionals: string[] = [];
  for (let i = 0; i < argv.length; i++) {
    const arg = argv[i];
    if (!arg.startsWith('-') || arg === '-') {
      positionals.push(arg);
      continue;
    }
    const [rawName, inline] = arg.includes('=') ? [arg.slice(0, arg.indexOf('=')), arg.slice(arg.indexOf('=') + 1)] : [arg, undefined];
    const spec = specs.find((s) => `--${s.name}` === rawName || (s.short && `-${s.short}` === rawName));
    if (!spec) throw new UsageError(`unknown option ${rawName}`);
    if (spec.values === 0) {
      if (inline !== undefined) throw new UsageError(`${rawName} takes no value`);
      flags.set(spec.name, []);
      continue;
    }
    if (spec.verbatim) {
      const value = inline ?? argv[++i];
      if (value === undefined) throw new UsageError(`${rawName} needs a value`);
      flags.set(spec.name, [...(flags.get(spec.name) ?? []), value]);
      continue;
    }
    const values: string[] = inline !== undefined ? inline.split(',') : [];
    while (inline === undefined && i + 1 < argv.length && !isFlag(argv[i + 1])) {
      values.push(argv[++i]);
      if (spec.values !== '+' && values.length === spec.values) break;
    }
    if (values.length === 0 || (spec.values !== '+' && values.length !== spec.values)) {
      throw new UsageError(`${rawName} needs ${spec.values === '+' ? 'one or more values' : `${spec.values} value(s)`}`);
    }
    flags.set(spec.name, [...(flags.get(spec.name) ?? []), ...values]);
  }
  return { flags, positionals };
}

/** A negative number is a value, not a flag. */
function isFlag(arg: string): boolean {
  return arg.startsWith('-') && !/^-\d/.test(arg);
}

/** Flags of commands that read candidates from volumes (extract, classify). */
export const CANDIDATE_INPUT_FLAGS: FlagSpec[] = [
  { name: 'signal', short: 's', values: 1 },
  { name: 'background', short: 'b', values: 1 },
  { name: 'points', values: 1 },
  { name: 'output-dir', short: 'o', values: 1 },
  { name: 'voxel-sizes', short: 'v', values: 3 },
  { name: 'json', values: 0 },
];

/** `--voxel-sizes Z Y X` in µm, or undefined when not given. */
export function parseVoxelSizes(values: string[] | undefined): [number, number, number] | undefined {
  if (!values) return undefined;
  const sizes = values.map(Number);
  if (sizes.length !== 3 || sizes.some((s) => !Number.isFinite(s) || s <= 0)) {
    throw new UsageError('--voxel-sizes needs three positive numbers: Z Y X in µm');
  }
  const problem = voxelSizeProblem(sizes as [number, number, number]);
  if (problem) throw new UsageError(`--voxel-sizes: ${problem}. ${VOXEL_SIZE_FIX}`);
  return sizes as [number, number, number];
}

/**
 * Natural ("human") order of file names, as Python's `natsort.natsorted`
 * (default settings) orders them, because cellfinder orders z-planes that way:
 * digit runs compare as whole numbers, other text by code point.
 */
type Chunk = string | bigint;

function chunks(name: string): Chunk[] {
  const parts = name.split(/(\d+)/);
  // split() with a capture group alternates text and digits, starting with
  // text (possibly ''), so equal positions always hold the same kind of chunk.
  return parts.map((part, i) => (i % 2 === 1 ? BigInt(part) : part));
}

export function compareNatural(a: string, b: string): number {
  const left = chunks(a);
  const right = chunks(b);
  for (let i = 0; i < Math.min(left.length, right.length); i++) {
    const l = left[i];
    const r = right[i];
    if (l === r) continue;
    if (l < r) return -1;
    if (l > r) return 1;
  }
  if (left.length !== right.length) return left.length - right.length;
  // Same numbers with different zero padding ("a01" vs "a1"): fall back to text.
  return a < b ? -1 : a > b ? 1 : 0;
}

export function naturalSort(names: readonly string[]): string[] {
  return [...names].sort(compareNatural);
}

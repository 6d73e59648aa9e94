/**
 * Python's `repr(float)`: the shortest digits that read back to the same
 * number, in exponent form below 1e-4 and from 1e16 ("1e-05", "1e+16").
 * Files cellfinder's Python writes (CSV logs, YAML) format floats this way.
 */
export function pythonFloatRepr(value: number): string {
  if (Number.isNaN(value)) return 'nan';
  if (!Number.isFinite(value)) return value > 0 ? 'inf' : '-inf';
  const [mantissa, exponentText] = value.toExponential().split('e');
  const exponent = Number(exponentText);
  if (exponent < -4 || exponent >= 16) {
    return `${mantissa}e${exponent < 0 ? '-' : '+'}${String(Math.abs(exponent)).padStart(2, '0')}`;
  }
  const fixed = value.toFixed(Math.max(0, (mantissa.split('.')[1]?.length ?? 0) - exponent));
  return fixed.includes('.') ? fixed : `${fixed}.0`;
}

/**
 * The shortest decimal that reads back to the same float32 (the digits
 * numpy prints for a float32): how to show a value Keras stored as float32,
 * such as a restored learning rate (0.001, not 0.0010000000474974513).
 */
export function shortestFloat32(value: number): number {
  for (let digits = 1; digits < 17; digits++) {
    const candidate = Number(value.toPrecision(digits));
    if (Math.fround(candidate) === Math.fround(value)) return candidate;
  }
  return value;
}

/**
 * NumPy's `.npy` format, version 1.0 (numpy/lib/format.py describes it): the
 * magic `\x93NUMPY`, the version, a little-endian header length, a Python
 * dict literal padded with spaces to a multiple of 64 bytes and ending in a
 * newline, then the values in C order. Only little-endian float32 is needed
 * here (the BioImage Model Zoo's test tensors).
 */

const MAGIC = Buffer.from([0x93, 0x4e, 0x55, 0x4d, 0x50, 0x59, 1, 0]);
const ALIGNMENT = 64;

export function encodeNpyFloat32(values: Float32Array, shape: readonly number[]): Uint8Array {
  const size = shape.reduce((a, b) => a * b, 1);
  if (size !== values.length) throw new Error(`shape ${shape.join('x')} holds ${size} values, got ${values.length}`);
  // A one-dimensional shape is written `(n,)`, as Python writes a 1-tuple.
  const shapeText = shape.length === 1 ? `(${shape[0]},)` : `(${shape.join(', ')})`;
  const dict = `{'descr': '<f4', 'fortran_order': False, 'shape': ${shapeText}, }`;
  const unpadded = MAGIC.length + 2 + dict.length + 1;
  const header = dict + ' '.repeat((ALIGNMENT - (unpadded % ALIGNMENT)) % ALIGNMENT) + '\n';
  const length = Buffer.alloc(2);
  length.writeUInt16LE(header.length);
  const data = Buffer.alloc(values.length * 4);
  for (let i = 0; i < values.length; i++) data.writeFloatLE(values[i], i * 4);
  return Buffer.concat([MAGIC, length, Buffer.from(header, 'latin1'), data]);
}
